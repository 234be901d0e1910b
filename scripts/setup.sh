#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project
# with its dev extras. Re-installs only when pyproject.toml changed since the last run.
#   ./scripts/setup.sh            # then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "error: Python 3.10 or newer is needed (found $("$PYTHON" --version))" >&2; exit 2; }
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.digit-job-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing digit-job and its dependencies into .venv (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
