"""One epoch of a ShardStream through a 2-worker DataLoader, in each process of a launch.

    accelerate launch --multi_gpu --num_processes 2 tests/read_stream_epoch.py <samples> <out folder>

Each rank writes <out>/rank-<r>.json: the world size it saw, and one key per digit it
received (sha256 of its pixels, its label). tests/test_readers.py checks that the ranks
together saw every digit of the set exactly once.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from job.readers import ShardStream


def main(samples: str, out: str) -> None:
    acc = Accelerator(cpu=True)  # gloo; without cpu=True a CUDA-less launch runs two unrelated processes
    stream = ShardStream(samples, shuffle_buffer=16, seed=3)
    stream.set_epoch(1)
    loader = DataLoader(stream, batch_size=4, num_workers=2)
    keys = []
    for images, labels in loader:
        for image, label in zip(images, labels):
            keys.append([hashlib.sha256(image.numpy().tobytes()).hexdigest(), int(label)])
    seen = {"world_size": torch.distributed.get_world_size(), "rank": acc.process_index, "keys": keys,
            "stream_rank": stream.rank, "stream_world_size": stream.world_size}
    Path(out, f"rank-{acc.process_index}.json").write_text(json.dumps(seen))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:3])
