#!/usr/bin/env bash
# Container entrypoint: counts the visible GPUs and starts the job with one process per GPU,
# or one CPU process when there is none, passing every argument through.
#
#   docker run IMAGE train --config cdcgan-mnist run.dir=s3://bucket/runs/r1
#   DIGITS_DRY_RUN=1 docker/entrypoint.sh train --config debug     # print the command, run nothing
#
# The pod's exit code is the job's own (Kubernetes' podFailurePolicy reads it): 0 done,
# 2 bad input, 3 storage unreachable, 4 GPUs required but none usable, 5 a peer process went
# away, 6 the local file system refused a write, 130/143 stopped by SIGINT/SIGTERM after
# saving a checkpoint.
# - One process (one GPU, or CPU): the job is exec'd directly, so tini (PID 1) hands SIGTERM
#   to the process that saves, and its exit code is the container's.
# - Several (GPUs, or multi-node): `accelerate launch` starts them; it exits 1 for any
#   failure, so each process writes its code to DIGITS_EXIT_DIR and this script passes the
#   job's code on. SIGTERM/SIGINT are handed to the launcher, which passes them to every
#   process and waits for their checkpoint.
#
# Environment:
#   DIGITS_GPU_COUNT    use this many GPUs instead of counting them with nvidia-smi
#   DIGITS_NUM_PROCESSES  processes in this container (default: one per GPU, one on CPU);
#                       several on CPU are gloo processes sharing the container's threads
#   DIGITS_REQUIRE_GPU  1: no usable GPU is an error (exit 4), never a silent CPU run
#   DIGITS_PRECISION    read by the job itself (in the image or not): the precision of train,
#                       sample and evaluate where the config and arguments do not set it;
#                       unset: auto (measured on a CPU, bf16 on GPUs that compute it natively)
#   OMP_NUM_THREADS     CPU threads for the whole container (Kubernetes: from limits.cpu);
#                       else the cgroup CPU quota. Shared between the processes.
#   NNODES, NODE_RANK (else JOB_COMPLETION_INDEX), MASTER_ADDR, MASTER_PORT
#                       multi-node training (the k8s Indexed Job sets them): c10d rendezvous
#                       hosted by node 0, which is told so (is_host) and reaches its own store
#                       on 127.0.0.1, so it never waits for its own DNS record.
#                       CPU nodes run one gloo process each.
#   DIGITS_RDZV_READ_TIMEOUT  seconds a node waits for node 0's c10d store (default 600; torch's
#                       own 60 is shorter than an image pull or a node scale-up)
#   DIGITS_RDZV_JOIN_TIMEOUT  seconds the rendezvous waits for every node (default 1800)
#   DIGITS_DRY_RUN=1    print the command instead of running it
set -euo pipefail

fail() { local code=$1; shift; echo "error: $*" >&2; exit "$code"; }
say() { echo "entrypoint: $*" >&2; }
number() { case "$2" in '' | *[!0-9]*) fail 2 "$1=$2 is not a number" ;; esac; }

# ------------------------------------------------------------------ GPUs
why_no_gpu=""
if [ -n "${DIGITS_GPU_COUNT:-}" ]; then
  gpus=$DIGITS_GPU_COUNT
  number DIGITS_GPU_COUNT "$gpus"
  why_no_gpu="DIGITS_GPU_COUNT=0"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
  gpus=0
  why_no_gpu="nvidia-smi is not in the container (the NVIDIA container runtime mounts it with the driver)"
elif listing=$(nvidia-smi -L 2>&1); then
  gpus=$(grep -c '^GPU ' <<<"$listing" || true)
  why_no_gpu="nvidia-smi lists no GPU"
else
  gpus=0
  why_no_gpu="nvidia-smi failed: $(head -n 1 <<<"$listing")"
fi
if [ "$gpus" -eq 0 ] && [ "${DIGITS_REQUIRE_GPU:-0}" = 1 ]; then
  fail 4 "DIGITS_REQUIRE_GPU=1 (this pod asked for GPUs) but none is usable: $why_no_gpu;" \
         "check the node's NVIDIA driver and device plugin, or submit with the cpu overlay"
fi

