#!/usr/bin/env bash
# The 16-core check: the ParEval OpenMP dev benchmark at 8 threads on a bare Linux machine.
#
# The machine has Python 3.12 with rich, jinja2 and typer, gcc with OpenMP and nvcc, but no
# pydantic, no clang (so no race check) and no network. So this script has two steps:
#
#   bench/device_check.sh prepare        here, with pip: the wheels bakeoff's benchmark needs
#                                        beyond those (pydantic and what it needs) into .whl/,
#                                        and a copy of the dev data into bench/out/data/
#   bench/device_check.sh run [ARGS]     there, from the repository root, with .whl and
#                                        bench/out/data carried along: unpacks the wheels into
#                                        /tmp/site (no pip needed), then runs
#                                        bench/select_pareval.py --problems all at 8 threads,
#                                        writing its log as it goes to $OUT (else bench/out)
#
# ARGS go to select_pareval.py after the defaults (e.g. --only 55_ for a slice). The run is
# stopped at DEVICE_CHECK_LIMIT seconds (default 470: well inside 8 minutes), and whatever
# was logged by then comes back.
#
# Variables: DEVICE_CHECK_PYTHON (default python3), DEVICE_CHECK_PY (the Python version the
# wheels are for, default 3.12), DEVICE_CHECK_THREADS (default 8), BAKEOFF_SHARED (where
# bench/pareval-omp-dev is found by prepare, default ../shared).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${DEVICE_CHECK_PYTHON:-python3}"
WHEELS="$ROOT/.whl"
DATA="$ROOT/bench/out/data/pareval-omp-dev"
PACKAGES=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-extensions==4.16.0
          typing-inspection==0.4.5)

prepare() {
  local pyver="${DEVICE_CHECK_PY:-3.12}"
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
  local shared="${BAKEOFF_SHARED:-$ROOT/../shared}"
  rm -rf "$DATA" && mkdir -p "$(dirname "$DATA")"
  cp -r "$shared/bench/pareval-omp-dev" "$DATA"
  chmod -R u+w "$DATA"
  du -sh "$WHEELS" "$DATA"
  echo "prepared: carry .whl and bench/out/data, then run: bench/device_check.sh run"
}

run() {
  local out="${OUT:-$ROOT/bench/out}"
  mkdir -p "$out"
  local log="$out/device_check.log"
  exec > >(tee -a "$log") 2>&1
  echo "== device check $(date -u +%FT%TZ): $(nproc) CPUs, $("$PY" --version 2>&1)"
  gcc --version | head -1
  if command -v clang >/dev/null; then clang --version | head -1; else echo "no clang: the race check is skipped"; fi
  [ -d "$WHEELS" ] && [ -d "$DATA" ] || { echo "missing .whl or bench/out/data: run 'prepare' here first"; exit 2; }
  # A wheel is a zip file: unpacked on the path it imports (no pip, no network on the machine).
  rm -rf /tmp/site && mkdir -p /tmp/site
  for w in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$w" /tmp/site; done
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  local threads="${DEVICE_CHECK_THREADS:-8}"
  local started=$SECONDS
  # bakeoff's folders map into the ``bakeoff`` namespace when it is installed; here its
  # package path is extended to the checkout instead.
  timeout -k 10 "${DEVICE_CHECK_LIMIT:-470}" "$PY" - "$ROOT" --data "$DATA" --problems all \
      --timing-threads "$threads" --json "$out/device_check.json" --picks "$out/device_check_picks.jsonl" "$@" <<'EOF' \
    || echo "== the benchmark stopped with status $? after $((SECONDS - started)) s"
import runpy
import sys

root = sys.argv[1]
sys.path.insert(0, root)
import bakeoff  # noqa: E402

bakeoff.__path__.append(root)
sys.argv = [f"{root}/bench/select_pareval.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
EOF
  echo "== device check done in $((SECONDS - started)) s; log $log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: bench/device_check.sh prepare | run [select_pareval.py args]"; exit 2 ;;
esac
