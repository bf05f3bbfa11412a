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

# Two passes: most tests two files at a time, then those that stop a Ray cluster, count the
# engine's containers, send signals or rest on timings at every core, alone (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=25 -n 2 --dist loadfile -m "not live and not serial" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -ra --durations=25 -m "serial and not live" $(PYTEST_ARGS)