# ------------------------------------------------------------------ processes and threads
nnodes=${NNODES:-1}
case "$nnodes" in '' | 0 | *[!0-9]*) fail 2 "NNODES=$nnodes is not a positive number" ;; esac
per_node=${DIGITS_NUM_PROCESSES:-$((gpus > 0 ? gpus : 1))}
case "$per_node" in '' | 0 | *[!0-9]*) fail 2 "DIGITS_NUM_PROCESSES=$per_node is not a positive number" ;; esac
threads=$(python -m job.core.cpu_budget)
per_process=$((threads / per_node > 0 ? threads / per_node : 1))

args=("$@")
where="$gpus GPU(s)"
[ "$gpus" -eq 0 ] && where="no GPU ($why_no_gpu): CPU, $per_process threads"

if [ "$nnodes" -eq 1 ] && [ "$per_node" -eq 1 ]; then
  command=(python -m job "${args[@]}")
  if [ "${DIGITS_DRY_RUN:-0}" = 1 ]; then echo "${command[*]}"; exit 0; fi
  say "$where: ${command[*]}"
  export OMP_NUM_THREADS=$per_process
  exec "${command[@]}"
fi

# The job applies precision itself (autocast per step), so accelerate is told "no"; every
# launcher setting is given, so it prints no page of defaults.
launch=(accelerate launch --mixed_precision no --dynamo_backend no --max_restarts 0
        --num_cpu_threads_per_process "$per_process" --multi_gpu)
if [ "$nnodes" -gt 1 ]; then
  rank=${NODE_RANK:-${JOB_COMPLETION_INDEX:-0}}
  number NODE_RANK "$rank"
  host=${MASTER_ADDR:-}
  [ -n "$host" ] || fail 2 "MASTER_ADDR is needed for multi-node training (node 0's DNS name)"
  is_host=0
  if [ "$rank" -eq 0 ]; then host=127.0.0.1; is_host=1; fi
  # Node 0 can start long after the others (its image is pulled, its node scaled up): they
  # wait for its store that long, and the rendezvous for every node longer still.
  read_timeout=${DIGITS_RDZV_READ_TIMEOUT:-600} join_timeout=${DIGITS_RDZV_JOIN_TIMEOUT:-1800}
  number DIGITS_RDZV_READ_TIMEOUT "$read_timeout"
  number DIGITS_RDZV_JOIN_TIMEOUT "$join_timeout"
  launch+=(--num_machines "$nnodes" --machine_rank "$rank" --num_processes $((per_node * nnodes))
           --main_process_ip "$host" --main_process_port "${MASTER_PORT:-29500}"
           --rdzv_backend c10d --rdzv_conf "is_host=$is_host,read_timeout=$read_timeout,join_timeout=$join_timeout")
else
  launch+=(--num_machines 1 --num_processes "$per_node")
fi
command=("${launch[@]}" -m job "${args[@]}")
if [ "${DIGITS_DRY_RUN:-0}" = 1 ]; then echo "${command[*]}"; exit 0; fi
say "$where, $nnodes node(s): ${command[*]}"

DIGITS_EXIT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/digit-job-exit.XXXXXX")
export DIGITS_EXIT_DIR LOGLEVEL=${LOGLEVEL:-ERROR}  # LOGLEVEL: torch's launcher, warnings off
"${command[@]}" &
launcher=$!
forward() { say "SIG$1: passing it to the launcher; each process saves a checkpoint and stops"; kill -s "$1" "$launcher" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT
status=0
wait "$launcher" || status=$?
while kill -0 "$launcher" 2>/dev/null; do  # a trapped signal ends `wait` early: wait on
  status=0
  wait "$launcher" || status=$?
done

# The job's own code: any crash (1) first, then bad input, storage, device, stopped, and
# "peer lost" only when nothing here explains the failure better.
code=$status
if [ "$status" -ne 0 ]; then
  recorded=$(cat "$DIGITS_EXIT_DIR"/rank-* 2>/dev/null || true)
  if [ "$(grep -c . <<<"$recorded")" -ge "$per_node" ]; then
    for candidate in 1 2 3 4 6 143 130 5; do
      if grep -qx "$candidate" <<<"$recorded"; then code=$candidate; break; fi
    done
  fi
  say "launcher exited $status; process codes: $(tr '\n' ' ' <<<"$recorded")-> exit $code"
fi
rm -rf "$DIGITS_EXIT_DIR"
exit "$code"
