"""A training run's metrics: `<run>/metrics.jsonl` and, when tensorboard is installed and
the run is local, TensorBoard scalars beside it.

All writes go through storage (local or S3) from the main process only.
"""

from __future__ import annotations

import json
import os

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
    if storage.is_remote(run_dir):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))
