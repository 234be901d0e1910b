"""Kill trials: training is sent SIGTERM or SIGKILL at seeded random points, including in the
middle of a checkpoint write to local disk and to S3, and restarted with resume=auto until it
finishes. After every restart:
  - it starts from the newest complete checkpoint (never a partial one, never an older one);
  - metrics.jsonl holds each step once, with no gap;
and the finished run has exactly the losses of an uninterrupted run (CPU is deterministic),
which is what "nothing lost, nothing taken from a partial checkpoint" looks like.
A few trials run in the default suite; `-m slow` runs 24 more."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, read_metrics
from faultproxy import FaultProxy
from job import storage
from job.training import checkpoint

STEPS = 24
TRAIN_ARGS = ["--config", "debug", f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=2",
              "train.keep_checkpoints=2", "train.sample_every=1000", "train.progress=false", "resume=auto",
              # Wider nets: checkpoints of a few MB, so a write lasts long enough to be caught.
              "model.g_width=64", "model.d_width=64"]
LOSSES = ("loss_d", "loss_g", "d_real", "d_fake")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The uninterrupted run's metrics."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(train_command(str(run_dir)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return read_metrics(run_dir)


def train_command(run_uri: str) -> list[str]:
    return [sys.executable, "-m", "job", "train", *TRAIN_ARGS, f"run.dir={run_uri}"]


def newest_complete(run_uri: str) -> int:
    steps = checkpoint.complete_steps(run_uri)
    return steps[-1] if steps else 0


def logged_steps(run_uri: str) -> list[int]:
    uri = storage.join(run_uri, "metrics.jsonl")
    if not storage.exists(uri):
        return []
    steps = []
    for line in storage.read_bytes(uri).decode().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass  # a line torn by SIGKILL (local files are replaced atomically, so none expected)
    return steps


def partial_checkpoints(run_uri: str) -> list[str]:
    root = storage.join(run_uri, checkpoint.CHECKPOINT_DIR)
    return [n for n in storage.list_names(root) if not storage.exists(storage.join(root, n, "meta.json"))]


class Restarts:
    """Starts the job, interrupts it, starts it again; checks where each start resumed."""

    def __init__(self, run_uri: str, env: dict | None = None):
        self.run_uri, self.env = run_uri, {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.expected_start = 0
        self.interruptions: list[str] = []

    def start(self) -> subprocess.Popen:
        self.expected_start = newest_complete(self.run_uri)
        self.proc = subprocess.Popen(train_command(self.run_uri), cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        return self.proc

    def wait(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=300)
        resumed = re.search(r"resuming from \S+ \(step (\d+)\)", out)
        if resumed or "writing to" in out:  # the run got far enough to say where it starts
            assert (int(resumed.group(1)) if resumed else 0) == self.expected_start, out
        assert "Traceback" not in err, err
        return self.proc.returncode, out, err

    def interrupt(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        code, _, err = self.wait()
        self.interruptions.append(f"{sig.name}@{newest_complete(self.run_uri)}")
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        elif code == 143:  # stopped by the job: its checkpoint is the newest complete one
            stopped = int(re.search(r"stopped: SIGTERM at step (\d+): checkpoint saved", err).group(1))
            assert stopped == newest_complete(self.run_uri)
        else:  # before the job installed its handler (start-up) or after it finished
            assert code in (-signal.SIGTERM, 0), err
        steps = logged_steps(self.run_uri)
        assert steps == sorted(set(steps)), f"a step logged twice: {steps}"

    def finish(self, reference: list[dict]) -> None:
        self.start()
        code, _, err = self.wait()
        assert code == 0, err
        metrics = [json.loads(line) for line in
                   storage.read_bytes(storage.join(self.run_uri, "metrics.jsonl")).decode().splitlines()]
        assert [m["step"] for m in metrics] == list(range(1, STEPS + 1)), self.interruptions
        for got, want in zip(metrics, reference):
            assert {k: got[k] for k in LOSSES} == {k: want[k] for k in LOSSES}, (got["step"], self.interruptions)


def wait_until(condition, timeout: float = 120, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def run_trial(run_uri: str, seed: int, reference: list[dict], kills: int = 2, env: dict | None = None) -> Restarts:
    """`kills` interruptions at seeded random points (a random step, then a random instant
    within it; sometimes during start-up), each SIGTERM or SIGKILL, then a run to the end."""
    rng = random.Random(seed)
    trial = Restarts(run_uri, env)
    for _ in range(kills):
        start = newest_complete(run_uri)
        if start >= STEPS - 1:
            break  # nothing left to interrupt
        trial.start()
        target = rng.randint(start, STEPS - 1)
        if target > start:
            wait_until(lambda target=target: (logged_steps(run_uri) or [0])[-1] >= target
                       or trial.proc.poll() is not None)
        time.sleep(rng.uniform(0, 0.3))
        if trial.proc.poll() is not None:  # finished before the signal: nothing to interrupt
            trial.wait()
            break
        trial.interrupt(rng.choice([signal.SIGTERM, signal.SIGKILL]))
    trial.finish(reference)
    return trial


# ----------------------------------------------------------------------------- default suite


@pytest.mark.parametrize("seed", [1, 2])
def test_random_sigterm_and_sigkill_then_resume_lose_nothing(tmp_path, reference, seed):
    run_trial(str(tmp_path / "run"), seed, reference)


def test_sigkill_in_the_middle_of_a_local_checkpoint_write_resumes_from_the_previous_one(tmp_path, reference):
    run_dir = tmp_path / "run"
    trial = Restarts(str(run_dir))
    for _attempt in range(10):  # a write lasts milliseconds: catch one in the act
        trial.start()
        caught = False
        while trial.proc.poll() is None and not caught:
            folders = list((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").exists() else []
            caught = any(not (f / "meta.json").exists() and any(f.iterdir()) for f in folders)
        if not caught:
            trial.wait()
            break
        trial.interrupt(signal.SIGKILL)
        if partial_checkpoints(str(run_dir)):
            break  # killed mid-write: a folder with some files and no meta.json is left behind
    assert partial_checkpoints(str(run_dir)), "never caught a checkpoint write in progress"
    before = newest_complete(str(run_dir))
    trial.finish(reference)
    assert trial.expected_start == before


@pytest.mark.s3
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_signal_during_a_checkpoint_upload_to_s3_never_resumes_from_a_partial_one(s3_server, bucket, reference,
                                                                                   sig):
    """The proxy holds the upload of a checkpoint's second file (the first has landed) until
    the job has been signalled: SIGKILL leaves a partial folder, SIGTERM finishes the upload
    and stops after it."""
    proxy = FaultProxy(s3_server.endpoint).start()
    run_uri = f"s3://{bucket}/run"
    trial = Restarts(run_uri, {"AWS_ENDPOINT_URL": proxy.endpoint})
    try:
        proxy.hold(lambda method, path: method == "PUT" and "/checkpoints/step-00000010/discriminator" in path)
        trial.start()
        wait_until(lambda: proxy.held.is_set() or trial.proc.poll() is not None)
        assert proxy.held.is_set(), trial.proc.communicate()
        if sig == signal.SIGKILL:
            trial.interrupt(sig)
            proxy.release()  # the held request may still land, as a slow one would
            assert newest_complete(run_uri) == 8 and "step-00000010" in partial_checkpoints(run_uri)
        else:
            trial.proc.send_signal(sig)
            time.sleep(0.5)  # the signal is recorded while the upload waits
            proxy.release()
            code, _, err = trial.wait()
            assert code == 143 and "stopped: SIGTERM at step 10: checkpoint saved" in err, err
            assert newest_complete(run_uri) == 10
        trial.finish(reference)
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- slow: many trials


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 124))
def test_many_random_interruptions_lose_nothing(tmp_path, reference, seed):
    run_trial(str(tmp_path / "run"), seed, reference, kills=3)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("seed", range(200, 206))
def test_many_random_interruptions_on_s3_lose_nothing(s3_server, bucket, reference, seed):
    run_trial(f"s3://{bucket}/run", seed, reference, kills=3)


def test_the_trial_helpers_see_a_partial_folder(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "step-00000004"
    folder.mkdir(parents=True)
    (folder / "generator.safetensors").write_bytes(b"x")
    assert partial_checkpoints(str(tmp_path / "run")) == ["step-00000004"]
    assert newest_complete(str(tmp_path / "run")) == 0
    assert Path(folder).exists()
