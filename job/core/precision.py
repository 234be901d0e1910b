"""Which autocast precision a process computes in, and why.

`precision=` (train, sample, evaluate; `train.mixed_precision` is its old name for train;
DIGITS_PRECISION sets it for every command where neither the config nor the command line does):

- fp32 (or `no`): fp32 throughout, TF32 off: fp32 means fp32 on every GPU;
- tf32: fp32 tensors with TF32 matrix products and convolutions (Ampere and later GPUs;
  fp32 on a CPU);
- bf16 / fp16: autocast; fp16 keeps one GradScaler per optimizer and needs a GPU;
- auto (the default): the fastest correct choice for this machine.
    * CPU: measured. A short probe (training steps, or forward passes, of the run's own model
      at its batch size) runs in fp32 and in bf16, alternating, round after round until the
      ratio of the two figures moves by less than STABLE_RATIO between rounds (at most
      MAX_ROUNDS rounds of about half a second). bf16 is taken only when it is more than 5%
      faster; figures that never settle are "unsure" and give fp32, as does a bf16 probe that
      fails. The result is cached per (CPU model, torch version, threads, command, model,
      batch size) in $DIGITS_CACHE_DIR/precision/, so later runs and pods on the same hardware
      reuse it (for generation not per thread count: a rerun with more processes reads the
      same choice and writes the same bytes).
      A cached result is measured again when it is older than MAX_AGE_DAYS, when
      DIGITS_PRECISION_REMEASURE=1, or after a training run whose own steady speed contradicts
      it (`review`): the run's steps were slower than the figure of the precision auto turned
      down, or more than CONTRADICTION times faster than the figure of the one it took (the
      machine was busy while it measured).
      CPU flags cannot decide this: the same avx512_bf16 flag is 1.75x faster than fp32 on
      one Xeon (with AMX) and 25% slower on another (without).
      DIGITS_PRECISION_RATES="fp32=N,bf16=N" (or bf16=fail) stands in for the probe's figures:
      everything else (the rule, the cache, the broadcast, the first line) runs as measured.
      The tests pin it so that no test depends on the speed of the machine it runs on.
    * CUDA: bf16 where the GPU computes it natively (compute capability 8.0 and later), else
      fp32: assumed, not measured, and the first line says so.
    * `accelerate launch --mixed_precision bf16|fp16` (or `accelerate config`, both seen as
      ACCELERATE_MIXED_PRECISION) is honoured where precision is auto; an explicit
      precision= wins over it, and the first line says which setting won. A value the job
      cannot compute in (fp8) is said on the first line and ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from job.core.errors import BadInput

# /proc/cpuinfo flags of the units that run bf16 matrix products natively (recorded by the
# benchmarks beside what was measured; `auto` never decides by them).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CHOICES = ("auto", "fp32", "no", "tf32", "bf16", "fp16")
PROBE_SECONDS = 0.25  # per candidate and round
BF16_MARGIN = 1.05  # auto takes bf16 only when it measured more than 5% faster than fp32
MIN_ROUNDS, MAX_ROUNDS = 2, 6
STABLE_RATIO = 0.03  # the bf16/fp32 ratio moved less than this between two rounds: settled
MAX_AGE_DAYS = 30  # a cached measurement older than this is made again
CONTRADICTION = 1.3  # a run this much faster than its measured figure: the probe ran on a busy machine
RATES_ENV, REMEASURE_ENV = "DIGITS_PRECISION_RATES", "DIGITS_PRECISION_REMEASURE"


def display_name(mode: str) -> str:
    """What a mode is called in logs and reports: "no" (autocast off) is fp32."""
    return "fp32" if mode in ("no", "fp32") else mode


@dataclass(frozen=True)
class Precision:
    """Autocast settings of one process. Each optimizer gets its own GradScaler (fp16 only):
    one scaler shared by G and D skips or rescales one network because of the other's overflow.
    `measured` holds auto's figures and cache entry on a CPU (for `review`), else None."""

    mode: str  # effective: no | tf32 | bf16 | fp16
    device_type: str
    reason: str = ""  # why this mode, for the job's first lines
    measured: dict | None = field(default=None, compare=False)

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
    """Which of CPU_BF16_FLAGS this CPU has (recorded by the benchmarks, never decisive)."""
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


