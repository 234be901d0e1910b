"""Pure per-batch updates. No I/O, no logging: each returns a dict of detached 0-d tensors
(converting to floats would force a device sync every step; the loop does it when it logs).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from job.core.precision import Precision


def adam(params, weight_decay: float | None = None, **kwargs) -> torch.optim.Optimizer:
    """Adam (AdamW when weight_decay is given) with the fused kernel: one pass over all
    parameters a step instead of a dozen foreach ops. On the 2-core CPU it is within noise of
    foreach (scripts/bench_train.py measures both); on a GPU it saves kernel launches."""
    if weight_decay is not None:
        return torch.optim.AdamW(params, weight_decay=weight_decay, fused=True, **kwargs)
    return torch.optim.Adam(params, fused=True, **kwargs)


def gan_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scaler_g: torch.amp.GradScaler,
    scaler_d: torch.amp.GradScaler,
    precision: Precision,
    real: torch.Tensor,
    real_labels: torch.Tensor | None,
    z: torch.Tensor,
    fake_labels: torch.Tensor | None,
    no_sync_d=contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """One DCGAN update: D on real vs fake, then G against the updated D (non-saturating).

    `no_sync_d` is the DDP no_sync context of D: the G step backpropagates through D only to
    reach G, so D's gradients there are discarded and need no all-reduce.
    """
    b = real.shape[0]
    ones = torch.ones(b, device=real.device)
    zeros = torch.zeros(b, device=real.device)

    # --- discriminator: maximize log D(x) + log(1 - D(G(z)))
    with precision.autocast():
        fake = G(z, fake_labels)
        logit_real = D(real, real_labels)
        logit_fake = D(fake.detach(), fake_labels)
        loss_d = F.binary_cross_entropy_with_logits(logit_real, ones) + F.binary_cross_entropy_with_logits(
            logit_fake, zeros
        )
    opt_d.zero_grad(set_to_none=True)
    scaler_d.scale(loss_d).backward()
    scaler_d.step(opt_d)
    scaler_d.update()

    # --- generator: maximize log D(G(z)); D's parameters are frozen for this backward
    # (no_sync must wrap D's forward: that is where DDP arms its gradient all-reduce.)
    D.requires_grad_(False)
    try:
        with no_sync_d(), precision.autocast():
            logit_gen = D(fake, fake_labels)
            loss_g = F.binary_cross_entropy_with_logits(logit_gen, ones)
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(loss_g).backward()
    finally:
        D.requires_grad_(True)
    scaler_g.step(opt_g)
    scaler_g.update()

    return {
        "loss_d": loss_d.detach().float(),
        "loss_g": loss_g.detach().float(),
        "d_real": torch.sigmoid(logit_real.detach().float()).mean(),
        "d_fake": torch.sigmoid(logit_fake.detach().float()).mean(),
    }


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN stats) copied."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        eb.copy_(b)


def classifier_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    class_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One cross-entropy update at learning rate `lr` (the schedule is the caller's);
    `class_weights` weighs each class's loss (loss reweighting for a long tail)."""
    with precision.autocast():
        logits = model(images)
        loss = F.cross_entropy(logits, labels, weight=class_weights)
    _descend(opt, scaler, loss, lr)
    return {
        "loss": loss.detach().float(),
        "train_accuracy": (logits.detach().argmax(1) == labels).float().mean(),
    }


def autoencoder_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    lr: float,
) -> dict[str, torch.Tensor]:
    """One update of an image-to-image model towards `targets` (pixel MSE, in [-1, 1])."""
    with precision.autocast():
        outputs = model(inputs)
    loss = F.mse_loss(outputs.float(), targets.float())
    _descend(opt, scaler, loss, lr)
    return {"loss": loss.detach()}


def _descend(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor, lr: float) -> None:
    """Backward through the (fp16) scaler and one optimizer step at learning rate `lr`."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def warmup_cosine_lr(step: int, total: int, peak: float, warmup_fraction: float = 0.05) -> float:
    """Linear warm-up to `peak` over the first steps, then cosine decay to zero.
    A pure function of the step, so resuming needs no scheduler state."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
