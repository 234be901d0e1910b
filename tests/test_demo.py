"""scripts/demo.sh, as a new user meets it: a mistake shows as the job's one `error:` line
and its exit code (what the demo adds is one `demo:` line saying what the code means),
never a launcher's traceback, and nothing is written."""

from __future__ import annotations

import subprocess

import pytest

from conftest import REPO


@pytest.mark.parametrize("mistake, says", [
    ("train.steps=abc", "train.steps='abc' has the wrong type: expected int"),
    ("train.lr=0.1", "the command line sets train.lr, which model.kind=dcgan does not use"),
    ("data.root=/nonexistent", "mnist could not be loaded from data.root='/nonexistent'"),
])
def test_the_demo_shows_the_jobs_one_line_error_and_exit_code(tmp_path, mistake, says):
    run_dir = tmp_path / "run"
    proc = subprocess.run(["./scripts/demo.sh", mistake, f"run.dir={run_dir}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("setup:")]
    assert len(lines) == 2 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    assert lines[1].startswith("demo: exit 2: bad input"), proc.stderr
    assert "Traceback" not in proc.stderr and not run_dir.exists()
