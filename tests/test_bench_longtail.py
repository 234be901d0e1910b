"""scripts/bench_longtail.py: a tiny run in the default suite keeps the script working; the
real benchmark (about an hour on 2 cores) is marked slow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = [sys.executable, str(REPO / "scripts" / "bench_longtail.py")]


def test_a_tiny_run_writes_every_arm_the_rare_lift_and_a_plot(tmp_path):
    tiny = ["--profiles", "step:1@0.05", "--gan-steps", "10", "--seeds", "2", "--steps", "2", "--min-confidence", "0",
            "--n", "300"]
    proc = subprocess.run([*BENCH, *tiny, "--work", str(tmp_path / "work"), "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("longtail-*.json")
    row = json.loads(path.read_text())["profiles"]["step:1@0.05"]
    assert row["rare_classes"] == [1] and len(row["arms"]["synthetic"]["rare_accuracy"]["values"]) == 2
    assert {"mean", "std", "values", "over", "target_met"} <= set(row["rare_lift"]["synthetic"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rare_lift synthetic:" in proc.stdout


@pytest.mark.slow
def test_the_long_tail_benchmark_on_both_profiles(tmp_path):
    proc = subprocess.run([*BENCH, "--work", str(tmp_path / "work")], cwd=REPO, timeout=6 * 3600)
    assert proc.returncode == 0
