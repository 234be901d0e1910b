#!/usr/bin/env bash
# The main job, end to end on local storage: trains a small class-conditional DCGAN on
# MNIST (GPU if there is one, else CPU: a few minutes on 2 cores), writes a sample grid
# PNG, checkpoints and an exported generator under runs/quickstart, and prints where.
#   ./scripts/demo.sh                      # extra key=value arguments are passed through
#   ./scripts/demo.sh train.steps=500 run.dir=runs/short
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
# accelerate exports OMP_NUM_THREADS=1 unless told otherwise: give the one process every core.
exec .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  --num_cpu_threads_per_process "$(nproc)" -m job train --config quickstart "$@"
