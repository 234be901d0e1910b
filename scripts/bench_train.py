"""Training throughput (images/s): this project's training loop, side by side with the
pytorch/examples DCGAN in the same run.

    .venv/bin/python scripts/bench_train.py                          # this project's variants
    git clone https://github.com/pytorch/examples ../pytorch-examples
    .venv/bin/python scripts/bench_train.py --peer ../pytorch-examples  # + the peer, same run

Project rows run job.training.train's trainer in this process on real MNIST (the same code as
`job train`) and time the steps after a warm-up from the per-step timings in metrics.jsonl.
Each variant is one row, kept as a default or not: precision (fp32, bf16), memory format,
the optimizer implementation, batch size; plus torch.compile on the bare step (the trainer
does not compile: see README, Benchmarks).

With --peer DIR (a pytorch/examples checkout; nothing of it is copied here) the peer's
`dcgan/main.py --dataset mnist` runs on the same MNIST files at the same batch and image size
in this same venv, and is timed over iterations 5..25 from the moment each of its log lines
appears; the JSON then holds both figures and their ratio. Without --peer there is no ratio.
Writes bench-results/train-<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

# name, preset, overrides. dcgan64 unconditional is the peer's model (Radford et al., 64x64).
PRESETS = [
    ("dcgan28 conditional (cdcgan-mnist)", "cdcgan-mnist", []),
    ("dcgan64 unconditional (the peer's model)", "dcgan64-mnist", ["model.conditional=false"]),
    ("dcgan64 conditional (dcgan64-mnist)", "dcgan64-mnist", []),
]
# Variants tried on top of the presets (fp32), each measured whether it is kept or not.
VARIANTS = [
    ("dcgan28 conditional, NCHW", "cdcgan-mnist", ["train.channels_last=false"], {}),
    ("dcgan28 conditional, Adam foreach (not fused)", "cdcgan-mnist", [], {"adam": "foreach"}),
    ("dcgan28 conditional, batch 128, lr x2", "cdcgan-mnist",
     ["train.batch_size=128", "train.lr_g=4e-4", "train.lr_d=4e-4"], {}),
    ("dcgan28 conditional, batch 256, lr x4", "cdcgan-mnist",
     ["train.batch_size=256", "train.lr_g=8e-4", "train.lr_d=8e-4"], {}),
    ("dcgan28 conditional, 1 thread", "cdcgan-mnist", [], {"threads": "1"}),
    ("dcgan64 unconditional, NCHW", "dcgan64-mnist", ["model.conditional=false", "train.channels_last=false"], {}),
]
PEER_FIRST, PEER_LAST = 5, 25  # peer iterations timed (the first ones warm up, as ours do)


@contextlib.contextmanager
def adam_implementation(kind: str | None):
    """Force torch.optim.Adam's implementation for one measurement (None: the trainer's own)."""
    import torch

    if kind is None:
        yield
        return
    original = torch.optim.Adam

    def adam(params, **kwargs):
        kwargs.pop("fused", None)
        kwargs.pop("foreach", None)
        return original(params, **kwargs, **({"fused": True} if kind == "fused" else {"foreach": True}))

    torch.optim.Adam = adam
    try:
        yield
    finally:
        torch.optim.Adam = original


@contextlib.contextmanager
def environ(name: str, value: str | None):
    """os.environ[name] = value (None: left as it is) for the block, restored after."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def measure(preset: str, overrides: list[str], warmup: int, steps: int, adam: str | None = None,
            threads: str | None = None) -> tuple[float, int, str]:
    """(images/s over the timed steps, batch size, the precision it ran and why) of the real
    trainer; `precision=auto` measures in a fresh cache, so this run decides."""
    import torch

    from job.core import config
    from job.training.train import trainer_for

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load("train", preset, [
            f"run.dir={tmp}/run", f"train.steps={warmup + steps}", "train.log_every=1",
            "train.sample_every=1000000", "train.checkpoint_every=1000000", "train.progress=false", *overrides,
        ])
        saved_threads = torch.get_num_threads()
        with adam_implementation(adam), environ("OMP_NUM_THREADS", threads), \
                environ("DIGITS_CACHE_DIR", f"{tmp}/cache"), contextlib.redirect_stdout(io.StringIO()):
            trainer = trainer_for(cfg)
            trainer.run()
        torch.set_num_threads(saved_threads)
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    batch = cfg.train.batch_size
    timed = records[warmup:]
    return len(timed) * batch / sum(batch / r["images_per_s"] for r in timed), batch, trainer.precision.describe()


