"""Handwritten-to-printed autoencoder: the `autoencoder` kind of `job train`.

    accelerate launch -m job train --config autoencoder-mnist run.dir=runs/autoencoder
    python -m job transform generator=runs/autoencoder/autoencoder.safetensors inputs=my_digits/ out=printed/

Each training digit's target is its label drawn in the printed font(s) of `model.font`,
placed like MNIST (digit_image.templates). Pixel MSE, AdamW with warm-up and cosine decay,
random affine jitter of the inputs (so photos that are not perfectly centred still read).
At every checkpoint the test split is scored by the share of outputs whose nearest font
template (pixel MSE) is their own digit: `nearest_template_accuracy`.
"""

from __future__ import annotations

import torch

from job import storage
from job.core.errors import BadInput
from job.data import datasets, digit_image, loading
from job.data.digit_image import grid_png
from job.models import build_model
from job.models.autoencoder import nearest_template
from job.models.files import export_model
from job.training.steps import autoencoder_step, warmup_cosine_lr
from job.training.trainer import Trainer

ARCH = "conv"
GRID_EXAMPLES = 4  # pairs of rows (handwritten, printed) in the grid


def font_templates(font_spec: str, image_size: int) -> tuple[list[str], torch.Tensor]:
    """(font names, templates in [-1, 1] [10, fonts, S, S]); unreadable fonts are bad input."""
    try:
        fonts = digit_image.resolve_fonts(font_spec)
        pixels = digit_image.templates(fonts, image_size)
    except (OSError, ValueError) as e:
        raise BadInput(f"model.font={font_spec!r} cannot be used ({e}): give TTF/OTF paths, auto or builtin") from None
    return fonts, loading.to_model_input(torch.from_numpy(pixels), image_size, channels_last=False)


class AutoencoderTrainer(Trainer):

    def build(self) -> None:
        cfg, m = self.cfg, self.cfg.model
        if not datasets.named(cfg.data.name).digits or self.dataset_classes != 10:
            raise BadInput(f"model.kind=autoencoder draws the digits 0-9: data.name={cfg.data.name} "
                           f"({self.dataset_classes} classes) is not a digit dataset")
        self.fonts, templates = font_templates(m.font, cfg.data.image_size)
        self.kwargs = {"channels": self.channels, "image_size": cfg.data.image_size, "num_fonts": len(self.fonts),
                       "width": m.width, "latent_dim": m.latent_dim, "num_classes": 10}
        model = build_model("autoencoder", ARCH, self.kwargs)
        model.templates.copy_(templates)
        self.modules = {"autoencoder": model}
        self.trained = ["autoencoder"]
        self.accuracy: float | None = None
        self._test: loading.Split | None = None

    def prepare(self) -> None:
        self.net = self.prepare_adamw("autoencoder")

    def precision_probe(self):
        return self.adamw_probe("autoencoder", autoencoder_step, targets=lambda net, labels: net.templates[labels])

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        images, labels = self.batch(step)
        targets = self.modules["autoencoder"].templates[labels]
        self.net.train()
        lr = warmup_cosine_lr(step, t.steps, t.lr)
        out = autoencoder_step(self.net, self.optimizers["autoencoder"], self.scalers["autoencoder"], self.precision,
                               self.jittered(images, step), targets, lr)
        out["lr"] = torch.tensor(lr)
        return out

    def test_split(self) -> loading.Split:
        if self._test is None:
            self._test = loading.load_split(self.cfg.data, train=False)
        return self._test

    @torch.no_grad()
    def printed(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """Outputs in [-1, 1] (on the CPU) for uint8 handwritten `images`, in eval mode."""
        net = self.modules["autoencoder"].eval()
        try:
            outs = [net(loading.to_model_input(images[i : i + batch].to(self.device), self.cfg.data.image_size, False))
                    for i in range(0, len(images), batch)]
        finally:
            net.train()
        return torch.cat(outs).float().cpu()

    def evaluate(self, done: int) -> dict[str, float]:
        test = self.test_split()
        digits, _ = nearest_template(self.printed(test.images), self.modules["autoencoder"].templates)
        self.accuracy = (digits == test.labels.cpu()).float().mean().item()
        return {"nearest_template_accuracy": round(self.accuracy, 6)}

    @torch.no_grad()
    def write_grid(self, done: int) -> str:
        """Pairs of rows: GRID_EXAMPLES test digits of each class, then their printed output
        (the first font)."""
        test = self.test_split()
        picks = torch.stack([torch.nonzero(test.labels.cpu() == c).flatten()[:GRID_EXAMPLES] for c in range(10)], 1)
        handwritten = test.images.cpu()[picks.flatten()]  # row-major: example, then class
        printed = self.printed(handwritten)[:, :1]
        handwritten = loading.to_model_input(handwritten, self.cfg.data.image_size, False)
        if handwritten.shape[1] != 1:  # show RGB inputs as grey next to grey outputs
            handwritten = handwritten.mean(1, keepdim=True)
        rows = torch.stack([handwritten.view(GRID_EXAMPLES, 10, *printed.shape[1:]),
                            printed.view(GRID_EXAMPLES, 10, *printed.shape[1:])], 1)
        return self.save_grid(done, grid_png(rows.flatten(0, 2), nrow=10))

    def export(self, step: int) -> None:
        if self.accuracy is None:
            self.evaluate(step)
        extra = {"dataset": self.cfg.data.name, "fonts": [f.rsplit("/", 1)[-1] for f in self.fonts],
                 "nearest_template_accuracy": self.accuracy, "seed": self.cfg.seed, "steps": step}
        export_model(storage.join(self.cfg.run.dir, self.model_file),
                                self.modules["autoencoder"].state_dict(), kind="autoencoder", arch=ARCH,
                                kwargs=self.kwargs, step=step, extra=extra)

