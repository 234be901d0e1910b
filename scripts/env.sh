# Sourced by the scripts: where MNIST is. Machines without internet keep a copy beside the
# checkout in ../shared/datasets/mnist; elsewhere torchvision downloads into ./data.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${DIGITS_DATA_DIR:-}" ]; then
  if [ -d "$here/../shared/datasets/mnist" ]; then
    DIGITS_DATA_DIR=$(cd "$here/../shared/datasets/mnist" && pwd)
  else
    DIGITS_DATA_DIR="$here/data"
  fi
fi
export DIGITS_DATA_DIR
