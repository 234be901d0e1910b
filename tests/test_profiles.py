"""data.profile: long-tailed training splits, exact and seeded, and refused in one line when
they cannot be cut."""

from __future__ import annotations

import pytest
import torch

from conftest import train
from job.core import config
from job.core.errors import BadInput
from job.data import loading, profiles

MNIST_SMALLEST = 5421  # class 5 of MNIST's training split


@pytest.fixture(scope="module")
def mnist_train() -> loading.Split:
    return loading.load_split(config.DataConfig(), train=True)


def cut(profile: str, seed: int = 0) -> loading.Split:
    return loading.load_split(config.DataConfig(profile=profile, profile_seed=seed), train=True)


def per_class(split: loading.Split) -> list[int]:
    return torch.bincount(split.labels, minlength=10).tolist()


def test_exp100_keeps_base_times_100_to_the_minus_c_over_9_of_each_class(mnist_train):
    counts = per_class(cut("exp100"))
    assert counts == [round(MNIST_SMALLEST * 100 ** (-c / 9)) for c in range(10)]
    assert counts[0] == MNIST_SMALLEST and counts[9] == 54  # largest / smallest: 100 to 1


def test_a_step_profile_cuts_the_named_classes_and_keeps_base_of_the_others():
    assert per_class(cut("step:2,5,8@0.01")) == [54 if c in (2, 5, 8) else MNIST_SMALLEST for c in range(10)]


def test_which_digits_a_class_keeps_is_a_function_of_the_seed(mnist_train):
    a, b, other = cut("exp100", seed=0), cut("exp100", seed=0), cut("exp100", seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert per_class(other) == per_class(a) and not torch.equal(other.images, a.images)
    # every kept digit is a real training digit with its own label
    nines = mnist_train.images[mnist_train.labels == 9].flatten(1)
    assert all((nines == x.flatten()).all(dim=1).any() for x in a.images[a.labels == 9][:5])


def test_the_test_split_stays_whole():
    whole = loading.load_split(config.DataConfig(), train=False)
    assert torch.equal(loading.load_split(config.DataConfig(profile="exp100"), train=False).labels, whole.labels)


@pytest.mark.parametrize("profile, message", [
    ("zipf3", "data.profile='zipf3' is not a profile: use exp<ratio> (exp100) or step:<classes>@<fraction>"),
    ("step:2@0", "the fraction after @ must be in (0, 1]"),
    ("step:2@1.5", "the fraction after @ must be in (0, 1]"),
    ("exp0.5", "the imbalance ratio must be at least 1"),
])
def test_a_profile_that_is_not_one_is_refused_when_the_config_is_read(profile, message):
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        config.load("train", None, [f"data.profile={profile}"])


def test_a_class_the_dataset_lacks_is_refused():
    with pytest.raises(BadInput, match="names class 12, but this dataset has classes 0-9"):
        profiles.parse("step:12@0.01").counts([100] * 10)
    with pytest.raises(BadInput, match="class 3 has no digits in this split"):
        profiles.parse("exp10").counts([100, 100, 100, 0, 100, 100, 100, 100, 100, 100])


def test_training_on_a_profile_is_one_command_and_says_what_it_kept(tmp_path, capsys):
    assert train(tmp_path / "run", "train.steps=2", "data.profile=step:1,7@0.02", "data.profile_seed=3") == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(x for x in lines if "data.profile=" in x)
    assert "data.profile=step:1,7@0.02 (seed 3): 5421, 108, 5421" in line and "(43,584 in all)" in line
    assert "profile: step:1,7@0.02" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_bad_profile_on_the_command_line_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    assert train(tmp_path / "run", "data.profile=step:12@0.01") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names class 12, but this dataset has classes 0-9" in err[0]
    assert not (tmp_path / "run").exists()
