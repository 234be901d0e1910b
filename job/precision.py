"""Which autocast precision a process computes in, and why.

`auto`, the default of `train.mixed_precision`, `sample precision=` and `evaluate precision=`,
takes bf16 only where the device has units that make it fast, else fp32:

- CUDA: bf16 when the GPU supports it natively (compute capability 8.0 and later), else fp32
  (fp16 with its GradScaler stays an explicit choice: GAN losses can overflow it);
- CPU: bf16 when the CPU reports AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids and later;
  AMD Zen 4 and later when the hypervisor passes the flags through), else fp32.

Without those units oneDNN emulates bf16 and it is much slower than fp32, not faster: on the
2-core AVX2 EPYC this project is developed on, a cdcgan-mnist training step ran about 30x
slower and the generator's forward about 4x slower in bf16 (see README, Benchmarks). So `auto` must look
at the hardware; a blanket bf16 default would be a trap.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

# /proc/cpuinfo flags of the units that run bf16 matrix products natively.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CHOICES = ("auto", "no", "bf16", "fp16")


def display_name(mode: str) -> str:
    """What a mode is called in logs and reports: "no" (autocast off) is fp32."""
    return "fp32" if mode == "no" else mode


@dataclass(frozen=True)
class Precision:
    """Autocast settings of one process. Each optimizer gets its own GradScaler (fp16 only):
    one scaler shared by G and D skips or rescales one network because of the other's overflow."""

    mode: str  # effective: no | bf16 | fp16
    device_type: str
    reason: str = ""  # why this mode, for the job's first lines

    @property
    def name(self) -> str:
        return display_name(self.mode)

    def autocast(self):
        if self.mode == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.mode == "fp16")

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


def resolve(requested: str, device: torch.device | str, flags: set[str] | None = None) -> Precision:
    """The precision a process on `device` runs for `requested` (auto | no | bf16 | fp16).
    `flags` stands in for the CPU's flags (tests)."""
    device_type = torch.device(device).type
    if requested not in CHOICES:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(CHOICES)}")
    if device_type == "cuda":
        gpu = torch.cuda.get_device_name(torch.device(device))
        if requested == "auto":
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return Precision("bf16", device_type, f"auto: {gpu} computes bf16 natively")
            return Precision("no", device_type, f"auto: {gpu} has no native bf16")
        return Precision(requested, device_type, "asked for")
    units = cpu_bf16_units(flags)
    if requested == "auto":
        if units:
            return Precision("bf16", device_type, f"auto: this CPU has {' and '.join(units)}")
        return Precision("no", device_type, "auto: this CPU has no AMX-BF16 or AVX512-BF16, where bf16 is slower")
    if requested == "fp16":
        return Precision("no", device_type, "fp16 needs a GPU: running in fp32 on CPU")
    if requested == "bf16" and not units:
        return Precision("bf16", device_type, "asked for; this CPU has no bf16 units, expect it to be slower than fp32")
    return Precision(requested, device_type, "asked for")
