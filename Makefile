# Two entry points a new user needs; both install what they need into .venv first.
#   make demo   runs bakeoff on the bundled example (scripted model unless one is configured)
#   make test   runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bakeoff demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)
