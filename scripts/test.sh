#!/usr/bin/env bash
# Install ndgeo with its dev extras (CPU torch pinned first) and run the whole test suite.
# This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch==2.13.0 is pinned here so pip takes the CPU wheel instead of a multi-GB CUDA build.
python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".[dev]"

python -m ruff check ndgeo tests benchmarks

set +e
python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    # pytest exit code 5 = no tests collected: for this project that is a broken checkout.
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
