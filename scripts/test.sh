#!/usr/bin/env bash
# The whole default test suite (slow benchmarks and quality runs are marked and left out).
#   ./scripts/test.sh                # extra arguments go to pytest, e.g. -k resume, -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
source scripts/debian-datasets.sh
exec .venv/bin/python -m pytest -m "not slow and not cuda" "$@"
