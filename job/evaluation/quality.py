"""Quality metrics of generated digits, computed from the evaluation classifier's outputs.

Every function takes classifier features / logits (see scoring.py), never images, so each
set of digits is classified once and all metrics read the same numbers.

- FID: Frechet distance between Gaussian fits of two feature sets (torchmetrics' FID with
  our classifier as its feature extractor; features are passed through an identity).
- Inception Score: exp(E_x KL(p(y|x) || p(y))) with the classifier's softmax (torchmetrics;
  10 splits, mean and std). Real MNIST is close to 10, the number of classes.
- CAS: accuracy of the classifier on conditional samples against their requested labels.
- class balance: share of each predicted class.
- precision / recall: Kynkaenniemi et al. 2019. Each sample of a set gets a ball reaching its
  k-th nearest neighbour in that set; precision is the share of generated samples inside
  some real ball (fidelity), recall the share of real samples inside some generated ball
  (diversity: a collapsed generator has high precision and low recall).
"""

from __future__ import annotations

import torch
from torch import nn


class _Identity(nn.Module):
    """Hands precomputed features to torchmetrics (which calls its 'inception' on inputs)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between the Gaussian fits of two feature sets [N, F]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Identity(features_a.shape[1]), reset_real_features=True)
    metric.update(features_a.double(), real=True)
    metric.update(features_b.double(), real=False)
    return max(0.0, float(metric.compute()))  # tiny negative values are rounding


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the Inception Score over `splits` splits of the logits [N, K]."""
    import warnings

    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():  # "will save all extracted features": that is the point
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Identity(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # torchmetrics shuffles before splitting
        warnings.simplefilter("ignore", UserWarning)  # std of a single split
        mean, std = metric.compute()
    return float(mean), float(std)


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples classified as their label (CAS for generated, accuracy for real)."""
    return (logits.argmax(1) == labels).sum().item() / max(1, len(labels))


def class_balance(logits: torch.Tensor, num_classes: int) -> list[float]:
    """Share of samples predicted as each class."""
    counts = torch.bincount(logits.argmax(1), minlength=num_classes).float()
    return (counts / max(1, logits.shape[0])).tolist()


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the row itself excluded)."""
    radii = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start : start + chunk], features)
        # k + 1 smallest: the first is the row itself at distance 0.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside_some_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """Share of `points` within distance radii[j] of some centres[j]."""
    inside = []
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start : start + chunk], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside).float().mean().item()


class Manifold:
    """A feature set [N, F] and the radius of each point's k-NN ball within it. Build the
    real one once and compare every generated set with it."""

    def __init__(self, features: torch.Tensor, k: int = 3):
        self.points = features.double()
        self.radii = _kth_neighbour_radii(self.points, k)
        self.k = k


def precision_recall(real: torch.Tensor | Manifold, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `fake` against `real` feature sets [N, F] with k-NN balls."""
    real = real if isinstance(real, Manifold) else Manifold(real, k)
    fake = Manifold(fake, real.k)
    precision = _inside_some_ball(fake.points, real.points, real.radii)
    recall = _inside_some_ball(real.points, fake.points, fake.radii)
    return precision, recall
