"""The mean-image baseline: trained in one pass, sampled like a generator."""

from __future__ import annotations

import pytest
import torch

from conftest import read_metrics, train
from job.cli import main
from job.core.config import DataConfig
from job.data import loading
from job.models import load_generator
from job.shardsets.sets import read_manifest, shard_set_digits


@pytest.fixture(scope="module")
def mnist_train():
    return loading.load_split(DataConfig(), train=True)


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mean") / "run"
    assert train(run_dir, "model.kind=mean", preset=None) == 0
    return run_dir


def test_the_mean_models_samples_equal_the_per_class_means(mean_run, mnist_train, tmp_path):
    out = tmp_path / "shards"
    assert main(["sample", f"generator={mean_run / 'generator.safetensors'}", "count=200", f"out={out}",
                 "progress=false"]) == 0
    manifest = read_manifest(str(out))
    images, labels = shard_set_digits(str(out), manifest, 200)
    assert manifest["count"] == 200 and torch.bincount(labels).tolist() == [20] * 10
    for c in range(10):
        expected = mnist_train.images[mnist_train.labels == c].double().mean(0)
        # Every sample of a class is its mean image, rounded to grey levels.
        assert (images[labels == c].double() - expected).abs().max() <= 0.5 + 1e-6


def test_a_mean_run_has_the_files_of_any_run_and_is_not_computed_twice(mean_run, capsys):
    assert [m["step"] for m in read_metrics(mean_run)] == [1]
    assert read_metrics(mean_run)[0]["images"] == 60000
    for name in ("config.yaml", "world.json", "samples/latest.png", "checkpoints/step-00000001/meta.json"):
        assert (mean_run / name).exists(), name
    assert train(mean_run, "model.kind=mean", preset=None) == 0
    assert "already computed (step 1)" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(mean_run)] == [1]


def test_an_unconditional_mean_model_draws_the_mean_of_all_images(tmp_path, mnist_train):
    assert train(tmp_path / "run", "model.kind=mean", "model.conditional=false", preset=None) == 0
    G, info, _ = load_generator(str(tmp_path / "run" / "generator.safetensors"))
    assert info["kind"] == "mean" and G.num_classes == 0
    out = G(torch.zeros(2, G.latent_dim))
    expected = mnist_train.images.double().mean(0) / 127.5 - 1
    assert torch.allclose(out[0].double(), expected, atol=1e-5) and torch.equal(out[0], out[1])


def test_pixel_noise_varies_samples_around_the_mean(tmp_path):
    assert train(tmp_path / "run", "model.kind=mean", "model.pixel_noise=20", preset=None) == 0
    G, _, _ = load_generator(str(tmp_path / "run" / "generator.safetensors"))
    labels = torch.full((500,), 3)
    out = G(torch.randn(500, G.latent_dim, generator=torch.Generator().manual_seed(0)), labels)
    assert not torch.equal(out[0], out[1])
    # Where the mean is mid-grey (no clamping), the spread is the requested 20 grey levels.
    mid = (G.means[3].abs() < 0.5)
    spread = (out - G.means[3]).mul(127.5)[:, mid].std().item()
    assert 18 < spread < 22
