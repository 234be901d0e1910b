"""Shared fixtures: where MNIST is, a private cache, and ways to run the job.

MNIST comes from $DIGITS_DATA_DIR, else ../shared/datasets/mnist beside the checkout when
it exists (machines here are offline), else torchvision downloads it as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"


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


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def train(run_dir: Path, *overrides: str, preset: str = "debug") -> int:
    """Run `job train` in this process (fast: no interpreter start, torch already imported)."""
    from job.cli import main

    return main(["train", "--config", preset, f"run.dir={run_dir}", *overrides])
