"""Datasets as one uint8 tensor on the training device, and per-rank batch indices.

torchvision reads the dataset files once; after that the whole split lives on the device
(47 MB for MNIST) and a batch is one index_select. No DataLoader, no per-sample PIL
transforms in the hot loop. Batches come from a per-epoch permutation that depends only on
(seed, epoch), sliced by rank, so resuming at step k needs no sampler state.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from filelock import FileLock

from job import storage
from job.core import config
from job.core.cache import cache_dir
from job.core.errors import BadInput
from job.data import datasets, profiles
from job.data.staging import fetch

# ----------------------------------------------------------------------------- loading


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]: native size, or data.image_size for an image folder
    labels: torch.Tensor  # int64 [N]
    num_classes: int


@contextmanager
def staged(dataset: datasets.Dataset, root: str) -> Iterator[str]:
    """The local folder `dataset` is read from, with the node's dataset lock held: several
    ranks (or a user's DataLoader processes) on one node must not download, fetch or unpack
    the same files at once. `root`: data.root, a local folder or a pushed s3:// prefix."""
    with FileLock(os.path.join(cache_dir(), "dataset.lock")):
        if storage.is_remote(root):
            yield fetch(root, dataset.name)
        else:  # the dataset's own folder, or its sub-folder when data.root holds several datasets
            yield datasets.dataset_folder(root, dataset)


def load_split(data_cfg: config.DataConfig, train: bool, device: torch.device | str = "cpu") -> Split:
    """Load a whole split of `data_cfg` as tensors on `device`, the training split cut to
    data.profile when one is set. Bad roots raise BadInput."""
    split = _load_whole_split(data_cfg, train, device)
    profile = profiles.parse(data_cfg.profile)
    if profile is None or not train:
        return split
    kept = profile.select(split.labels, split.num_classes, data_cfg.profile_seed).to(split.images.device)
    return Split(split.images[kept], split.labels[kept], split.num_classes)


def _load_whole_split(data_cfg: config.DataConfig, train: bool, device: torch.device | str) -> Split:
    dataset = datasets.named(data_cfg.name)
    with staged(dataset, data_cfg.root) as root:
        if dataset.image_folder:
            return _load_image_folder(root, data_cfg, train, device)
        tv_root = datasets.torchvision_root(root, dataset, cache_dir())
        # torchvision makes <root>/<Class>/raw before it downloads; a failed download must
        # leave nothing behind (bad input writes nothing), so note what did not exist yet.
        made = None  # the topmost folder of <root>/<Class> that is not there yet
        path = os.path.abspath(os.path.join(tv_root, dataset.torchvision_class))
        while not os.path.exists(path):
            made, path = path, os.path.dirname(path)
        try:
            images, labels = datasets.read_torchvision(dataset, tv_root, train)
        except Exception as e:  # offline download failure, corrupt archive, missing scipy, ...
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            first = str(e).splitlines()[0] if str(e) else ""
            raise BadInput(
                f"{data_cfg.name} could not be loaded from data.root={data_cfg.root!r} ({type(e).__name__}: {first}); "
                "point data.root or DIGITS_DATA_DIR at a folder with its files"
            ) from None
    return Split(images.to(device), labels.to(device), datasets.NUM_CLASSES)


def mnist(train: bool = True, transform: Callable | None = None, target_transform: Callable | None = None,
          root: str | None = None, download: bool = True):
    """torchvision's MNIST dataset (public as job.readers.mnist), read from $DIGITS_DATA_DIR
    (or `root`, a folder or a pushed s3:// prefix) when it holds the four MNIST files (gzip or
    not, flat, in mnist/, or in torchvision's MNIST/raw layout; flat files are unpacked once
    into the cache), else downloaded into `root` (default ./data) as torchvision does. Items
    are (PIL image, int) like any torchvision dataset: pass transforms.v2 to match
    ShardDataset's tensors."""
    from torchvision.datasets import MNIST

    dataset = datasets.named("mnist")
    with staged(dataset, root or os.environ.get("DIGITS_DATA_DIR") or "data") as folder:
        local = datasets.torchvision_root(folder, dataset, cache_dir())
        return MNIST(local, train=train, transform=transform, target_transform=target_transform, download=download)


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
