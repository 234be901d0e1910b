"""Reading a sample set back: digits/s through a DataLoader with 0, 2 and 4 workers, the
job's readers beside the webdataset library and torchvision's in-memory MNIST, in one run.

    .venv/bin/python scripts/bench_read.py                   # 60,000 digits, about 10 minutes on 2 cores
    .venv/bin/python scripts/bench_read.py --count 10000     # a quicker look

Set-up: `job sample` writes the same digits (a narrow fresh generator: the point is
reading, not the digits) as safetensors and as webdataset tar shards locally, and the
safetensors set again into a local SeaweedFS S3 server that this script starts and stops.
Each row is one full pass over the set through `DataLoader(batch_size=256)`, timed from
creating the loader's iterator to its last batch (worker start-up included), every item an
(image uint8 [1, 28, 28], label) pair:
  - ShardStream over local safetensors, local tar and S3 safetensors (batch_size= given, as
    with workers it must be; every shard checked against its sha256 when the stream is made,
    the default, which is not timed: the rows time reading)
  - ShardDataset over local safetensors (memory-mapped; a shuffled sampler)
  - the webdataset library's WebDataset on the same tar files, decoding to the same tensors
  - torchvision's MNIST (60,000 real digits held in memory, PIL per item, as it does)
Target: the stream over tar at least the webdataset library's rate on the same shards, at
every worker count. Writes bench-results/read-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import benchlib
from bench_sample import make_generator

WORKERS = (0, 2, 4)
BATCH = 256


def sample(generator: Path, out: str, count: int, shard_size: int, fmt: str) -> None:
    benchlib.run_job("sample", f"generator={generator}", f"out={out}", f"count={count}", f"shard_size={shard_size}",
                     f"format={fmt}", "progress=false")


def rate(dataset, workers: int, **loader_args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers, **loader_args)
    started, n = time.perf_counter(), 0
    for images, labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
        n += len(labels)
    seconds = time.perf_counter() - started
    return {"items": n, "seconds": round(seconds, 2), "items_per_s": round(n / seconds)}


def webdataset_pipeline(tar_dir: str):
    import webdataset

    from job.shardsets.sets import read_manifest

    urls = [str(Path(tar_dir) / name) for record in read_manifest(tar_dir)["shards"] for name in record["files"]]
    # The same items as the job's readers: uint8 [1, 28, 28] tensors and int labels.
    return (webdataset.WebDataset(urls, shardshuffle=False, empty_check=False).decode("torchl8")
            .to_tuple("png", "cls").map_tuple(lambda image: image[None] if image.ndim == 2 else image, int))


def torchvision_mnist():
    from torchvision.transforms import v2

    from job.shardsets.readers import mnist

    return mnist(train=True, transform=v2.PILToTensor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=60_000)
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--results", type=Path, default=benchlib.RESULTS)
    args = parser.parse_args()
    benchlib.use_default_data_dir()
    import s3_local
    from job import storage
    from job.shardsets.readers import ShardDataset, ShardStream

    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("DIGITS_CACHE_DIR", str(work / "cache"))
        generator = work / "generator.safetensors"
        make_generator(generator, width=8)
        local = {fmt: str(work / fmt) for fmt in ("safetensors", "webdataset")}
        for fmt, out in local.items():
            sample(generator, out, args.count, args.shard_size, fmt)
        server = s3_local.start(work / "s3", buckets=["bench"])
        try:
            os.environ.update(server.env())
            storage.reset_client()
            s3_uri = "s3://bench/safetensors"
            sample(generator, s3_uri, args.count, args.shard_size, "safetensors")
            sources = {
                "ShardStream local safetensors": lambda: ShardStream(local["safetensors"], batch_size=BATCH),
                "ShardDataset local safetensors (shuffled)": lambda: ShardDataset(local["safetensors"]),
                "ShardStream local tar": lambda: ShardStream(local["webdataset"], batch_size=BATCH),
                "webdataset library, same tar": lambda: webdataset_pipeline(local["webdataset"]),
                "ShardStream S3 safetensors": lambda: ShardStream(s3_uri, batch_size=BATCH),
                "torchvision MNIST in memory (real 60,000)": torchvision_mnist,
            }
            rows = []
            for name, make in sources.items():
                for workers in WORKERS:
                    extra = {"shuffle": True} if "shuffled" in name else {}
                    row = {"reader": name, "num_workers": workers, **rate(make(), workers, **extra)}
                    print(f"{name:45s} workers={workers}: {row['items_per_s']:>8} items/s", flush=True)
                    rows.append(row)
        finally:
            s3_local.stop(work / "s3")

    def items_per_s(reader: str, workers: int) -> int:
        return next(r["items_per_s"] for r in rows if r["reader"] == reader and r["num_workers"] == workers)

    target = {str(w): round(items_per_s("ShardStream local tar", w) / items_per_s("webdataset library, same tar", w), 2)
              for w in WORKERS}
    print("ShardStream tar / webdataset tar:", target)
    path = benchlib.write_results("read", {"count": args.count, "shard_size": args.shard_size, "batch_size": BATCH,
                                           "rows": rows, "stream_tar_over_webdataset": target,
                                           "target_met": all(v >= 1.0 for v in target.values())}, args.results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
