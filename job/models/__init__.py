"""Model definitions and the registry that rebuilds a generator from its file.

Every size is a constructor argument (no module globals), so a generator file's metadata
(kind, arch, constructor kwargs) is enough to rebuild the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from job.errors import BadInput
from job.models.dcgan import ARCHS


def build_gan(arch: str, latent_dim: int, g_width: int, d_width: int, channels: int, num_classes: int):
    """(generator, discriminator, generator kwargs) for a DCGAN architecture."""
    gen_cls, disc_cls = ARCHS[arch]
    g_kwargs = {"latent_dim": latent_dim, "width": g_width, "channels": channels, "num_classes": num_classes}
    return gen_cls(**g_kwargs), disc_cls(width=d_width, channels=channels, num_classes=num_classes), g_kwargs


def build_generator(kind: str, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    if kind != "dcgan" or arch not in ARCHS:
        raise BadInput(f"generator kind={kind!r} arch={arch!r} is not one this version can build")
    try:
        return ARCHS[arch][0](**kwargs)
    except TypeError as e:
        raise BadInput(f"generator arguments {kwargs} do not fit arch {arch}: {e}") from None


def load_generator(uri: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, bytes]:
    """Rebuild the generator stored in `uri` in eval mode. Returns (model, info, file bytes)."""
    from job.checkpoint import read_generator_file

    tensors, info, data = read_generator_file(uri)
    model = build_generator(info["kind"], info["arch"], info["kwargs"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise BadInput(f"{uri}: the weights do not match the architecture in its metadata ({first})") from None
    return model.to(device).eval().requires_grad_(False), info, data
