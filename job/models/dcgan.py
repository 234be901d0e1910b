"""DCGAN generators and discriminators, unconditional or class-conditional.

Two architectures:
- `dcgan28`: MNIST-shaped. Dense projection of z to S/4 x S/4, then two stride-2
  transposed convolutions (the shape used by the seed projects; 7x7 -> 28x28 for MNIST).
  Cheap enough for CPUs; `image_size` S may be any multiple of 4 (28, 32, 48, 64).
- `dcgan64`: the classic DCGAN of pytorch/examples (Radford et al.) at 64x64, so its speed
  can be compared like for like with that script.

Conditioning (num_classes > 0): G concatenates a learned label embedding to z; D adds a
projection term <embed(y), features> to its logit (Miyato & Koyama 2018), which keeps D's
job a single real/fake logit and trains more stably than one-hot label planes.
D returns raw logits: the loss is BCEWithLogits (Sigmoid + BCELoss breaks under autocast).
"""

from __future__ import annotations

import torch
from torch import nn

LABEL_EMBED_DIM = 32  # width of the label embedding concatenated to z in conditional G


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) for conv/linear weights, N(1, 0.02) for norm scales (DCGAN paper)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)


class _ConditionalInput(nn.Module):
    """z [B, nz] (+ labels [B]) -> [B, nz (+ LABEL_EMBED_DIM)]."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, LABEL_EMBED_DIM) if num_classes else None

    @property
    def extra_dim(self) -> int:
        return LABEL_EMBED_DIM if self.num_classes else 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.embed is None:
            return z
        if labels is None:
            raise ValueError("a conditional generator needs labels")
        return torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)


class _ProjectionHead(nn.Module):
    """features [B, F] (+ labels) -> logit [B]: linear(h) + <embed(y), h> when conditional."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        logit = self.linear(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs labels")
            logit = logit + (self.embed(labels).to(h.dtype) * h).sum(dim=1)
        return logit


class MinibatchStd(nn.Module):
    """Appends one feature map: the mean over features of the batch standard deviation
    (Karras et al. 2018). D can then see how varied a batch is, and G is pushed away from
    drawing the same few digits (the modes an unconditional G tends to drop)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        spread = h.float().std(dim=0, unbiased=False).add(1e-8).mean().to(h.dtype)
        return torch.cat([h, spread.expand(h.shape[0], 1, *h.shape[2:])], dim=1)


def _quarter(image_size: int) -> int:
    if image_size % 4:
        raise ValueError(f"image_size {image_size} is not a multiple of 4")
    return image_size // 4


class Generator28(nn.Module):
    def __init__(self, latent_dim: int = 100, width: int = 64, channels: int = 1, num_classes: int = 10,
                 image_size: int = 28):
        super().__init__()
        self.latent_dim, self.num_classes, self.image_size = latent_dim, num_classes, image_size
        self.output_shape = (channels, image_size, image_size)
        self.cond = _ConditionalInput(num_classes)
        w, q = width, _quarter(image_size)  # q = 7 for MNIST
        self.project = nn.Sequential(
            nn.Linear(latent_dim + self.cond.extra_dim, 4 * w * q * q, bias=False),  # [B, 4w*q*q]
        )
        self.body = nn.Sequential(
            nn.BatchNorm2d(4 * w), nn.ReLU(True),  # [B, 4w, q, q]
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False),  # [B, 2w, 2q, 2q]
            nn.BatchNorm2d(2 * w), nn.ReLU(True),
            nn.ConvTranspose2d(2 * w, channels, 4, 2, 1),  # [B, C, 4q, 4q]
            nn.Tanh(),
        )
        self._width, self._quarter = w, q
        init_dcgan_weights(self)
        if self.cond.embed is not None:
            nn.init.normal_(self.cond.embed.weight, 0.0, 1.0)  # same scale as z

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(self.cond(z, labels)).view(-1, 4 * self._width, self._quarter, self._quarter)
        return self.body(x)


class Discriminator28(nn.Module):
    def __init__(self, width: int = 64, channels: int = 1, num_classes: int = 10, minibatch_std: bool = False,
                 image_size: int = 28):
        super().__init__()
        w, q = width, _quarter(image_size)
        extra = 1 if minibatch_std else 0
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1),  # [B, w, 2q, 2q]; no norm on the first layer
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),  # [B, 2w, q, q]
            nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, True),
            *([MinibatchStd()] if minibatch_std else []),  # [B, 2w (+1), q, q]
            nn.Flatten(),  # [B, (2w + 1)*q*q]
        )
        self.head = _ProjectionHead((2 * w + extra) * q * q, num_classes)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(x), labels)


class Generator64(nn.Module):
    def __init__(self, latent_dim: int = 100, width: int = 64, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.latent_dim, self.num_classes, self.image_size = latent_dim, num_classes, 64
        self.output_shape = (channels, 64, 64)
        self.cond = _ConditionalInput(num_classes)
        w = width
        self.body = nn.Sequential(
            nn.ConvTranspose2d(latent_dim + self.cond.extra_dim, 8 * w, 4, 1, 0, bias=False),  # [B, 8w, 4, 4]
            nn.BatchNorm2d(8 * w), nn.ReLU(True),
            nn.ConvTranspose2d(8 * w, 4 * w, 4, 2, 1, bias=False),  # [B, 4w, 8, 8]
            nn.BatchNorm2d(4 * w), nn.ReLU(True),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False),  # [B, 2w, 16, 16]
            nn.BatchNorm2d(2 * w), nn.ReLU(True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),  # [B, w, 32, 32]
            nn.BatchNorm2d(w), nn.ReLU(True),
            nn.ConvTranspose2d(w, channels, 4, 2, 1, bias=False),  # [B, C, 64, 64]
            nn.Tanh(),
        )
        init_dcgan_weights(self)
        if self.cond.embed is not None:
            nn.init.normal_(self.cond.embed.weight, 0.0, 1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.cond(z, labels)
        return self.body(x[:, :, None, None])


class Discriminator64(nn.Module):
    def __init__(self, width: int = 64, channels: int = 1, num_classes: int = 10, minibatch_std: bool = False):
        super().__init__()
        w = width
        self.spread = MinibatchStd() if minibatch_std else None
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1, bias=False),  # [B, w, 32, 32]
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),  # [B, 2w, 16, 16]
            nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False),  # [B, 4w, 8, 8]
            nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * w, 8 * w, 4, 2, 1, bias=False),  # [B, 8w, 4, 4]
            nn.BatchNorm2d(8 * w), nn.LeakyReLU(0.2, True),
        )
        # The classic head: one 4x4 conv to a single logit per image.
        self.out = nn.Conv2d(8 * w + (1 if minibatch_std else 0), 1, 4, 1, 0, bias=False)  # [B, 1, 1, 1]
        self.embed = nn.Embedding(num_classes, 8 * w) if num_classes else None
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        logit = self.out(self.spread(h) if self.spread is not None else h).flatten()
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs labels")
            logit = logit + (self.embed(labels).to(h.dtype) * h.sum(dim=(2, 3))).sum(dim=1)
        return logit


ARCHS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "dcgan28": (Generator28, Discriminator28),
    "dcgan64": (Generator64, Discriminator64),
}
