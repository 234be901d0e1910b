"""job.readers: the datasets augmentation users load sample sets with, checked against the
shards themselves and against outside readers (the webdataset library, torchvision's MNIST)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO, swapped_environ, torchrun_cpu
from job import storage
from job.cli import main
from job.shardsets.readers import ShardDataset, ShardStream
from job.shardsets.sets import read_manifest, shard_set_digits

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
    # Both check every shard when they are made (the default of both), before any batch, so
    # every process that makes one stops with this message, whichever shard it would read.
    with pytest.raises(ValueError, match="shard-000002.safetensors does not match the sha256"):
        ShardDataset(str(copy))
    with pytest.raises(ValueError, match="shard-000002.safetensors does not match the sha256"):
        ShardStream(str(copy), split="rank", rank=1, world_size=5)  # rank 1 never reads shard 2
    assert len(ShardDataset(str(copy), verify=False)) == COUNT  # unverified: the caller's choice


def test_a_folder_without_a_manifest_is_refused_with_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete shard set: no manifest.json"):
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


def stream_keys(stream, num_workers: int = 0, **loader_args) -> list:
    """Every digit one rank's DataLoader yields in an epoch, in order."""
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, **loader_args)
    return [key(x, y) for x, y in loader]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("ranks", [2, 3, 7])
