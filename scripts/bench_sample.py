"""Bulk sampling throughput and memory: end to end vs the generator's bare forward pass.

    .venv/bin/python scripts/bench_sample.py                       # CPU defaults, local + S3
    .venv/bin/python scripts/bench_sample.py --count 200000 --rss-count 1000000

For a 28x28 conditional generator (fresh weights: speed does not depend on them) it
measures, with the same batch size and threads:
  - the bare forward-pass rate (digits/s, in this process), in fp32 and in bf16 autocast;
  - `python -m job sample` end to end for each format to local disk, and safetensors to a
    local SeaweedFS S3 server (digits/s from the job's own timing, peak RSS polled), in fp32,
    and safetensors to local disk in bf16 (precision=bf16) against the bf16 bare rate, and at
    precision=auto in a fresh cache, its rate also given with the measurement's seconds counted;
  - one large run (--rss-count digits, default 1,000,000) for peak RSS.
Writes bench-results/sample-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def make_generator(path: Path, width: int) -> None:
    from job.models import build_model
    from job.models.files import export_model

    kwargs = {"latent_dim": 100, "width": width, "channels": 1, "num_classes": 10}
    G = build_model("dcgan", "dcgan28", kwargs)
    export_model(str(path), G.state_dict(), "dcgan", "dcgan28", kwargs, step=0)


def bare_rate(generator: Path, batch: int, precision: str = "no", seconds: float = 10.0) -> float:
    import torch

    from job.models import load_generator

    G, _, _ = load_generator(str(generator))
    z, y = torch.randn(batch, 100), torch.randint(0, 10, (batch,))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        G(z, y)  # warm-up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            G(z, y)
            n += batch
    return n / (time.perf_counter() - start)


def run_sample(args: list[str], env: dict | None = None) -> dict:
    """Run `python -m job sample` and return its digits/s, wall time and peak RSS."""
    cmd = [sys.executable, "-m", "job", "sample", "progress=false", *args]
    code, output, peak, wall = benchlib.run_watched(cmd, env)
    if code != 0:
        raise SystemExit(f"sampling failed:\n{output}")
    rate = float(re.search(r"([\d.]+) digits/s", output).group(1))
    chose = re.search(r"precision=(\S+) \(([^)]*)\)", output)
    measured = re.search(r"measured now in ([\d.]+) s", output)  # auto's probe, before the first shard
    return {"digits_per_s": round(rate, 1), "wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "chose": f"{chose.group(1)} ({chose.group(2)})" if chose else None,
            "measure_s": float(measured.group(1)) if measured else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64, help="generator width (64: the cdcgan-mnist generator)")
    p.add_argument("--count", type=int, default=20000, help="digits per format run")
    p.add_argument("--rss-count", type=int, default=1_000_000, help="digits in the peak-RSS run (0 skips)")
    p.add_argument("--rss-width", type=int, default=None, help="generator width for the RSS run (default --width)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--no-s3", action="store_true", help="skip the local S3 server run")
    args = p.parse_args()
    benchlib.use_default_data_dir()
    from job.core.precision import display_name

    results: dict = {"width": args.width, "batch_size": args.batch, "shard_size": args.shard_size, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = tmp / "generator.safetensors"
        make_generator(gen, args.width)
        bare = bare_rate(gen, args.batch)
        bare_bf16 = bare_rate(gen, args.batch, "bf16")
        results["bare_forward_digits_per_s"] = {"fp32": round(bare, 1), "bf16": round(bare_bf16, 1)}
        print(f"bare forward pass (width {args.width}, batch {args.batch}): fp32 {bare:.0f} digits/s, "
              f"bf16 {bare_bf16:.0f} digits/s", flush=True)
        common = [f"generator={gen}", f"count={args.count}", f"shard_size={args.shard_size}",
                  f"batch_size={args.batch}"]
        # auto measures in a cache of its own, so this run decides (not an earlier one).
        auto_env = {**os.environ, "DIGITS_CACHE_DIR": str(tmp / "cache")}
        for fmt, mode, reference in [("safetensors", "no", bare), ("safetensors", "bf16", bare_bf16),
                                     ("safetensors", "auto", max(bare, bare_bf16)),
                                     ("webdataset", "no", bare), ("idx", "no", bare)]:
            name = display_name(mode)
            r = run_sample([*common, f"out={tmp / (fmt + '-' + name)}", f"format={fmt}", f"precision={mode}"],
                           env=auto_env)
            # the rate with auto's measurement counted: the digits over the sampling time plus the probe's
            counted = args.count / (args.count / r["digits_per_s"] + r["measure_s"])
            r.update(target="local", format=fmt, precision=name, count=args.count,
                     vs_bare=round(r["digits_per_s"] / reference, 3), digits_per_s_measure_counted=round(counted, 1))
            results["runs"].append(r)
            chose = f" (auto chose {r['chose']})" if mode == "auto" else ""
            print(f"local {fmt:12s} {name:5s} {r['digits_per_s']:9.0f} digits/s ({r['vs_bare']:.0%} of bare "
                  f"{name}){chose}, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        fixed = {r["precision"]: r for r in results["runs"] if r["format"] == "safetensors"}
        faster = max(fixed["fp32"]["digits_per_s"], fixed["bf16"]["digits_per_s"])
        auto = fixed["auto"]
        results["auto_vs_faster_fixed"] = round(auto["digits_per_s"] / faster, 3)
        results["auto_vs_faster_fixed_measure_counted"] = round(auto["digits_per_s_measure_counted"] / faster, 3)
        print(f"auto: {results['auto_vs_faster_fixed']:.0%} of the faster fixed precision, "
              f"{results['auto_vs_faster_fixed_measure_counted']:.0%} with its {auto['measure_s']:.1f} s "
              f"measurement counted ({args.count} digits)", flush=True)
        if not args.no_s3:
            import s3_local

            server = s3_local.start(tmp / "s3", buckets=["bench"])
            try:
                r = run_sample([*common, "out=s3://bench/samples", "format=safetensors", "precision=no"],
                               env=server.env())
            finally:
                s3_local.stop(tmp / "s3")
            r.update(target="s3 (local SeaweedFS)", format="safetensors", precision="fp32", count=args.count,
                     vs_bare=round(r["digits_per_s"] / bare, 3))
            results["runs"].append(r)
            print(f"s3    safetensors  {r['digits_per_s']:9.0f} digits/s ({r['vs_bare']:.0%} of bare), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if args.rss_count:
            width = args.rss_width or args.width
            rss_gen = tmp / "rss-generator.safetensors"
            make_generator(rss_gen, width)
            r = run_sample([f"generator={rss_gen}", f"count={args.rss_count}", f"shard_size={args.shard_size}",
                            f"batch_size={args.batch}", f"out={tmp / 'rss'}", "precision=no"])
            r.update(target="local", format="safetensors", count=args.rss_count, width=width)
            results["large_run"] = r
            print(f"{args.rss_count} digits (width {width}): {r['digits_per_s']:.0f} digits/s, "
                  f"{r['wall_s']:.0f}s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    path = benchlib.write_results("sample", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
