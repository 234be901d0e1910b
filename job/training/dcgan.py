"""DCGAN training (unconditional or class-conditional): the GAN part of `job train`.

    accelerate launch -m job train --config cdcgan-mnist run.dir=runs/cdcgan

G and D update in turn (steps.gan_step); an exponential moving average of G is what the
grids show and what generator.safetensors holds.
"""

from __future__ import annotations

import copy

import torch

from job import storage
from job.data.digit_image import grid_png
from job.models import build_gan
from job.models.files import export_model
from job.training.steps import adam, ema_update, gan_step
from job.training.trainer import Trainer

GRID_COLUMNS = 10


class GanTrainer(Trainer):

    def build(self) -> None:
        m = self.cfg.model
        self.num_classes = self.dataset_classes if m.conditional else 0
        G, D, self.g_kwargs = build_gan(m.arch, m.latent_dim, m.g_width, m.d_width, self.channels, self.num_classes,
                                        m.minibatch_std, self.cfg.data.image_size)
        ema = copy.deepcopy(G).requires_grad_(False).eval()
        self.modules = {"generator": G, "discriminator": D, "generator_ema": ema}
        self.trained = ["generator", "discriminator"]

    def prepare(self) -> None:
        acc, t = self.acc, self.cfg.train
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        for module in self.modules.values():
            module.to(device=self.device, memory_format=memory_format)
        self.G, self.D = acc.prepare(self.modules["generator"], self.modules["discriminator"])
        self.ema = self.modules["generator_ema"]
        self.optimizers = {
            "generator": adam(self.modules["generator"].parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2)),
            "discriminator": adam(self.modules["discriminator"].parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2)),
        }
        self.scalers = {"g": self.precision.scaler(), "d": self.precision.scaler()}
        self.fixed_z, self.fixed_labels = self._fixed_noise()

    def precision_probe(self):
        t = self.cfg.train
        fmt = torch.channels_last if t.channels_last else torch.contiguous_format
        G = copy.deepcopy(self.modules["generator"]).to(device=self.device, memory_format=fmt)
        D = copy.deepcopy(self.modules["discriminator"]).to(device=self.device, memory_format=fmt)
        opt_g = adam(G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        opt_d = adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        real, labels = self.probe_inputs()
        g = torch.Generator(device=self.device).manual_seed(0)
        z = torch.randn(t.batch_size, self.cfg.model.latent_dim, generator=g, device=self.device)
        conditional = labels if self.num_classes else None

        def probe(p) -> None:
            gan_step(G, D, opt_g, opt_d, p.scaler(), p.scaler(), p, real, conditional, z, conditional)

        return probe

    def _noise(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z and fake labels of (seed, rank, step)."""
        gen = self.reseed_noise(step)
        b = self.cfg.train.batch_size
        z = torch.randn(b, self.cfg.model.latent_dim, generator=gen, device=self.device)
        labels = None
        if self.num_classes:
            labels = torch.randint(0, self.num_classes, (b,), generator=gen, device=self.device)
        return z, labels

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        real, real_labels = self.batch(step)
        z, fake_labels = self._noise(step)
        return gan_step(
            self.G, self.D, self.optimizers["generator"], self.optimizers["discriminator"],
            self.scalers["g"], self.scalers["d"], self.precision,
            real, real_labels if self.num_classes else None, z, fake_labels,
            no_sync_d=lambda: self.acc.no_sync(self.D),
        )

    def after_step(self, done: int) -> None:
        # Warm-up so early grids are not dominated by the random initial weights.
        decay = min(self.cfg.train.ema_decay, (1 + done) / (10 + done))
        ema_update(self.ema, self.modules["generator"], decay)

    def export(self, step: int) -> None:
        export_model(
            storage.join(self.cfg.run.dir, self.model_file),
            self.ema.state_dict(),
            kind="dcgan",
            arch=self.cfg.model.arch,
            kwargs=self.g_kwargs,
            step=step,
        )

    def _fixed_noise(self):
        """The same noise for every grid of the run: one row per class when conditional."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        n = GRID_COLUMNS * (self.num_classes or 8)
        z = torch.randn(n, self.cfg.model.latent_dim, generator=g).to(self.device)
        labels = None
        if self.num_classes:
            labels = torch.arange(self.num_classes).repeat_interleave(GRID_COLUMNS).to(self.device)
        return z, labels

    @torch.no_grad()
    def write_grid(self, done: int) -> str:
        with self.precision.autocast():
            images = self.ema(self.fixed_z, self.fixed_labels)
        return self.save_grid(done, grid_png(images, nrow=GRID_COLUMNS))
