"""Which autocast precision a process computes in, and why.

`precision=` (train, sample, evaluate; `train.mixed_precision` is its old name for train):

- fp32 (or `no`): fp32 throughout, TF32 off: fp32 means fp32 on every GPU;
- tf32: fp32 tensors with TF32 matrix products and convolutions (Ampere and later GPUs;
  fp32 on a CPU);
- bf16 / fp16: autocast; fp16 keeps one GradScaler per optimizer and needs a GPU;
- auto (the default): the fastest correct choice for this machine.
    * CPU: measured. A short probe (a few training steps, or forward passes, of the run's own
      model at its batch size, in fp32 and in bf16, about a second or two) decides, and the
      result is cached per (CPU model, torch version, threads, command, model, batch size)
      in $DIGITS_CACHE_DIR/precision/, so later runs and pods on the same hardware reuse it
      (for generation not per thread count: a rerun with more processes reads the same choice
      and writes the same bytes).
      CPU flags cannot decide this: the same avx512_bf16 flag is 1.75x faster than fp32 on
      one Xeon (with AMX) and 25% slower on another (without).
    * CUDA: bf16 where the GPU computes it natively (compute capability 8.0 and later), else
      fp32: assumed, not measured, and the first line says so.
    * `accelerate launch --mixed_precision bf16|fp16` (or `accelerate config`, both seen as
      ACCELERATE_MIXED_PRECISION) is honoured where precision is auto; an explicit
      precision= wins over it, and the first line says which setting won.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# /proc/cpuinfo flags of the units that run bf16 matrix products natively (recorded by the
# benchmarks; `auto` measures instead of trusting them).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CHOICES = ("auto", "fp32", "no", "tf32", "bf16", "fp16")
PROBE_SECONDS = 0.4  # per candidate and round; two rounds each
BF16_MARGIN = 1.05  # auto takes bf16 only when it measured more than 5% faster than fp32


def display_name(mode: str) -> str:
    """What a mode is called in logs and reports: "no" (autocast off) is fp32."""
    return "fp32" if mode in ("no", "fp32") else mode


@dataclass(frozen=True)
class Precision:
    """Autocast settings of one process. Each optimizer gets its own GradScaler (fp16 only):
    one scaler shared by G and D skips or rescales one network because of the other's overflow."""

    mode: str  # effective: no | tf32 | bf16 | fp16
    device_type: str
    reason: str = ""  # why this mode, for the job's first lines

    @property
    def name(self) -> str:
        return display_name(self.mode)

    def autocast(self):
        if self.mode in ("no", "tf32"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.mode == "fp16")

    def apply(self) -> None:
        """Set the process-wide math flags this mode implies: TF32 only for tf32."""
        if self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.mode == "tf32"
            torch.backends.cudnn.allow_tf32 = self.mode == "tf32"

    def describe(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_units(flags: set[str] | None = None) -> list[str]:
    """Which of CPU_BF16_FLAGS this CPU has."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in CPU_BF16_FLAGS if f in flags]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux), else what torch knows of it."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"a {torch.backends.cpu.get_cpu_capability()} CPU"


def _launcher_setting() -> str | None:
    """bf16 or fp16 when `accelerate launch --mixed_precision` or `accelerate config` asked
    for it (ACCELERATE_MIXED_PRECISION); "no" is accelerate's default and asks for nothing."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    return value if value in ("bf16", "fp16") else None


def resolve(requested: str, device: torch.device | str, flags: set[str] | None = None) -> Precision:
    """The precision for `requested` without measuring: explicit choices, GPUs, and CPU auto
    by its flags (where no probe can run). `flags` stands in for the CPU's flags (tests)."""
    device_type = torch.device(device).type
    if requested not in CHOICES:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(CHOICES)}")
    requested = "no" if requested == "fp32" else requested
    launcher = _launcher_setting()
    if requested == "auto" and launcher is not None:
        requested, origin = launcher, f"from accelerate's mixed_precision={launcher}"
    else:
        origin = "asked for"
        if launcher is not None and requested != launcher:
            origin = f"asked for; accelerate's mixed_precision={launcher} ignored: the job's precision= wins"
    if device_type == "cuda":
        gpu = torch.cuda.get_device_name(torch.device(device))
        if requested == "auto":
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return Precision("bf16", device_type,
                                 f"auto: {gpu} computes bf16 natively; assumed faster, not measured")
            return Precision("no", device_type, f"auto: {gpu} has no native bf16")
        return Precision(requested, device_type, origin)
    units = cpu_bf16_units(flags)
    if requested == "auto":
        if units:
            return Precision("bf16", device_type, f"auto: this CPU has {' and '.join(units)}; not measured")
        return Precision("no", device_type, "auto: this CPU has no AMX-BF16 or AVX512-BF16; not measured")
    if requested == "fp16":
        return Precision("no", device_type, "fp16 needs a GPU: running in fp32 on CPU")
    if requested == "tf32":
        return Precision("no", device_type, "tf32 is a GPU mode: fp32 on CPU")
    return Precision(requested, device_type, origin)


