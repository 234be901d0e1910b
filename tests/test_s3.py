"""Storage on S3, against a real SeaweedFS server started by the tests (never a mock)."""

from __future__ import annotations

import json
import os
import time

import pytest

from conftest import accelerate_launch, run_job, train
from job import storage
from job.cli import main
from job.models import load_generator
from job.training import checkpoint

pytestmark = pytest.mark.s3


def s3_metrics(run_uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(f"{run_uri}/metrics.jsonl").decode().splitlines()]


@pytest.fixture
def pushed_mnist(bucket):
    uri = f"s3://{bucket}/datasets/mnist"
    assert main(["data", "push", "mnist", uri]) == 0
    return uri


def test_data_push_writes_the_files_and_a_sha256_manifest(pushed_mnist):
    manifest = json.loads(storage.read_bytes(f"{pushed_mnist}/manifest.json"))
    assert manifest["name"] == "mnist" and len(manifest["files"]) == 4
    for name, entry in manifest["files"].items():
        assert storage.sha256(storage.read_bytes(f"{pushed_mnist}/{name}")) == entry["sha256"]


def test_training_reads_pushed_data_once_into_a_verified_cache(pushed_mnist, bucket, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIGITS_CACHE_DIR", str(cache))
    assert train(tmp_path / "run", f"data.root={pushed_mnist}", "train.steps=1") == 0
    cached = sorted((cache / "datasets" / bucket / "datasets" / "mnist").iterdir())
    assert len(cached) == 4
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert train(tmp_path / "run2", f"data.root={pushed_mnist}", "train.steps=1") == 0
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # reused, not downloaded again
    # A corrupted cached file is noticed and fetched again.
    cached[0].write_bytes(b"garbage")
    assert train(tmp_path / "run3", f"data.root={pushed_mnist}", "train.steps=1") == 0
    assert cached[0].stat().st_size > 100


def test_a_run_on_s3_resumes_from_s3_and_continues_the_step_count(bucket, capsys):
    run = f"s3://{bucket}/runs/r1"
    assert main(["train", "--config", "debug", f"run.dir={run}", "train.steps=3"]) == 0
    assert checkpoint.complete_steps(run) == [3]
    assert main(["train", "--config", "debug", f"run.dir={run}"]) == 0
    assert f"resuming from {run}/checkpoints/step-00000003 (step 3)" in capsys.readouterr().out
    assert [m["step"] for m in s3_metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.complete_steps(run) == [3, 6]
    for name in ("config.yaml", "world.json", "samples/latest.png", "generator.safetensors"):
        assert storage.exists(f"{run}/{name}"), name
    G, info, _ = load_generator(f"{run}/generator.safetensors")
    assert info["step"] == 6 and info["arch"] == "dcgan28"


def test_an_interrupted_checkpoint_upload_is_never_taken_as_complete(bucket, monkeypatch, capsys):
    run = f"s3://{bucket}/runs/broken"
    real_write = storage.write_bytes

    def failing_write(uri, data):
        if "step-00000006/optimizer_discriminator.safetensors" in uri:
            raise ConnectionError("simulated upload failure")
        return real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", failing_write)
    with pytest.raises(ConnectionError):
        main(["train", "--config", "debug", f"run.dir={run}"])
    monkeypatch.setattr(storage, "write_bytes", real_write)
    # Some files of step 6 made it, but without meta.json the folder is not complete.
    assert storage.exists(f"{run}/checkpoints/step-00000006/generator.safetensors")
    assert not storage.exists(f"{run}/checkpoints/step-00000006/meta.json")
    assert checkpoint.latest(run).endswith("step-00000003")
    capsys.readouterr()
    assert main(["train", "--config", "debug", f"run.dir={run}"]) == 0
    assert "(step 3)" in capsys.readouterr().out
    assert checkpoint.complete_steps(run) == [3, 6]


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_wrong_credentials_exit_2_with_one_line_naming_the_uri(bucket, tmp_path):
    proc = run_job("train", "--config", "debug", f"run.dir=s3://{bucket}/run",
                   env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert f"s3://{bucket}/run" in line and "access denied" in line


def test_a_missing_bucket_exits_2_with_one_line_naming_the_uri(s3_server):
    proc = run_job("train", "--config", "debug", "run.dir=s3://no-such-bucket-here/run")
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "s3://no-such-bucket-here/run" in line and "does not exist" in line


def test_an_unreachable_endpoint_fails_within_the_configured_time(s3_server):
    started = time.monotonic()
    proc = run_job("train", "--config", "debug", "run.dir=s3://any-bucket/run", env={
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "2", "DIGITS_S3_CONNECT_TIMEOUT": "1"})
    assert time.monotonic() - started < 30
    assert proc.returncode == 3
    line = _one_error_line(proc)
    assert "http://127.0.0.1:9" in line and "unreachable" in line


def test_two_ranks_on_one_node_share_one_download_of_the_dataset(pushed_mnist, bucket, tmp_path):
    cache = tmp_path / "cache"
    run = f"s3://{bucket}/runs/ddp"
    proc = run_job("train", "--config", "debug", f"run.dir={run}", f"data.root={pushed_mnist}", "train.steps=2",
                   launcher=accelerate_launch(2), env={"DIGITS_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(storage.read_bytes(f"{run}/world.json"))["world_size"] == 2
    files = os.listdir(cache / "datasets" / bucket / "datasets" / "mnist")
    assert sorted(files) == sorted(f + ".gz" for f in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                                       "train-images-idx3-ubyte", "train-labels-idx1-ubyte"))


def test_an_image_folder_pushed_to_s3_trains_from_its_verified_copy(bucket, tmp_path, monkeypatch):
    from test_datasets import make_image_folder

    root = make_image_folder(tmp_path / "shapes", per_class=3)
    uri = f"s3://{bucket}/datasets/shapes"
    assert main(["data", "push", "imagefolder", uri, f"data.root={root}"]) == 0
    manifest = json.loads(storage.read_bytes(f"{uri}/manifest.json"))
    assert manifest["name"] == "imagefolder" and "circle/000.png" in manifest["files"] and len(manifest["files"]) == 9
    monkeypatch.setenv("DIGITS_CACHE_DIR", str(tmp_path / "cache"))
    assert train(tmp_path / "run", "model.kind=mean", "data.name=imagefolder", f"data.root={uri}", preset=None) == 0
    G, _, _ = load_generator(str(tmp_path / "run" / "generator.safetensors"))
    assert G.output_shape == (3, 28, 28) and G.num_classes == 3
    # A pushed dataset is read only as the dataset it is.
    assert train(tmp_path / "run2", "data.name=mnist", f"data.root={uri}", "train.steps=1") == 2


def test_transform_reads_images_from_s3_and_writes_printed_digits_there(bucket, tmp_path):
    from test_autoencoder import photo_of

    from job.core.config import DataConfig
    from job.data import loading

    test = loading.load_split(DataConfig(), train=False)
    for i in range(3):
        path = tmp_path / f"{i}.png"
        photo_of(test.images[i, 0].numpy(), side=120, seed=i).save(path)
        storage.upload_file(str(path), f"s3://{bucket}/scans/page-{i}.png")
    out = f"s3://{bucket}/printed"
    assert main(["transform", f"inputs=s3://{bucket}/scans", f"out={out}"]) == 0
    report = json.loads(storage.read_bytes(f"{out}/report.json"))
    assert [o["input"] for o in report["outputs"]] == ["page-0.png", "page-1.png", "page-2.png"]
    assert [o["digit"] for o in report["outputs"]] == test.labels[:3].tolist()
    assert storage.exists(f"{out}/page-0.png") and storage.exists(f"{out}/side-by-side.png")