def compiled_step_rates(arch: str, size: int, batch: int, steps: int) -> dict[str, float]:
    """images/s of the bare GAN step (data in memory), eager vs torch.compile (inductor)."""
    import torch

    from job.core.precision import Precision
    from job.models import build_gan
    from job.training.steps import gan_step

    rates = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        G, D, _ = build_gan(arch, 100, 64, 64, 1, 10, False, size)
        G, D = (m.to(memory_format=torch.channels_last) for m in (G, D))
        opt_g, opt_d = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D))
        if mode == "compiled":
            G, D = torch.compile(G), torch.compile(D)
        fp32 = Precision("no", "cpu")
        real = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (batch,))
        nets = (G, D, opt_g, opt_d, fp32.scaler(), fp32.scaler(), fp32)
        for _ in range(5):  # warm-up (and compilation)
            gan_step(*nets, real, labels, torch.randn(batch, 100), labels)
        start = time.perf_counter()
        for _ in range(steps):
            gan_step(*nets, real, labels, torch.randn(batch, 100), labels)
        rates[mode] = steps * batch / (time.perf_counter() - start)
    return rates


def peer_data_root(tmp: Path) -> Path:
    """A torchvision MNIST root for the peer holding the same idx files as ours, unpacked
    where torchvision looks first, so it downloads nothing; without DIGITS_DATA_DIR the peer
    downloads MNIST itself, as it would anywhere."""
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    ours = Path(os.environ.get("DIGITS_DATA_DIR", ""))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        for candidate in (ours / f"{name}.gz", ours / "mnist" / f"{name}.gz"):
            if candidate.is_file():
                (raw / name).write_bytes(gzip.decompress(candidate.read_bytes()))
                break
    return tmp