def test_every_rank_yields_the_same_count_for_any_ranks_workers_and_uneven_shards(sets, ranks, drop_last):
    # 45 digits in 5 shards (the last one short): fewer shards than ranks x workers, and
    # counts that divide neither by the ranks nor by the workers.
    expected = every_key(sets["webdataset"])
    for workers, batch_size in ((0, None), (1, None), (3, 4)):
        per_rank = []
        for rank in range(ranks):
            stream = ShardStream(sets["webdataset"], shuffle_window=8, seed=1, rank=rank, world_size=ranks,
                                 drop_last=drop_last, batch_size=batch_size, split="rank")
            per_rank.append(stream_keys(stream, workers))
            assert len(per_rank[-1]) == len(stream)
        counts = {len(keys) for keys in per_rank}
        assert counts == {COUNT // ranks if drop_last else -(-COUNT // ranks)}, (workers, batch_size)
        seen = Counter(k for keys in per_rank for k in keys)
        if drop_last:  # the last COUNT % ranks positions of the epoch are left out, nothing twice
            assert max(seen.values()) == 1 and sum(seen.values()) == COUNT - COUNT % ranks
        else:  # padded with the epoch's first items, as DistributedSampler does
            assert set(seen) == set(expected) and sum(seen.values()) == -(-COUNT // ranks) * ranks
            if workers == 0:  # rank 0's first items are the epoch's first: those come twice
                assert all(seen[k] == 2 for k in per_rank[0][: sum(seen.values()) - COUNT])


def test_the_order_is_a_function_of_seed_and_epoch_alone_not_of_the_workers(sets):
    def order(num_workers: int, epoch: int, seed: int = 0) -> list:
        stream = ShardStream(sets["safetensors"], shuffle_window=20, seed=seed, batch_size=4)
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=4, num_workers=num_workers)
        return [key(x, y) for images, labels in loader for x, y in zip(images, labels)]

    first = order(0, 0)
    assert order(1, 0) == order(3, 0) == first
    assert order(0, 1) != first and order(0, 0, seed=1) != first
    assert Counter(order(2, 1)) == Counter(first) == every_key(sets["safetensors"])


def test_set_epoch_reaches_persistent_workers(sets):
    stream = ShardStream(sets["safetensors"], shuffle_window=20, seed=5, batch_size=5)
    loader = DataLoader(stream, batch_size=5, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(3):
        stream.set_epoch(epoch)
        epochs.append([key(x, y) for images, labels in loader for x, y in zip(images, labels)])
    alone = ShardStream(sets["safetensors"], shuffle_window=20, seed=5)
    for epoch, seen in enumerate(epochs):
        alone.set_epoch(epoch)
        assert seen == [key(*item) for item in alone]  # the same epoch's order, not the first one's
    assert epochs[0] != epochs[1] != epochs[2]


def test_a_run_killed_mid_epoch_resumes_and_sees_each_digit_of_the_epoch_exactly_once(sets, tmp_path):
    pytest.importorskip("torchdata")
    script = [sys.executable, str(REPO / "tests" / "resume_stream.py"), sets["webdataset"], str(tmp_path)]
    killed = subprocess.run([*script, "--kill-after", "5"], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads((tmp_path / "state.json").read_text())  # plain JSON: no pickle involved
    assert len((tmp_path / "seen.jsonl").read_text().splitlines()) == 5
    assert {w["dataset_state"]["position"] for w in state["_snapshot"]["_worker_snapshots"].values()} != {0}
    resumed = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    seen = Counter(tuple(k) for line in (tmp_path / "seen.jsonl").read_text().splitlines() for k in json.loads(line))
    assert seen == every_key(sets["webdataset"])  # 45 digits, each once: none lost, none repeated


def test_a_stream_resumed_from_its_own_state_yields_the_rest_of_the_epoch(sets):
    stream = ShardStream(sets["idx"], shuffle_window=12, seed=2)
    stream.set_epoch(4)
    whole = [key(*item) for item in stream]
    reading = iter(stream)
    head = [key(*next(reading)) for _ in range(17)]
    state = json.loads(json.dumps(stream.state_dict()))
    again = ShardStream(sets["idx"], shuffle_window=12, seed=2)
    again.load_state_dict(state)
    assert head + [key(*item) for item in again] == whole
    with pytest.raises(ValueError, match="seed 2"):
        ShardStream(sets["idx"], seed=3).load_state_dict(state)


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


# What each way may repeat per epoch (drop_last=False), for B digits a batch and P processes:
# the stream's own split and DistributedSampler pad the epoch to a multiple of P; accelerate's
# dispatcher pads its last group by fewer than one digit per process; IterableDatasetShard
# and BatchSamplerShard (even_batches) complete the last batch of every process.
REPEATS_BELOW = {"stream-ddp": lambda b, p: p, "map-sampler": lambda b, p: p, "stream-prepare": lambda b, p: p,
                 "stream-shard": lambda b, p: b * p, "map-prepare": lambda b, p: b * p}


@pytest.mark.parametrize("processes, shard_size, batch, workers, drop_last", [
    (2, SHARD_SIZE, 4, 2, False),  # 5 shards, the last one short
    (3, 44, 5, 4, False),  # one shard of 44 and one of 1: fewer shards than processes x workers
    (2, COUNT, 11, 4, True),  # one shard, 11 a batch, the DataLoader's drop_last
])
def test_a_ddp_loop_sees_every_digit_with_equal_steps_and_a_true_len_five_ways(
        generator_file, tmp_path, processes, shard_size, batch, workers, drop_last):
    samples = make_set(generator_file, tmp_path / "set", f"shard_size={shard_size}")
    launcher, env = torchrun_cpu(processes)
    args = [samples, str(tmp_path), str(batch), str(workers), *(["drop_last"] if drop_last else [])]
    proc = subprocess.run([*launcher, str(REPO / "tests" / "ddp_reader_loop.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # a hung rank times out
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(processes)]
    assert [r["world_size"] for r in ranks] == [r["dist_world_size"] for r in ranks] == [processes] * processes
    expected = every_key(samples)
    for way, bound in REPEATS_BELOW.items():
        per_rank = [r["ways"][way] for r in ranks]
        epochs = []
        for epoch in range(2):
            steps = [w["steps"][epoch] for w in per_rank]
            assert len(set(steps)) == 1 and steps[0] == per_rank[0]["len"], (way, steps)  # len(loader) is true
            seen = Counter(tuple(k) for w in per_rank for k in w["keys"][epoch])
            if drop_last:  # short batches left out: nothing twice, less than a batch per process lost
                assert max(seen.values()) == 1 and COUNT - len(seen) < batch * processes, way
            else:
                assert set(seen) == set(expected), way  # no digit lost
                assert 0 <= sum(seen.values()) - COUNT < bound(batch, processes), (way, sum(seen.values()))
            epochs.append([k for w in per_rank for k in w["keys"][epoch]])
        assert epochs[0] != epochs[1], way  # a new order each epoch (persistent workers for stream-prepare)
    # The stream's own split pads like DistributedSampler: ceil(45 / processes) digits per rank.
    stream_len = -(-COUNT // processes)
    assert [r["ways"]["stream-ddp"]["stream_len"] for r in ranks] == [stream_len] * processes


def readme_block(heading: str, page: str = "README.md") -> str:
    """The python block that follows `heading` in README's reader section (or in `page`)."""
    text = (REPO / page).read_text()
    if page == "README.md":
        text = text[text.index("## Using the digits in your training"):]
    return re.findall(r"```python\n(.*?)```", text[text.index(heading):], re.S)[0]


def test_readmes_accelerate_recipe_runs_as_written_on_two_processes(sets, tmp_path):
    script = tmp_path / "train.py"
    block = readme_block("**With accelerate**")
    script.write_text(block.replace('"runs/quickstart/digits"', repr(sets["safetensors"])))
    launcher, env = torchrun_cpu(2)
    proc = subprocess.run([*launcher, str(script)], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.findall(r"epoch (\d): 2 processes, (\d+) steps", proc.stdout) == [(str(e), "1") for e in range(3)]


def test_classic_torchvision_transforms_get_pil_images_and_v2_pipelines_keep_working(sets):
    from PIL import Image

    scope: dict = {}
    block = readme_block("torchvision's classic transforms", "docs/readers.md")
    block = block.replace('"runs/quickstart/digits"', repr(sets["idx"]))
    exec(compile(block, "docs/readers.md", "exec"), scope)  # noqa: S102 (our own README's code)
    image, label = scope["digits"][0]
    raw = ShardDataset(sets["idx"])
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert torch.allclose(image, raw[0][0].float() / 255 * 2 - 1) and label == raw[0][1]
    pil, _ = next(iter(ShardStream(sets["idx"], images="pil")))
    assert isinstance(pil, Image.Image) and pil.mode == "L" and pil.size == (28, 28)
    with pytest.raises(ValueError, match="dtype= applies to tensor images"):
        ShardDataset(sets["idx"], images="pil", dtype=torch.float32)


def test_the_readers_follow_torchvision_conventions(sets):
    from torchvision.transforms import v2

    digits = ShardDataset(sets["safetensors"], dtype=torch.float32, target_transform=lambda y: y + 100)
    image, label = digits[3]
    raw = ShardDataset(sets["safetensors"])
    assert image.dtype == torch.float32 and torch.equal(image, raw[3][0].float() / 255) and label == raw[3][1] + 100
    assert digits.classes == [str(d) for d in range(10)] and torch.equal(digits.targets, raw.labels)
    assert "Number of datapoints: 45" in repr(digits) and sets["safetensors"] in repr(digits)
    normalized = ShardStream(sets["idx"], transform=v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                                               v2.Normalize((0.5,), (0.5,))]))
    image, _ = next(iter(normalized))
    assert image.dtype == torch.float32 and -1 <= image.min() and image.max() <= 1
    assert "one process" in repr(normalized) and "Per epoch: 45 items" in repr(normalized)
    assert len(DataLoader(ShardStream(sets["idx"], batch_size=8), batch_size=8)) == 6


def test_several_processes_must_say_who_splits_and_a_stream_cannot_drop_what_accelerate_splits(sets):
    with pytest.raises(ValueError, match="2 processes read this set and split= is not given: pass split='none' when"):
        ShardStream(sets["idx"], rank=0, world_size=2)
    with pytest.raises(ValueError, match="pass drop_last=True to the DataLoader instead"):
        ShardStream(sets["idx"], split="none", drop_last=True)
    with pytest.raises(ValueError, match="split='halves' is not one of"):
        ShardStream(sets["idx"], split="halves")
    assert len(ShardStream(sets["idx"], split="rank", rank=1, world_size=2)) == 23
    assert len(ShardStream(sets["idx"], split="none", rank=1, world_size=2)) == COUNT  # accelerate splits


def test_a_resume_state_from_another_number_of_processes_is_refused_when_loaded(sets):
    stream = ShardStream(sets["idx"], split="rank", rank=0, world_size=2, seed=2)
    reading = iter(stream)
    next(reading)
    state = stream.state_dict()
    assert state["processes"] == 2 and state["split"] == "rank"
    other = ShardStream(sets["idx"], split="rank", rank=0, world_size=3, seed=2)
    with pytest.raises(ValueError, match=r"saved by a stream with split='rank', 2 processes and 1 DataLoader workers, "
                                         r"but this one has split='rank', 3 processes"):
        other.load_state_dict(state)


def test_reader_errors_are_standard_exceptions_that_name_the_path(sets, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a complete shard set: no manifest.json"):
        ShardStream(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=f"{tmp_path / 'manifest.json'} is not a digit-job manifest"):
        ShardDataset(str(tmp_path))
    with pytest.raises(ValueError, match="dtype=torch.int32 is not allowed"):
        ShardDataset(sets["idx"], dtype=torch.int32)
    with pytest.raises(ValueError, match="shuffle_window=-1"):
        ShardStream(sets["idx"], shuffle_window=-1)


def test_importing_the_readers_loads_neither_accelerate_nor_the_models_nor_any_command():
    code = ("import sys, time; t = time.perf_counter(); import job.readers; t = time.perf_counter() - t; "
            "print(t, *sorted(m for m in sys.modules if m.split('.')[0] in ('accelerate', 'boto3', 'torchvision') "
            "or m.startswith(('job.models', 'job.sampling', 'job.training', 'job.evaluation', 'job.core.runtime'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == [], out[1:]
    print(f"import job.readers: {float(out[0]):.2f} s")


@pytest.mark.s3
def test_an_s3_set_is_cached_once_for_the_map_style_dataset_and_streamed_without_a_copy(
        generator_file, bucket, tmp_path):
    uri = make_set(generator_file, f"s3://{bucket}/digits")
    cache = tmp_path / "cache"
    digits = ShardDataset(uri, cache_dir=str(cache))
    assert len(digits) == COUNT and len(list(cache.rglob("shard-*.safetensors"))) == 5
    assert Counter(key(*digits[i]) for i in range(COUNT)) == every_key(uri)
    before = set(tmp_path.rglob("*"))
    streamed = Counter(key(*item) for item in ShardStream(uri, shuffle_window=10))
    assert streamed == every_key(uri)
    assert set(tmp_path.rglob("*")) == before  # streamed: nothing written locally
    storage.delete(storage.join(uri, "shard-000000.safetensors"))  # the cached copy serves from now on
    assert torch.equal(ShardDataset(uri, cache_dir=str(cache))[0][0], digits[0][0])
    with swapped_environ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}):
        with pytest.raises(PermissionError, match=f"{uri}/manifest.json: access denied"):
            ShardStream(uri)
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/nothing is not a complete shard set"):
        ShardDataset(f"s3://{bucket}/nothing")


def test_the_readme_block_mixes_real_mnist_and_synthetic_digits_in_one_loader(sets):
    block = readme_block("Real MNIST and 60,000 synthetic digits in one DataLoader")
    # As written, but with this test's set and one batch; mnist() reads $DIGITS_DATA_DIR (offline here).
    block = block.replace('"runs/quickstart/digits"', repr(sets["safetensors"])).replace("    ...", "    break")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 (our own README's code)
    assert len(scope["loader"].dataset) == 60_000 + COUNT
    assert scope["images"].shape == (128, 1, 28, 28) and scope["images"].dtype == torch.float32
    assert 0 <= scope["images"].min() and scope["images"].max() <= 1 and scope["labels"].dtype == torch.int64
