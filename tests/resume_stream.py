"""A training loop over a ShardStream that saves its data position after every step, killed
mid-epoch and resumed: what tests/test_readers.py runs to show no digit is lost or repeated.

    python tests/resume_stream.py <samples> <out folder> --kill-after 5   # SIGKILLs itself after step 5
    python tests/resume_stream.py <samples> <out folder>                  # resumes from <out>/state.json

torchdata's StatefulDataLoader (2 workers) keeps the stream's state_dict per worker; the
loop writes it as JSON (no pickle) with each step, atomically, as a checkpoint would. Each
step appends one key per digit (sha256 of its pixels, its label) to <out>/seen.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
from pathlib import Path

from torchdata.stateful_dataloader import StatefulDataLoader

from job.shardsets.readers import ShardStream

EPOCH = 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("samples")
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-after", type=int, default=0)
    args = parser.parse_args()
    stream = ShardStream(args.samples, shuffle_window=16, seed=7, batch_size=4)
    loader = StatefulDataLoader(stream, batch_size=4, num_workers=2)
    state_file = args.out / "state.json"
    if state_file.exists():
        loader.load_state_dict(json.loads(state_file.read_text()))
    stream.set_epoch(EPOCH)
    with open(args.out / "seen.jsonl", "a") as seen:
        for step, (images, labels) in enumerate(loader, 1):
            keys = [[hashlib.sha256(x.numpy().tobytes()).hexdigest(), int(y)] for x, y in zip(images, labels)]
            seen.write(json.dumps(keys) + "\n")
            seen.flush()
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(loader.state_dict()))
            os.replace(tmp, state_file)
            if step == args.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # preempted: no clean-up, workers mid-prefetch


if __name__ == "__main__":
    main()
