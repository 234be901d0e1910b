"""The Accelerator and everything that depends on where the job runs.

One place decides: device (CUDA if present, else CPU even under a multi-GPU launch),
precision (autocast dtype and one GradScaler per optimizer for fp16), CPU threads per
process, and printing from the main process only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator


@dataclass
class Precision:
    """Autocast settings. Each optimizer gets its own GradScaler (fp16 only): one scaler
    shared by G and D skips or rescales one network because of the other's overflow."""

    mode: str  # effective: no | bf16 | fp16
    device_type: str

    def autocast(self):
        if self.mode == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.mode == "fp16")


def make_accelerator(mixed_precision: str) -> tuple[Accelerator, Precision, list[str]]:
    """Build the Accelerator for this process. Returns (accelerator, precision, notes).

    Without CUDA, Accelerator must be told cpu=True: otherwise a 2-process launch quietly
    runs two unrelated single-process jobs instead of one gloo job.
    """
    notes = []
    cuda = torch.cuda.is_available()
    # Precision is handled here (autocast + per-optimizer scalers), not by accelerate,
    # whose single GradScaler would be shared by G and D.
    accelerator = Accelerator(cpu=not cuda, mixed_precision="no")
    mode = mixed_precision
    if not cuda and mode == "fp16":
        mode = "no"
        notes.append("mixed_precision=fp16 needs a GPU: running in fp32 on CPU")
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between the processes on this node instead of oversubscribing.
        per_process = max(1, (os.cpu_count() or 1) // accelerator.state.num_processes)
        torch.set_num_threads(per_process)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator, Precision(mode, accelerator.device.type), notes


def describe(accelerator: Accelerator, precision: Precision) -> str:
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads/process)"
    return f"device={device.type} [{name}] world_size={accelerator.num_processes} precision={precision.mode}"


def print0(accelerator: Accelerator, *args, **kwargs) -> None:
    """Print once per job (global main process), flushed so logs interleave sensibly."""
    if accelerator.is_main_process:
        print(*args, **kwargs, flush=True)


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (base seed, rank, step, ...), stable everywhere."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)
