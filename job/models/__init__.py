"""Model definitions and the registry that rebuilds a model from its file.

Every size is a constructor argument (no module globals), so a model file's metadata
(kind, arch, constructor kwargs) is enough to rebuild the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from job.errors import BadInput
from job.models.classifier import DigitClassifier
from job.models.dcgan import ARCHS

# kind -> arch -> constructor. A file names both, so old files keep loading when new
# architectures arrive.
BUILDERS: dict[str, dict[str, type[nn.Module]]] = {
    "dcgan": {arch: pair[0] for arch, pair in ARCHS.items()},
    "classifier": {"cnn": DigitClassifier},
}


def build_gan(arch: str, latent_dim: int, g_width: int, d_width: int, channels: int, num_classes: int,
              minibatch_std: bool = False):
    """(generator, discriminator, generator kwargs) for a DCGAN architecture."""
    gen_cls, disc_cls = ARCHS[arch]
    g_kwargs = {"latent_dim": latent_dim, "width": g_width, "channels": channels, "num_classes": num_classes}
    D = disc_cls(width=d_width, channels=channels, num_classes=num_classes, minibatch_std=minibatch_std)
    return gen_cls(**g_kwargs), D, g_kwargs


def build_model(kind: str, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    if arch not in BUILDERS.get(kind, {}):
        raise BadInput(f"model kind={kind!r} arch={arch!r} is not one this version can build")
    try:
        return BUILDERS[kind][arch](**kwargs)
    except TypeError as e:
        raise BadInput(f"model arguments {kwargs} do not fit {kind} arch {arch}: {e}") from None


def load_model(uri: str, kind: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, bytes]:
    """Rebuild the `kind` model stored in `uri`, in eval mode. Returns (model, info, file bytes)."""
    from job.checkpoint import read_model_file

    tensors, info, data = read_model_file(uri)
    if info["kind"] != kind:
        raise BadInput(f"{uri} holds a {info['kind']} model, but a {kind} is needed here")
    model = build_model(info["kind"], info["arch"], info["kwargs"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise BadInput(f"{uri}: the weights do not match the architecture in its metadata ({first})") from None
    return model.to(device).eval().requires_grad_(False), info, data


def load_generator(uri: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, bytes]:
    return load_model(uri, "dcgan", device)
