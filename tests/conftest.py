"""Shared fixtures: where MNIST is, a private cache, and ways to run the job.

MNIST comes from $DIGITS_DATA_DIR, else ../shared/datasets/mnist beside the checkout when
it exists (machines here are offline), else torchvision downloads it as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
sys.path.insert(0, str(REPO / "scripts"))  # s3_local: the same server helper the scripts use


def _data_dir() -> str:
    if os.environ.get("DIGITS_DATA_DIR"):
        return os.environ["DIGITS_DATA_DIR"]
    if SHARED_MNIST.is_dir():
        return str(SHARED_MNIST)
    return str(REPO / "data")


@pytest.fixture(scope="session", autouse=True)
def job_environment(tmp_path_factory):
    """Every test (and every process it starts) sees the same data root and a private cache."""
    os.environ["DIGITS_DATA_DIR"] = _data_dir()
    os.environ.setdefault("DIGITS_CACHE_DIR", str(tmp_path_factory.mktemp("digits-cache")))
    # precision=auto decides from these figures instead of timing a probe: no test depends on
    # how fast, or how loaded, the machine is. Run the suite the other way round with
    # DIGITS_PRECISION_RATES=fp32=500,bf16=1000 ./scripts/test.sh
    os.environ.setdefault("DIGITS_PRECISION_RATES", "fp32=1000,bf16=500")
    # Keep the accelerate launcher quiet about defaults it fills in.
    os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
    yield


def run_job(*args: str, launcher: list[str] | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m job ...` (or `<launcher> -m job ...`) as a real process."""
    cmd = (launcher or [sys.executable]) + ["-m", "job", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def accelerate_launch(num_processes: int) -> list[str]:
    """The launcher prefix for a real multi-process CPU (gloo) job."""
    exe = Path(sys.executable).with_name("accelerate")
    return [str(exe), "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def torchrun_cpu(num_processes: int) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) for a user's own script with a plain `Accelerator()`
    as a real multi-process CPU (gloo) job. `accelerate launch --multi_gpu` on a machine
    without CUDA would start unrelated one-process jobs for such a script."""
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe), "--nproc_per_node", str(num_processes)], {**os.environ, "ACCELERATE_USE_CPU": "1"}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def train(run_dir: Path, *overrides: str, preset: str | None = "debug") -> int:
    """Run `job train` in this process (fast: no interpreter start, torch already imported).
    preset=None starts from the defaults (the debug preset is a dcgan's: other kinds refuse
    its dcgan keys)."""
    from job.cli import main

    config = ["--config", preset] if preset else []
    return main(["train", *config, f"run.dir={run_dir}", *overrides])


@contextlib.contextmanager
def swapped_environ(values: dict[str, str | None]):
    """os.environ with `values` set (None: removed) and a fresh S3 client, both restored after."""
    from job import storage

    def put(items: dict[str, str | None]) -> None:
        for k, v in items.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.reset_client()

    saved = {k: os.environ.get(k) for k in values}
    try:
        put(values)
        yield
    finally:
        put(saved)


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> str:
    """A tiny conditional generator (the debug preset, 2 steps) for a module's sampling tests."""
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    assert train(run_dir, "train.steps=2", "train.precision=fp32") == 0
    return str(run_dir / "generator.safetensors")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 for the whole session, stopped by its pid.

    Its endpoint and credentials are put in os.environ (boto3's standard variables), so
    in-process jobs and the processes tests start both use it.
    """
    import s3_local

    folder = tmp_path_factory.mktemp("seaweedfs")
    server = s3_local.start(folder)
    with swapped_environ(server.env()):
        yield server
        s3_local.stop(folder)


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket for one test, named after it."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-" + os.urandom(3).hex()
    boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                 aws_secret_access_key=s3_server.secret_key, region_name=s3_server.region).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def recognizable_generator(tmp_path_factory) -> str:
    """A conditional generator trained long enough (about 40 s on 2 cores) that the shipped
    classifier recognizes most of its digits (45-99% per class at confidence 0.9):
    for evaluate and min_confidence. Width 64: narrower ones draw alike digits this early.
    Its precision is pinned: what a generator learns must not depend on the machine's speed."""
    run_dir = tmp_path_factory.mktemp("recognizable") / "run"
    assert train(run_dir, "train.steps=500", "model.g_width=64", "model.d_width=64", "train.sample_every=500",
                 "train.checkpoint_every=500", "train.progress=false", "train.precision=fp32",
                 preset="quickstart") == 0
    return str(run_dir / "generator.safetensors")


@pytest.fixture(scope="session")
def recognizable_unconditional_generator(tmp_path_factory) -> str:
    """The same recipe without labels (and with D's minibatch-std feature, as unconditional
    models use): the shipped classifier finds every class among its digits, for labels=classifier."""
    run_dir = tmp_path_factory.mktemp("recognizable-unconditional") / "run"
    assert train(run_dir, "train.steps=500", "model.conditional=false", "model.minibatch_std=true",
                 "train.sample_every=500", "train.checkpoint_every=500", "train.progress=false",
                 "train.precision=fp32", preset="quickstart") == 0
    return str(run_dir / "generator.safetensors")
