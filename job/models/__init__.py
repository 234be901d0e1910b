"""Building and loading models: a model file's (kind, arch) names its network class in the
registry of job/core/kinds.py. Model files themselves: job/models/files.py; the classifier's
scores of images: job/models/scoring.py.

Every size is a constructor argument (no module globals), so a model file's metadata
(kind, arch, constructor kwargs) is enough to rebuild the network.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch
from torch import nn

from job.core.errors import BadInput
from job.core.kinds import GENERATOR_KINDS, KINDS
from job.models.dcgan import ARCHS

# Model files shipped inside the package (job/weights/README.md says how each was made) are
# registered with their kind in job/core/kinds.py: `classifier=builtin:mnist`,
# `transform generator=builtin:mnist`.
BUILTIN_PREFIX = "builtin:"


def build_gan(arch: str, latent_dim: int, g_width: int, d_width: int, channels: int, num_classes: int,
              minibatch_std: bool = False, image_size: int = 28):
    """(generator, discriminator, generator kwargs) for a DCGAN architecture."""
    gen_cls, disc_cls = ARCHS[arch]
    g_kwargs = {"latent_dim": latent_dim, "width": g_width, "channels": channels, "num_classes": num_classes}
    d_kwargs = {"width": d_width, "channels": channels, "num_classes": num_classes, "minibatch_std": minibatch_std}
    if arch not in KINDS["dcgan"].fixed_sizes:  # an architecture of one size takes no image_size
        g_kwargs["image_size"] = d_kwargs["image_size"] = image_size
    return gen_cls(**g_kwargs), disc_cls(**d_kwargs), g_kwargs


def resolve_builtin(spec: str, kind: str) -> str:
    """A model URI, with `builtin:<name>` resolved to the file of that kind in job/weights."""
    if not spec.startswith(BUILTIN_PREFIX):
        return spec
    name, shipped = spec[len(BUILTIN_PREFIX):], KINDS[kind].builtins
    if name not in shipped:
        choices = ", ".join(BUILTIN_PREFIX + k for k in shipped) or "none"
        raise BadInput(f"{spec!r} is not a shipped {kind} (shipped: {choices}); pass a model file URI")
    return str(resources.files("job") / "weights" / shipped[name])


def build_model(kind: str, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """The network of (kind, arch) as registered in job/core/kinds.py, built from its kwargs."""
    if kind not in KINDS or arch not in KINDS[kind].archs:
        raise BadInput(f"model kind={kind!r} arch={arch!r} is not one this version can build")
    try:
        return KINDS[kind].network_class(arch)(**kwargs)
    except TypeError as e:
        raise BadInput(f"model arguments {kwargs} do not fit {kind} arch {arch}: {e}") from None


def load_model(uri: str, kind: str | tuple[str, ...],
               device: torch.device | str = "cpu") -> tuple[nn.Module, dict, bytes]:
    """Rebuild the model stored in `uri` (of `kind`, or one of several), in eval mode.
    Returns (model, info, file bytes)."""
    from job.models.files import read_model_file

    tensors, info, data = read_model_file(uri)
    kinds = (kind,) if isinstance(kind, str) else kind
    if info["kind"] not in kinds:
        raise BadInput(f"{uri} holds a {info['kind']} model, but a {' or '.join(kinds)} model is needed here")
    model = build_model(info["kind"], info["arch"], info["kwargs"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise BadInput(f"{uri}: the weights do not match the architecture in its metadata ({first})") from None
    return model.to(device).eval().requires_grad_(False), info, data


def load_generator(uri: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, bytes]:
    """A model that draws digits from noise and labels: a DCGAN generator or the mean model."""
    return load_model(uri, GENERATOR_KINDS, device)
