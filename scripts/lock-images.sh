#!/usr/bin/env bash
# Re-pin what the images install: resolves pyproject.toml's runtime dependencies in a
# throwaway virtual environment (from the pip index this machine is configured for) and
# writes the exact versions the Dockerfiles install:
#   docker/requirements.lock        everything except torch, torchvision and torch's CUDA stack
#   docker/requirements-cuda.lock   torch, torchvision, nvidia-*, cuda-*, triton (CUDA image only)
# The CPU image takes torch and torchvision at the versions of the CUDA lock from the CPU
# wheel index. Run it when pyproject.toml's dependencies change, then rebuild the images.
#   ./scripts/lock-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
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
{ echo "$header"; grep -E "$cuda_stack" <<<"$frozen"; } > docker/requirements-cuda.lock
echo "lock: $(($(wc -l < docker/requirements.lock) - 1)) packages in docker/requirements.lock," \
     "$(($(wc -l < docker/requirements-cuda.lock) - 1)) in docker/requirements-cuda.lock"
