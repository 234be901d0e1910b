"""A user's DDP training loop over a sample set, five ways, in each process of a real launch.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/ddp_reader_loop.py SAMPLES OUT [BATCH [WORKERS [drop_last]]]

A plain `Accelerator()` and a tiny classifier, trained for two epochs per way (every
backward is a DDP all-reduce: a rank with more steps than the other would wait forever):
  - stream-prepare: README's "With accelerate" recipe: `ShardStream(split="none",
    batch_size=B)` in a DataLoader with persistent workers, given to `accelerator.prepare`
    (accelerate's default for an iterable dataset: process 0 reads and dispatches batches);
    no set_epoch call of ours
  - stream-shard: the same through an Accelerator made with `dispatch_batches=False`
    (every process reads the stream and keeps its own batches: IterableDatasetShard)
  - stream-ddp: `split="rank"`, the stream split by rank itself (no prepare of the loader),
    `stream.set_epoch(epoch)` before each epoch
  - map-sampler: ShardDataset with a DistributedSampler, no prepare of the loader
  - map-prepare: ShardDataset in a shuffled DataLoader given to `accelerator.prepare`
The DataLoader's drop_last is the same in every way. Each rank writes <out>/rank-<r>.json:
its world size and, per way and epoch, its step count, len(loader) and one key per digit it
trained on (sha256 of the pixels, the label). tests/test_readers.py checks them.
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

EPOCHS = 2


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


def main(samples: str, out: str, batch: int, workers: int, drop_last: bool) -> None:
    accelerator = Accelerator()
    torch.manual_seed(0)
    model = torch.nn.Linear(28 * 28, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    persistent = workers > 0
    ways = {}

    stream = ShardStream(samples, split="none", batch_size=batch, shuffle_window=16, seed=3)
    loader = accelerator.prepare(DataLoader(stream, batch_size=batch, num_workers=workers,
                                            persistent_workers=persistent, drop_last=drop_last))
    ways["stream-prepare"] = train(accelerator, model, optimizer, loader)

    # A second Accelerator shares the process state (same DDP group) and differs only in how
    # its loaders split an iterable dataset.
    sharding = Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=False))
    stream = ShardStream(samples, split="none", batch_size=batch, shuffle_window=16, seed=3)
    loader = sharding.prepare(DataLoader(stream, batch_size=batch, num_workers=workers, drop_last=drop_last))
    ways["stream-shard"] = train(accelerator, model, optimizer, loader)

    own = ShardStream(samples, split="rank", batch_size=batch, shuffle_window=16, seed=3)
    loader = DataLoader(own, batch_size=batch, num_workers=workers, drop_last=drop_last)
    ways["stream-ddp"] = train(accelerator, model, optimizer, loader, before_epoch=own.set_epoch)
    ways["stream-ddp"]["stream_len"] = len(own)

    digits = ShardDataset(samples)
    sampler = DistributedSampler(digits, shuffle=True, seed=3)
    loader = DataLoader(digits, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=drop_last)
    ways["map-sampler"] = train(accelerator, model, optimizer, loader, before_epoch=sampler.set_epoch)

    loader = accelerator.prepare(DataLoader(digits, batch_size=batch, shuffle=True, num_workers=workers,
                                            drop_last=drop_last))
    ways["map-prepare"] = train(accelerator, model, optimizer, loader)

    record = {"world_size": accelerator.num_processes, "dist_world_size": torch.distributed.get_world_size(),
              "rank": accelerator.process_index, "ways": ways}
    Path(out, f"rank-{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], int(args[2]) if len(args) > 2 else 4, int(args[3]) if len(args) > 3 else 2,
         len(args) > 4 and args[4] == "drop_last")
