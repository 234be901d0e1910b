"""The evaluation classifier trains with the same launch, checkpoints and resume as the GAN."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import read_metrics, train
from job.core import kinds
from job.models import scoring

# A few steps of the real preset at a small batch: what matters here is the machinery.
SHORT = ["train.steps=6", "train.batch_size=32", "train.log_every=1", "train.checkpoint_every=3",
         "model.width=8", "model.feature_dim=16", "train.progress=false"]


def test_a_classifier_run_logs_test_accuracy_and_exports_a_self_describing_file(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, *SHORT, preset="classifier-mnist") == 0
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "train_accuracy", "lr"} <= set(metrics[0])
    assert "test_accuracy" in metrics[2] and "test_accuracy" in metrics[5]
    model, info, _ = scoring.load_classifier(str(run_dir / kinds.CLASSIFIER_FILE))
    assert info["kind"] == "classifier" and info["kwargs"]["feature_dim"] == 16
    assert info["extra"]["test_accuracy"] == metrics[5]["test_accuracy"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 16)


def test_a_classifier_run_resumed_after_preemption_ends_with_the_same_weights(tmp_path):
    # Preemption after the step-3 checkpoint: the last checkpoint and the exported file are
    # gone, and the same command runs again. (Stopping with train.steps=3 would not do: the
    # learning-rate schedule depends on the total steps.) Dropout draws from the global RNG,
    # which the checkpoint restores per rank.
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train(full, *SHORT, preset="classifier-mnist") == 0
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    (resumed / kinds.CLASSIFIER_FILE).unlink()
    assert train(resumed, *SHORT, preset="classifier-mnist") == 0
    a, _, _ = scoring.load_classifier(str(full / kinds.CLASSIFIER_FILE))
    b, _, _ = scoring.load_classifier(str(resumed / kinds.CLASSIFIER_FILE))
    for (name, p1), p2 in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6, msg=name)
    assert [m["step"] for m in read_metrics(resumed)] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in read_metrics(resumed)] == pytest.approx([m["loss"] for m in read_metrics(full)],
                                                                      abs=1e-6)


def test_a_generator_file_is_not_accepted_as_a_classifier(tmp_path):
    from job.core.errors import BadInput

    run_dir = tmp_path / "gan"
    assert train(run_dir, "train.steps=1") == 0
    with pytest.raises(BadInput, match="holds a dcgan model, but a classifier model is needed"):
        scoring.load_classifier(str(run_dir / "generator.safetensors"))
