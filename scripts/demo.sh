#!/usr/bin/env bash
# The main job, end to end on local storage: trains a small class-conditional DCGAN on
# MNIST (GPU if there is one, else CPU: a few minutes on 2 cores), writes a sample grid
# PNG, checkpoints and an exported generator under runs/quickstart, and prints where.
#   ./scripts/demo.sh                      # extra key=value arguments are passed through
#   ./scripts/demo.sh train.steps=500 run.dir=runs/short
#
# One process, so it runs `python -m job` itself (the same job `accelerate launch -m job`
# starts; it uses every core): a mistake shows as the job's one `error:` line and its exit
# code, not under a launcher's traceback.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
status=0
.venv/bin/python -m job train --config quickstart "$@" || status=$?
case $status in
  0) ;;
  2) echo "demo: exit 2: bad input, nothing written (the line above says what to change)" >&2 ;;
  3) echo "demo: exit 3: storage unreachable (the line above names the endpoint)" >&2 ;;
  130|143) echo "demo: exit $status: stopped; run the same command to resume" >&2 ;;
  *) echo "demo: exit $status (docs/reliability.md: what happens when...)" >&2 ;;
esac
exit "$status"
