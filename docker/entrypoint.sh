#!/usr/bin/env bash
# Container entrypoint: counts the visible GPUs and runs `accelerate launch -m job` with one
# process per GPU, or one CPU process when there is none, passing every argument through.
#
#   docker run IMAGE train --config cdcgan-mnist run.dir=s3://bucket/runs/r1
#   DIGITS_DRY_RUN=1 docker/entrypoint.sh train --config debug     # print the command, run nothing
#
# Environment:
#   DIGITS_GPU_COUNT   override the detected GPU count (tests, or to use fewer GPUs)
#   DIGITS_PRECISION   autocast for `train` on GPUs (default bf16; "no" for fp32). It is
#                      passed as train.mixed_precision unless the arguments set it already.
#   NNODES, NODE_RANK (else JOB_COMPLETION_INDEX), MASTER_ADDR, MASTER_PORT
#                      multi-node training: set by the k8s Indexed Job; c10d rendezvous.
#                      CPU nodes run one gloo process each.
#   DIGITS_DRY_RUN=1   print the launch command instead of running it.
set -euo pipefail

count_gpus() {
  if [ -n "${DIGITS_GPU_COUNT:-}" ]; then
    echo "$DIGITS_GPU_COUNT"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

gpus=$(count_gpus)
case "$gpus" in '' | *[!0-9]*) echo "error: DIGITS_GPU_COUNT=$gpus is not a number" >&2; exit 2 ;; esac

# The job applies precision itself (autocast per step), so accelerate is told "no".
launch=(accelerate launch --mixed_precision no --dynamo_backend no)
args=("$@")
nnodes=${NNODES:-1}
case "$nnodes" in '' | 0 | *[!0-9]*) echo "error: NNODES=$nnodes is not a positive number" >&2; exit 2 ;; esac
if [ "$nnodes" -gt 1 ]; then
  # One process per GPU on every node (one per node on CPU nodes: gloo), joined through a
  # c10d rendezvous hosted by node 0. --multi_gpu is accelerate's flag for "DDP"; without
  # CUDA the processes use gloo.
  per_node=$((gpus > 0 ? gpus : 1))
  rank=${NODE_RANK:-${JOB_COMPLETION_INDEX:-0}}
  launch+=(--multi_gpu --num_machines "$nnodes" --machine_rank "$rank" --num_processes $((per_node * nnodes))
           --main_process_ip "${MASTER_ADDR:?MASTER_ADDR is needed for multi-node training}"
           --main_process_port "${MASTER_PORT:-29500}" --rdzv_backend c10d)
elif [ "$gpus" -eq 0 ]; then
  # CPU fallback: one process using every core (the job sets its thread count).
  launch+=(--cpu --num_processes 1 --num_machines 1)
elif [ "$gpus" -gt 1 ]; then
  launch+=(--multi_gpu --num_processes "$gpus" --num_machines 1)
else
  launch+=(--num_processes 1 --num_machines 1)
fi
if [ "$gpus" -gt 0 ] && [ "${1:-}" = "train" ] && ! printf '%s\n' "$@" | grep -q '^train\.mixed_precision='; then
  args+=("train.mixed_precision=${DIGITS_PRECISION:-bf16}")
fi
command=("${launch[@]}" -m job "${args[@]}")

if [ "${DIGITS_DRY_RUN:-0}" = "1" ]; then
  echo "${command[*]}"
  exit 0
fi
echo "entrypoint: $gpus GPU(s) visible: ${command[*]}" >&2
exec "${command[@]}"
