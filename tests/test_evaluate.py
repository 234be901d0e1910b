"""`job evaluate` end to end: reports for a generator and a shard set, and refusals."""

from __future__ import annotations

import json

import pytest

from conftest import run_job
from job.cli import main
from job.precision import resolve

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
    assert report["generated_in"] == resolve("auto", "cpu").name  # precision=auto, said in the report
    markdown = (out / "report.md").read_text()
    assert "| generator |" in markdown and "| real |" in markdown and "| class-means |" in markdown
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluating_a_shard_set_scores_its_stored_labels(recognizable_generator, tmp_path):
    shards = tmp_path / "digits"
    assert main(["sample", f"generator={recognizable_generator}", f"out={shards}", "count=400", "shard_size=150",
                 "progress=false"]) == 0
    assert main(["evaluate", f"samples={shards}", *QUICK, "tstr.n=0", "baseline=none"]) == 0
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
    from job import scoring

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