def peer_rate(peer: Path, batch: int, image_size: int, timeout_s: float = 1800) -> dict:
    """images/s of pytorch/examples' dcgan/main.py over its iterations PEER_FIRST..PEER_LAST,
    timed by when each iteration's log line arrives."""
    script = peer / "dcgan" / "main.py"
    line_re = re.compile(r"^\[0/1\]\[(\d+)/(\d+)\]")
    with tempfile.TemporaryDirectory() as tmp:
        root = peer_data_root(Path(tmp))
        cmd = [sys.executable, "-u", str(script), "--dataset", "mnist", "--dataroot", str(root),
               "--batchSize", str(batch), "--imageSize", str(image_size), "--niter", "1",
               "--outf", str(Path(tmp) / "out"), "--manualSeed", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        seen: dict[int, float] = {}
        tail: list[str] = []
        deadline = time.monotonic() + timeout_s
        try:
            for line in proc.stdout:
                tail = (tail + [line])[-20:]
                match = line_re.match(line)
                if match:
                    seen[int(match.group(1))] = time.perf_counter()
                if PEER_LAST in seen or time.monotonic() > deadline:
                    break
        finally:
            proc.kill()
            proc.wait()
    if PEER_FIRST not in seen or PEER_LAST not in seen:
        raise SystemExit(f"the peer did not reach iteration {PEER_LAST}:\n{''.join(tail)}")
    rate = (PEER_LAST - PEER_FIRST) * batch / (seen[PEER_LAST] - seen[PEER_FIRST])
    git = subprocess.run(["git", "-C", str(peer), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip()
    return {"command": " ".join(["python", "dcgan/main.py", *cmd[3:]]), "commit": commit or None,
            "timed_iterations": [PEER_FIRST, PEER_LAST], "images_per_s": round(rate, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", type=Path, help="a pytorch/examples checkout: run its dcgan beside ours")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 100 for 28x28, 20 for 64x64 on CPU)")
    p.add_argument("--quick", action="store_true", help="presets (and the peer) only, no variants")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (minutes of compiling)")
    args = p.parse_args()
    benchlib.use_default_data_dir()
    import torch

    from job.core import precision

    if args.peer is not None and not (args.peer / "dcgan" / "main.py").is_file():
        raise SystemExit(f"--peer {args.peer}: no dcgan/main.py there (clone https://github.com/pytorch/examples)")
    on_gpu = torch.cuda.is_available()
    units = precision.cpu_bf16_units()
    native_bf16 = on_gpu or bool(units)
    print(f"CPU {benchlib.cpu_model()}, bf16 units: {', '.join(units) or 'none'}", flush=True)

    def steps_for(name: str, mode: str) -> int:
        steps = args.steps or (500 if on_gpu else (100 if "28" in name else 20))
        # Emulated bf16 (no AMX/AVX512-BF16) is many times slower: a few steps show it.
        return steps if native_bf16 or mode != "bf16" else max(5, steps // 10)

    results = []

    def row(name: str, preset: str, overrides: list[str], mode: str, kept: bool, **extra) -> dict:
        """kept: whether this is what the preset runs here (its settings, precision=auto)."""
        steps = steps_for(name, mode)
        ips, batch, ran = measure(preset, [*overrides, f"train.precision={mode}"], args.warmup, steps, **extra)
        entry = {"variant": name, "preset": preset, "overrides": overrides, "batch_size": batch,
                 "precision": precision.display_name(mode), "ran": ran, "timed_steps": steps,
                 "images_per_s": round(ips, 1), "kept": kept}
        results.append(entry)
        print(f"{name:50s} {entry['precision']:5s} {ips:9.1f} images/s  ({ran})", flush=True)
        return entry

    peer = None
    if args.peer is not None:
        peer = peer_rate(args.peer, 64, 64)
        print(f"{'pytorch/examples dcgan/main.py (peer), 64x64':50s} fp32  {peer['images_per_s']:9.1f} images/s",
              flush=True)
    auto_rows = {}
    for name, preset, overrides in PRESETS:
        fixed = {}
        for mode in ("no", "bf16"):
            if not native_bf16 and mode == "bf16" and "dcgan64" in preset:
                continue  # emulated bf16 at 64x64 takes minutes a step on a small CPU
            fixed[mode] = row(name, preset, overrides, mode, kept=False)["images_per_s"]
        auto = row(name, preset, overrides, "auto", kept=True)
        auto["vs_faster_fixed"] = round(auto["images_per_s"] / max(fixed.values()), 3)
        # auto's own probe runs once per machine and model, before the first step (not timed above)
        measured = re.search(r"measured now in ([\d.]+) s", auto["ran"])
        auto["measure_s"] = float(measured.group(1)) if measured else 0.0
        auto_rows[name] = auto
        print(f"{'':50s} auto: {auto['vs_faster_fixed']:.0%} of the faster fixed precision "
              f"(its measurement: {auto['measure_s']:.1f} s, once per machine and model)", flush=True)
    if not args.quick:
        for name, preset, overrides, extra in VARIANTS:
            row(name, preset, overrides, "no", kept=False, **extra)
        if not args.no_compile and not on_gpu:
            rates = compiled_step_rates("dcgan28", 28, 64, steps=60)
            for mode, ips in rates.items():
                results.append({"variant": f"dcgan28 conditional, bare step, {mode}", "precision": "fp32",
                                "batch_size": 64, "images_per_s": round(ips, 1), "kept": mode == "eager"})
                print(f"{'dcgan28 conditional, bare step, ' + mode:50s} fp32  {ips:9.1f} images/s", flush=True)

    payload: dict = {"cpu_bf16_units": units, "auto": {k: {"ran": v["ran"], "vs_faster_fixed": v["vs_faster_fixed"],
                                                           "measure_s": v["measure_s"]}
                                                       for k, v in auto_rows.items()}, "results": results}
    if peer is not None:
        # The defaults (precision=auto) against the peer's own defaults, same model and batch.
        ours = auto_rows["dcgan64 unconditional (the peer's model)"]
        payload["peer"] = peer
        payload["vs_peer"] = {"ours": ours["variant"], "precision": ours["ran"],
                              "ours_images_per_s": ours["images_per_s"], "peer_images_per_s": peer["images_per_s"],
                              "ratio": round(ours["images_per_s"] / peer["images_per_s"], 2)}
        print(f"dcgan64 vs the peer, same run: {payload['vs_peer']['ratio']}x", flush=True)
    path = benchlib.write_results("train", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
