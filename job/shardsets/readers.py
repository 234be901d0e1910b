"""Read a sample set (`job sample`'s output) in your own training code: two PyTorch datasets.

    from job.shardsets.readers import ShardDataset, ShardStream

    digits = ShardDataset("runs/quickstart/digits")   # map-style: len(digits), digits[i] -> (image, label)
    stream = ShardStream("s3://bucket/synthetic/v1", shuffle_window=10_000, seed=0)  # streamed, no local copy

Both take a local folder or an s3:// prefix holding manifest.json, any registered shard
format (safetensors, webdataset, idx) and both layouts. An item is (image, label) for
single digits, or (image, text, boxes) for `layout=strings`. The image is uint8 [C, H, W]
(a string at its own width), or float in [0, 1] with dtype=torch.float32; the label an int
(-1 for an unlabeled set); boxes [[x0, y0, x1, y1]] per digit. `transform` is applied to
the image and `target_transform` to the label (or text), as torchvision datasets do;
`classes` and `targets` are there too.

- ShardDataset reads safetensors shards memory-mapped (an item reads only its own bytes);
  other formats are held in memory shard by shard, a tar's PNGs decoded one by one. An
  s3:// set is downloaded once into $DIGITS_CACHE_DIR/samples/, every file checked against
  the manifest's sha256; `verify=True` also checks a local set's files. Several processes:
  any sampler (DistributedSampler) or accelerate's `prepare`, as with any dataset.
- ShardStream reads shards as it goes (local or S3, straight into memory), each checked
  against the manifest unless verify=False. Its order is a function of (seed, epoch) only:
  shards in a seeded order, items shuffled within windows of `shuffle_window` positions.
  Several processes, two ways, never both:
    * `accelerator.prepare(DataLoader(stream, ...))`: accelerate splits the batches between
      processes (by default process 0 reads and dispatches them). Accelerate's loader calls
      `set_epoch` on the stream before each epoch, which tells the stream to yield the whole
      set and leave the split to accelerate; its even_batches pads the last batch from the
      first ones, so a few digits come twice at the end of an epoch.
    * no prepare (torchrun + DDP, or a loop of your own): the stream splits itself by rank
      (torch.distributed, else RANK/WORLD_SIZE). Every rank gets the same number of items,
      so every rank takes the same number of steps: ceil(N / ranks) with the first items
      of the epoch repeated to fill the last rank (drop_last=False, as DistributedSampler
      does), or N // ranks with the rest left out (drop_last=True).
  Within a rank the items are split between DataLoader workers: in whole batches taken in
  turn when `batch_size` is given (the loader's order is then the rank's order, for any
  number of workers, and len(loader) is exact), else in one contiguous part per worker
  (each worker reads the fewest shards). `len(stream)` is this rank's count per epoch.
  `set_epoch` reaches persistent workers (the epoch lives in shared memory).
  `state_dict()` / `load_state_dict()` give mid-epoch resumption: plain ints (JSON), kept
  per DataLoader worker by torchdata's StatefulDataLoader, or for the stream itself with
  num_workers=0. A resumed epoch yields exactly the items the interrupted one had not.

Importing this module loads torch, safetensors, numpy and Pillow, and boto3 only when an
s3:// set is read: not accelerate, the models or any command.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from job import storage
from job.core import seeds
from job.shardsets import formats, layouts
from job.shardsets.sets import (
    manifest_uri,
    read_manifest,
    safe_name,
    verified_shard_files,
)

CLASSES = [str(digit) for digit in range(10)]  # label k is the digit k


def _open_shard(folder: str, record: dict, fmt: str, strings: bool, where: str, verify: bool) -> formats.ShardItems:
    """Random access to one shard: memory-mapped when it is a local file the format can map
    and needs no check, else its files' bytes (checked against the manifest when `verify`)."""
    opener = formats.format_named(fmt).open_file
    if opener is not None and not verify and not storage.is_remote(folder):
        return opener(os.path.join(folder, safe_name(next(iter(record["files"])), where)), strings)
    return formats.read_items(fmt, verified_shard_files(folder, record, where, verify=verify), strings)


