#!/usr/bin/env bash
# Builds both images with podman and runs them the way Kubernetes runs their pods
# (tests/test_images.py through tests/podrunner.py): exit codes, signals, S3, multi-node,
# Indexed sampling, read-only root. `.ci/run` calls it after the test suite.
#   ./scripts/test-images.sh                 # build (cached) + every image check
#   ./scripts/test-images.sh --build-only    # just the two images
#   ./scripts/test-images.sh -k sigterm      # extra arguments go to pytest
#
# Tags: localhost/digit-job:dev (docker/Dockerfile), localhost/digit-job:dev-cpu
# (docker/Dockerfile.cpu). The Dockerfiles stay plain `docker build` files; what this
# machine needs is passed from outside:
# - base images cannot be pulled here: a stand-in base is bootstrapped from Debian packages
#   (mmdebstrap: Debian 12 with CA certificates, plus the NVIDIA base image's environment for
#   the CUDA one) and given with --from; it is kept and reused (DIGITS_REBUILD_BASE=1 remakes it);
# - the package registries are reached through a proxy with its own CA: the host's CA folder
#   and pip's global configuration are mounted read-only into the build steps when present;
# - the CPU wheel index is out of reach here: when it does not answer, the CPU image takes
#   torch from pip's configured index (it says so; the image is then the CUDA build's size);
# - podman needs --runtime runc (crun refuses this host's hybrid cgroups) and ulimits
#   within the host's hard limits.
# Where podman cannot run at all, this says why and exits 0 without claiming a pass.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "test-images: SKIPPED, nothing was built or checked: $*" >&2; exit 0; }

if ! command -v podman >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-images: installing podman, runc and mmdebstrap (Debian packages)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null \
      || skip "apt-get could not install podman runc mmdebstrap"
  else
    skip "podman and mmdebstrap are not installed and this is not a root shell with apt-get"
  fi
fi

PODMAN=(podman --runtime "$(command -v runc || echo runc)")
"${PODMAN[@]}" info >/dev/null 2>&1 || skip "podman cannot start here: $("${PODMAN[@]}" info 2>&1 | tail -1)"
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=65536
[ "$nproc" = unlimited ] && nproc=65536
# runc could not set RLIMIT_NPROC above kernel.pid_max here ("operation not permitted").
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$nproc")
[ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

STANDIN=localhost/digit-job-standin
SUITE=bookworm
# What nvidia/cuda:*-base images set that the runtime and the NVIDIA container toolkit read.
CUDA_ENV=(NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility CUDA_VERSION=13.2.0
          "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
          LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64)

standin_base() {  # $1: cpu | cuda -> prints the image name, bootstrapping it when missing
  local image="$STANDIN:$SUITE-$1" changes=(--change 'CMD ["bash"]')
  if [ "${DIGITS_REBUILD_BASE:-0}" = 1 ] || ! "${PODMAN[@]}" image exists "$image"; then
    if [ "$1" = cuda ]; then
      for kv in "${CUDA_ENV[@]}"; do changes+=(--change "ENV $kv"); done
    fi
    echo "test-images: bootstrapping the stand-in base $image (Debian $SUITE, mmdebstrap)" >&2
    mmdebstrap --quiet --variant=minbase --include=ca-certificates "$SUITE" - \
      | "${PODMAN[@]}" import "${changes[@]}" - "$image" >/dev/null
  fi
  echo "$image"
}

build() {  # $1: Dockerfile, $2: tag, $3: stand-in flavour, rest: extra build flags
  local dockerfile=$1 tag=$2 flavour=$3; shift 3
  local mounts=()
  [ -d /etc/ssl/certs ] && mounts+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
  [ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  local base started=$SECONDS
  base=$(standin_base "$flavour")
  echo "test-images: building $tag from $dockerfile (base $base)"
  "${PODMAN[@]}" build --network host "${ULIMITS[@]}" "${mounts[@]}" --from "$base" --label "digit-job.standin=$base" \
    -f "$dockerfile" -t "$tag" "$@" . \
    | grep --line-buffered -E '^(STEP|COMMIT|--> Using cache|Successfully)' || true
  "${PODMAN[@]}" image exists "$tag" || { echo "test-images: building $tag failed" >&2; exit 1; }
  local size
  size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$tag")
  echo "test-images: $tag built in $((SECONDS - started)) s, $((size / 1000000)) MB"
}

cpu_index_args=()
if ! curl -sf -o /dev/null --max-time 15 https://download.pytorch.org/whl/cpu/torch/; then
  echo "test-images: the CPU wheel index does not answer here: the CPU image takes torch from pip's configured index (the CUDA build)"
  cpu_index_args=(--build-arg TORCH_INDEX_URL=)
fi

build docker/Dockerfile localhost/digit-job:dev cuda
build docker/Dockerfile.cpu localhost/digit-job:dev-cpu cpu "${cpu_index_args[@]}"
[ "${1:-}" = --build-only ] && exit 0

./scripts/setup.sh
source scripts/env.sh
export DIGITS_TEST_IMAGES=${DIGITS_TEST_IMAGES:-"localhost/digit-job:dev localhost/digit-job:dev-cpu"}
export DIGITS_PODMAN="${PODMAN[*]}" DIGITS_PODMAN_RUN_FLAGS="${ULIMITS[*]}" DIGITS_CPU_BUILD_ARGS="${cpu_index_args[*]}"
exec .venv/bin/python -m pytest tests/test_images.py -m "not slow" "$@"
