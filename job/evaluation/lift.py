"""What synthetic digits buy an augmentation user: "I have k real labeled digits per class;
how much better does my classifier get when I add yours?"

A fresh classifier (the classifier-mnist recipe: same network, Adam with warm-up and
cosine decay, random affine jitter) is trained twice for the same number of steps: on the
k-per-class real subset alone, and on that subset plus the synthetic digits. Both are tested
on the real test split; the lift is the difference in accuracy points. Repeated over seeds
(each seed draws its own real subset and its own classifier initialisation and batch order).

Used by `job evaluate augment.k=...` and by scripts/bench_augment.py.
"""

from __future__ import annotations

import statistics

import torch

from job.core import seeds
from job.core.errors import BadInput
from job.models import scoring
from job.training.classifier import fit


def real_per_class(images: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k digits of each class, drawn without replacement by `seed` (the same for every caller)."""
    gen = torch.Generator().manual_seed(seeds.stream_seed(seed, 0xA116))
    picks = []
    for c in range(num_classes):
        of_class = torch.nonzero(labels == c).flatten()
        if len(of_class) < k:
            raise BadInput(f"augment.k={k} asks for more real digits of class {c} than the train split has "
                           f"({len(of_class)})")
        picks.append(of_class[torch.randperm(len(of_class), generator=gen)[:k]])
    idx = torch.cat(picks)
    return images[idx], labels[idx]


def trained_accuracy(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                     test_labels: torch.Tensor, kwargs: dict, steps: int, batch_size: int, seed: int,
                     device) -> float:
    """Test accuracy of a fresh classifier trained on (images, labels) with the shipped recipe."""
    model = fit(images, labels, kwargs, steps, batch_size=batch_size, seed=seed, device=device)
    return scoring.accuracy(model, test_images, test_labels)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation and the values (accuracy or points), rounded."""
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
            "values": [round(v, 6) for v in values]}


def compare(real: tuple[torch.Tensor, torch.Tensor], synthetic: tuple[torch.Tensor, torch.Tensor],
            test: tuple[torch.Tensor, torch.Tensor], kwargs: dict, steps: int, batch_size: int, seed: int,
            device) -> dict:
    """One seed: accuracy on real alone and on real + synthetic, and the lift in points."""
    alone = trained_accuracy(*real, *test, kwargs, steps, batch_size, seed, device)
    mixed = trained_accuracy(torch.cat([real[0], synthetic[0]]), torch.cat([real[1], synthetic[1]]), *test, kwargs,
                             steps, batch_size, seed, device)
    return seed_row(alone, mixed)


def seed_row(alone: float, mixed: float) -> dict:
    """One seed's accuracies, real alone and real + synthetic, and the lift in points."""
    return {"real": alone, "real_plus_synthetic": mixed, "lift_points": 100 * (mixed - alone)}


def summarize(per_seed: list[dict]) -> dict:
    """Mean and spread over seeds of compare()'s rows."""
    return {key: spread([row[key] for row in per_seed]) for key in ("real", "real_plus_synthetic", "lift_points")}
