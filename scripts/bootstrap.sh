#!/usr/bin/env bash
# Set up genkernels in ./.venv and run the demo or the test suite.
#   bash scripts/bootstrap.sh demo [genkernels demo args]   -> writes demo_out/
#   bash scripts/bootstrap.sh test [pytest args]            -> the whole suite (CI)
# Needs only Python >= 3.11 and a C++ compiler. torch is installed (2.13.0) only when
# none is importable; the extension is built without build isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
shift || true
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv --system-site-packages .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check setuptools wheel ninja
python -c "import torch" 2>/dev/null || python -m pip install -q --disable-pip-version-check torch==2.13.0
case "$mode" in
  demo) extras="" ;;
  test) extras="[test]" ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test [args...]" >&2; exit 2 ;;
esac
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --disable-pip-version-check --no-build-isolation -e ".${extras}"

if [ "$mode" = demo ]; then
  exec genkernels demo --out demo_out "$@"
fi
# two test processes (TEST_WORKERS), a test file's tests in one: the suite is mostly
# single-threaded Python (the Triton interpreter), so two cores finish it in about half the time
exec python -m pytest -q -ra --durations=25 -n "${TEST_WORKERS:-2}" --dist loadfile tests "$@"
