"""Datasets as one uint8 tensor on the training device, and per-rank batch indices.

torchvision reads the dataset files once; after that the whole split lives on the device
(47 MB for MNIST) and a batch is one index_select. No DataLoader, no per-sample PIL
transforms in the hot loop. Batches come from a per-epoch permutation that depends only on
(seed, epoch), sliced by rank, so resuming at step k needs no sampler state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from filelock import FileLock

from job import config, datasets, storage
from job.errors import BadInput

DATASET_MANIFEST = "manifest.json"


def cache_dir() -> str:
    """$DIGITS_CACHE_DIR, else ~/.cache/digit-job (XDG_CACHE_HOME respected), created if
    needed. Not writable (a read-only root with nothing mounted there): BadInput, one line."""
    path = os.environ.get("DIGITS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "digit-job")
    try:
        os.makedirs(path, exist_ok=True)
        writable = os.access(path, os.W_OK)
        reason = "not writable"
    except OSError as e:
        writable, reason = False, e.strerror or type(e).__name__
    if not writable:
        raise BadInput(f"the cache folder {path} cannot be written ({reason}): mount a writable volume there "
                       "(an emptyDir in Kubernetes, --tmpfs with docker/podman) or set DIGITS_CACHE_DIR")
    return path


def _dataset(name: str) -> datasets.Dataset:
    if name not in datasets.CATALOG:
        raise BadInput(f"data.name={name!r} is not supported: use one of {', '.join(datasets.CATALOG)}")
    return datasets.CATALOG[name]


# ----------------------------------------------------------------------------- staging


def dataset_files(dataset: datasets.Dataset, root: str) -> dict[str, str]:
    """{name relative to root (with / inside an image folder): local path} of what a
    dataset is read from."""
    if dataset.idx_files:
        return {os.path.basename(p): p for p in datasets.find_idx_files(root, dataset).values()}
    if dataset.flat_files:
        paths = {n: os.path.join(root, n) for n in dataset.flat_files}
        return {n: p for n, p in paths.items() if os.path.isfile(p)}
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root).replace(os.sep, "/")] = path
    return files


def push(name: str, data_cfg: config.DataConfig, dest: str) -> dict:
    """Stage dataset `name` from local data.root (downloading it there first when online)
    to `dest` (folder or s3:// prefix): its files, then manifest.json with their sha256."""
    dataset = _dataset(name)
    storage.check_writable(dest)
    if storage.is_remote(data_cfg.root):
        raise BadInput(f"data push reads a local folder: data.root={data_cfg.root} is already on S3")
    # Reading the dataset first proves it is complete (and downloads it when online).
    load_split(dataclasses.replace(data_cfg, name=name), train=True)
    files = dataset_files(dataset, datasets.dataset_folder(data_cfg.root, dataset))
    if not files:
        raise BadInput(f"data.root={data_cfg.root} holds no {name} files to push")
    entries = {}
    for rel, path in files.items():
        storage.upload_file(path, storage.join(dest, rel))
        entries[rel] = {"sha256": storage.file_sha256(path), "bytes": os.path.getsize(path)}
    manifest = {"format": "digit-job/dataset", "version": 1, "name": name, "files": entries}
    storage.write_bytes(storage.join(dest, DATASET_MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def fetch(uri: str, name: str) -> str:
    """A local, verified copy of dataset `name` pushed to `uri`; downloaded once per node.

    Files are checked against manifest.json's sha256 on download, and a cached copy is
    reused on the next run. Call with the dataset lock held.
    """
    storage.check_readable(uri)
    manifest_uri = storage.join(uri, DATASET_MANIFEST)
    if not storage.exists(manifest_uri):
        raise BadInput(f"{uri} holds no {DATASET_MANIFEST}: stage it with `python -m job data push {name} {uri}`")
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
        files = manifest["files"]
        entries = [(str(rel), str(entry["sha256"])) for rel, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadInput(f"{manifest_uri} is not a digit-job dataset manifest") from None
    if manifest.get("name") != name:
        raise BadInput(f"{uri} holds {manifest.get('name')!r}, not data.name={name!r}")
    local = os.path.join(cache_dir(), "datasets", *storage.local_name(uri).split("/"))
    for rel, digest in entries:
        if not storage.stays_inside(rel):
            raise BadInput(f"{manifest_uri} names a file outside its prefix: {rel!r}")
        path = os.path.join(local, *rel.split("/"))
        if os.path.isfile(path) and storage.file_sha256(path) == digest:
            continue  # cached and verified
        storage.download_file(storage.join(uri, rel), path, sha256=digest)
    return local


# ----------------------------------------------------------------------------- loading


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]: native size, or data.image_size for an image folder
    labels: torch.Tensor  # int64 [N]
    num_classes: int


def load_split(data_cfg: config.DataConfig, train: bool, device: torch.device | str = "cpu") -> Split:
    """Load a whole split of `data_cfg` as tensors on `device`. Bad roots raise BadInput."""
    dataset = _dataset(data_cfg.name)
    cache = cache_dir()  # created and checked once
    # Several ranks on one node must not download or extract the same files at once.
    with FileLock(os.path.join(cache, "dataset.lock")):
        if storage.is_remote(data_cfg.root):
            root = fetch(data_cfg.root, dataset.name)
        else:  # the dataset's own folder, or its sub-folder when data.root holds several datasets
            root = datasets.dataset_folder(data_cfg.root, dataset)
        if dataset.name == "imagefolder":
            return _load_image_folder(root, data_cfg, train, device)
        tv_root = datasets.torchvision_root(root, dataset, cache)
        try:
            images, labels = datasets.read_torchvision(dataset, tv_root, train)
        except Exception as e:  # offline download failure, corrupt archive, missing scipy, ...
            first = str(e).splitlines()[0] if str(e) else ""
            raise BadInput(
                f"{data_cfg.name} could not be loaded from data.root={data_cfg.root!r} ({type(e).__name__}: {first}); "
                "point data.root or DIGITS_DATA_DIR at a folder with its files"
            ) from None
    return Split(images.to(device), labels.to(device), datasets.NUM_CLASSES)


def _load_image_folder(root: str, data_cfg: config.DataConfig, train: bool, device) -> Split:
    train_root, test_root, separate = datasets.image_folder_roots(root)
    channels = data_cfg.channels or datasets.image_folder_channels([train_root, test_root] if separate else [root])
    size = data_cfg.image_size or datasets.IMAGEFOLDER_DEFAULT_SIZE
    images, labels, classes = datasets.read_image_folder(train_root if train else test_root, size, channels)
    if separate:  # labels are folder positions: both splits must name the same classes
        other = datasets.image_folder_classes(test_root if train else train_root)
        if other != classes:
            raise BadInput(f"{train_root} and {test_root} must hold the same class folders ({classes} vs {other})")
    return Split(images.to(device), labels.to(device), len(classes))


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Model output in [-1, 1] -> uint8 grey levels (the inverse of to_model_input)."""
    return images.float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


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
