"""The mean-image baseline: the per-pixel mean of each class (or of all images).

The seed project's method, kept as the floor every learned generator must beat. It is
sampled like a generator: `forward(z, labels)` returns the mean image of each label, plus
`pixel_noise` grey levels of Gaussian noise taken from z (one z value per pixel, so a
sample depends only on its z and label, as with a GAN). With no noise every sample of a
class is its mean image.
"""

from __future__ import annotations

import torch
from torch import nn


class MeanImages(nn.Module):
    def __init__(self, channels: int = 1, image_size: int = 28, num_classes: int = 10, pixel_noise: float = 0.0):
        super().__init__()
        self.num_classes, self.image_size, self.pixel_noise = num_classes, image_size, pixel_noise
        self.output_shape = (channels, image_size, image_size)
        self.latent_dim = channels * image_size * image_size
        # In [-1, 1], like a generator's output. A parameter (never trained) so that the
        # cross-rank parameter check of a training run covers it.
        self.means = nn.Parameter(torch.zeros(max(num_classes, 1), *self.output_shape), requires_grad=False)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("a per-class mean model needs labels")
            images = self.means[labels]
        else:
            images = self.means.expand(z.shape[0], *self.output_shape)
        if self.pixel_noise:
            images = images + (self.pixel_noise / 127.5) * z.view(-1, *self.output_shape).to(images.dtype)
        return images.clamp(-1.0, 1.0)


@torch.no_grad()
def class_sums(images: torch.Tensor, labels: torch.Tensor, num_classes: int, to_input, chunk: int = 8192):
    """(float64 sums [K, C, S, S], counts [K]) of model-input images per class; K is 1 when
    num_classes is 0. `to_input` maps a uint8 chunk to the model's size and [-1, 1]."""
    k = max(num_classes, 1)
    sums, counts = None, torch.zeros(k, dtype=torch.float64, device=images.device)
    for start in range(0, len(images), chunk):
        x = to_input(images[start : start + chunk]).double()
        y = labels[start : start + chunk] if num_classes else torch.zeros(len(x), dtype=torch.int64, device=x.device)
        if sums is None:
            sums = torch.zeros(k, *x.shape[1:], dtype=torch.float64, device=x.device)
        sums.index_add_(0, y, x)
        counts += torch.bincount(y, minlength=k).double()
    return sums, counts


def means_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """float32 mean images; a class with no images gets the overall mean."""
    overall = sums.sum(0) / counts.sum().clamp(min=1)
    means = sums / counts.clamp(min=1).view(-1, *[1] * (sums.dim() - 1))
    means[counts == 0] = overall
    return means.float()
