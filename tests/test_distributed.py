"""A real 2-process `accelerate launch` on CPU (gloo), not a simulation."""

from __future__ import annotations

import json

import pytest

from conftest import accelerate_launch, read_metrics, run_job


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_two_process_launch_has_world_size_2_and_identical_weights_on_both_ranks(tmp_path, precision):
    run_dir = tmp_path / "run"
    proc = run_job("train", "--config", "debug", f"run.dir={run_dir}", f"train.precision={precision}",
                   launcher=accelerate_launch(2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "world_size=2" in proc.stdout
    assert precision != "bf16" or "precision=bf16" in proc.stdout
    assert proc.stdout.count("digit-job train: done") == 1  # only the main process reports
    world = json.loads((run_dir / "world.json").read_text())
    assert world["world_size"] == 2
    digests = world["param_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # The metrics are global: 2 processes x 16 images per step.
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_two_processes_compute_the_same_mean_model_as_one(tmp_path):
    import torch

    from conftest import train
    from job.models import load_generator

    proc = run_job("train", "model.kind=mean", f"run.dir={tmp_path / 'two'}", launcher=accelerate_launch(2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "two" / "world.json").read_text())["world_size"] == 2
    assert read_metrics(tmp_path / "two")[0]["images"] == 60000  # each rank summed half; all-reduced
    assert train(tmp_path / "one", "model.kind=mean", preset=None) == 0
    two, _, _ = load_generator(str(tmp_path / "two" / "generator.safetensors"))
    one, _, _ = load_generator(str(tmp_path / "one" / "generator.safetensors"))
    assert torch.allclose(two.means, one.means, atol=1e-6)
