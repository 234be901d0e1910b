"""Training throughput (images/s) of the real training loop, 28x28 and 64x64 DCGANs.

    .venv/bin/python scripts/bench_train.py                 # CPU: batch 64, a few variants
    .venv/bin/python scripts/bench_train.py --steps 200     # more steps for steadier numbers

Runs job.train's trainer in this process on real MNIST (the same code as `job train`) and
times steps after a warm-up, from the per-step timings in metrics.jsonl. Writes
bench-results/train-<device>.json. The reference is the pytorch/examples dcgan script
(64x64, batch 64, MNIST) measured on the same 2-core machine at 21.8 images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import benchlib

PYTORCH_EXAMPLES_DCGAN_64_IMAGES_PER_S = 21.8  # measured on the 2-core dev machine (see README)

VARIANTS = [
    # name, preset, overrides
    ("dcgan28 conditional, NCHW", "cdcgan-mnist", ["train.channels_last=false"]),
    ("dcgan28 conditional, channels_last", "cdcgan-mnist", ["train.channels_last=true"]),
    ("dcgan64 conditional, channels_last", "dcgan64-mnist", ["train.channels_last=true"]),
    ("dcgan64 conditional, NCHW", "dcgan64-mnist", ["train.channels_last=false"]),
    ("dcgan64 unconditional, channels_last", "dcgan64-mnist", ["train.channels_last=true", "model.conditional=false"]),
]


def measure(preset: str, overrides: list[str], batch: int, warmup: int, steps: int, extra: list[str]) -> float:
    from job import config
    from job.train import trainer_for

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load("train", preset, [
            f"run.dir={tmp}/run", f"train.batch_size={batch}", f"train.steps={warmup + steps}",
            "train.log_every=1", "train.sample_every=1000000", "train.checkpoint_every=1000000",
            "train.progress=false", *overrides, *extra,
        ])
        with contextlib.redirect_stdout(io.StringIO()):
            trainer_for(cfg).run()
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    timed = records[warmup:]
    seconds = sum(batch / r["images_per_s"] for r in timed)
    return len(timed) * batch / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 100 for 28x28, 20 for 64x64 on CPU)")
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    args = p.parse_args()
    benchlib.use_default_data_dir()
    import torch

    on_gpu = torch.cuda.is_available()
    results = []
    for name, preset, overrides in VARIANTS:
        steps = args.steps or (500 if on_gpu else (100 if "28" in name else 20))
        ips = measure(preset, overrides, args.batch, args.warmup, steps, [f"train.mixed_precision={args.precision}"])
        row = {"variant": name, "preset": preset, "overrides": overrides, "batch_size": args.batch,
               "precision": args.precision, "timed_steps": steps, "images_per_s": round(ips, 1)}
        if "dcgan64" in name:
            row["vs_pytorch_examples_dcgan"] = round(ips / PYTORCH_EXAMPLES_DCGAN_64_IMAGES_PER_S, 2)
        results.append(row)
        print(f"{name:42s} {ips:9.1f} images/s", flush=True)
    path = benchlib.write_results("train", {
        "reference": {"pytorch_examples_dcgan_64_images_per_s": PYTORCH_EXAMPLES_DCGAN_64_IMAGES_PER_S,
                      "note": "pytorch/examples dcgan/main.py --dataset mnist, batch 64, same 2-core CPU"},
        "results": results,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
