"""Load: 10,000,000 digits sampled on CPU to local disk, preempted half-way, resumed, verified.

    .venv/bin/python scripts/bench_load.py                    # 10M digits, about 10 minutes on 2 cores
    .venv/bin/python scripts/bench_load.py --count 1000000    # a quicker look

What it does, with a narrow 28x28 conditional generator (fresh weights: the point is the
pipeline, not the digits; width 8 keeps the forward pass from hiding the writing):
  1. `python -m job sample count=N` into a temporary folder; once half the shards have
     their records it sends SIGTERM, as a Kubernetes eviction would: the job finishes the
     shards in hand and exits 143;
  2. the same command again: it skips the finished shards and completes the set;
  3. every shard file is read back and its sha256 compared with manifest.json, the shard
     indices must be 0..n-1 once each and the counts must add up to N.
Peak RSS is polled over each run (process and children). Writes bench-results/load-<device>.json.
Needs about 8 GB of free disk for 10M digits (uint8 safetensors shards); they are deleted after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import benchlib
from bench_sample import make_generator


def verify(out: Path, count: int, num_shards: int) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    indices = [s["index"] for s in manifest["shards"]]
    if indices != list(range(num_shards)):
        raise SystemExit(f"manifest shards are not 0..{num_shards - 1} once each")
    if manifest["count"] != count or sum(s["count"] for s in manifest["shards"]) != count:
        raise SystemExit(f"manifest counts do not add up to {count}")
    checked = 0
    for shard in manifest["shards"]:
        for name, info in shard["files"].items():
            digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
            if digest != info["sha256"]:
                raise SystemExit(f"{name}: sha256 differs from the manifest")
            checked += 1
    on_disk = sorted(p.name for p in out.glob("shard-*"))
    if len(on_disk) != checked:
        raise SystemExit(f"{len(on_disk)} shard files on disk, {checked} in the manifest")
    return {"files_verified": checked, "label_histogram": manifest["label_histogram"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=10_000_000)
    p.add_argument("--shard-size", type=int, default=100_000)
    p.add_argument("--width", type=int, default=8, help="generator width")
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    num_shards = -(-args.count // args.shard_size)
    scratch = benchlib.REPO / ".cache"  # the repository's disk (not a small /tmp), git-ignored
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        tmp = Path(tmp)
        gen = tmp / "generator.safetensors"
        make_generator(gen, args.width)
        out = tmp / "digits"
        cmd = [sys.executable, "-m", "job", "sample", f"generator={gen}", f"count={args.count}",
               f"shard_size={args.shard_size}", f"batch_size={args.batch}", f"out={out}", "progress=false"]
        records = out / "_records"

        def half_done() -> bool:
            return records.exists() and len(list(records.glob("shard-*.json"))) >= num_shards // 2

        code, output, peak1, wall1 = benchlib.run_watched(cmd, stop_when=half_done)
        if code != 143:
            raise SystemExit(f"expected the SIGTERM'd run to exit 143, got {code}:\n{output[-2000:]}")
        done_before = len(list(records.glob("shard-*.json")))
        print(f"run 1: SIGTERM after {done_before}/{num_shards} shards, exit 143, {wall1:.0f}s, "
              f"peak RSS {peak1 / 2**20:.0f} MB", flush=True)
        code, output, peak2, wall2 = benchlib.run_watched(cmd)
        if code != 0:
            raise SystemExit(f"the resumed run failed ({code}):\n{output[-2000:]}")
        print(f"run 2: resumed, {num_shards - done_before} shards, {wall2:.0f}s, peak RSS {peak2 / 2**20:.0f} MB",
              flush=True)
        checks = verify(out, args.count, num_shards)
        print(f"verified {checks['files_verified']} shard files against manifest.json", flush=True)
    wall = wall1 + wall2
    results = {
        "count": args.count, "shard_size": args.shard_size, "num_shards": num_shards, "width": args.width,
        "batch_size": args.batch, "format": "safetensors", "target": "local disk",
        "shards_before_sigterm": done_before,
        "run1": {"exit": 143, "wall_s": round(wall1, 1), "peak_rss_mb": round(peak1 / 2**20, 1)},
        "run2": {"exit": 0, "wall_s": round(wall2, 1), "peak_rss_mb": round(peak2 / 2**20, 1)},
        "wall_s": round(wall, 1), "digits_per_s": round(args.count / wall, 1),
        "peak_rss_mb": round(max(peak1, peak2) / 2**20, 1), **checks,
    }
    path = benchlib.write_results("load", results)
    print(f"{args.count} digits in {wall:.0f}s ({args.count / wall:.0f} digits/s, both runs, process start-up "
          f"included), peak RSS {max(peak1, peak2) / 2**20:.0f} MB; wrote {path}")


if __name__ == "__main__":
    main()
