# Sourced by scripts/test.sh: Fashion-MNIST from Debian's `dataset-fashion-mnist` package,
# for the test that trains on it. Exports FASHION_MNIST_DIR when the files are available.
#   1. already installed (/usr/share/datasets/fashion-mnist): used as is;
#   2. root with apt: `apt-get install dataset-fashion-mnist`;
#   3. otherwise `apt-get download` + `dpkg-deb -x` into .cache/debian (no root needed).
# Machines without apt (or offline) skip that one test, with the reason in its skip line.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fashion_installed=/usr/share/datasets/fashion-mnist
fashion_extracted="$here/.cache/debian/usr/share/datasets/fashion-mnist"
if [ -z "${FASHION_MNIST_DIR:-}" ]; then
  if [ ! -f "$fashion_installed/train-images-idx3-ubyte.gz" ] && [ ! -f "$fashion_extracted/train-images-idx3-ubyte.gz" ] \
     && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      echo "test: installing Debian's dataset-fashion-mnist (30 MB) for the Fashion-MNIST test"
      apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || true
    fi
    if [ ! -f "$fashion_installed/train-images-idx3-ubyte.gz" ] && command -v dpkg-deb >/dev/null 2>&1; then
      echo "test: extracting Debian's dataset-fashion-mnist into .cache/debian"
      mkdir -p "$here/.cache/debian"
      (cd "$here/.cache/debian" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
        && dpkg-deb -x dataset-fashion-mnist_*.deb . && rm -f dataset-fashion-mnist_*.deb) || true
    fi
  fi
  for candidate in "$fashion_installed" "$fashion_extracted"; do
    if [ -f "$candidate/train-images-idx3-ubyte.gz" ]; then
      export FASHION_MNIST_DIR="$candidate"
      break
    fi
  done
fi
