"""Run outputs that are not checkpoints: metrics.jsonl, sample grid PNGs, TensorBoard.

All writes go through storage (local or S3) from the main process only.
"""

from __future__ import annotations

import io
import json
import os

import torch
from PIL import Image

from job import storage


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
    if storage.is_s3(run_dir):
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