def _launcher_setting() -> tuple[str | None, str]:
    """(bf16 or fp16 when `accelerate launch --mixed_precision` or `accelerate config` asked for
    it, else None; a note for the first line when it asked for something the job cannot do).
    "no" is accelerate's default and asks for nothing."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if value in ("bf16", "fp16"):
        return value, ""
    if value in ("", "no"):
        return None, ""
    return None, f"accelerate's mixed_precision={value} ignored: this job computes in bf16, fp16 or fp32"


def resolve(requested: str, device: torch.device | str, unmeasured: str = "fp32 until measured") -> Precision:
    """The precision for `requested` without measuring: explicit choices, GPUs, and CPU auto
    where nothing is measured (fp32, `unmeasured` saying why)."""
    device_type = torch.device(device).type
    if requested not in CHOICES:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(CHOICES)}")
    requested = "no" if requested == "fp32" else requested
    launcher, note = _launcher_setting()
    if requested == "auto" and launcher is not None:
        requested, origin = launcher, f"from accelerate's mixed_precision={launcher}"
    else:
        origin = "asked for"
        if launcher is not None and requested != launcher:
            origin = f"asked for; accelerate's mixed_precision={launcher} ignored: the job's precision= wins"
    if note:
        origin = f"{origin}; {note}"

    def chosen(mode: str, reason: str) -> Precision:
        return Precision(mode, device_type, f"{reason}; {note}" if note and note not in reason else reason)

    if device_type == "cuda":
        gpu = torch.cuda.get_device_name(torch.device(device))
        if requested == "auto":
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return chosen("bf16", f"auto: {gpu} computes bf16 natively; assumed faster, not measured")
            return chosen("no", f"auto: {gpu} has no native bf16")
        return Precision(requested, device_type, origin)
    if requested == "auto":
        return chosen("no", f"auto: {unmeasured}")
    if requested == "fp16":
        return chosen("no", "fp16 needs a GPU: running in fp32 on CPU")
    if requested == "tf32":
        return chosen("no", "tf32 is a GPU mode: fp32 on CPU")
    return Precision(requested, device_type, origin)


# ----------------------------------------------------------------------------- measuring


def _rate(probe: Callable[[Precision], None], precision: Precision, items: int) -> float:
    """items/s of `probe` in `precision`: calls timed until PROBE_SECONDS have passed (one call
    at least; a slow probe, a large generator's forward, is timed once per round)."""
    calls, start = 0, time.perf_counter()
    while True:
        probe(precision)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= PROBE_SECONDS or calls >= 50:
            return items * calls / elapsed


@dataclass
class Measurement:
    """What the probe found: the best items/s of each mode ("no", "bf16"), the rounds it took,
    whether the figures settled, and why bf16 could not be measured (None: it could)."""

    rates: dict[str, float]
    rounds: int = 0
    stable: bool = True
    failed: str | None = None


def injected_rates() -> Measurement | None:
    """DIGITS_PRECISION_RATES ("fp32=400,bf16=300"; bf16=fail: its probe fails) in place of a
    measurement, or None when unset."""
    text = os.environ.get(RATES_ENV, "").strip()
    if not text:
        return None
    rates, failed = {}, None
    try:
        for part in text.split(","):
            name, value = (s.strip() for s in part.split("="))
            mode = {"fp32": "no", "no": "no", "bf16": "bf16"}[name]
            if mode == "bf16" and value == "fail":
                failed, value = f"{RATES_ENV} says the bf16 probe fails", "0"
            rates[mode] = float(value)
        if set(rates) != {"no", "bf16"} or min(rates.values()) < 0:
            raise ValueError
    except (ValueError, KeyError):
        raise BadInput(f"{RATES_ENV}={text!r} is not 'fp32=N,bf16=N' (images/s of each; bf16=fail: its probe "
                       "fails): fix it or unset it to measure") from None
    return Measurement(rates, rounds=0, failed=failed)


def measure(probe: Callable[[Precision], None], items: int) -> Measurement:
    """Items per second of `probe` (one step or forward pass of `items` images) in fp32 and in
    bf16 on this CPU, in alternating rounds, keeping each mode's best (a passing load on the
    machine slows a round, never speeds it up). Settled once the bf16/fp32 ratio moves by less
    than STABLE_RATIO between rounds (MIN_ROUNDS at least); not settled after MAX_ROUNDS: unsure.
    A bf16 probe that raises is reported as failed (fp32 is measured still)."""
    fp32, bf16 = Precision("no", "cpu"), Precision("bf16", "cpu")
    probe(fp32)  # warm-up, once per mode: kernels chosen, memory allocated
    rates: dict[str, float] = {}
    ratios: list[float] = []
    for round_ in range(1, MAX_ROUNDS + 1):
        rates["no"] = max(rates.get("no", 0.0), _rate(probe, fp32, items))
        try:
            if round_ == 1:
                probe(bf16)
            rates["bf16"] = max(rates.get("bf16", 0.0), _rate(probe, bf16, items))
        except (RuntimeError, NotImplementedError, TypeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return Measurement({"no": rates["no"], "bf16": 0.0}, round_, True, f"the bf16 probe failed: {first[:160]}")
        ratios.append(rates["bf16"] / rates["no"])
        if round_ >= MIN_ROUNDS and abs(ratios[-1] - ratios[-2]) <= STABLE_RATIO * ratios[-2]:
            return Measurement(rates, round_, True)
    return Measurement(rates, MAX_ROUNDS, False)


def decide(found: Measurement) -> tuple[str, str]:
    """(mode, why) from a measurement: bf16 only when settled and clearly faster."""
    if found.failed:
        return "no", found.failed
    if not found.stable:
        return "no", f"unsure: the figures had not settled after {found.rounds} rounds"
    # Ties go to the exact one: bf16 only when it is clearly faster, so two pods on the same
    # hardware do not pick differently by noise.
    return ("bf16" if found.rates["bf16"] > BF16_MARGIN * found.rates["no"] else "no"), ""


def _cache_file(key: dict) -> Path:
    from job.core.cache import cache_dir  # the job's cache folder, created on first use

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir()) / "precision" / f"{digest}.json"


def _stale(entry: dict) -> str:
    """Why a cached measurement must be made again ('' when it stands)."""
    if os.environ.get(REMEASURE_ENV) == "1":
        return f"{REMEASURE_ENV}=1"
    age_days = (time.time() - entry.get("measured_at", 0)) / 86400
    if age_days > MAX_AGE_DAYS:
        return f"the cached figures were {age_days:.0f} days old"
    return ""


def _measure_and_store(probe, items: int, full_key: dict, path: Path, why_again: str) -> dict:
    started = time.perf_counter()
    injected = injected_rates()
    found = injected or measure(probe, items)
    mode, why = decide(found)
    result = {"key": full_key, "rates": found.rates, "mode": mode, "why": why, "rounds": found.rounds,
              "injected": injected is not None, "bf16_failed": found.failed is not None,
              "seconds": round(time.perf_counter() - started, 2), "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
              "measured_at": time.time(), "again": why_again}
    if found.stable and not found.failed:  # an unsure or failed measurement is made again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)  # other pods on the node read it whole or not at all
    return result


def choose(requested: str, device: torch.device | str, probe: Callable[[Precision], None] | None = None,
           items: int = 0, key: dict | None = None, measure_here: bool = True,
           share: Callable[[dict | None], dict] | None = None, per_thread_count: bool = True,
           unmeasured: str = "fp32: nothing here to measure") -> Precision:
    """The precision for `requested`: `resolve`'s, except CPU auto with a probe, which is
    measured (or read from the cache). `key` names what was measured (command, model, batch
    size); `measure_here` is False on every process but the main one, and `share` hands the
    main process's result to the others (a broadcast), so every rank computes alike.
    per_thread_count=False keys the cache by machine only, not by this process's threads:
    sampling's bytes depend on the precision, and must not on how many processes ran.
    Without a probe, CPU auto is fp32 and `unmeasured` says why."""
    device_type = torch.device(device).type
    plain = resolve(requested, device, unmeasured)
    if device_type != "cpu" or requested != "auto" or probe is None or _launcher_setting()[0] is not None:
        return plain
    result = None
    if measure_here:
        full_key = {"cpu": cpu_model(), "torch": torch.__version__, **(key or {})}
        if per_thread_count:
            full_key["threads"] = torch.get_num_threads()
        if os.environ.get(RATES_ENV):
            full_key["injected"] = os.environ[RATES_ENV]  # stand-in figures never answer for real ones
        path = _cache_file(full_key)
        result = json.loads(path.read_text()) if path.is_file() else None
        again = _stale(result) if result else ""
        if result is None or again:
            result = _measure_and_store(probe, items, full_key, path, again)
            result["cached"] = False
        else:
            result["cached"] = True
        result["file"] = str(path)
    if share is not None:
        result = share(result)
    return _explained(result, device_type)


def _explained(result: dict, device_type: str) -> Precision:
    rates = result["rates"]
    if result.get("injected"):
        how = f"figures from {RATES_ENV}"
    elif result["cached"]:
        how = f"cached {result['measured']}"
    else:
        how = f"measured now in {result.get('seconds', 0):.1f} s, {result.get('rounds', 0)} rounds"
        if result.get("again"):
            how += f", again because {result['again']}"
    bf16 = "failed" if result.get("bf16_failed") else f"{rates['bf16']:.0f} img/s"
    reason = f"auto: fp32 {rates['no']:.0f} img/s, bf16 {bf16} on {result['key']['cpu']}, {how}"
    if result.get("why"):
        reason += f"; {result['why']}: fp32"
    note = _launcher_setting()[1]
    if note:
        reason += f"; {note}"
    return Precision(result["mode"], device_type, reason, measured=result)


def review(precision: Precision, run_rate: float) -> str | None:
    """After a training run: does its own steady speed (items/s of one process's steps, in the
    mode auto chose) contradict the measurement? If so the cache entry is dropped, so the next
    run measures again, and the line saying so is returned; None when it stands (or when
    nothing was measured)."""
    found = precision.measured
    if not found or not found.get("file") or found.get("injected") or run_rate <= 0:
        return None  # nothing measured here (stand-in figures describe no machine)
    chosen, rejected = found["mode"], ("bf16" if found["mode"] == "no" else "no")
    mine, other = found["rates"][chosen], found["rates"].get(rejected, 0.0)
    if run_rate < other:
        why = (f"this run's steps ran at {run_rate:.0f} img/s in {display_name(chosen)}, below the "
               f"{other:.0f} img/s measured for {display_name(rejected)}")
    elif run_rate > CONTRADICTION * mine:
        why = (f"this run's steps ran at {run_rate:.0f} img/s in {display_name(chosen)}, {run_rate / mine:.1f}x the "
               f"{mine:.0f} img/s measured (the machine was busier then)")
    else:
        return None
    with contextlib.suppress(OSError):
        Path(found["file"]).unlink()
    return f"auto: {why}; the next run measures again"
