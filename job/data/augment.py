"""Random small affine jitter of digit batches, for classifier training.

Handwriting varies in position, slant and size; the classifier that judges generated
digits must not be thrown by a digit one pixel off-centre. Works on model input in [-1, 1]
on any device; the randomness comes from the caller's generator (counter-based per step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    x: torch.Tensor,
    gen: torch.Generator,
    max_degrees: float = 10.0,
    max_shift: float = 2.0,
    scale: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """Rotate by up to `max_degrees`, shift by up to `max_shift` pixels, scale within `scale`.
    Background stays at -1 (the image is shifted to [0, 2] so grid_sample's zero padding
    is background)."""
    b, _, h, w = x.shape
    device = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen, device=device) * (hi - lo) + lo

    angle = uniform(-max_degrees, max_degrees) * (math.pi / 180.0)
    s = uniform(*scale)
    tx, ty = uniform(-max_shift, max_shift) * (2.0 / w), uniform(-max_shift, max_shift) * (2.0 / h)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    return out
