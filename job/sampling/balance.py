"""sample balance=: top up a real labeled set to a balanced one. Reads how many digits of each
class the real set has (a shard set's manifest, an image folder's class folders, or the
training split that data.* describes, long-tail profile included) and works out how many to
draw of each class: `balance_to` (0: the largest class's count) minus what the set has.

The labels of the whole sampled set are then fixed by the plan: every class repeated its
number of times, shuffled by the base seed, and cut into shards in order, so every shard's
labels (and so its bytes) still depend on the plan and the shard's index alone.
"""

from __future__ import annotations

import functools
import os

import torch

from job import storage
from job.core import config, seeds
from job.core.errors import BadInput
from job.data import datasets, loading
from job.shardsets.sets import MANIFEST, read_manifest

LABEL_STREAM = 0x42414C41  # "BALA": the balanced sequence's own random stream


def real_counts(cfg: config.SampleJob) -> tuple[list[int], str]:
    """(digits per class, what was read) of the real set named by balance=."""
    source = cfg.balance
    if source == "data":
        split = loading.load_split(cfg.data, train=True)
        profile = "" if cfg.data.profile == "none" else f" cut to data.profile={cfg.data.profile}"
        counts = torch.bincount(split.labels.cpu(), minlength=split.num_classes).tolist()
        return counts, f"the {cfg.data.name} training split{profile}"
    if storage.exists(storage.join(source, MANIFEST)):
        manifest = read_manifest(source)
        if not manifest.get("labeled"):
            raise BadInput(f"balance={source} is an unlabeled shard set: it has no classes to balance")
        return list(manifest["label_histogram"]), f"the shard set {source}"
    if not storage.is_remote(source) and os.path.isdir(source):
        return datasets.image_folder_class_counts(source), f"the image folder {source}"
    raise BadInput(f"balance={source!r} is neither a shard set (no {MANIFEST}), a local image folder nor 'data' "
                   "(the training split data.* describes)")


def top_up(have: list[int], target: int, classes: int, where: str) -> list[int]:
    """Digits to draw per class so that each reaches `target` (0: the largest class's count)."""
    if len(have) != classes:
        raise BadInput(f"balance: {where} has {len(have)} classes but the generator draws {classes}")
    absent = [c for c, n in enumerate(have) if n == 0]
    if absent:
        raise BadInput(f"balance: class {absent[0]} has no digits in {where}, so a generator trained on it has "
                       "nothing of that class to go on: add real digits of it or balance another set")
    goal = target or max(have)
    below = [c for c, n in enumerate(have) if n > goal]
    if below:
        c = below[0]
        raise BadInput(f"balance_to={target} is below class {c}'s {have[c]:,} digits in {where}: use at least "
                       f"{max(have)}, or 0 for the largest class's count")
    need = [goal - n for n in have]
    if not sum(need):
        raise BadInput(f"balance: {where} already holds {goal:,} digits of every class: nothing to draw")
    return need


@functools.lru_cache(maxsize=4)
def _sequence(per_class: tuple[int, ...], seed: int) -> torch.Tensor:
    labels = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
    g = torch.Generator().manual_seed(seeds.stream_seed(seed, LABEL_STREAM))
    return labels[torch.randperm(len(labels), generator=g)]


def shard_labels(per_class: list[int], seed: int, first: int, n: int) -> torch.Tensor:
    """Labels of the digits first..first+n of a balancing set: a fixed shuffle of every class
    repeated its number of times."""
    return _sequence(tuple(per_class), seed)[first:first + n].clone()
