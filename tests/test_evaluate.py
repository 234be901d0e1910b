"""`job evaluate` end to end: reports for a generator and a shard set, and refusals."""

from __future__ import annotations

import json

import pytest

from conftest import run_job
from job.cli import main
from job.core import precision

QUICK = ["n=300", "tstr.n=300", "tstr.epochs=1", "batch_size=300"]


def test_evaluating_a_generator_writes_a_report_with_the_real_floor_and_the_baseline(recognizable_generator, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", f"generator={recognizable_generator}", f"out={out}", *QUICK]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["rows"]) == {"generator", "real", "class-means"}
    gen, real, means = (report["rows"][k] for k in ("generator", "real", "class-means"))
    for row in (gen, real, means):
        assert {"fid", "inception_score", "cas", "tstr", "precision", "recall", "class_balance"} <= set(row)
        assert sum(row["class_balance"]) == pytest.approx(1.0)
        assert row["n"] == 300 and row["tstr_n"] == 300
    # Real digits are the floor: closest to real, recognized, near 10 classes' worth of IS.
    assert real["fid"] < gen["fid"] and real["fid"] < means["fid"]
    assert real["cas"] > 0.98 and real["inception_score"] > 8
    # A generator trained for a minute already draws mostly the requested digits.
    assert gen["cas"] > 0.5
    # Mean images are recognizable but have no diversity at all.
    assert means["cas"] > 0.9 and means["recall"] < 0.05
    assert report["subject"]["sha256"] and report["classifier"]["test_accuracy"] >= 0.993
    # precision=auto, decided from the suite's injected figures (conftest), said in the report
    assert report["generated_in"] == precision.display_name(precision.decide(precision.injected_rates())[0])
    markdown = (out / "report.md").read_text()
    assert "| generator |" in markdown and "| real |" in markdown and "| class-means |" in markdown
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluating_a_shard_set_scores_its_stored_labels(recognizable_generator, tmp_path, capsys):
    shards = tmp_path / "digits"
    assert main(["sample", f"generator={recognizable_generator}", f"out={shards}", "count=400", "shard_size=150",
                 "progress=false"]) == 0
    capsys.readouterr()
    assert main(["evaluate", f"samples={shards}", *QUICK, "tstr.n=0", "baseline=none"]) == 0
    # nothing is generated, so auto has nothing to measure, and says so
    assert "precision=fp32 (auto: fp32: a shard set is scored as it is" in capsys.readouterr().out
    report = json.loads((shards / "eval" / "report.json").read_text())
    assert set(report["rows"]) == {"samples", "real"}
    assert report["rows"]["samples"]["cas"] > 0.5 and report["rows"]["samples"]["tstr"] is None
    assert report["subject"]["count"] == 400


def test_an_unconditional_generator_gets_class_balance_but_no_cas_or_tstr(tmp_path):
    from conftest import train

    run_dir = tmp_path / "uncond"
    assert train(run_dir, "train.steps=2", "model.conditional=false") == 0
    assert main(["evaluate", f"generator={run_dir / 'generator.safetensors'}", *QUICK, "baseline=none"]) == 0
    row = json.loads((run_dir / "eval" / "report.json").read_text())["rows"]["generator"]
    assert row["cas"] is None and row["tstr"] is None and len(row["class_balance"]) == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["n=300"], "pass exactly one of generator="),
        (["generator=x.safetensors", "samples=y", "n=300"], "pass exactly one of generator="),
        (["samples={tmp}/nothing-here"], "is not a complete shard set"),
        (["generator={classifier}"], "holds a classifier model, but a dcgan or mean model is needed"),
        (["generator={tmp}/missing.safetensors"], "missing.safetensors"),
        (["samples={tmp}/s", "classifier=builtin:cifar"], "is not a shipped classifier"),
        (["samples={tmp}/s", "n=5"], "n=5 is out of range"),
    ],
)
def test_bad_evaluate_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path):
    from job.models import scoring

    filled = [a.format(tmp=tmp_path, classifier=scoring.resolve_classifier("builtin:mnist")) for a in args]
    out = tmp_path / "out"
    proc = run_job("evaluate", *filled, f"out={out}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path):
    shards = tmp_path / "digits"
    shards.mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"not yours")
    manifest = {"shard_format": "safetensors",
                "shards": [{"index": 0, "files": {"../secret.safetensors": {"sha256": "0", "bytes": 9}}}]}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    proc = run_job("evaluate", f"samples={shards}", "n=300", f"out={tmp_path / 'out'}")
    assert proc.returncode == 2 and "names a file outside its folder" in proc.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- augment.k


def test_augment_k_reports_real_digits_alone_and_plus_the_generators_and_the_lift(recognizable_generator, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", f"generator={recognizable_generator}", f"out={out}", *QUICK, "tstr.n=0", "baseline=none",
                 "augment.k=5", "augment.ratio=2", "augment.seeds=2", "augment.steps=30"]) == 0
    augment = json.loads((out / "report.json").read_text())["augment"]
    assert (augment["k"], augment["real_digits"], augment["synthetic_digits"], augment["seeds"]) == (5, 50, 100, 2)
    real, mixed, lift = (augment[key]["values"] for key in ("real", "real_plus_synthetic", "lift_points"))
    assert len(real) == len(mixed) == 2 and all(0.1 < a <= 1 for a in real + mixed)  # trained, not chance
    assert lift == pytest.approx([100 * (m - r) for r, m in zip(real, mixed)], abs=1e-3)
    assert augment["lift_points"]["mean"] == pytest.approx(sum(lift) / 2, abs=1e-3)
    assert "Augmentation: 50 real digits (5 per class) alone" in (out / "report.md").read_text()


def test_the_real_subset_holds_k_distinct_digits_of_each_class_drawn_by_the_seed():
    import torch

    from job.evaluation import lift

    labels = torch.arange(300) % 10
    images = torch.arange(300).view(300, 1, 1, 1)  # each "image" is its own index
    x, y = lift.real_per_class(images, labels, 10, 7, seed=1)
    assert torch.bincount(y).tolist() == [7] * 10 and len(set(x.flatten().tolist())) == 70
    assert torch.equal(lift.real_per_class(images, labels, 10, 7, seed=1)[0], x)
    assert not torch.equal(lift.real_per_class(images, labels, 10, 7, seed=2)[0], x)


def test_augment_k_refuses_unlabeled_or_too_few_digits_before_writing(generator_file, tmp_path):
    from conftest import train

    uncond = tmp_path / "uncond"
    assert train(uncond, "train.steps=1", "model.conditional=false") == 0
    few = tmp_path / "few"
    assert main(["sample", f"generator={generator_file}", f"out={few}", "count=50", "progress=false"]) == 0
    for subject, message in ((f"generator={uncond / 'generator.safetensors'}", "augment.k needs labeled digits"),
                             (f"samples={few}", "needs 100 digits but samples=")):
        proc = run_job("evaluate", subject, "augment.k=10", "n=20", f"out={tmp_path / 'out'}")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()
