#!/usr/bin/env bash
# Local S3 (SeaweedFS) for development and the demo: start | stop | env.
#   ./scripts/s3-local.sh start && eval "$(./scripts/s3-local.sh env)"
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python scripts/s3_local.py "$@"
