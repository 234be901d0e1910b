"""scripts/bench_augment.py: a tiny run in the default suite keeps the script working; the
real benchmark (about an hour and more on 2 cores) is marked slow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = [sys.executable, str(REPO / "scripts" / "bench_augment.py")]


def results(folder) -> dict:
    (path,) = folder.glob("augment-*.json")
    return json.loads(path.read_text())


def test_a_tiny_low_data_run_writes_rows_with_k_ratio_and_the_lift(tmp_path):
    tiny = ["--part", "low", "--ks", "10", "--gan-steps", "10", "--seeds", "1", "--low-steps", "10",
            "--low-filter", "0"]  # a 10-step generator's digits would not pass a real filter
    proc = subprocess.run([*BENCH, *tiny, "--work", str(tmp_path / "work"), "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = results(tmp_path)["low_data"]
    assert [(r["k"], r["ratio"], r["filter"]) for r in rows] == [
        (10, 1, "none"), (10, 4, "none"), (10, 1, "min_confidence=0.0 (judge: the real-alone classifier)")]
    for r in rows:
        assert r["lift_points"] == pytest.approx(100 * (r["mixed_accuracy"]["mean"] - r["real_accuracy"]["mean"]),
                                                 abs=1e-3)
    assert "| 100 (k=10) | 100 (ratio 1) |" in proc.stdout
    # A rerun finds every stage and classifier done and trains nothing.
    again = subprocess.run([*BENCH, *tiny, "--work", str(tmp_path / "work"), "--results", str(tmp_path)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    launched = [line for line in again.stdout.splitlines() if line.startswith("+ ")]  # `python -m job` runs
    assert again.returncode == 0 and not launched and results(tmp_path)["low_data"] == rows


@pytest.mark.slow
def test_the_whole_benchmark_runs_and_reports_every_row(tmp_path):
    proc = subprocess.run([*BENCH, "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=6 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = results(tmp_path)
    assert {(r["k"], r["ratio"]) for r in report["low_data"]} == {(k, q) for k in (10, 100, 1000) for q in (1, 4)}
    assert sum(r["filter"] != "none" for r in report["low_data"]) <= 3
    assert len(report["full_data"]) == 4
