"""The mean-image baseline: the `mean` kind of `job train`.

    python -m job train model.kind=mean run.dir=runs/mean
    python -m job sample generator=runs/mean/generator.safetensors count=10000 out=runs/mean/shards

One pass over the training split: every process sums the images of its share (every
world-th image), the sums are all-reduced, and the per-class means become the model. The
run is recorded as step 1 with the same files as a GAN run (config.yaml, metrics.jsonl, a
grid, a checkpoint, generator.safetensors), so `sample` and `evaluate` take it as it is.
"""

from __future__ import annotations

import time

import torch

from job import storage
from job.core import config, console
from job.data import loading
from job.data.digit_image import grid_png
from job.models import build_model
from job.models.files import export_model
from job.models.mean import class_sums, means_from_sums
from job.training.metrics import MetricsLog
from job.training.trainer import Trainer

ARCH = "mean"
GRID_COLUMNS = 10


class MeanTrainer(Trainer):
    uses_batches = False

    def build(self) -> None:
        m = self.cfg.model
        self.num_classes = self.dataset_classes if m.conditional else 0
        self.kwargs = {"channels": self.channels, "image_size": self.cfg.data.image_size,
                       "num_classes": self.num_classes, "pixel_noise": m.pixel_noise}
        self.modules = {"mean": build_model("mean", ARCH, self.kwargs)}
        self.trained = ["mean"]

    def prepare(self) -> None:
        self.model = self.modules["mean"].to(self.device)  # nothing to optimize or wrap

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        raise AssertionError("the mean model is computed in one pass (run), not in steps")

    def export(self, step: int) -> None:
        export_model(storage.join(self.cfg.run.dir, self.model_file), self.model.state_dict(),
                                kind="mean", arch=ARCH, kwargs=self.kwargs, step=step,
                                extra={"dataset": self.cfg.data.name, "images": self.images_seen})

    @torch.no_grad()
    def write_grid(self, done: int) -> str:
        """One row per class (one row in all when unconditional): the samples of fixed noise."""
        rows = self.num_classes or 1
        gen = torch.Generator().manual_seed(self.cfg.seed)
        z = torch.randn(rows * GRID_COLUMNS, self.model.latent_dim, generator=gen).to(self.device)
        labels = torch.arange(rows, device=self.device).repeat_interleave(GRID_COLUMNS) if self.num_classes else None
        return self.save_grid(done, grid_png(self.model(z, labels), nrow=GRID_COLUMNS))

    def run(self) -> dict:
        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            storage.write_bytes(storage.join(cfg.run.dir, "config.yaml"), config.to_yaml(cfg).encode())
        metrics = MetricsLog(cfg.run.dir, self.start_step) if acc.is_main_process else None
        self.images_seen = 0
        if self.start_step >= 1:
            console.say0(acc, f"the mean model is already computed (step {self.start_step})")
            return self._finish(self.start_step, metrics)
        started = time.perf_counter()
        share = slice(acc.process_index, None, acc.num_processes)
        to_input = lambda x: loading.to_model_input(x, cfg.data.image_size, channels_last=False)  # noqa: E731
        sums, counts = class_sums(self.images[share], self.labels[share], self.num_classes, to_input)
        sums, counts = acc.reduce(sums, reduction="sum"), acc.reduce(counts, reduction="sum")
        self.model.means.copy_(means_from_sums(sums, counts))
        self.images_seen = int(counts.sum().item())
        if metrics is not None:
            elapsed = time.perf_counter() - started
            metrics.log({"step": 1, "images": self.images_seen, "images_per_s": round(self.images_seen / elapsed, 1),
                         "empty_classes": int((counts == 0).sum().item())})
            metrics.flush()
            self.write_grid(1)
        self.save_checkpoint(1)
        return self._finish(1, metrics)