# ----------------------------------------------------------------------------- measuring


def _rate(probe: Callable[[Precision], None], precision: Precision, items: int) -> float:
    probe(precision)  # warm-up: kernels chosen, memory allocated
    calls, start = 0, time.perf_counter()
    while True:
        probe(precision)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= PROBE_SECONDS or calls >= 50:
            return items * calls / elapsed


def measure(probe: Callable[[Precision], None], items: int) -> dict[str, float]:
    """Items per second of `probe` (one step or forward pass of `items` images) in fp32 and in
    bf16 on this CPU: the better of two alternating rounds each, so a passing load on the
    machine does not decide alone."""
    rates: dict[str, float] = {}
    for _ in range(2):
        for mode in ("no", "bf16"):
            rate = _rate(probe, Precision(mode, "cpu"), items)
            rates[mode] = max(rates.get(mode, 0.0), rate)
    return rates


def _cache_file(key: dict) -> Path:
    from job.core.cache import cache_dir  # the job's cache folder, created on first use

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir()) / "precision" / f"{digest}.json"


def choose(requested: str, device: torch.device | str, probe: Callable[[Precision], None] | None = None,
           items: int = 0, key: dict | None = None, measure_here: bool = True,
           share: Callable[[dict | None], dict] | None = None, per_thread_count: bool = True) -> Precision:
    """The precision for `requested`: `resolve`'s, except CPU auto with a probe, which is
    measured (or read from the cache). `key` names what was measured (command, model, batch
    size); `measure_here` is False on every process but the main one, and `share` hands the
    main process's result to the others (a broadcast), so every rank computes alike.
    per_thread_count=False keys the cache by machine only, not by this process's threads:
    sampling's bytes depend on the precision, and must not on how many processes ran."""
    device_type = torch.device(device).type
    plain = resolve(requested, device)
    if device_type != "cpu" or requested != "auto" or probe is None or _launcher_setting() is not None:
        return plain
    result = None
    if measure_here:
        full_key = {"cpu": cpu_model(), "torch": torch.__version__, **(key or {})}
        if per_thread_count:
            full_key["threads"] = torch.get_num_threads()
        path = _cache_file(full_key)
        cached = path.is_file()
        if cached:
            result = json.loads(path.read_text())
        else:
            rates = measure(probe, items)
            # Ties go to the exact one: bf16 only when it is clearly faster, so two pods on
            # the same hardware do not pick differently by noise.
            mode = "bf16" if rates["bf16"] > BF16_MARGIN * rates["no"] else "no"
            result = {"key": full_key, "rates": rates, "mode": mode,
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(result, indent=1))
            os.replace(tmp, path)  # other pods on the node read it whole or not at all
        result["cached"] = cached
    if share is not None:
        result = share(result)
    rates = result["rates"]
    how = f"cached {result['measured']}" if result["cached"] else "measured now"
    reason = (f"auto: fp32 {rates['no']:.0f} img/s, bf16 {rates['bf16']:.0f} img/s on {result['key']['cpu']}, "
              f"{how}")
    return Precision(result["mode"], device_type, reason)
