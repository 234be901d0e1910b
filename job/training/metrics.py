"""Run outputs that are not checkpoints: metrics.jsonl, sample grid PNGs, TensorBoard, and
the progress a person reads (a bar on a terminal, plain lines in a pod's log).

All writes go through storage (local or S3) from the main process only.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import torch
from PIL import Image
from tqdm import tqdm

from job import console, storage


class MetricsLog:
    """`<run>/metrics.jsonl`, one JSON object per logged step.

    The whole file is rewritten on each flush (objects cannot be appended to on S3, and a
    run logs a few hundred lines). On resume, lines past the resumed step are dropped, so
    the file never holds a step twice.
    """

    def __init__(self, run_dir: str, resume_step: int):
        self.uri = storage.join(run_dir, "metrics.jsonl")
        self.lines: list[str] = []
        if resume_step > 0 and storage.exists(self.uri):
            for line in storage.read_bytes(self.uri).decode().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        self.lines.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
        self._tb = _tensorboard_writer(run_dir)

    def log(self, record: dict) -> None:
        self.lines.append(json.dumps(record))
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def flush(self) -> None:
        storage.write_bytes(self.uri, ("\n".join(self.lines) + "\n").encode())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(run_dir: str):
    """A SummaryWriter under <run>/tensorboard when tensorboard is installed and the run is local."""
    if storage.is_remote(run_dir):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """Images in [-1, 1], [N, C, H, W] -> PNG bytes of a grid with `nrow` images per row."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    if images.shape[1] == 1:
        array = array[:, :, 0]  # make_grid repeats grey images to RGB; store them as grey
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class PlainProgress:
    """tqdm's update/set_postfix/close, printed as a plain line at most every `every_s`
    seconds and at the end: a pod log (not a terminal) gets no carriage-return bar."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, every_s: float):
        self.total, self.n, self.desc, self.unit, self.every_s = total, initial, desc, unit, every_s
        self.postfix: dict = {}
        self._started = self._last = time.monotonic()
        self._start_n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._print()

    def set_postfix(self, postfix: dict) -> None:
        self.postfix = dict(postfix)

    def close(self) -> None:
        if self.n > self._start_n:
            self._print()

    def _print(self) -> None:
        self._last = time.monotonic()
        rate = (self.n - self._start_n) / max(self._last - self._started, 1e-9)
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        console.progress(f"{self.n}/{self.total} {self.unit}s ({rate:.1f} {self.unit}s/s){extra}")


def progress(enabled: bool, total: int, desc: str, unit: str, initial: int = 0, every_s: float = 30.0, **bar):
    """A tqdm bar when stderr is a terminal, plain periodic lines otherwise, nothing when
    not `enabled` (other ranks, progress=false)."""
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, **bar)
    return PlainProgress(total, initial, desc, unit, every_s)
