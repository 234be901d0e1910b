#!/usr/bin/env bash
# Re-pin what the images install: resolves pyproject.toml's runtime dependencies in a
# throwaway virtual environment (from the pip index this machine is configured for) and
# writes the exact versions the Dockerfiles install:
#   docker/requirements.lock          everything except torch, torchvision and torch's CUDA stack
#   docker/requirements-cuda13.lock   torch, torchvision, nvidia-*, cuda-*, triton: the newest
#                                     torch (CUDA 13 wheels on PyPI); the default CUDA image
#   docker/requirements-cuda12.lock   the same stack for TORCH_CU12 (default 2.10.0, the last
#                                     torch whose PyPI wheels are CUDA 12.8), resolved for
#                                     Python 3.12 on x86_64 against requirements.lock without
#                                     installing it (--build-arg CUDA_MAJOR=12)
# The CPU image takes torch and torchvision at the versions of the CUDA 13 lock from the CPU
# wheel index. Run it when pyproject.toml's dependencies change, then rebuild the images.
#   ./scripts/lock-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CU12=${TORCH_CU12:-2.10.0}
TORCHVISION_CU12=${TORCHVISION_CU12:-0.25.0}
venv=$(mktemp -d /tmp/digit-job-lock.XXXXXX)
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
# The wheel folder some machines carry (PIP_FIND_LINKS) holds builds the images never see.
PIP_FIND_LINKS= "$venv/bin/pip" install --quiet --upgrade pip
PIP_FIND_LINKS= "$venv/bin/pip" install --quiet .
frozen=$("$venv/bin/pip" freeze --all --exclude digit-job --exclude pip)
cuda_stack='^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*)=='
header="# Written by scripts/lock-images.sh from pyproject.toml ($("$venv/bin/python" --version), $(date -u +%F)); do not edit."
{ echo "$header"; grep -Ev "$cuda_stack" <<<"$frozen"; } > docker/requirements.lock
{ echo "$header"; grep -E "$cuda_stack" <<<"$frozen"; } > docker/requirements-cuda13.lock

# CUDA 12: resolved, not installed (the wheels are for the image's Python 3.12 on x86_64).
platforms=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
  platforms+=(--platform "${tag}_x86_64")
done
grep -v '^#' docker/requirements.lock > "$venv/shared.txt"
PIP_FIND_LINKS= "$venv/bin/pip" install --quiet --dry-run --ignore-installed --report "$venv/cu12.json" \
  --python-version 3.12 --only-binary=:all: "${platforms[@]}" -c "$venv/shared.txt" \
  "torch==$TORCH_CU12" "torchvision==$TORCHVISION_CU12"
{
  echo "# Written by scripts/lock-images.sh: torch $TORCH_CU12 (CUDA 12 wheels) for Python 3.12 on x86_64 ($(date -u +%F)); do not edit."
  "$venv/bin/python" -c 'import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(item["metadata"]["name"] + "==" + item["metadata"]["version"])' "$venv/cu12.json" | grep -E "$cuda_stack" | sort
} > docker/requirements-cuda12.lock
for lock in docker/requirements.lock docker/requirements-cuda13.lock docker/requirements-cuda12.lock; do
  echo "lock: $(($(wc -l < "$lock") - 1)) packages in $lock"
done
