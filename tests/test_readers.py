"""job.readers: the datasets augmentation users load sample sets with, checked against the
shards themselves and against outside readers (the webdataset library, torchvision's MNIST)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO, accelerate_launch
from job import storage
from job.cli import main
from job.errors import BadInput
from job.readers import ShardDataset, ShardStream
from job.shard_sets import read_manifest, shard_set_digits

COUNT, SHARD_SIZE = 45, 10  # five shards, the last one short


def make_set(generator: str, out: Path | str, *extra: str) -> str:
    assert main(["sample", f"generator={generator}", f"out={out}", f"count={COUNT}", f"shard_size={SHARD_SIZE}",
                 "progress=false", *extra]) == 0
    return str(out)


@pytest.fixture(scope="module")
def sets(generator_file, tmp_path_factory) -> dict[str, str]:
    """One sample set per shard format, made from the same generator and seed."""
    root = tmp_path_factory.mktemp("sets")
    return {fmt: make_set(generator_file, root / fmt, f"format={fmt}") for fmt in ("safetensors", "webdataset", "idx")}


def key(image: torch.Tensor, label: int) -> tuple[str, int]:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest(), int(label)


def every_key(uri: str) -> Counter:
    images, labels = shard_set_digits(uri, read_manifest(uri), COUNT)
    return Counter(key(x, y) for x, y in zip(images, labels))


@pytest.mark.parametrize("fmt", ["safetensors", "webdataset", "idx"])
def test_the_map_style_dataset_returns_each_digit_of_the_set_in_shard_order(sets, fmt):
    images, labels = shard_set_digits(sets[fmt], read_manifest(sets[fmt]), COUNT)
    digits = ShardDataset(sets[fmt], verify=True)
    assert len(digits) == COUNT
    for i in (0, 9, 10, 44, -1):
        image, label = digits[i]
        assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
        assert torch.equal(image, images[i]) and label == int(labels[i])
    assert torch.equal(digits.labels, labels)
    with pytest.raises(IndexError):
        digits[COUNT]


def test_every_format_holds_the_same_digits_and_a_transform_sees_each_image(sets):
    expected = ShardDataset(sets["safetensors"])
    for fmt in ("webdataset", "idx"):
        other = ShardDataset(sets[fmt], transform=lambda x: x.float() / 255)
        image, label = other[17]
        assert image.dtype == torch.float32 and torch.equal(image, expected[17][0].float() / 255)
        assert label == expected[17][1]


def test_a_dataloader_with_two_workers_reads_the_memory_mapped_set(sets):
    loader = DataLoader(ShardDataset(sets["safetensors"]), batch_size=8, num_workers=2, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seen = Counter(key(x, y) for images, labels in loader for x, y in zip(images, labels))
    assert seen == every_key(sets["safetensors"])


def test_verify_refuses_a_shard_whose_bytes_do_not_match_the_manifest(sets, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sets["safetensors"], copy)
    shard = copy / "shard-000002.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0xFF  # one pixel of the last digit
    shard.write_bytes(bytes(blob))
    with pytest.raises(BadInput, match="shard-000002.safetensors does not match the sha256"):
        ShardDataset(str(copy), verify=True)
    with pytest.raises(BadInput, match="does not match the sha256"):
        list(ShardStream(str(copy)))
    assert len(ShardDataset(str(copy))) == COUNT  # unverified: the caller's choice


def test_a_folder_without_a_manifest_is_refused_with_the_reason(tmp_path):
    with pytest.raises(BadInput, match="not a complete shard set: no manifest.json"):
        ShardDataset(str(tmp_path))


def test_strings_come_back_as_image_text_and_boxes_from_both_readers(generator_file, tmp_path):
    for fmt in ("safetensors", "webdataset"):
        out = make_set(generator_file, tmp_path / fmt, "layout=strings", f"format={fmt}", "strings.length=2-4")
        digits, stream = ShardDataset(out), ShardStream(out, shuffle_shards=False)
        streamed = list(stream)
        assert len(digits) == len(streamed) == COUNT
        for i in (0, 23, 44):
            image, text, boxes = digits[i]
            assert text.isdigit() and 2 <= len(text) <= 4 and len(boxes) == len(text)
            assert image.shape[0] == 1 and image.shape[-1] >= boxes[-1][2]  # cropped to its own width
            s_image, s_text, s_boxes = streamed[i]
            assert torch.equal(s_image, image) and s_text == text and s_boxes == boxes


def test_one_epoch_over_ranks_and_workers_yields_every_digit_exactly_once(sets):
    expected = every_key(sets["webdataset"])
    seen = Counter()
    for rank in range(2):
        stream = ShardStream(sets["webdataset"], shuffle_buffer=8, seed=1, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        seen.update(key(x, y) for x, y in loader)
    assert seen == expected


def test_the_shuffle_is_seeded_and_changes_with_the_epoch(sets):
    def order(seed: int, epoch: int) -> list:
        stream = ShardStream(sets["safetensors"], shuffle_buffer=20, seed=seed)
        stream.set_epoch(epoch)
        return [key(x, y) for x, y in stream]

    first = order(0, 0)
    assert order(0, 0) == first
    assert order(0, 1) != first and order(1, 0) != first
    assert Counter(order(0, 1)) == Counter(first) == every_key(sets["safetensors"])


def test_the_webdataset_library_reads_the_tar_shards(sets):
    webdataset = pytest.importorskip("webdataset")
    manifest = read_manifest(sets["webdataset"])
    urls = [str(Path(sets["webdataset"]) / name) for record in manifest["shards"] for name in record["files"]]
    pipeline = webdataset.WebDataset(urls, shardshuffle=False).decode("l8").to_tuple("png", "cls")
    got = Counter(key(torch.from_numpy(np.array(png))[None], label) for png, label in pipeline)
    assert got == every_key(sets["webdataset"])


def test_torchvisions_mnist_class_reads_the_idx_shards(sets, tmp_path):
    from torchvision.datasets import MNIST

    # torchvision expects the four MNIST files in <root>/MNIST/raw/: shard 0 plays train, shard 1 test.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for index, split in ((0, "train"), (1, "t10k")):
        for part, idx in (("images", "idx3"), ("labels", "idx1")):
            packed = Path(sets["idx"]) / f"shard-{index:06d}-{part}-{idx}-ubyte.gz"
            (raw / f"{split}-{part}-{idx}-ubyte").write_bytes(gzip.decompress(packed.read_bytes()))
    mnist = MNIST(str(tmp_path), train=True, download=False)
    digits = ShardDataset(sets["idx"])
    assert len(mnist) == SHARD_SIZE
    assert torch.equal(mnist.data[:, None], torch.stack([digits[i][0] for i in range(SHARD_SIZE)]))
    assert mnist.targets.tolist() == [digits[i][1] for i in range(SHARD_SIZE)]
    assert torch.equal(MNIST(str(tmp_path), train=False).data[0], digits[SHARD_SIZE][0][0])


def test_a_two_process_launch_with_two_workers_each_sees_every_digit_once(sets, tmp_path):
    script = REPO / "tests" / "read_stream_epoch.py"
    proc = subprocess.run([*accelerate_launch(2), str(script), sets["idx"], str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["stream_rank"] for r in ranks] == [0, 1]
    per_rank = [Counter(tuple(k) for k in r["keys"]) for r in ranks]
    assert all(per_rank) and per_rank[0] + per_rank[1] == every_key(sets["idx"])


@pytest.mark.s3
def test_an_s3_set_is_cached_once_for_the_map_style_dataset_and_streamed_without_a_copy(
        generator_file, bucket, tmp_path):
    uri = make_set(generator_file, f"s3://{bucket}/digits")
    cache = tmp_path / "cache"
    digits = ShardDataset(uri, cache_dir=str(cache))
    assert len(digits) == COUNT and len(list(cache.rglob("shard-*.safetensors"))) == 5
    assert Counter(key(*digits[i]) for i in range(COUNT)) == every_key(uri)
    before = set(tmp_path.rglob("*"))
    streamed = Counter(key(*item) for item in ShardStream(uri, shuffle_buffer=10))
    assert streamed == every_key(uri)
    assert set(tmp_path.rglob("*")) == before  # streamed: nothing written locally
    storage.delete(storage.join(uri, "shard-000000.safetensors"))  # the cached copy serves from now on
    assert torch.equal(ShardDataset(uri, cache_dir=str(cache))[0][0], digits[0][0])


def test_the_readme_block_mixes_real_mnist_and_synthetic_digits_in_one_loader(sets):
    import os
    import re

    from job import data, datasets

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Using the digits in your training"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    mnist = datasets.CATALOG["mnist"]
    local = datasets.torchvision_root(datasets.dataset_folder(os.environ.get("DIGITS_DATA_DIR", "data"), mnist), mnist,
                                      data.cache_dir())  # the MNIST/raw layout torchvision reads offline
    block = (block.replace('"data"', repr(local)).replace('"runs/quickstart/digits"', repr(sets["safetensors"]))
             .replace("    ...", "    break"))
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 (our own README's code)
    assert len(scope["loader"].dataset) == 60_000 + COUNT
    assert scope["images"].shape == (128, 1, 28, 28) and scope["images"].dtype == torch.float32
    assert 0 <= scope["images"].min() and scope["images"].max() <= 1 and scope["labels"].dtype == torch.int64
