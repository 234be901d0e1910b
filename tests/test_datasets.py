"""Datasets beyond MNIST: a user's image folder (any size, any channels) and the
torchvision catalogue (Fashion-MNIST from Debian's package)."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run_job, train
from job.cli import main
from job.core import config
from job.core.config import DataConfig
from job.data import loading
from job.models import load_generator
from job.shardsets.sets import read_manifest, shard_set_digits

SHAPES = ("circle", "cross", "square")


def make_image_folder(root, per_class: int = 12, size: int = 48, mode: str = "RGB", seed: int = 0,
                      varied_sizes: bool = False):
    """<root>/<shape>/<i>.png: coloured shapes on coloured paper, one class per shape."""
    rng = random.Random(seed)
    for shape in SHAPES:
        os.makedirs(root / shape, exist_ok=True)
        for i in range(per_class):
            side = rng.choice((size, 2 * size, size + 17)) if varied_sizes else size
            paper = tuple(rng.randrange(150, 256) for _ in range(3))
            ink = tuple(rng.randrange(0, 100) for _ in range(3))
            img = Image.new("RGB", (side, side), paper)
            draw = ImageDraw.Draw(img)
            m = side // 5 + rng.randrange(side // 10)
            if shape == "circle":
                draw.ellipse((m, m, side - m, side - m), outline=ink, width=max(2, side // 12))
            elif shape == "square":
                draw.rectangle((m, m, side - m, side - m), outline=ink, width=max(2, side // 12))
            else:
                draw.line((m, m, side - m, side - m), fill=ink, width=max(2, side // 12))
                draw.line((m, side - m, side - m, m), fill=ink, width=max(2, side // 12))
            img.convert(mode).save(root / shape / f"{i:03d}.png")
    return root


def test_an_image_folder_loads_with_labels_from_class_folders_at_the_requested_size(tmp_path):
    root = make_image_folder(tmp_path / "shapes", per_class=4, varied_sizes=True)
    split = loading.load_split(DataConfig(name="imagefolder", root=str(root), image_size=32), train=True)
    assert split.images.shape == (12, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and split.num_classes == 3


def test_an_image_folder_of_grey_images_gives_one_channel_unless_told_otherwise(tmp_path):
    root = make_image_folder(tmp_path / "grey", per_class=2, mode="L")
    assert loading.load_split(DataConfig(name="imagefolder", root=str(root)), train=True).images.shape == (6, 1, 28, 28)
    rgb = loading.load_split(DataConfig(name="imagefolder", root=str(root), channels=3), train=True)
    assert rgb.images.shape == (6, 3, 28, 28)


def test_train_and_test_subfolders_are_the_two_splits(tmp_path):
    make_image_folder(tmp_path / "set" / "train", per_class=3)
    make_image_folder(tmp_path / "set" / "test", per_class=1, seed=1)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "set"))
    assert len(loading.load_split(cfg, train=True).labels) == 9
    assert len(loading.load_split(cfg, train=False).labels) == 3
    os.rename(tmp_path / "set" / "test" / "cross", tmp_path / "set" / "test" / "plus")
    with pytest.raises(Exception, match="must hold the same class folders"):
        loading.load_split(cfg, train=True)


def test_a_gan_and_the_mean_model_train_on_48_pixel_rgb_images(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    common = ["data.name=imagefolder", f"data.root={root}", "data.image_size=48", "train.batch_size=8"]
    assert train(tmp_path / "gan", *common, "train.steps=3") == 0
    G, info, _ = load_generator(str(tmp_path / "gan" / "generator.safetensors"))
    assert G.output_shape == (3, 48, 48) and G.num_classes == 3 and info["kwargs"]["image_size"] == 48
    assert G(torch.randn(3, G.latent_dim), torch.arange(3)).shape == (3, 3, 48, 48)

    assert train(tmp_path / "mean", *common[:3], "model.kind=mean", preset=None) == 0
    mean_file = str(tmp_path / "mean" / "generator.safetensors")
    assert main(["sample", f"generator={mean_file}", "count=30", f"out={tmp_path / 'shards'}", "progress=false"]) == 0
    shard_set = str(tmp_path / "shards")
    images, labels = shard_set_digits(shard_set, read_manifest(shard_set), 30)
    assert images.shape == (30, 3, 48, 48)
    split = loading.load_split(DataConfig(name="imagefolder", root=str(root), image_size=48), train=True)
    for c in range(3):
        expected = split.images[split.labels == c].double().mean(0)
        assert (images[labels == c].double() - expected).abs().max() <= 0.5 + 1e-6  # the rounded mean


def test_an_image_folder_with_a_file_that_is_not_an_image_is_refused_before_writing(tmp_path):
    root = make_image_folder(tmp_path / "shapes", per_class=2)
    (root / "circle" / "notes.txt").write_text("not a picture")
    run_dir = tmp_path / "run"
    proc = run_job("train", "--config", "debug", f"run.dir={run_dir}", "data.name=imagefolder", f"data.root={root}",
                   "train.batch_size=2")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.txt in data.root is not a readable image" in lines[0], proc.stderr
    assert not run_dir.exists()


@pytest.mark.skipif(not os.environ.get("FASHION_MNIST_DIR"),
                    reason="FASHION_MNIST_DIR unset: scripts/test.sh installs Debian's dataset-fashion-mnist")
def test_training_runs_on_fashion_mnist_from_the_debian_package(tmp_path):
    root = os.environ["FASHION_MNIST_DIR"]
    split = loading.load_split(DataConfig(name="fashion-mnist", root=root), train=False)
    assert split.images.shape == (10000, 1, 28, 28) and torch.bincount(split.labels).tolist() == [1000] * 10
    mnist = loading.load_split(DataConfig(name="mnist"), train=False)
    assert not torch.equal(split.images[:10], mnist.images[:10])  # really another dataset
    assert train(tmp_path / "run", "data.name=fashion-mnist", f"data.root={root}", "train.steps=3") == 0
    assert (tmp_path / "run" / "generator.safetensors").exists()


class _StandIn:
    """What a torchvision dataset object holds after reading its files (the attributes
    read_torchvision converts), for datasets whose files cannot be fetched offline."""

    def __init__(self, data, targets=None, labels=None):
        self.data, self.targets, self.labels = data, targets, labels


@pytest.mark.parametrize("name, raw, expected_shape", [
    ("usps", np.zeros((5, 16, 16), np.uint8), (5, 1, 16, 16)),
    ("svhn", np.zeros((5, 3, 32, 32), np.uint8), (5, 3, 32, 32)),
    ("emnist-digits", torch.zeros(5, 28, 28, dtype=torch.uint8), (5, 1, 28, 28)),
])
def test_every_catalogue_dataset_becomes_uint8_nchw_with_int64_labels(monkeypatch, name, raw, expected_shape):
    import torchvision.datasets as tvd

    from job.data import datasets

    dataset = datasets.CATALOG[name]
    labels = [0, 1, 2, 3, 4]
    if name == "emnist-digits":
        raw[0, 0, 5] = 255  # EMNIST stores images transposed: (row 0, col 5) is really (row 5, col 0)
    stand_in = _StandIn(raw, labels=np.array(labels)) if name == "svhn" else _StandIn(raw, targets=labels)
    monkeypatch.setattr(tvd, dataset.torchvision_class, lambda *a, **k: stand_in)
    images, got = datasets.read_torchvision(dataset, "unused", train=True)
    assert images.shape == expected_shape and images.dtype == torch.uint8
    assert got.dtype == torch.int64 and got.tolist() == labels
    if name == "emnist-digits":
        assert images[0, 0, 5, 0] == 255 and images[0, 0, 0, 5] == 0


def test_data_root_may_be_a_parent_folder_holding_one_folder_per_dataset(tmp_path):
    """DIGITS_DATA_DIR=/datasets with /datasets/mnist/, /datasets/fashion-mnist/, ... (as
    torchvision accepts <root>/MNIST/raw): each dataset is found in its own sub-folder."""
    parent = tmp_path / "datasets"
    parent.mkdir()
    (parent / "mnist").symlink_to(os.environ["DIGITS_DATA_DIR"], target_is_directory=True)
    cfg = config.load("train", None, [f"data.root={parent}"]).data
    split = loading.load_split(cfg, train=False)
    assert split.images.shape == (10000, 1, 28, 28)
    assert main(["data", "push", "mnist", str(tmp_path / "staged"), f"data.root={parent}"]) == 0
    assert len(json.loads((tmp_path / "staged" / "manifest.json").read_text())["files"]) == 4
