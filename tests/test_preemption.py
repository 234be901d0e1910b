"""SIGTERM (preemption) and SIGINT stop a training run after a checkpoint; rerunning resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, read_metrics
from job.training import checkpoint


def start_training(run_dir, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "job", "train", "--config", "debug", f"run.dir={run_dir}", "train.steps=100000",
           "train.log_every=1", "train.checkpoint_every=100000", "train.progress=false", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_steps(run_dir, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"training did not reach step {at_least} in {timeout} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_within_the_grace_period_and_the_rerun_resumes(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir)
    wait_for_steps(run_dir, 3)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)  # Kubernetes' default grace period
    assert time.monotonic() - sent < 30
    assert proc.returncode == code, stderr
    steps = checkpoint.complete_steps(str(run_dir))
    assert len(steps) == 1 and steps[0] >= 3
    stopped_at = steps[0]
    assert f"stopped: {signal.Signals(sig).name} at step {stopped_at}: checkpoint saved" in stderr
    assert "Traceback" not in stderr
    # The metrics end at the checkpoint; the rerun resumes there and continues without a gap.
    assert read_metrics(run_dir)[-1]["step"] == stopped_at
    rerun = subprocess.run([sys.executable, "-m", "job", "train", "--config", "debug", f"run.dir={run_dir}",
                            f"train.steps={stopped_at + 3}", "train.log_every=1", "train.progress=false"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from {checkpoint.step_dir(str(run_dir), stopped_at)} (step {stopped_at})" in rerun.stdout
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, stopped_at + 4))


def test_sigterm_to_the_launchers_process_group_stops_accelerate_launch_the_same_way(tmp_path):
    """What `tini -g` does in the images: the signal reaches the launcher and its worker."""
    from conftest import accelerate_launch

    run_dir = tmp_path / "run"
    launcher = accelerate_launch(2)
    cmd = [*launcher, "-m", "job", "train", "--config", "debug", f"run.dir={run_dir}", "train.steps=100000",
           "train.log_every=1", "train.checkpoint_every=100000", "train.progress=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    wait_for_steps(run_dir, 12)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "stopped: SIGTERM at step" in stderr, stderr[-2000:]
    steps = checkpoint.complete_steps(str(run_dir))
    assert len(steps) == 1 and steps[0] >= 12 and steps[0] % 10 == 0  # both ranks agreed on a step


def test_sigterm_to_sampling_finishes_the_shards_in_hand_and_the_rerun_completes_the_set(tmp_path):
    gen_run = tmp_path / "gen"
    assert subprocess.run([sys.executable, "-m", "job", "train", "--config", "debug", f"run.dir={gen_run}",
                           "train.steps=1"], cwd=REPO, capture_output=True).returncode == 0
    out = tmp_path / "digits"
    cmd = [sys.executable, "-m", "job", "sample", f"generator={gen_run / 'generator.safetensors'}",
           "count=200000", "shard_size=2000", f"out={out}", "progress=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "_records"
    deadline = time.monotonic() + 120
    while len(list(records.glob("shard-*.json")) if records.exists() else []) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGTERM: worker 0 wrote"), stderr
    done = sorted(p.name for p in records.glob("shard-*.json"))
    shards = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert 3 <= len(done) < 100 and [d.replace(".json", ".safetensors") for d in done] == shards  # none half-made
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} of 100 shards already done" in rerun.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 200000 and [s["index"] for s in manifest["shards"]] == list(range(100))
