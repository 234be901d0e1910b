"""sample balance=: exactly the digits a real labeled set lacks, per class, recorded in the
manifest; refused in one line (exit 2, nothing written) when it cannot be done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import train
from job.cli import main
from job.sampling import balance
from job.shardsets.readers import ShardDataset

HAVE = [6, 1, 3, 6, 2, 5, 6, 4, 6, 1]  # a small long tail, as class folders


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "real"
    for c, n in enumerate(HAVE):
        (root / str(c)).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(np.full((28, 28), 20 * c + k, dtype=np.uint8)).save(root / str(c) / f"{k}.png")
    return root


def sample(generator: str, out: Path, *extra: str) -> int:
    return main(["sample", f"generator={generator}", f"out={out}", "progress=false", *extra])


def test_balancing_an_image_folder_draws_exactly_what_each_class_lacks(generator_file, image_folder, tmp_path):
    out = tmp_path / "top-up"
    assert sample(generator_file, out, f"balance={image_folder}", "shard_size=7") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    need = [6 - n for n in HAVE]
    assert manifest["label_histogram"] == need and manifest["count"] == sum(need) == 20
    assert manifest["balance"] == {"source": str(image_folder), "have": HAVE, "target": 6, "per_class": need}
    labels = torch.tensor([label for _, label in ShardDataset(str(out))])
    assert torch.equal(labels, balance.shard_labels(need, 0, 0, 20))  # the plan's fixed sequence, shard by shard
    other = tmp_path / "top-up-again"  # another batch size and shard layout: the same labels and digits
    assert sample(generator_file, other, f"balance={image_folder}", "shard_size=7", "batch_size=3") == 0
    shards = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    assert shards == {p.name: p.read_bytes() for p in other.glob("shard-*")}


def test_a_target_above_the_largest_class_and_a_shard_set_as_the_real_set(generator_file, tmp_path):
    real = tmp_path / "real-set"
    assert sample(generator_file, real, "count=30", "shard_size=10") == 0  # 3 of every class
    out = tmp_path / "to-five"
    assert sample(generator_file, out, f"balance={real}", "balance_to=5") == 0
    assert json.loads((out / "manifest.json").read_text())["label_histogram"] == [2] * 10


def test_balancing_the_long_tailed_training_split_is_one_command(generator_file, tmp_path, capsys):
    out = tmp_path / "rare"
    assert sample(generator_file, out, "balance=data", "data.profile=step:1,7@0.02", "shard_size=5000") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_histogram"] == [5313 if c in (1, 7) else 0 for c in range(10)]  # 5421 - 108
    assert manifest["balance"]["have"] == [108 if c in (1, 7) else 5421 for c in range(10)]
    assert "drawing 0, 5313, 0, 0, 0, 0, 0, 5313, 0, 0 to bring each to 5,421" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["balance={real}", "balance_to=3"], "balance_to=3 is below class 0's 6 digits in the image folder"),
    (["balance={real}", "count=10"], "count= and balance= both set"),
    (["balance={real}", "labels=3,5"], "leave labels= and layout= at their defaults"),
    (["balance={tmp}/nothing"], "is neither a shard set (no manifest.json), a local image folder nor 'data'"),
    (["balance={gappy}"], "class 4 has no digits in the image folder"),
    (["balance=data", "data.profile=zipf3"], "data.profile='zipf3' is not a profile"),
])
def test_what_cannot_be_balanced_is_one_line_exit_2_and_nothing_written(
        generator_file, image_folder, tmp_path, capsys, args, message):
    gappy = tmp_path / "gappy"
    for c, n in enumerate(HAVE):
        (gappy / str(c)).mkdir(parents=True)
        for k in range(0 if c == 4 else n):
            Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(gappy / str(c) / f"{k}.png")
    filled = [a.format(real=image_folder, tmp=tmp_path, gappy=gappy) for a in args]
    out = tmp_path / "out"
    capsys.readouterr()
    assert sample(generator_file, out, *filled) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_an_unconditional_generator_cannot_balance(tmp_path, image_folder, capsys):
    assert train(tmp_path / "u", "train.steps=1", "model.conditional=false") == 0
    capsys.readouterr()
    assert sample(str(tmp_path / "u" / "generator.safetensors"), tmp_path / "out", f"balance={image_folder}") == 2
    assert "is unconditional; use a class-conditional generator" in capsys.readouterr().err
