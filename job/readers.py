"""Read a sample set (`job sample`'s output) in your own training code: two PyTorch datasets.

    from job.readers import ShardDataset, ShardStream

    digits = ShardDataset("runs/quickstart/digits")        # map-style: len(digits), digits[i] -> (image, label)
    stream = ShardStream("s3://bucket/synthetic/run1", shuffle_buffer=10_000, seed=0)  # streamed, no local copy

Both take a local folder or an s3:// prefix holding manifest.json, any registered shard
format (safetensors, webdataset, idx) and both layouts. An item is (image, label) for
single digits, or (image, text, boxes) for `layout=strings`; image is uint8 [C, H, W] (a
string at its own width), label an int (-1 for an unlabeled set), boxes [[x0, y0, x1, y1]]
per digit. `transform` is applied to the image, as torchvision datasets do.

- ShardDataset reads safetensors shards memory-mapped (safetensors' safe_open: an item
  reads only its own bytes, so a million digits cost no memory up front); other formats are
  decoded into memory shard by shard on first use. An s3:// set is downloaded once into the
  cache ($DIGITS_CACHE_DIR/samples/), every file checked against the manifest's sha256;
  `verify=True` also checks a local set's files (reads them once).
- ShardStream reads whole shards (local or S3, straight into memory), checked against the
  manifest unless `verify=False`. Shards are split by rank (torch.distributed, else the
  RANK/WORLD_SIZE that `accelerate launch` sets) and then by DataLoader worker, so no shard is
  read twice and one epoch over all ranks and workers yields every digit exactly once. The
  shard order is shuffled per epoch (`set_epoch`, like DistributedSampler) and items pass a
  seeded shuffle buffer: the same seed and epoch give the same order.
"""

from __future__ import annotations

import bisect
import os
import random
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from job import checkpoint, shards, storage
from job.errors import BadInput
from job.shard_sets import read_manifest, verified_shard_files

MANIFEST = "manifest.json"


def _manifest_uri(uri: str) -> str:
    return storage.join(uri, MANIFEST)


def _is_strings(manifest: dict) -> bool:
    return manifest.get("layout") == "strings"


def _items_of(fmt: str, strings: bool, files: dict[str, bytes]) -> list[tuple]:
    """Every item of one decoded shard: (image, label) or (image, text, boxes)."""
    if strings:
        return shards.decode_strings(fmt, files)
    images, labels = shards.decode(fmt, files)
    return [(images[i], int(labels[i])) for i in range(len(labels))]


def _apply(transform: Callable | None, item: tuple) -> tuple:
    return item if transform is None else (transform(item[0]), *item[1:])


class _DecodedShard:
    """One shard of a format without random access, decoded into memory."""

    def __init__(self, items: list[tuple], strings: bool):
        self.items = items
        if not strings:
            self.labels = torch.tensor([item[1] for item in items], dtype=torch.int64)

    def item(self, j: int) -> tuple:
        return self.items[j]


