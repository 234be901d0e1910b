"""Bulk sampling: deterministic shards, resumable, spread over processes and pods."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import REPO, accelerate_launch, run_job, train
from job import storage
from job.cli import main
from job.shardsets import formats


@pytest.fixture(scope="module")
def unconditional_generator(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("ugen") / "run"
    assert train(run_dir, "train.steps=1", "model.conditional=false") == 0
    return str(run_dir / "generator.safetensors")


def sample_args(generator: str, out: Path, *extra: str) -> list[str]:
    return ["sample", f"generator={generator}", f"out={out}", "progress=false", *extra]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*"))}


def read_all(out: Path, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    manifest = json.loads((out / "manifest.json").read_text())
    images, labels = [], []
    for record in manifest["shards"]:
        x, y = formats.decode(fmt, {name: (out / name).read_bytes() for name in record["files"]})
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_two_processes_and_one_process_write_byte_identical_shards(generator_file, tmp_path, precision):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("count=230", "shard_size=50", f"precision={precision}")
    assert main(sample_args(generator_file, one, *args)) == 0
    proc = run_job(*sample_args(generator_file, two, *args), launcher=accelerate_launch(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout and "(2 workers)" in proc.stdout
    assert len(shard_bytes(one)) == 5
    assert shard_bytes(one) == shard_bytes(two)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["shards"] == m2["shards"] and m1["count"] == 230 and m1["precision"] == precision


def test_a_run_killed_part_way_completes_on_rerun_with_each_shard_once(generator_file, tmp_path):
    out = tmp_path / "out"
    args = sample_args(generator_file, out, "count=40000", "shard_size=400", "writers=1", "queue=1")
    proc = subprocess.Popen([sys.executable, "-m", "job", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / "_records").glob("shard-*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "_records").glob("shard-*.json")))
    assert 3 <= done_before < 100, "the kill should land part-way"
    assert not (out / "manifest.json").exists()
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 40000 and manifest["num_shards"] == 100
    assert [r["index"] for r in manifest["shards"]] == list(range(100))
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-{i:06d}.safetensors" for i in range(100)]
    _, labels = read_all(out, "safetensors")
    assert labels.shape == (40000,)
    # The rerun's shards equal an uninterrupted run's.
    fresh = tmp_path / "fresh"
    assert main(sample_args(generator_file, fresh, "count=40000", "shard_size=400")) == 0
    assert shard_bytes(out) == shard_bytes(fresh)


def test_a_rerun_skips_done_shards_and_redoes_a_torn_one(generator_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = sample_args(generator_file, out, "count=300", "shard_size=100")
    assert main(args) == 0
    reference = shard_bytes(out)
    # A shard whose file was cut short (killed during the write) and one with no record.
    (out / "shard-000001.safetensors").write_bytes(b"torn")
    (out / "_records" / "shard-000002.json").unlink()
    (out / "manifest.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "1 of 3 shards already done" in capsys.readouterr().out
    assert shard_bytes(out) == reference and (out / "manifest.json").exists()


def test_two_indexed_job_pods_together_produce_the_same_set_as_one_process(generator_file, tmp_path, monkeypatch):
    single, pods = tmp_path / "single", tmp_path / "pods"
    assert main(sample_args(generator_file, single, "count=500", "shard_size=100")) == 0
    monkeypatch.setenv("DIGITS_NUM_WORKERS", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    # Pod 1 first, alone: it would wait for pod 0's plan (precision=auto); here it stops
    # waiting at once and measures on this machine, as the single run did.
    monkeypatch.setenv("DIGITS_PLAN_WAIT_S", "0")
    assert main(sample_args(generator_file, pods, "count=500", "shard_size=100")) == 0
    assert sorted(shard_bytes(pods)) == ["shard-000001.safetensors", "shard-000003.safetensors"]
    assert not (pods / "manifest.json").exists()  # pod 0 has not run yet
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    assert main(sample_args(generator_file, pods, "count=500", "shard_size=100")) == 0
    assert shard_bytes(pods) == shard_bytes(single)
    assert json.loads((pods / "manifest.json").read_text())["shards"] == \
        json.loads((single / "manifest.json").read_text())["shards"]


def test_the_three_formats_read_back_to_the_same_images_and_labels(generator_file, tmp_path):
    decoded = {}
    for fmt in formats.FORMATS:
        out = tmp_path / fmt
        assert main(sample_args(generator_file, out, "count=120", "shard_size=50", f"format={fmt}")) == 0
        decoded[fmt] = read_all(out, fmt)
    images, labels = decoded["safetensors"]
    assert images.dtype == torch.uint8 and images.shape == (120, 1, 28, 28)
    for fmt in ("webdataset", "idx"):
        assert torch.equal(decoded[fmt][0], images), fmt
        assert torch.equal(decoded[fmt][1], labels), fmt


def test_idx_shards_are_read_by_torchvisions_mnist_reader(generator_file, tmp_path):
    import gzip

    from torchvision.datasets.mnist import read_image_file, read_label_file

    out = tmp_path / "idx"
    assert main(sample_args(generator_file, out, "count=30", "format=idx")) == 0
    for name in ("shard-000000-images-idx3-ubyte", "shard-000000-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((out / f"{name}.gz").read_bytes()))
    images = read_image_file(str(tmp_path / "shard-000000-images-idx3-ubyte"))
    labels = read_label_file(str(tmp_path / "shard-000000-labels-idx1-ubyte"))
    assert images.shape == (30, 28, 28) and labels.shape == (30,)


def test_conditional_shards_carry_the_requested_label_distribution(generator_file, tmp_path):
    balanced = tmp_path / "balanced"
    assert main(sample_args(generator_file, balanced, "count=1000", "shard_size=200")) == 0
    _, labels = read_all(balanced, "safetensors")
    assert Counter(labels.tolist()) == {c: 100 for c in range(10)}
    assert json.loads((balanced / "manifest.json").read_text())["label_histogram"] == [100] * 10

    some = tmp_path / "some"
    assert main(sample_args(generator_file, some, "count=301", "labels=3,5,8")) == 0
    counts = Counter(read_all(some, "safetensors")[1].tolist())
    assert set(counts) == {3, 5, 8} and max(counts.values()) - min(counts.values()) <= 1

    uniform = tmp_path / "uniform"
    assert main(sample_args(generator_file, uniform, "count=5000", "labels=uniform")) == 0
    counts = Counter(read_all(uniform, "safetensors")[1].tolist())
    assert set(counts) == set(range(10)) and all(380 < n < 620 for n in counts.values())


def test_unconditional_samples_have_label_minus_one_and_the_manifest_says_so(unconditional_generator, tmp_path):
    out = tmp_path / "u"
    assert main(sample_args(unconditional_generator, out, "count=40")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labeled"] is False and "unconditional" in manifest["labels"]
    assert set(read_all(out, "safetensors")[1].tolist()) == {-1}


def test_another_job_into_the_same_out_is_refused(generator_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(sample_args(generator_file, out, "count=100")) == 0
    assert main(sample_args(generator_file, out, "count=100", "seed=1")) == 2
    assert "different sampling job (seed differ)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["count=0"], "count=0 is out of range"),
        (["count=-5"], "count=-5 is out of range"),
        (["count=10", "format=jpeg"], "format='jpeg' is not allowed"),
        (["count=10", "labels=3,x"], "labels='3,x' is not allowed"),
        (["count=10", "labels=12"], "asks for classes this generator does not have"),
    ],
)
def test_bad_sampling_input_exits_2_before_any_shard_is_written(generator_file, tmp_path, extra, expected):
    out = tmp_path / "out"
    proc = run_job(*sample_args(generator_file, out, *extra))
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_file_that_is_not_a_generator_is_refused(generator_file, tmp_path):
    ckpt_module = Path(generator_file).parent / "checkpoints" / "step-00000002" / "discriminator.safetensors"
    text_file = tmp_path / "notes.safetensors"
    text_file.write_text("not a safetensors file at all")
    for bad in (ckpt_module, text_file, tmp_path / "missing.safetensors"):
        proc = run_job(*sample_args(str(bad), tmp_path / "out", "count=10"))
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_that_cannot_be_written_is_refused(generator_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = run_job(*sample_args(generator_file, blocker / "out", "count=10"))
    assert proc.returncode == 2 and "cannot be written" in proc.stderr


@pytest.mark.s3
def test_sampling_to_s3_writes_shards_and_manifest_and_a_rerun_uploads_nothing(generator_file, bucket, monkeypatch):
    out = f"s3://{bucket}/synthetic/a"
    args = ["sample", f"generator={generator_file}", f"out={out}", "count=250", "shard_size=100", "progress=false"]
    assert main(args) == 0
    names = storage.list_names(out)
    assert {"manifest.json", "shard-000000.safetensors", "shard-000002.safetensors", "_records"} <= set(names)
    manifest = json.loads(storage.read_bytes(f"{out}/manifest.json"))
    assert manifest["count"] == 250
    for record in manifest["shards"]:
        for name, f in record["files"].items():
            from job.storage import sha256

            assert sha256(storage.read_bytes(f"{out}/{name}")) == f["sha256"]
    writes = []
    real_write = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data: (writes.append(uri), real_write(uri, data)))
    assert main(args) == 0
    assert not [w for w in writes if "shard-" in w.rsplit("/", 1)[-1]], writes


# ----------------------------------------------------------------------------- min_confidence


def test_min_confidence_keeps_exact_counts_of_recognized_digits_identically_on_one_and_two_processes(
    recognizable_generator, tmp_path
):
    from job.models import scoring

    one, two = tmp_path / "one", tmp_path / "two"
    args = ["count=450", "shard_size=200", "min_confidence=0.9"]
    assert main(sample_args(recognizable_generator, one, *args)) == 0
    proc = run_job(*sample_args(recognizable_generator, two, *args), launcher=accelerate_launch(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shard_bytes(one) == shard_bytes(two)
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["count"] == 450 and manifest["min_confidence"] == 0.9
    drawn = sum(r["drawn"] for r in manifest["shards"])
    assert drawn > 450, "this generator is not perfect: some digits must have been redrawn"
    assert manifest["acceptance_rate"] == pytest.approx(450 / drawn)
    assert manifest["classifier"]["sha256"]
    images, labels = read_all(one, "safetensors")
    assert labels.shape == (450,) and Counter(labels.tolist()) == Counter({c: 45 for c in range(10)})
    model, _, _ = scoring.load_classifier("builtin:mnist")
    probs = scoring.score(model, images).probs
    assert (probs[torch.arange(450), labels] >= 0.9).all()


def test_min_confidence_changes_nothing_for_digits_that_pass_and_is_part_of_the_plan(recognizable_generator, tmp_path):
    out = tmp_path / "out"
    assert main(sample_args(recognizable_generator, out, "count=100")) == 0
    proc = run_job(*sample_args(recognizable_generator, out, "count=100", "min_confidence=0.5"))
    assert proc.returncode == 2 and "different sampling job (min_confidence, classifier_sha256 differ)" in proc.stderr


@pytest.mark.parametrize(
    "gen_fixture, extra, message",
    [
        ("unconditional_generator", "min_confidence=0.5", "min_confidence needs a conditional generator"),
        ("generator_file", "min_confidence=0.99", "accepts only"),
    ],
)
def test_min_confidence_refuses_what_cannot_work_before_writing(gen_fixture, extra, message, request, tmp_path):
    generator = request.getfixturevalue(gen_fixture)
    out = tmp_path / "out"
    proc = run_job(*sample_args(generator, out, "count=100", extra))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


# ----------------------------------------------------------------------------- labels=classifier


def test_labels_classifier_labels_an_unconditional_generator_in_exact_quotas_on_one_and_two_processes(
    recognizable_unconditional_generator, tmp_path
):
    from job.models import scoring

    one, two = tmp_path / "one", tmp_path / "two"
    args = ["count=300", "shard_size=100", "labels=classifier", "min_confidence=0.5", "format=idx"]
    assert main(sample_args(recognizable_unconditional_generator, one, *args)) == 0
    proc = run_job(*sample_args(recognizable_unconditional_generator, two, *args), launcher=accelerate_launch(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 workers)" in proc.stdout and "labels=classifier: this generator's digits are" in proc.stdout
    assert shard_bytes(one) == shard_bytes(two)
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["labeled"] and manifest["labels"] == "classifier" and manifest["classifier"]["sha256"]
    assert manifest["label_histogram"] == [30] * 10
    assert all(r["label_histogram"] == [10] * 10 for r in manifest["shards"])  # every shard balanced
    images, labels = read_all(one, "idx")  # idx now carries a label file
    model, _, _ = scoring.load_classifier("builtin:mnist")
    probs = scoring.score(model, images).probs
    assert torch.equal(probs.argmax(dim=1), labels) and (probs.max(dim=1).values >= 0.5).all()


def test_labels_classifier_refuses_a_rare_class_by_what_it_would_cost_at_this_shard_size():
    from job.sampling.generation import ClassifierLabels

    rounds = ClassifierLabels.expected_rounds
    labeller = ClassifierLabels(None, 0.5, 100, None)
    # 0.35% class ones: a few rounds for a 100-digit shard, far too many for 10,000 digits
    assert rounds(labeller, 0.0035, 100, 10) < 15 < labeller.ROUND_BUDGET < rounds(labeller, 0.0035, 10_000, 10)
    assert rounds(labeller, 0.0, 100, 10) == float("inf")


@pytest.mark.parametrize(
    "gen_fixture, message",
    [
        ("generator_file", "labels=classifier is for unconditional generators"),
        ("unconditional_generator", "of this generator's digits are class"),  # one step: it draws blobs
    ],
)
def test_labels_classifier_refuses_what_cannot_work_before_writing(gen_fixture, message, request, tmp_path):
    out = tmp_path / "out"
    proc = run_job(*sample_args(request.getfixturevalue(gen_fixture), out, "count=100", "labels=classifier"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()

