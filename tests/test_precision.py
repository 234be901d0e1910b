"""precision=auto: bf16 only where the hardware computes it natively, said in the first lines,
and one precision for every shard of a set, whichever nodes its workers ran on."""

from __future__ import annotations

import json

import pytest

from conftest import train
from job import precision
from job.cli import main

AMX_CPU = {"fpu", "avx2", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}
AVX2_CPU = {"fpu", "sse4_2", "avx2", "fma"}


def test_auto_takes_bf16_on_a_cpu_with_amx_or_avx512_bf16():
    chosen = precision.resolve("auto", "cpu", flags=AMX_CPU)
    assert chosen.mode == "bf16" and "amx_bf16 and avx512_bf16" in chosen.reason
    assert precision.resolve("auto", "cpu", flags={"avx512_bf16"}).mode == "bf16"  # Zen 4


def test_auto_keeps_fp32_on_a_cpu_that_would_only_emulate_bf16():
    chosen = precision.resolve("auto", "cpu", flags=AVX2_CPU)
    assert chosen.mode == "no" and chosen.name == "fp32" and "no AMX-BF16 or AVX512-BF16" in chosen.reason


def test_an_explicit_choice_is_kept_and_fp16_on_a_cpu_falls_back_to_fp32():
    assert precision.resolve("no", "cpu", flags=AMX_CPU).mode == "no"
    slow = precision.resolve("bf16", "cpu", flags=AVX2_CPU)
    assert slow.mode == "bf16" and "slower" in slow.reason
    assert precision.resolve("fp16", "cpu", flags=AMX_CPU).mode == "no"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\n")
    assert precision.cpu_bf16_units(precision.cpu_flags(cpuinfo)) == ["amx_bf16"]
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_a_training_run_says_which_precision_auto_chose_and_why(tmp_path, capsys):
    assert train(tmp_path / "run", "train.steps=1") == 0
    expected = precision.resolve("auto", "cpu")
    first_lines = capsys.readouterr().out.splitlines()[:3]
    assert any(f"precision={expected.describe()}" in line for line in first_lines), first_lines
    assert "auto: this CPU has" in expected.reason


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    assert train(run_dir, "train.steps=1") == 0
    return str(run_dir / "generator.safetensors")


def sample(generator: str, out, *extra: str) -> int:
    return main(["sample", f"generator={generator}", f"out={out}", "count=300", "shard_size=100", "progress=false",
                 *extra])


def shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*"))}


def on_cpu(monkeypatch, flags: set[str]) -> None:
    """This process now reads as a CPU with `flags` (a node of another kind)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: set(flags))


def test_a_pod_on_other_hardware_follows_the_precision_of_the_plan_it_finds(generator_file, tmp_path, monkeypatch,
                                                                              capsys):
    single, pods = tmp_path / "single", tmp_path / "pods"
    assert sample(generator_file, single, "precision=bf16") == 0
    monkeypatch.setenv("DIGITS_NUM_WORKERS", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    on_cpu(monkeypatch, AMX_CPU)  # pod 1 lands on an AMX node first: auto -> bf16
    assert sample(generator_file, pods) == 0
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    on_cpu(monkeypatch, AVX2_CPU)  # pod 0 on an AVX2 node would pick fp32 on its own
    capsys.readouterr()
    assert sample(generator_file, pods) == 0
    assert "auto: the plan already in" in capsys.readouterr().out
    assert shard_bytes(pods) == shard_bytes(single)
    manifest = json.loads((pods / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and {r["precision"] for r in manifest["shards"]} == {"bf16"}


def test_shards_made_in_two_precisions_are_refused_by_name_before_any_manifest(generator_file, tmp_path,
                                                                               monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("DIGITS_NUM_WORKERS", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    on_cpu(monkeypatch, AVX2_CPU)
    assert sample(generator_file, out) == 0  # shard 1 in fp32
    # Pod 0 started before pod 1's plan existed (the race the plan cannot close alone).
    (out / "_records" / "plan.json").unlink()
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    on_cpu(monkeypatch, AMX_CPU)
    capsys.readouterr()
    assert sample(generator_file, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards 1 were generated in another precision" in err[0]
    assert not (out / "manifest.json").exists()