class ShardDataset(Dataset):
    """Map-style dataset over a complete sample set: `len()` digits (or strings), item i in
    shard order. Safe to hand to DataLoader workers (each opens its own file handles)."""

    def __init__(self, uri: str, verify: bool = False, transform: Callable | None = None,
                 cache_dir: str | None = None):
        self.uri, self.transform = uri, transform
        self.manifest = read_manifest(uri)
        self.format = self.manifest["shard_format"]
        self.strings = _is_strings(self.manifest)
        self.opener = shards.format_named(self.format).open_file  # random access, when the format has it
        records = self.manifest["shards"]
        self.folder = self._local_copy(uri, records, cache_dir) if storage.is_remote(uri) else uri
        if verify and not storage.is_remote(uri):
            for record in records:
                verified_shard_files(uri, record, _manifest_uri(uri))
        self.records = records
        self.offsets = [0]  # offsets[s] = index of shard s's first item
        for record in records:
            self.offsets.append(self.offsets[-1] + int(record["count"]))
        self._open: dict[int, shards.ShardItems | _DecodedShard] = {}

    @staticmethod
    def _local_copy(uri: str, records: list[dict], cache_dir: str | None) -> str:
        """Download the set's files into the cache once (each checked against its sha256)."""
        from job import data

        manifest_sha = checkpoint.sha256(storage.read_bytes(_manifest_uri(uri)))
        folder = os.path.join(cache_dir or os.path.join(data.cache_dir(), "samples"), manifest_sha[:16])
        for record in records:
            for name, entry in record["files"].items():
                if not storage.stays_inside(name):
                    raise BadInput(f"{_manifest_uri(uri)} names a file outside its folder: {name!r}")
                path = os.path.join(folder, name)
                if os.path.isfile(path) and os.path.getsize(path) == entry["bytes"]:
                    continue  # downloaded (and checked) by an earlier run
                storage.download_file(storage.join(uri, name), path, sha256=entry["sha256"])
        return folder

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self) -> dict:
        # File handles stay behind: a DataLoader worker opens its own on first use.
        return {**self.__dict__, "_open": {}}

    def _shard(self, s: int):
        if s not in self._open:
            names = list(self.records[s]["files"])
            if self.opener is not None:
                self._open[s] = self.opener(os.path.join(self.folder, names[0]), self.strings)
            else:
                files = {}
                for name in names:
                    with open(os.path.join(self.folder, name), "rb") as f:
                        files[name] = f.read()
                self._open[s] = _DecodedShard(_items_of(self.format, self.strings, files), self.strings)
        return self._open[s]

    def __getitem__(self, i: int) -> tuple:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is outside this set of {len(self)}")
        i %= len(self)
        s = bisect.bisect_right(self.offsets, i) - 1
        return _apply(self.transform, self._shard(s).item(i - self.offsets[s]))

    @property
    def labels(self) -> torch.Tensor:
        """Every item's label (int64 [len]; -1 unlabeled); a memory-mapped shard reads no
        image for it. Strings have none."""
        if self.strings:
            raise TypeError("a set of strings has texts, not one label per item")
        return torch.cat([self._shard(s).labels for s in range(len(self.records))])


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's place: as given, else torch.distributed's, else accelerate launch's
    RANK/WORLD_SIZE environment, else a single process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ShardStream(IterableDataset):
    """Iterable dataset that streams a sample set's shards (local or s3://) without a local
    copy. One epoch over every rank and DataLoader worker yields each item exactly once."""

    def __init__(self, uri: str, shuffle_buffer: int = 0, seed: int = 0, shuffle_shards: bool = True,
                 verify: bool = True, transform: Callable | None = None, rank: int | None = None,
                 world_size: int | None = None):
        if shuffle_buffer < 0:
            raise ValueError("shuffle_buffer must be >= 0 (0: shard order, no buffer)")
        self.uri, self.shuffle_buffer, self.seed = uri, shuffle_buffer, seed
        self.shuffle_shards, self.verify, self.transform = shuffle_shards, verify, transform
        self.manifest = read_manifest(uri)
        self.format = self.manifest["shard_format"]
        self.strings = _is_strings(self.manifest)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (on every rank) for a new shard order and buffer shuffle."""
        self.epoch = epoch

    @property
    def count(self) -> int:
        """Items in the whole set (all ranks together)."""
        return sum(int(r["count"]) for r in self.manifest["shards"])

    def shard_order(self) -> list[int]:
        """Every shard index, in this epoch's order: the same on every rank and worker."""
        n = len(self.manifest["shards"])
        if not self.shuffle_shards:
            return list(range(n))
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)).tolist()

    def my_shards(self) -> list[int]:
        """The shards this rank's this DataLoader worker reads: every (ranks x workers)-th."""
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        reader, readers = self.rank * workers + worker_id, self.world_size * workers
        return self.shard_order()[reader::readers]

    def _items(self, shard_indices: list[int]) -> Iterator[tuple]:
        records, manifest_uri = self.manifest["shards"], _manifest_uri(self.uri)
        for s in shard_indices:
            record = records[s]
            if self.verify:
                files = verified_shard_files(self.uri, record, manifest_uri)
            else:
                files = {name: storage.read_bytes(storage.join(self.uri, name)) for name in record["files"]}
            yield from _items_of(self.format, self.strings, files)

    def __iter__(self) -> Iterator[tuple]:
        mine = self.my_shards()
        items = self._items(mine)
        if self.shuffle_buffer:
            # One stream per (seed, epoch, reader): string seeds hash the same in every run.
            worker = get_worker_info()
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker.id if worker else 0}")
            items = _shuffled(items, self.shuffle_buffer, rng)
        for item in items:
            yield _apply(self.transform, item)


def _shuffled(items: Iterator[tuple], size: int, rng: random.Random) -> Iterator[tuple]:
    """A shuffle buffer: hold `size` items, yield a random one as each new one arrives."""
    buffer: list[tuple] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer
