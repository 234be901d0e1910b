"""A real 2-process `accelerate launch` on CPU (gloo), not a simulation."""

from __future__ import annotations

import json

from conftest import accelerate_launch, read_metrics, run_job


def test_two_process_launch_has_world_size_2_and_identical_weights_on_both_ranks(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_job("train", "--config", "debug", f"run.dir={run_dir}", launcher=accelerate_launch(2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "world_size=2" in proc.stdout
    assert proc.stdout.count("digit-job train: done") == 1  # only the main process reports
    world = json.loads((run_dir / "world.json").read_text())
    assert world["world_size"] == 2
    digests = world["param_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # The metrics are global: 2 processes x 16 images per step.
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
