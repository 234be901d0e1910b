"""Quality metrics against known values, and on small real data with the shipped classifier."""

from __future__ import annotations

import pytest
import torch

from job.core.config import DataConfig
from job.data import loading
from job.evaluation import quality
from job.models import scoring

# ----------------------------------------------------------------------------- known values


def test_fid_of_a_set_with_itself_is_zero():
    a = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    assert quality.fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_gaussians_matches_the_closed_form():
    # N(0, I) vs N(m, s^2 I): FID = |m|^2 + d (1 + s^2 - 2 s), up to sampling error.
    g = torch.Generator().manual_seed(1)
    d, n = 8, 50_000
    a = torch.randn(n, d, generator=g)
    shifted = torch.randn(n, d, generator=g) + 2.0  # |m|^2 = 4 d
    scaled = torch.randn(n, d, generator=g) * 3.0  # d (1 + 9 - 6) = 4 d
    assert quality.fid(a, shifted) == pytest.approx(4 * d, rel=0.03)
    assert quality.fid(a, scaled) == pytest.approx(4 * d, rel=0.03)


def test_inception_score_is_the_class_count_for_confident_balanced_predictions_and_one_for_unsure():
    confident = torch.eye(10).repeat(500, 1) * 50.0  # one-hot, every class equally often
    unsure = torch.zeros(5000, 10)
    assert quality.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-3)
    assert quality.inception_score(unsure, splits=1)[0] == pytest.approx(1.0, abs=1e-6)
    collapsed = torch.zeros(5000, 10)
    collapsed[:, 3] = 50.0  # confident, but always the same class
    assert quality.inception_score(collapsed, splits=1)[0] == pytest.approx(1.0, abs=1e-3)


def test_precision_and_recall_tell_fidelity_from_diversity():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(3000, 8, generator=g)
    same = torch.randn(3000, 8, generator=g)
    collapsed = real[:5].repeat(600, 1)  # five real points, repeated: faithful, not diverse
    far = torch.randn(3000, 8, generator=g) + 10.0
    p, r = quality.precision_recall(real, same, k=3)
    assert p > 0.9 and r > 0.9
    p, r = quality.precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.05
    p, r = quality.precision_recall(real, far, k=3)
    assert p == 0.0 and r == 0.0


def test_class_balance_and_class_accuracy_count_predictions():
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    assert quality.class_balance(logits, 2) == [0.75, 0.25]
    assert quality.class_accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.75


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mnist():
    import os

    root = os.environ["DIGITS_DATA_DIR"]
    return loading.load_split(DataConfig(root=root), train=True), loading.load_split(DataConfig(root=root), train=False)


@pytest.fixture(scope="module")
def classifier():
    model, info, _ = scoring.load_classifier("builtin:mnist")
    return model, info


def test_the_shipped_classifier_reaches_99_3_percent_on_the_mnist_test_set(mnist, classifier):
    model, info = classifier
    _, test = mnist
    assert scoring.accuracy(model, test.images, test.labels) >= 0.993
    assert info["extra"]["test_accuracy"] >= 0.993  # what its metadata claims, too


def test_real_digits_sit_at_the_fid_floor_and_shuffled_pixels_far_away(mnist, classifier):
    model, _ = classifier
    train, test = mnist
    n = 2000
    real_a = scoring.score(model, train.images[:n])
    real_b = scoring.score(model, test.images[:n])
    g = torch.Generator().manual_seed(0)
    flat = test.images[:n].reshape(n, -1)
    shuffled = torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in flat])
    shuffled = shuffled.reshape(test.images[:n].shape)
    noise = scoring.score(model, shuffled)
    floor, far = quality.fid(real_a.features, real_b.features), quality.fid(real_a.features, noise.features)
    assert far > 50 * max(floor, 0.01), (floor, far)
    # Real digits: inception score near the class count, every class present in balance.
    is_mean, _ = quality.inception_score(real_b.logits)
    assert is_mean > 9.0
    balance = quality.class_balance(real_b.logits, 10)
    assert min(balance) > 0.07 and max(balance) < 0.13
    p, r = quality.precision_recall(real_a.features, real_b.features)
    assert p > 0.6 and r > 0.6
    p_noise, r_noise = quality.precision_recall(real_a.features, noise.features)
    assert p_noise < p / 4 and r_noise < r / 4


def test_cas_of_real_labeled_digits_is_the_classifier_accuracy(mnist, classifier):
    model, _ = classifier
    _, test = mnist
    scores = scoring.score(model, test.images[:3000])
    cas = quality.class_accuracy(scores.logits, test.labels[:3000])
    assert cas == pytest.approx(scoring.accuracy(model, test.images[:3000], test.labels[:3000]))
    assert cas > 0.99
