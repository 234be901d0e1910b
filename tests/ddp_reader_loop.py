"""A user's DDP training loop over a sample set, four ways, in each process of a real launch.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/ddp_reader_loop.py <samples> <out folder>

A plain `Accelerator()` and a tiny classifier, trained for two epochs per way (every
backward is a DDP all-reduce: a rank with more steps than the other would wait forever):
  - stream-prepare: `accelerator.prepare(DataLoader(ShardStream(...), num_workers=2,
    persistent_workers=True))`, as accelerate's examples do; no set_epoch call of ours
    (accelerate's default for an iterable dataset: process 0 reads and dispatches batches)
  - stream-shard: the same through an Accelerator made with `dispatch_batches=False`
    (every process reads the stream and keeps its own batches: IterableDatasetShard)
  - stream-ddp: the stream split by rank itself (no prepare of the loader), batch_size
    given, `stream.set_epoch(epoch)` before each epoch
  - map-sampler: ShardDataset with a DistributedSampler, no prepare of the loader
  - map-prepare: ShardDataset in a shuffled DataLoader given to `accelerator.prepare`
Each rank writes <out>/rank-<r>.json: its world size and, per way and epoch, its step count,
len(loader) and one key per digit it trained on (sha256 of the pixels, the label).
tests/test_readers.py checks them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader, DistributedSampler

from job.shardsets.readers import ShardDataset, ShardStream

BATCH, EPOCHS = 4, 2


def keys_of(images: torch.Tensor, labels: torch.Tensor) -> list[list]:
    return [[hashlib.sha256(image.cpu().numpy().tobytes()).hexdigest(), int(label)]
            for image, label in zip(images, labels)]


def train(accelerator: Accelerator, model, optimizer, loader, before_epoch=None) -> dict:
    seen = {"len": len(loader), "steps": [], "keys": []}
    for epoch in range(EPOCHS):
        if before_epoch is not None:
            before_epoch(epoch)
        steps, keys = 0, []
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images.float().flatten(1) / 255), labels % 10)
            optimizer.zero_grad()
            accelerator.backward(loss)  # DDP all-reduce: both ranks must be here the same number of times
            optimizer.step()
            steps += 1
            keys += keys_of(images, labels)
        seen["steps"].append(steps)
        seen["keys"].append(keys)
    return seen


def main(samples: str, out: str) -> None:
    accelerator = Accelerator()
    torch.manual_seed(0)
    model = torch.nn.Linear(28 * 28, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    ways = {}

    stream = ShardStream(samples, shuffle_window=16, seed=3)
    loader = accelerator.prepare(DataLoader(stream, batch_size=BATCH, num_workers=2, persistent_workers=True))
    ways["stream-prepare"] = train(accelerator, model, optimizer, loader)

    # A second Accelerator shares the process state (same DDP group) and differs only in how
    # its loaders split an iterable dataset.
    sharding = Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=False))
    stream = ShardStream(samples, shuffle_window=16, seed=3)
    loader = sharding.prepare(DataLoader(stream, batch_size=BATCH, num_workers=2))
    ways["stream-shard"] = train(accelerator, model, optimizer, loader)

    own = ShardStream(samples, shuffle_window=16, seed=3, batch_size=BATCH)
    loader = DataLoader(own, batch_size=BATCH, num_workers=2)
    ways["stream-ddp"] = train(accelerator, model, optimizer, loader, before_epoch=own.set_epoch)
    ways["stream-ddp"]["stream_len"] = len(own)

    digits = ShardDataset(samples)
    sampler = DistributedSampler(digits, shuffle=True, seed=3)
    loader = DataLoader(digits, batch_size=BATCH, sampler=sampler, num_workers=2)
    ways["map-sampler"] = train(accelerator, model, optimizer, loader, before_epoch=sampler.set_epoch)

    loader = accelerator.prepare(DataLoader(digits, batch_size=BATCH, shuffle=True, num_workers=2))
    ways["map-prepare"] = train(accelerator, model, optimizer, loader)

    record = {"world_size": accelerator.num_processes, "dist_world_size": torch.distributed.get_world_size(),
              "rank": accelerator.process_index, "ways": ways}
    Path(out, f"rank-{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:3])
