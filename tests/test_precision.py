"""precision: auto measured on the machine (and cached), fp32 that means fp32, one key name,
accelerate's setting honoured, said in the first lines; and one precision for every shard of
a set, whichever nodes its workers ran on."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import train
from job.cli import main
from job.core import config, precision

AMX_CPU = {"fpu", "avx2", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}
AVX2_CPU = {"fpu", "sse4_2", "avx2", "fma"}


def test_without_a_probe_auto_follows_the_flags_and_says_it_did_not_measure():
    chosen = precision.resolve("auto", "cpu", flags=AMX_CPU)
    assert chosen.mode == "bf16" and "amx_bf16 and avx512_bf16" in chosen.reason and "not measured" in chosen.reason
    chosen = precision.resolve("auto", "cpu", flags=AVX2_CPU)
    assert chosen.mode == "no" and chosen.name == "fp32" and "not measured" in chosen.reason


def test_fp32_is_accepted_wherever_no_is_and_explicit_choices_are_kept():
    assert precision.resolve("fp32", "cpu").mode == precision.resolve("no", "cpu").mode == "no"
    assert precision.resolve("fp32", "cpu").name == "fp32"
    assert precision.resolve("bf16", "cpu", flags=AVX2_CPU).mode == "bf16"
    assert precision.resolve("fp16", "cpu").mode == "no" and precision.resolve("tf32", "cpu").mode == "no"
    assert config.load("train", None, ["train.precision=fp32"]).train.precision == "fp32"
    assert config.load("sample", None, ["generator=g", "out=o", "count=1", "precision=fp32"]).precision == "fp32"
    assert config.load("evaluate", None, ["generator=g", "precision=fp32"]).precision == "fp32"


def test_the_old_key_train_mixed_precision_sets_train_precision():
    cfg = config.load("train", None, ["train.mixed_precision=bf16"])
    assert cfg.train.precision == "bf16"
    assert "mixed_precision" not in config.to_dict(cfg)["train"]  # printed under its one name


def test_fp32_means_fp32_on_a_gpu_and_tf32_only_when_asked():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        precision.Precision("tf32", "cuda").apply()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        precision.Precision("no", "cuda").apply()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        precision.Precision("bf16", "cuda").apply()
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_accelerates_mixed_precision_is_honoured_for_auto_and_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    chosen = precision.choose("auto", "cpu", probe=lambda p: None, items=1, key={})
    assert chosen.mode == "bf16" and "from accelerate's mixed_precision=bf16" in chosen.reason
    chosen = precision.resolve("fp32", "cpu")
    assert chosen.mode == "no" and "mixed_precision=bf16 ignored" in chosen.reason
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default asks for nothing
    assert "accelerate" not in precision.resolve("fp32", "cpu").reason


class FakeMachine:
    """Stands in for a CPU: its model name and what the probe measures on it."""

    def __init__(self, monkeypatch, name: str, fp32: float, bf16: float):
        self.calls = 0
        monkeypatch.setattr(precision, "cpu_model", lambda *a: name)

        def measure(probe, items):
            self.calls += 1
            probe(precision.Precision("no", "cpu"))  # the real probe runs
            return {"no": fp32, "bf16": bf16}

        monkeypatch.setattr(precision, "measure", measure)


def test_auto_measures_once_per_machine_and_model_and_names_both_figures(tmp_path, capsys, monkeypatch):
    machine = FakeMachine(monkeypatch, "Some Xeon without AMX", fp32=410, bf16=300)
    assert train(tmp_path / "a", "train.steps=1") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "precision=fp32 (auto: fp32 410 img/s, bf16 300 img/s on Some Xeon without AMX, measured now)" in first
    assert train(tmp_path / "b", "train.steps=1") == 0  # the same hardware and model: the cache answers
    assert "cached" in capsys.readouterr().out.splitlines()[0] and machine.calls == 1
    assert train(tmp_path / "c", "train.steps=1", "train.batch_size=32") == 0  # another batch size: measured
    assert machine.calls == 2


def test_auto_takes_bf16_only_where_it_measured_clearly_faster(monkeypatch):
    FakeMachine(monkeypatch, "Some Xeon with AMX", fp32=400, bf16=1000)
    assert precision.choose("auto", "cpu", probe=lambda p: None, items=1, key={"k": 1}).mode == "bf16"
    FakeMachine(monkeypatch, "A CPU where they tie", fp32=400, bf16=410)
    assert precision.choose("auto", "cpu", probe=lambda p: None, items=1, key={"k": 1}).mode == "no"


def test_the_real_probe_measures_a_training_step_in_both_precisions():
    steps = []
    rates = precision.measure(lambda p: steps.append(p.mode), items=64)
    assert set(rates) == {"no", "bf16"} and all(rate > 0 for rate in rates.values())
    assert {"no", "bf16"} <= set(steps)


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


def test_shard_bytes_depend_on_neither_batch_size_nor_the_number_of_workers(generator_file, tmp_path, monkeypatch):
    for mode in ("fp32", "bf16"):
        sets = [tmp_path / f"{mode}-{batch}" for batch in (100, 64, 1000)]
        for out, batch in zip(sets, (100, 64, 1000)):
            assert sample(generator_file, out, f"precision={mode}", f"batch_size={batch}") == 0
        assert shard_bytes(sets[0]) == shard_bytes(sets[1]) == shard_bytes(sets[2]), mode
    plan = json.loads((tmp_path / "fp32-100" / "_records" / "plan.json").read_text())
    assert plan["device"] == "cpu" and plan["precision"] == "no"


def test_a_pod_on_other_hardware_follows_the_precision_of_the_plan_it_finds(generator_file, tmp_path, monkeypatch,
                                                                              capsys):
    single, pods = tmp_path / "single", tmp_path / "pods"
    assert sample(generator_file, single, "precision=bf16") == 0
    monkeypatch.setenv("DIGITS_NUM_WORKERS", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    FakeMachine(monkeypatch, "a node where bf16 wins", fp32=400, bf16=1000)  # pod 0 measures: auto -> bf16
    assert sample(generator_file, pods) == 0
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    FakeMachine(monkeypatch, "a node where fp32 wins", fp32=1000, bf16=400)  # pod 1 alone would pick fp32
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
    monkeypatch.setenv("DIGITS_PLAN_WAIT_S", "0")  # pod 1 did not wait for pod 0's plan
    FakeMachine(monkeypatch, "a node where fp32 wins", fp32=1000, bf16=400)
    assert sample(generator_file, out) == 0  # shard 1 in fp32
    # Pod 0 started before pod 1's plan existed (the race the plan cannot close alone).
    (out / "_records" / "plan.json").unlink()
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    FakeMachine(monkeypatch, "a node where bf16 wins", fp32=400, bf16=1000)
    capsys.readouterr()
    assert sample(generator_file, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards 1 were generated in another precision" in err[0]
    assert not (out / "manifest.json").exists()


def test_pods_after_the_first_wait_for_pod_0s_plan_instead_of_measuring_alone(tmp_path, monkeypatch):
    import threading

    from job.sampling import sample as sampling

    out = tmp_path / "out"
    monkeypatch.setenv("DIGITS_PLAN_WAIT_S", "60")
    cfg = config.load("sample", None, ["generator=g", f"out={out}", "count=10"])
    records = out / "_records"

    def pod_0_writes_its_plan() -> None:
        records.mkdir(parents=True)
        (records / "plan.json").write_text(json.dumps({"precision": "bf16"}))

    threading.Timer(1.0, pod_0_writes_its_plan).start()
    assert sampling._wait_for_plan(cfg, pod=1) == {"precision": "bf16"}
    assert sampling._wait_for_plan(cfg, pod=0) == {"precision": "bf16"}  # found: nothing to wait for


def test_a_pod_on_another_kind_of_device_is_refused_before_it_writes(generator_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample(generator_file, out, "precision=fp32") == 0
    plan_file = out / "_records" / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan_file.write_text(json.dumps({**plan, "device": "cuda"}))  # as a GPU pod would have written it
    before = shard_bytes(out)
    capsys.readouterr()
    assert sample(generator_file, out, "precision=fp32") == 2
    assert "device" in capsys.readouterr().err and shard_bytes(out) == before
