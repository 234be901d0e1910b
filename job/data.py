"""Datasets as one uint8 tensor on the training device, and per-rank batch indices.

torchvision reads the dataset files once; after that the whole split lives on the device
(47 MB for MNIST) and a batch is one index_select. No DataLoader, no per-sample PIL
transforms in the hot loop. Batches come from a per-epoch permutation that depends only on
(seed, epoch), sliced by rank, so resuming at step k needs no sampler state.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from filelock import FileLock

from job import storage
from job.errors import BadInput

NUM_CLASSES = {"mnist": 10}
# torchvision's file names for MNIST; a folder holding them (gzip or not) is usable as is.
DATASET_MANIFEST = "manifest.json"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def cache_dir() -> str:
    """$DIGITS_CACHE_DIR, else ~/.cache/digit-job (XDG_CACHE_HOME respected)."""
    if os.environ.get("DIGITS_CACHE_DIR"):
        return os.environ["DIGITS_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "digit-job")


def find_mnist_files(root: str) -> dict[str, str]:
    """{idx name: local path} for the MNIST files under `root` (flat or torchvision layout,
    gzip or not); missing files are left out."""
    found = {}
    for folder in (root, os.path.join(root, "MNIST", "raw")):
        for name in MNIST_FILES:
            for candidate in (name + ".gz", name):
                path = os.path.join(folder, candidate)
                if name not in found and os.path.isfile(path):
                    found[name] = path
    return found


def _torchvision_root(root: str) -> str:
    """A root in torchvision's layout (<root>/MNIST/raw/<idx files>) for the files under `root`.

    A flat folder of MNIST files, gzip or not (like ../shared/datasets/mnist, or a data
    push), is decompressed once into a staging folder in the cache. torchvision then finds
    the raw idx files and loads them without going online. Call with the dataset lock held.
    """
    if os.path.isdir(os.path.join(root, "MNIST", "raw")):
        return root
    sources = find_mnist_files(root)
    if len(sources) < len(MNIST_FILES):
        return root  # torchvision will download here when online
    stage = os.path.join(cache_dir(), "staged", os.path.abspath(root).strip("/").replace("/", "_"))
    raw = os.path.join(stage, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name, src in sources.items():
        dst = os.path.join(raw, name)
        if os.path.exists(dst):
            continue
        opener = gzip.open if src.endswith(".gz") else open
        tmp = dst + ".partial"
        try:
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (OSError, EOFError) as e:
            raise BadInput(f"{src} cannot be read as an MNIST file ({e})") from None
        os.replace(tmp, dst)  # whole file or nothing, for the next process to trust
    return stage


# ----------------------------------------------------------------------------- staging


def push(name: str, root: str, dest: str) -> dict:
    """Stage dataset `name` from local `root` (downloading it there first when online) to
    `dest` (folder or s3:// prefix): its files, then manifest.json with their sha256 sums."""
    if name != "mnist":
        raise BadInput(f"data push {name!r}: only mnist can be pushed")
    storage.check_writable(dest)
    files = find_mnist_files(root)
    if len(files) < len(MNIST_FILES):
        load_split(name, root, train=True)  # downloads into root when online, else says why not
        files = find_mnist_files(root)
    entries = {}
    for path in files.values():
        filename = os.path.basename(path)
        storage.upload_file(path, storage.join(dest, filename))
        entries[filename] = {"sha256": storage.file_sha256(path), "bytes": os.path.getsize(path)}
    manifest = {"format": "digit-job/dataset", "version": 1, "name": name, "files": entries}
    storage.write_bytes(storage.join(dest, DATASET_MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def fetch(uri: str) -> str:
    """A local, verified copy of the dataset pushed to `uri`; downloaded once per node.

    Files are checked against manifest.json's sha256 on download, and a cached copy is
    reused on the next run. Call with the dataset lock held.
    """
    storage.check_readable(uri)
    manifest_uri = storage.join(uri, DATASET_MANIFEST)
    if not storage.exists(manifest_uri):
        raise BadInput(f"{uri} holds no {DATASET_MANIFEST}: stage it with `python -m job data push mnist {uri}`")
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{manifest_uri} is not a digit-job dataset manifest") from None
    bucket, key = storage.split_s3(uri)
    local = os.path.join(cache_dir(), "datasets", bucket, key.strip("/"))
    for filename, entry in files.items():
        if "/" in filename or filename.startswith("."):
            raise BadInput(f"{manifest_uri} names a file outside its prefix: {filename!r}")
        path = os.path.join(local, filename)
        if os.path.isfile(path) and storage.file_sha256(path) == entry["sha256"]:
            continue  # cached and verified
        storage.download_file(storage.join(uri, filename), path, sha256=entry["sha256"])
    return local


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W] at the dataset's native size
    labels: torch.Tensor  # int64 [N]
    num_classes: int


def load_split(name: str, root: str, train: bool, device: torch.device | str = "cpu") -> Split:
    """Load a whole split as tensors on `device`. Bad roots raise BadInput."""
    if name != "mnist":
        raise BadInput(f"data.name={name!r} is not supported: use mnist")
    from torchvision.datasets import MNIST  # heavy import, only when data is needed

    os.makedirs(cache_dir(), exist_ok=True)
    # Several ranks on one node must not download or extract the same files at once.
    with FileLock(os.path.join(cache_dir(), "dataset.lock")):
        local_root = fetch(root) if storage.is_s3(root) else root
        tv_root = _torchvision_root(local_root)
        try:
            ds = MNIST(tv_root, train=train, download=True)
        except Exception as e:  # offline download failure, corrupt archive, ...
            raise BadInput(
                f"MNIST could not be loaded from data.root={root!r} ({type(e).__name__}: {e}); "
                "point data.root or DIGITS_DATA_DIR at a folder with the MNIST idx files"
            ) from None
    images = ds.data.unsqueeze(1).contiguous()  # uint8 [N, 1, 28, 28]
    return Split(images.to(device), ds.targets.to(device=device, dtype=torch.int64), NUM_CLASSES[name])


def to_model_input(batch: torch.Tensor, image_size: int, channels_last: bool) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float in [-1, 1] at `image_size`, in the chosen memory format."""
    x = batch.float().div_(127.5).sub_(1.0)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class EpochBatches:
    """Batch indices for global step `s`: the same permutation on every rank, sliced by rank.

    Epoch e uses randperm(N) seeded by (seed, e); each step consumes batch_size * world
    indices, and the tail that does not fill a whole global batch is dropped.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, device):
        self.n, self.bs, self.rank, self.world, self.seed, self.device = n, batch_size, rank, world, seed, device
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch == 0:
            raise BadInput(
                f"train.batch_size={batch_size} x {world} processes is larger than the dataset ({n} images)"
            )
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, within = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._epoch = epoch
        start = (within * self.world + self.rank) * self.bs
        return self._perm[start : start + self.bs]
