"""Handwritten digit -> the same digit in a printed font.

A convolutional encoder squeezes the handwritten digit to a short code; a decoder draws
from it one printed rendering per target font (an output channel each). Trained against
font templates (the digit of the input's label, rendered and placed like MNIST), so the
code must carry the digit's identity and nothing of the handwriting.

The templates travel inside the model (a buffer): the model file alone can score itself
(nearest template) and show what it aims at, on machines without the fonts.
"""

from __future__ import annotations

import torch
from torch import nn


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class PrintedDigitAutoencoder(nn.Module):
    def __init__(self, channels: int = 1, image_size: int = 28, num_fonts: int = 1, width: int = 32,
                 latent_dim: int = 64, num_classes: int = 10):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size {image_size} is not a multiple of 4")
        self.channels, self.image_size, self.num_fonts, self.num_classes = channels, image_size, num_fonts, num_classes
        self.output_shape = (num_fonts, image_size, image_size)
        w, q = width, image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1), nn.ReLU(inplace=True),  # [B, w, S, S]
            *_down(w, 2 * w),  # [B, 2w, S/2, S/2]
            *_down(2 * w, 4 * w),  # [B, 4w, q, q]
            nn.Flatten(),
            nn.Linear(4 * w * q * q, latent_dim),  # [B, latent]
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 4 * w * q * q, bias=False),
            nn.Unflatten(1, (4 * w, q, q)),
            nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),  # [B, 4w, q, q]
            *_up(4 * w, 2 * w),  # [B, 2w, S/2, S/2]
            *_up(2 * w, w),  # [B, w, S, S]
            nn.Conv2d(w, num_fonts, 3, 1, 1),  # [B, fonts, S, S]
            nn.Tanh(),
        )
        # Every digit in every font, in [-1, 1]: [num_classes, fonts, S, S]. Set by the trainer.
        self.register_buffer("templates", torch.zeros(num_classes, num_fonts, image_size, image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] handwritten, in [-1, 1] -> [B, fonts, S, S] printed, in [-1, 1]."""
        return self.decoder(self.encoder(x))


@torch.no_grad()
def nearest_template(printed: torch.Tensor, templates: torch.Tensor, chunk: int = 1000):
    """(digit [B], mean squared pixel distance [B]) of the template closest to each output.
    `printed` [B, fonts, S, S] and `templates` [K, fonts, S, S], both in [-1, 1]."""
    templates = templates.float().to(printed.device)
    digits, distances = [], []
    for part in printed.float().split(chunk):
        distance = (part[:, None] - templates[None]).pow(2).flatten(2).mean(2)  # [b, K]
        best, digit = distance.min(dim=1)
        digits.append(digit)
        distances.append(best)
    return torch.cat(digits), torch.cat(distances)