class _SetReader:
    """What both readers share: the set's manifest, and how an item leaves the reader
    (dtype, transform, target_transform)."""

    def _read_set(self, uri: str, dtype: torch.dtype, transform: Callable | None,
                  target_transform: Callable | None) -> None:
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not allowed: torch.uint8 (as stored) or a float dtype (in [0, 1])")
        self.uri, self.dtype, self.transform, self.target_transform = uri, dtype, transform, target_transform
        self.manifest = read_manifest(uri)
        self.format = self.manifest["shard_format"]
        self.layout = layouts.named(self.manifest.get("layout"))
        self.strings = self.layout.items_are_strings
        self.records = self.manifest["shards"]
        self.counts = [int(record["count"]) for record in self.records]
        self.where = manifest_uri(uri)
        self.classes = CLASSES

    @property
    def count(self) -> int:
        """Items in the whole set."""
        return sum(self.counts)

    def _finish(self, item: tuple) -> tuple:
        image = item[0]
        if self.dtype != torch.uint8:
            image = image.to(self.dtype) / 255
        if self.transform is not None:
            image = self.transform(image)
        target = item[1] if self.target_transform is None else self.target_transform(item[1])
        return (image, target, *item[2:])

    def _describe(self, lines: list[str]) -> str:
        body = [f"Number of datapoints: {self.count}", f"Location: {self.uri}",
                f"Format: {self.format}, {len(self.records)} shards of {self.layout.unit}s", *lines]
        if self.dtype != torch.uint8:
            body.append(f"Images: {self.dtype} in [0, 1]")
        if self.transform is not None:
            body.append(f"Transform: {self.transform!r}")
        if self.target_transform is not None:
            body.append(f"Target transform: {self.target_transform!r}")
        return "\n".join([type(self).__name__, *("    " + line for line in body)])


class ShardDataset(_SetReader, Dataset):
    """Map-style dataset over a complete sample set: `len()` digits (or strings), item i in
    shard order. Safe to hand to DataLoader workers (each opens its own file handles)."""

    def __init__(self, uri: str, verify: bool = False, transform: Callable | None = None,
                 target_transform: Callable | None = None, dtype: torch.dtype = torch.uint8,
                 cache_dir: str | None = None):
        self._read_set(uri, dtype, transform, target_transform)
        self.folder = self._local_copy(cache_dir) if storage.is_remote(uri) else uri
        if verify and not storage.is_remote(uri):  # a remote set was checked as it was copied
            for record in self.records:
                verified_shard_files(uri, record, self.where)
        self.offsets = [0, *itertools.accumulate(self.counts)]  # offsets[s]: index of shard s's first item
        self._open: dict[int, formats.ShardItems] = {}
        self._targets: torch.Tensor | None = None

    def _local_copy(self, cache_dir: str | None) -> str:
        """Download the set's files into the cache once (each checked against its sha256)."""
        from job.core.cache import cache_dir as default_cache  # the job's cache folder, created on first use

        # One folder per set's content: a set rewritten under the same URI gets its own.
        records_sha = storage.sha256(json.dumps(self.records, sort_keys=True).encode())
        folder = os.path.join(cache_dir or os.path.join(default_cache(), "samples"), records_sha[:16])
        for record in self.records:
            for name, entry in record["files"].items():
                path = os.path.join(folder, safe_name(name, self.where))
                if os.path.isfile(path) and os.path.getsize(path) == entry["bytes"]:
                    continue  # downloaded (and checked) by an earlier run
                storage.download_file(storage.join(self.uri, name), path, sha256=entry["sha256"])
        return folder

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self) -> dict:
        # File handles stay behind: a DataLoader worker opens its own on first use.
        return {**self.__dict__, "_open": {}}

    def _shard(self, s: int) -> formats.ShardItems:
        if s not in self._open:  # checked at construction (or as it was copied): read as it is
            self._open[s] = _open_shard(self.folder, self.records[s], self.format, self.strings, self.where,
                                        verify=False)
        return self._open[s]

    def __getitem__(self, i: int) -> tuple:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is outside {self.uri} ({len(self)} items)")
        i %= len(self)
        s = bisect.bisect_right(self.offsets, i) - 1
        return self._finish(self._shard(s).item(i - self.offsets[s]))

    @property
    def labels(self) -> torch.Tensor:
        """Every item's label (int64 [len]; -1 unlabeled); a memory-mapped shard reads no
        image for it. Strings have texts instead."""
        if self.strings:
            raise TypeError(f"{self.uri} holds strings: each item has a text, not one label")
        if self._targets is None:
            self._targets = torch.cat([self._shard(s).labels for s in range(len(self.records))]) if self.records \
                else torch.zeros(0, dtype=torch.int64)
        return self._targets

    targets = labels  # torchvision's name

    def __repr__(self) -> str:
        return self._describe([])


