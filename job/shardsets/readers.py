"""Read a sample set (`job sample`'s output) in your own training code: two PyTorch datasets.

    from job.shardsets.readers import ShardDataset, ShardStream

    digits = ShardDataset("runs/quickstart/digits")   # map-style: len(digits), digits[i] -> (image, label)
    stream = ShardStream("s3://bucket/synthetic/v1", split="none", batch_size=128)  # streamed, no local copy

Both take a local folder or an s3:// prefix holding manifest.json, any registered shard
format (safetensors, webdataset, idx) and both layouts. An item is (image, label) for
single digits, or (image, text, boxes) for `layout=strings`. The image is uint8 [C, H, W]
(a string at its own width), float in [0, 1] with dtype=torch.float32, or a PIL image with
images="pil" (what torchvision's MNIST hands its transforms, so ToTensor()/Normalize work
unchanged); the label an int (-1 for an unlabeled set); boxes [[x0, y0, x1, y1]] per digit.
`transform` is applied to the image and `target_transform` to the label (or text), as
torchvision datasets do; `classes` and `targets` are there too.

Both check every shard file against the manifest's sha256 when they are made (verify=True,
the default of both), in every process, so a damaged or altered set stops every rank with the
same message before the first batch; verify=False trusts the files. Errors are standard
exceptions naming the path: FileNotFoundError (no complete set there), PermissionError
(storage refused access), ValueError (a bad manifest, a file that does not match its sha256,
arguments that cannot work together).

- ShardDataset reads safetensors shards memory-mapped (an item reads only its own bytes);
  other formats are held in memory shard by shard, a tar's PNGs decoded one by one. An
  s3:// set is downloaded once into $DIGITS_CACHE_DIR/samples/. Several processes: any
  sampler (DistributedSampler) or accelerate's `prepare`, as with any dataset.
- ShardStream reads shards as it goes (local or S3, straight into memory). Its order is a
  function of (seed, epoch) only: shards in a seeded order, items shuffled within windows of
  `shuffle_window` positions. With several processes, `split=` says who splits the set
  (required then; with one process there is nothing to split):
    * split="none" when the DataLoader goes to `accelerator.prepare`: every process that
      reads yields the whole set and accelerate splits it (by default process 0 reads and
      dispatches batches; with dispatch_batches=False every process reads and keeps its own).
      The DataLoader's drop_last decides what happens to the last short batch.
    * split="rank" when it does not (torchrun + DDP, or a loop of your own): this rank's
      equal part, ceil(N / ranks) with the first items of the epoch repeated to fill the last
      rank (drop_last=False, as DistributedSampler does) or N // ranks (drop_last=True).
  With num_workers > 1, `batch_size=` must be the DataLoader's: the workers then take whole
  batches in turn (a wrapper that groups by process, like accelerate's IterableDatasetShard,
  whole batches of batch_size x processes), so only the epoch's last batch can be short:
  no digit is lost, `len(loader)` is the number of batches each rank yields, and the
  loader's order is the same for any number of workers. `len(stream)` is the items this
  process yields per epoch. `set_epoch` reaches persistent workers (the epoch lives in
  shared memory). `state_dict()` / `load_state_dict()` give mid-epoch resumption: plain ints
  (JSON), kept per DataLoader worker by torchdata's StatefulDataLoader, or for the stream
  itself with num_workers=0. A resumed epoch yields exactly the items the interrupted one had
  not; a state from another number of processes or workers is refused when it is loaded.

Importing this module loads torch, safetensors, numpy and Pillow, and boto3 only when an
s3:// set is read: not accelerate, the models or any command.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
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


IMAGE_TYPES = ("tensor", "pil")


def _to_pil(image: torch.Tensor):
    """uint8 [C, H, W] -> a PIL image ("L" for one channel, "RGB" for three), as torchvision's
    datasets hand their transforms."""
    from PIL import Image

    pixels = image.numpy()
    return Image.fromarray(pixels[0], mode="L") if pixels.shape[0] == 1 else \
        Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")


class _SetReader:
    """What both readers share: the set's manifest, its check, and how an item leaves the
    reader (image type, dtype, transform, target_transform)."""

    def _read_set(self, uri: str, dtype: torch.dtype, transform: Callable | None,
                  target_transform: Callable | None, images: str) -> None:
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not allowed: torch.uint8 (as stored) or a float dtype (in [0, 1])")
        if images not in IMAGE_TYPES:
            raise ValueError(f"images={images!r} is not one of {', '.join(map(repr, IMAGE_TYPES))}")
        if images == "pil" and dtype != torch.uint8:
            raise ValueError("dtype= applies to tensor images: with images='pil' the transform converts "
                             "(ToTensor() gives float in [0, 1])")
        self.uri, self.dtype, self.transform, self.target_transform = uri, dtype, transform, target_transform
        self.images = images
        self.manifest = read_manifest(uri)
        self.format = self.manifest["shard_format"]
        self.layout = layouts.named(self.manifest.get("layout"))
        self.strings = self.layout.items_are_strings
        self.records = self.manifest["shards"]
        self.counts = [int(record["count"]) for record in self.records]
        self.where = manifest_uri(uri)
        self.classes = CLASSES

    def _verify_every_shard(self, folder: str) -> None:
        """Every shard file of the set checked against the manifest's sha256 (ValueError naming
        the file), in this process, before any item is read."""
        for record in self.records:
            verified_shard_files(folder, record, self.where)

    @property
    def count(self) -> int:
        """Items in the whole set."""
        return sum(self.counts)

    def _finish(self, item: tuple) -> tuple:
        image = item[0]
        if self.images == "pil":
            image = _to_pil(image)
        elif self.dtype != torch.uint8:
            image = image.to(self.dtype) / 255
        if self.transform is not None:
            image = self.transform(image)
        target = item[1] if self.target_transform is None else self.target_transform(item[1])
        return (image, target, *item[2:])

    def _describe(self, lines: list[str]) -> str:
        body = [f"Number of datapoints: {self.count}", f"Location: {self.uri}",
                f"Format: {self.format}, {len(self.records)} shards of {self.layout.unit}s", *lines]
        if self.images == "pil":
            body.append("Images: PIL")
        elif self.dtype != torch.uint8:
            body.append(f"Images: {self.dtype} in [0, 1]")
        if self.transform is not None:
            body.append(f"Transform: {self.transform!r}")
        if self.target_transform is not None:
            body.append(f"Target transform: {self.target_transform!r}")
        return "\n".join([type(self).__name__, *("    " + line for line in body)])


class ShardDataset(_SetReader, Dataset):
    """Map-style dataset over a complete sample set: `len()` digits (or strings), item i in
    shard order. Safe to hand to DataLoader workers (each opens its own file handles)."""

    def __init__(self, uri: str, verify: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, dtype: torch.dtype = torch.uint8,
                 cache_dir: str | None = None, images: str = "tensor"):
        self._read_set(uri, dtype, transform, target_transform, images)
        self.folder = self._local_copy(cache_dir) if storage.is_remote(uri) else uri
        if verify and not storage.is_remote(uri):  # a remote set was checked as it was copied
            self._verify_every_shard(uri)
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


SPLITS = ("rank", "none")


def _split_needed(ranks: int) -> str:
    return (f"ShardStream: {ranks} processes read this set and split= is not given: pass split='none' when the "
            "DataLoader goes to accelerator.prepare (accelerate splits), split='rank' when it does not "
            "(the stream gives each rank its part)")


class ShardStream(_SetReader, IterableDataset):
    """Iterable dataset over a sample set (local or s3://), read as it goes. `split` says who
    splits the set between processes; see the module docstring."""

    def __init__(self, uri: str, shuffle_window: int = 0, seed: int = 0, shuffle_shards: bool = True,
                 verify: bool = True, transform: Callable | None = None, target_transform: Callable | None = None,
                 dtype: torch.dtype = torch.uint8, drop_last: bool = False, batch_size: int | None = None,
                 rank: int | None = None, world_size: int | None = None, split: str | None = None,
                 images: str = "tensor"):
        if shuffle_window < 0:
            raise ValueError(f"shuffle_window={shuffle_window} must be >= 0 (0: no shuffle within shards)")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1 (or None)")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed's are used)")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of 'rank' (the stream splits by rank) or 'none' "
                             "(accelerator.prepare splits)")
        if split == "none" and drop_last:
            raise ValueError("drop_last=True with split='none': accelerate splits the batches, so the DataLoader's "
                             "drop_last decides: pass drop_last=True to the DataLoader instead")
        self.shuffle_window, self.seed, self.shuffle_shards = shuffle_window, seed, shuffle_shards
        self.verify, self.drop_last, self.batch_size, self.split = verify, drop_last, batch_size, split
        self._rank, self._world_size = rank, world_size
        if split is None and self.world_size > 1:
            raise ValueError(_split_needed(self.world_size))
        self._read_set(uri, dtype, transform, target_transform, images)
        if verify:  # every process, before any batch: a bad shard stops every rank with this message
            self._verify_every_shard(uri)
        # The epoch in shared memory: persistent DataLoader workers see set_epoch too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._resume: dict | None = None  # a loaded state, for this process's next epoch of the same number
        self._progress = {"epoch": 0, "position": 0, "layout": None}  # of this process's live iterator

    # -- who splits, and how much each process reads

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch on every rank (accelerate's prepared loader does it for you):
        a new shard order and shuffle, in this process and its DataLoader workers."""
        self._epoch.fill_(epoch)

    @property
    def rank(self) -> int:
        return _rank_and_world(self._rank, self._world_size)[0]

    @property
    def world_size(self) -> int:
        return _rank_and_world(self._rank, self._world_size)[1]

    def _ranks(self) -> tuple[int, int]:
        """(this process's part, parts) the stream splits the epoch into: by rank for
        split='rank', none otherwise (the whole set)."""
        ranks = self.world_size
        if self.split is None and ranks > 1:
            raise ValueError(_split_needed(ranks))
        return (self.rank, ranks) if self.split == "rank" else (0, 1)

    def _rank_length(self, ranks: int) -> int:
        return self.count // ranks if self.drop_last else -(-self.count // ranks)

    def __len__(self) -> int:
        """Items this process yields per epoch: its rank's part (split='rank'), else the whole set."""
        return self._rank_length(self._ranks()[1])

    def _workers(self) -> tuple[int, int, int]:
        """(worker, workers, block): this DataLoader worker, how many there are, and the unit
        they take in turn. Refuses what would leave short batches inside the epoch."""
        info = get_worker_info()
        if info is None or info.num_workers == 1:
            return 0, 1, max(1, self._rank_length(self._ranks()[1]))
        if self.batch_size is None:
            raise ValueError(f"ShardStream: num_workers={info.num_workers} needs batch_size= (the DataLoader's) on the "
                             "stream, so that the workers take whole batches in turn; without it each worker ends "
                             "on a short batch of its own, and digits are lost or len(loader) is wrong")
        block = self.batch_size
        wrapper = info.dataset if info.dataset is not self else None
        sharding = getattr(wrapper, "num_processes", 1) if wrapper is not None else 1
        if sharding > 1:
            # A wrapper that groups whole batches of every process before it splits them
            # (accelerate's IterableDatasetShard): each worker takes whole groups.
            if self.split == "rank":
                raise ValueError("ShardStream(split='rank') is split again by its wrapper (accelerator.prepare with "
                                 "dispatch_batches=False): use split='none' when the DataLoader is prepared")
            block *= sharding
        return info.id, info.num_workers, block

    # -- resumption

    def state_dict(self) -> dict:
        """Where this process's reading stands (plain ints and strings: json.dumps works). In a
        DataLoader worker it is that worker's; torchdata's StatefulDataLoader keeps one per worker."""
        info = get_worker_info()
        return {**self._progress, "items": self.count, "seed": self.seed, "split": self.split,
                "processes": self.world_size, "workers": info.num_workers if info is not None else 1}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next epoch numbered state['epoch'] in this process starts where the
        saved one stopped. The set, seed, split, processes and workers must be the same:
        checked here, before any batch."""
        try:
            epoch, position, items, seed = (int(state[k]) for k in ("epoch", "position", "items", "seed"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a ShardStream state ({type(e).__name__}: {e})") from None
        if (items, seed) != (self.count, self.seed):
            raise ValueError(f"the state was saved for {items} items with seed {seed}, but {self.uri} holds "
                             f"{self.count} and this stream's seed is {self.seed}")
        info = get_worker_info()
        now = {"split": self.split, "processes": self.world_size, "workers": info.num_workers if info else None}
        saved = {k: state.get(k) for k in now}
        differs = [k for k in now if now[k] is not None and saved[k] is not None and saved[k] != now[k]]
        if differs:
            raise ValueError(f"the state was saved by a stream with split={saved['split']!r}, {saved['processes']} "
                             f"processes and {saved['workers']} DataLoader workers, but this one has "
                             f"split={self.split!r}, {self.world_size} processes"
                             + (f" and {info.num_workers} workers" if info else "")
                             + ": resume with the same split, number of processes and num_workers")
        self._resume = {**state, "epoch": epoch, "position": position}
        self._epoch.fill_(epoch)

    # -- reading

    def __iter__(self) -> Iterator[tuple]:
        epoch = int(self._epoch)
        rank, ranks = self._ranks()
        worker_id, workers, block = self._workers()
        layout = [rank, ranks, worker_id, workers]
        start, resume, self._resume = 0, self._resume, None
        if resume is not None and resume["epoch"] == epoch:
            if resume.get("layout") not in (None, layout):
                raise ValueError(f"the state was saved by reader {resume['layout']} ([rank, ranks, worker, workers]) "
                                 f"but this one is {layout}: resume with the same ranks and num_workers")
            start = resume["position"]
        self._progress = {"epoch": epoch, "position": start, "layout": layout}
        return self._read(_EpochOrder(self.counts, self.seed, epoch, self.shuffle_shards, self.shuffle_window),
                          self._positions(rank, ranks, worker_id, workers, block), start)

    def _positions(self, rank: int, ranks: int, worker: int, workers: int, block: int) -> Iterator[int]:
        """The epoch positions one reader yields, in order: its rank's equal part of the
        epoch (wrapping round to the first positions to fill it), then its worker's blocks."""
        length, n = self._rank_length(ranks), self.count
        first = rank * length
        for b in range(worker, -(-length // block), workers):
            for q in range(b * block, min((b + 1) * block, length)):
                yield (first + q) % n

    def _read(self, order: _EpochOrder, positions: Iterator[int], start: int) -> Iterator[tuple]:
        smallest = min((c for c in self.counts if c > 0), default=1)
        capacity = max(self.shuffle_window, 1) // smallest + 2  # every shard a window touches, and the next
        # Checked when the stream was made (verify=True): read as it is, memory-mapped where it can be.
        held = _OpenShards(lambda s: _open_shard(self.uri, self.records[s], self.format, self.strings, self.where,
                                                 verify=False), capacity)
        for p in itertools.islice(positions, start, None):
            s, j = order.item_at(p)
            item = held.get(s).item(j)
            self._progress["position"] += 1  # counted before the yield: a snapshot taken now includes it
            yield self._finish(item)

    def __repr__(self) -> str:
        split = {"rank": f"rank {self.rank} of {self.world_size}", "none": "the whole set: accelerate splits",
                 None: "one process"}[self.split]
        return self._describe([f"Per epoch: {len(self)} items ({split}, drop_last={self.drop_last})",
                               f"Order: seed {self.seed}, shuffle_window {self.shuffle_window}, "
                               f"shuffle_shards {self.shuffle_shards}"])
