"""Training runs end to end on CPU: outputs, exact resume, pickle-free checkpoints."""

from __future__ import annotations

import json
import pickletools
import shutil

import pytest
import torch
from safetensors import safe_open

from conftest import read_metrics, train
from job import storage
from job.models import load_generator
from job.training import checkpoint

LOSS_KEYS = ("loss_d", "loss_g", "d_real", "d_fake")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 6-step debug run, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    assert train(run_dir) == 0
    return run_dir


def test_a_run_writes_config_metrics_grids_checkpoints_and_a_generator(full_run):
    for name in ("config.yaml", "metrics.jsonl", "generator.safetensors", "world.json", "samples/latest.png"):
        assert (full_run / name).is_file(), name
    assert [m["step"] for m in read_metrics(full_run)] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.complete_steps(str(full_run)) == [3, 6]
    first = read_metrics(full_run)[0]
    assert set(LOSS_KEYS) | {"step", "images_per_s"} <= set(first)


def assert_resumed_run_matches(run_dir, full_run) -> None:
    resumed, uninterrupted = read_metrics(run_dir), read_metrics(full_run)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]  # nothing doubled or lost
    for a, b in zip(resumed[3:], uninterrupted[3:]):
        for key in LOSS_KEYS:
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    # The final weights are the same too.
    g1, _, _ = load_generator(str(run_dir / "generator.safetensors"))
    g2, _, _ = load_generator(str(full_run / "generator.safetensors"))
    for p1, p2 in zip(g1.parameters(), g2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6)


def test_resume_continues_the_same_loss_curve(full_run, tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "train.steps=3") == 0  # stopped at step 3
    assert train(run_dir) == 0  # resume=auto continues to step 6
    assert_resumed_run_matches(run_dir, full_run)


def test_resume_under_bf16_autocast_continues_the_same_loss_curve(tmp_path):
    full_run, run_dir = tmp_path / "full", tmp_path / "run"
    assert train(full_run, "train.precision=bf16") == 0
    assert train(run_dir, "train.precision=bf16", "train.steps=3") == 0
    assert train(run_dir, "train.precision=bf16") == 0
    assert_resumed_run_matches(run_dir, full_run)


def test_no_checkpoint_file_is_a_pickle(full_run):
    for folder in (full_run / "checkpoints").iterdir():
        for f in folder.iterdir():
            raw = f.read_bytes()
            assert not raw.startswith(b"\x80"), f"{f} starts like a pickle"
            assert not raw.startswith(b"PK"), f"{f} is a zip (torch.save) archive"
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    assert list(st.keys())
            else:
                assert f.suffix == ".json"
                json.loads(raw)
    with pytest.raises(ValueError):  # not a pickle stream at all
        pickletools.dis((full_run / "generator.safetensors").read_bytes())


def test_meta_json_lists_the_sha256_of_every_other_file(full_run):
    folder = full_run / "checkpoints" / "step-00000006"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 6
    assert set(meta["files"]) == {p.name for p in folder.iterdir()} - {"meta.json"}
    for name, digest in meta["files"].items():
        assert storage.sha256((folder / name).read_bytes()) == digest


def test_a_checkpoint_folder_without_meta_json_is_never_resumed_from(full_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    (run_dir / "checkpoints" / "step-00000006" / "meta.json").unlink()
    assert checkpoint.latest(str(run_dir)).endswith("step-00000003")
    # Naming the incomplete folder explicitly is bad input, and writes nothing.
    assert train(tmp_path / "other", f"resume={run_dir / 'checkpoints' / 'step-00000006'}") == 2
    assert "no meta.json" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # resume=auto skips it and continues from step 3.
    assert train(run_dir, "train.steps=7") == 0
    assert "step-00000003 (step 3)" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6, 7]


def test_a_corrupted_checkpoint_file_is_refused_by_its_sha256(full_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    target = run_dir / "checkpoints" / "step-00000006" / "generator.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert train(run_dir, "train.steps=8") == 2
    assert "does not match the sha256 in meta.json" in capsys.readouterr().err


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "train.steps=10", "train.checkpoint_every=2", "train.keep_checkpoints=2") == 0
    assert checkpoint.complete_steps(str(run_dir)) == [8, 10]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000008", "step-00000010"]


def test_the_generator_file_describes_itself_and_samples_each_class(full_run):
    G, info, _ = load_generator(str(full_run / "generator.safetensors"))
    assert info["kind"] == "dcgan" and info["arch"] == "dcgan28" and info["step"] == 6
    assert info["kwargs"] == {"latent_dim": 16, "width": 8, "channels": 1, "num_classes": 10, "image_size": 28}
    z = torch.randn(10, 16)
    out = G(z, torch.arange(10))
    assert out.shape == (10, 1, 28, 28) and out.min() >= -1 and out.max() <= 1


def test_an_unconditional_64_pixel_model_trains(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "model.arch=dcgan64", "data.image_size=64", "model.conditional=false",
                 "train.steps=2", "train.batch_size=4", "model.g_width=8", "model.d_width=8") == 0
    G, info, _ = load_generator(str(run_dir / "generator.safetensors"))
    assert G(torch.randn(2, 16)).shape == (2, 1, 64, 64) and info["kwargs"]["num_classes"] == 0


def test_bf16_autocast_trains_on_cpu(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "train.precision=bf16", "train.steps=2") == 0
    assert all(m["loss_d"] == m["loss_d"] for m in read_metrics(run_dir))  # not NaN


def test_fp16_falls_back_to_fp32_on_a_cpu(tmp_path, capsys):
    assert train(tmp_path / "run", "train.mixed_precision=fp16", "train.steps=1") == 0
    out = capsys.readouterr().out
    assert "precision=fp32 (fp16 needs a GPU" in out


@pytest.mark.parametrize("arch", ["dcgan28", "dcgan64"])
def test_a_discriminator_with_a_minibatch_std_feature_trains_and_sees_batch_spread(arch, tmp_path):
    from job.models import build_gan

    size = 28 if arch == "dcgan28" else 64
    assert train(tmp_path / "run", f"model.arch={arch}", f"data.image_size={size}", "model.minibatch_std=true",
                 "model.conditional=false", "train.steps=2", "train.batch_size=4") == 0
    _, D, _ = build_gan(arch, 16, 8, 8, 1, 0, minibatch_std=True)
    D.eval()
    same = torch.randn(1, 1, size, size).repeat(8, 1, 1, 1)
    varied = torch.randn(8, 1, size, size)
    # The same images score differently in a batch of look-alikes than in a varied batch.
    assert not torch.allclose(D(same)[:1], D(torch.cat([same[:1], varied[1:]]))[:1])