# ----------------------------------------------------------------------------- the stream


def _accelerate_loader(frame, depth: int):
    """The accelerate loader (DataLoaderDispatcher or IterableDatasetShard) among the
    `depth` callers from `frame` up, or None. Accelerate calls set_epoch and len() on the
    dataset it wraps; this is how the stream knows that accelerate splits the data."""
    if "accelerate.data_loader" not in sys.modules:  # never imports accelerate itself
        return None
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        # type(), not isinstance: accelerate's loaders pose as DataLoader through __class__.
        if owner is not None and type(owner).__module__ == "accelerate.data_loader" and \
                type(owner).__name__ in ("DataLoaderDispatcher", "IterableDatasetShard"):
            return owner
        frame = frame.f_back
    return None


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's place: as given, else torch.distributed's, else the RANK/WORLD_SIZE
    that torchrun and accelerate launch set, else a single process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _EpochOrder:
    """Which item stands at each position 0..N-1 of an epoch: the shards in a seeded order
    (or as listed), then the items shuffled within windows of `window` positions. Depends
    on (seed, epoch) and the set alone, never on ranks or workers."""

    def __init__(self, counts: list[int], seed: int, epoch: int, shuffle_shards: bool, window: int):
        n = len(counts)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seeds.stream_seed(seed, epoch))).tolist() \
            if shuffle_shards and n > 1 else list(range(n))
        self.shards = order
        self.starts = [0, *itertools.accumulate(counts[s] for s in order)]
        self.seed, self.epoch, self.window = seed, epoch, window
        self._window_index, self._window_perm = -1, []

    def item_at(self, p: int) -> tuple[int, int]:
        """(shard, item within it) at position p."""
        if self.window > 1:
            w, base = p // self.window, p - p % self.window
            if w != self._window_index:
                size = min(self.window, self.starts[-1] - base)
                g = torch.Generator().manual_seed(seeds.stream_seed(self.seed, self.epoch, w))
                self._window_index, self._window_perm = w, torch.randperm(size, generator=g).tolist()
            p = base + self._window_perm[p - base]
        k = bisect.bisect_right(self.starts, p) - 1
        return self.shards[k], p - self.starts[k]


class _OpenShards:
    """The shards one reader holds, the least recently used let go past `capacity`."""

    def __init__(self, opener: Callable[[int], formats.ShardItems], capacity: int):
        self.opener, self.capacity = opener, capacity
        self.held: OrderedDict[int, formats.ShardItems] = OrderedDict()

    def get(self, s: int) -> formats.ShardItems:
        if s in self.held:
            self.held.move_to_end(s)
        else:
            self.held[s] = self.opener(s)
            if len(self.held) > self.capacity:
                self.held.popitem(last=False)
        return self.held[s]


class ShardStream(_SetReader, IterableDataset):
    """Iterable dataset over a sample set (local or s3://), read as it goes. Every rank
    yields the same number of items per epoch; see the module docstring for how ranks,
    workers and accelerate share the set."""

    def __init__(self, uri: str, shuffle_window: int = 0, seed: int = 0, shuffle_shards: bool = True,
                 verify: bool = True, transform: Callable | None = None, target_transform: Callable | None = None,
                 dtype: torch.dtype = torch.uint8, drop_last: bool = False, batch_size: int | None = None,
                 rank: int | None = None, world_size: int | None = None):
        if shuffle_window < 0:
            raise ValueError(f"shuffle_window={shuffle_window} must be >= 0 (0: no shuffle within shards)")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1 (or None)")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed's are used)")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self._read_set(uri, dtype, transform, target_transform)
        self.shuffle_window, self.seed, self.shuffle_shards = shuffle_window, seed, shuffle_shards
        self.verify, self.drop_last, self.batch_size = verify, drop_last, batch_size
        self._rank, self._world_size = rank, world_size
        # The epoch in shared memory: persistent DataLoader workers see set_epoch too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._accelerate: str | None = None  # "dispatch-main", "dispatch-other" or "shard", once accelerate tells
        self._resume: dict | None = None  # a loaded state, for this process's next epoch of the same number
        self._progress = {"epoch": 0, "position": 0, "layout": None}  # of this process's live iterator

    # -- who splits, and how much each rank reads

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch on every rank (accelerate's loader does it for you): a new
        shard order and shuffle, in this process and its DataLoader workers."""
        owner = _accelerate_loader(sys._getframe(1), depth=1)
        if owner is not None:
            if type(owner).__name__ == "IterableDatasetShard":
                self._accelerate = "shard"  # every process reads the whole set and keeps its slices
            else:  # process 0 reads for everyone; the others' loaders are created but never read
                self._accelerate = "dispatch-main" if owner.state.process_index == 0 else "dispatch-other"
        self._epoch.fill_(epoch)

    def _accelerate_splits(self, frame) -> bool:
        return self._accelerate is not None or _accelerate_loader(frame, depth=4) is not None

    @property
    def rank(self) -> int:
        return _rank_and_world(self._rank, self._world_size)[0]

    @property
    def world_size(self) -> int:
        return _rank_and_world(self._rank, self._world_size)[1]

    def _rank_length(self, ranks: int) -> int:
        return self.count // ranks if self.drop_last else -(-self.count // ranks)

    def __len__(self) -> int:
        """Items per epoch on this rank; the whole set where accelerate splits it."""
        if self._accelerate_splits(sys._getframe(1)):
            return self.count
        return self._rank_length(self.world_size)

    # -- resumption

    def state_dict(self) -> dict:
        """Where this process's reading stands (plain ints: json.dumps works). In a
        DataLoader worker it is that worker's; torchdata's StatefulDataLoader keeps one per worker."""
        return {**self._progress, "items": self.count, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next epoch numbered state['epoch'] in this process starts where the
        saved one stopped. The set, seed and layout (ranks, workers) must be the same."""
        try:
            epoch, position, items, seed = (int(state[k]) for k in ("epoch", "position", "items", "seed"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a ShardStream state ({type(e).__name__}: {e})") from None
        if (items, seed) != (self.count, self.seed):
            raise ValueError(f"the state was saved for {items} items with seed {seed}, but {self.uri} holds "
                             f"{self.count} and this stream's seed is {self.seed}")
        self._resume = {**state, "epoch": epoch, "position": position}
        self._epoch.fill_(epoch)

    # -- reading

    def __iter__(self) -> Iterator[tuple]:
        epoch = int(self._epoch)
        if self._accelerate == "dispatch-other":
            return iter(())  # accelerate reads on process 0 and broadcasts: nothing to read here
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        rank, ranks = (0, 1) if self._accelerate_splits(sys._getframe(1)) else (self.rank, self.world_size)
        layout = [rank, ranks, worker_id, workers]
        start, resume, self._resume = 0, self._resume, None
        if resume is not None and resume["epoch"] == epoch:
            if resume.get("layout") not in (None, layout):
                raise ValueError(f"the state was saved by reader {resume['layout']} ([rank, ranks, worker, workers]) "
                                 f"but this one is {layout}: resume with the same ranks and num_workers")
            start = resume["position"]
        self._progress = {"epoch": epoch, "position": start, "layout": layout}
        return self._read(_EpochOrder(self.counts, self.seed, epoch, self.shuffle_shards, self.shuffle_window),
                          self._positions(rank, ranks, worker_id, workers), start)

    def _positions(self, rank: int, ranks: int, worker: int, workers: int) -> Iterator[int]:
        """The epoch positions one reader yields, in order: its rank's equal part of the
        epoch (wrapping round to the first positions to fill it), then its worker's blocks."""
        length, n = self._rank_length(ranks), self.count
        first = rank * length
        block = self.batch_size or max(1, -(-length // workers))
        for b in range(worker, -(-length // block), workers):
            for q in range(b * block, min((b + 1) * block, length)):
                yield (first + q) % n

    def _read(self, order: _EpochOrder, positions: Iterator[int], start: int) -> Iterator[tuple]:
        smallest = min((c for c in self.counts if c > 0), default=1)
        capacity = max(self.shuffle_window, 1) // smallest + 2  # every shard a window touches, and the next
        held = _OpenShards(lambda s: _open_shard(self.uri, self.records[s], self.format, self.strings, self.where,
                                                 self.verify), capacity)
        for p in itertools.islice(positions, start, None):
            s, j = order.item_at(p)
            item = held.get(s).item(j)
            self._progress["position"] += 1  # counted before the yield: a snapshot taken now includes it
            yield self._finish(item)

    def __repr__(self) -> str:
        split = "accelerate" if self._accelerate else f"rank {self.rank} of {self.world_size}"
        return self._describe([f"Per epoch: {len(self)} items ({split}, drop_last={self.drop_last})",
                               f"Order: seed {self.seed}, shuffle_window {self.shuffle_window}, "
                               f"shuffle_shards {self.shuffle_shards}"])
