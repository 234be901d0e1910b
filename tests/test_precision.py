"""precision: auto measured on the machine (and cached), fp32 that means fp32, one key name,
accelerate's setting honoured, said in the first lines; and one precision for every shard of
a set, whichever nodes its workers ran on."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import train
from job.cli import main
from job.core import config, precision
from job.core.errors import BadInput


def test_cpu_auto_without_anything_to_measure_is_fp32_and_says_why():
    chosen = precision.resolve("auto", "cpu", "fp32: the mean kind runs no network step to measure")
    assert chosen.mode == "no" and chosen.reason == "auto: fp32: the mean kind runs no network step to measure"
    assert "not measured" not in precision.resolve("auto", "cpu").reason  # no flag rule anywhere


def test_the_mean_kind_says_what_auto_does_for_it(tmp_path, capsys):
    assert train(tmp_path / "mean", "model.kind=mean", preset=None) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "precision=fp32 (auto: fp32: the mean kind runs no network step to measure)" in first


def test_fp32_is_accepted_wherever_no_is_and_explicit_choices_are_kept():
    assert precision.resolve("fp32", "cpu").mode == precision.resolve("no", "cpu").mode == "no"
    assert precision.resolve("fp32", "cpu").name == "fp32"
    assert precision.resolve("bf16", "cpu").mode == "bf16"
    assert precision.resolve("fp16", "cpu").mode == "no" and precision.resolve("tf32", "cpu").mode == "no"
    assert config.load("train", None, ["train.precision=fp32"]).train.precision == "fp32"
    assert config.load("sample", None, ["generator=g", "out=o", "count=1", "precision=fp32"]).precision == "fp32"
    assert config.load("evaluate", None, ["generator=g", "precision=fp32"]).precision == "fp32"


def test_the_old_key_train_mixed_precision_sets_train_precision():
    cfg = config.load("train", None, ["train.mixed_precision=bf16"])
    assert cfg.train.precision == "bf16"
    assert "mixed_precision" not in config.to_dict(cfg)["train"]  # printed under its one name


def test_digits_precision_is_read_by_the_job_itself_and_a_key_given_wins(monkeypatch):
    monkeypatch.setenv("DIGITS_PRECISION", "bf16")
    assert config.load("train", None, []).train.precision == "bf16"
    assert config.load("sample", None, ["generator=g", "out=o", "count=1"]).precision == "bf16"
    assert config.load("evaluate", None, ["generator=g"]).precision == "bf16"
    assert config.load("train", None, ["train.precision=fp32"]).train.precision == "fp32"
    assert config.load("train", None, ["train.mixed_precision=no"]).train.precision == "no"


def test_a_digits_precision_the_command_cannot_use_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIGITS_PRECISION", "fp16")  # train takes it (fp32 on a CPU); sample has no fp16
    assert main(["sample", "generator=g", f"out={tmp_path / 'o'}", "count=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: DIGITS_PRECISION='fp16' is not one of auto, fp32, no, tf32, bf16: fix it or unset it"]
    assert not (tmp_path / "o").exists()


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


def test_a_launcher_setting_the_job_cannot_compute_in_is_said_on_the_first_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")  # accelerate itself accepts it
    monkeypatch.setenv(precision.RATES_ENV, "fp32=1000,bf16=500")  # whichever way the suite is forced
    assert train(tmp_path / "run", "train.steps=1") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "accelerate's mixed_precision=fp8 ignored: this job computes in bf16, fp16 or fp32" in first
    assert "precision=fp32 (auto: fp32 1000 img/s, bf16 500 img/s" in first  # auto still decided


class FakeMachine:
    """Stands in for a CPU: its model name and what the probe measures on it (an injected
    measurement: no test depends on how fast the machine running it is)."""

    def __init__(self, monkeypatch, name: str, fp32: float, bf16: float, failed: str | None = None,
                 stable: bool = True):
        self.calls = 0
        monkeypatch.delenv(precision.RATES_ENV, raising=False)
        monkeypatch.setattr(precision, "cpu_model", lambda *a: name)

        def measure(probe, items):
            self.calls += 1
            probe(precision.Precision("no", "cpu"))  # the real probe runs
            return precision.Measurement({"no": fp32, "bf16": bf16}, rounds=2, stable=stable, failed=failed)

        monkeypatch.setattr(precision, "measure", measure)


def choose_auto(key=None) -> precision.Precision:
    return precision.choose("auto", "cpu", probe=lambda p: None, items=1, key=key or {"k": 1})


def test_auto_measures_once_per_machine_and_model_and_names_both_figures(tmp_path, capsys, monkeypatch):
    machine = FakeMachine(monkeypatch, "Some Xeon without AMX", fp32=410, bf16=300)
    assert train(tmp_path / "a", "train.steps=1") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "precision=fp32 (auto: fp32 410 img/s, bf16 300 img/s on Some Xeon without AMX, measured now in" in first
    assert train(tmp_path / "b", "train.steps=1") == 0  # the same hardware and model: the cache answers
    assert "cached" in capsys.readouterr().out.splitlines()[0] and machine.calls == 1
    assert train(tmp_path / "c", "train.steps=1", "train.batch_size=32") == 0  # another batch size: measured
    assert machine.calls == 2


@pytest.mark.parametrize("fp32, bf16, chosen", [(400, 1000, "bf16"), (1000, 400, "no"), (400, 410, "no"),
                                                (400, 420, "no"), (400, 421, "bf16")])
def test_auto_takes_bf16_only_where_it_measured_more_than_5_percent_faster(monkeypatch, fp32, bf16, chosen):
    FakeMachine(monkeypatch, f"a CPU with fp32 {fp32} and bf16 {bf16}", fp32=fp32, bf16=bf16)
    got = choose_auto()
    assert got.mode == chosen and f"fp32 {fp32} img/s, bf16 {bf16} img/s" in got.reason


def test_a_failed_bf16_probe_gives_fp32_says_why_and_is_measured_again_next_time(monkeypatch):
    machine = FakeMachine(monkeypatch, "a CPU whose bf16 fails", fp32=400, bf16=0,
                          failed="the bf16 probe failed: no bf16 kernel")
    got = choose_auto()
    assert got.mode == "no" and "bf16 failed" in got.reason
    assert "the bf16 probe failed: no bf16 kernel: fp32" in got.reason
    choose_auto()
    assert machine.calls == 2  # not cached


def test_figures_that_never_settle_give_fp32_unsure_and_are_measured_again_next_time(monkeypatch):
    machine = FakeMachine(monkeypatch, "a busy CPU", fp32=400, bf16=1000, stable=False)
    got = choose_auto()
    assert got.mode == "no" and "unsure: the figures had not settled after 2 rounds: fp32" in got.reason
    choose_auto()
    assert machine.calls == 2


def scripted_rates(monkeypatch, figures: dict[str, list[float]]) -> list[str]:
    """precision._rate answering from `figures` (mode -> one figure per round); returns the
    modes in the order they were timed."""
    asked: list[str] = []
    rounds = {mode: iter(values) for mode, values in figures.items()}

    def rate(probe, p, items):
        asked.append(p.mode)
        value = next(rounds[p.mode])
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(precision, "_rate", rate)
    return asked


def test_the_measurement_alternates_and_stops_once_the_ratio_settles(monkeypatch):
    asked = scripted_rates(monkeypatch, {"no": [400, 405, 401], "bf16": [600, 610, 602]})
    warmed = []
    found = precision.measure(lambda p: warmed.append(p.mode), items=64)
    assert warmed == ["no", "bf16"]  # one warm-up call per mode, before its first timing
    assert found.stable and found.rounds == 2 and asked == ["no", "bf16", "no", "bf16"]
    assert found.rates == {"no": 405, "bf16": 610}  # each mode's best round


def test_a_load_that_comes_and_goes_keeps_the_measurement_going_until_max_rounds(monkeypatch):
    # bf16's best keeps climbing as the load eases in its turns: the ratio never settles
    swings = {"no": [400, 200, 400, 200, 400, 200], "bf16": [300, 600, 900, 1200, 1500, 1800]}
    scripted_rates(monkeypatch, swings)
    found = precision.measure(lambda p: None, items=64)
    assert not found.stable and found.rounds == precision.MAX_ROUNDS


def test_a_bf16_probe_that_raises_is_reported_not_raised(monkeypatch):
    scripted_rates(monkeypatch, {"no": [400], "bf16": [RuntimeError("bf16 conv not implemented\nmore")]})
    found = precision.measure(lambda p: None, items=64)
    assert found.failed == "the bf16 probe failed: bf16 conv not implemented" and found.rates["no"] == 400


def test_the_real_probe_measures_a_training_step_in_both_precisions():
    steps = []
    found = precision.measure(lambda p: steps.append(p.mode), items=64)
    assert set(found.rates) == {"no", "bf16"} and all(rate > 0 for rate in found.rates.values())
    assert {"no", "bf16"} <= set(steps) and found.rounds >= precision.MIN_ROUNDS


def test_injected_figures_stand_in_for_the_probe_and_bad_ones_are_one_line(monkeypatch):
    monkeypatch.setenv(precision.RATES_ENV, "fp32=300,bf16=900")
    got = choose_auto({"injected": 1})
    assert got.mode == "bf16" and "fp32 300 img/s, bf16 900 img/s" in got.reason
    monkeypatch.setenv(precision.RATES_ENV, "fp32=300,bf16=fail")
    assert choose_auto({"injected": 2}).mode == "no"
    monkeypatch.setenv(precision.RATES_ENV, "fast")
    with pytest.raises(BadInput, match="is not 'fp32=N,bf16=N'"):
        choose_auto({"injected": 3})


def test_a_cached_choice_is_measured_again_when_asked_or_when_old(monkeypatch, capsys):
    machine = FakeMachine(monkeypatch, "a CPU measured long ago", fp32=400, bf16=1000)
    first = choose_auto()
    assert machine.calls == 1 and "cached" in choose_auto().reason
    monkeypatch.setenv(precision.REMEASURE_ENV, "1")
    assert "again because DIGITS_PRECISION_REMEASURE=1" in choose_auto().reason and machine.calls == 2
    monkeypatch.delenv(precision.REMEASURE_ENV)
    entry = json.loads(open(first.measured["file"]).read())
    entry["measured_at"] -= (precision.MAX_AGE_DAYS + 1) * 86400
    with open(first.measured["file"], "w") as f:
        json.dump(entry, f)
    assert f"again because the cached figures were {precision.MAX_AGE_DAYS + 1} days old" in choose_auto().reason
    assert machine.calls == 3


def test_a_run_slower_than_the_rejected_figure_or_far_faster_than_its_own_drops_the_cached_choice(monkeypatch):
    FakeMachine(monkeypatch, "a CPU reviewed", fp32=400, bf16=1000)
    chosen = choose_auto()
    path = chosen.measured["file"]
    assert chosen.mode == "bf16" and precision.review(chosen, 900) is None  # overhead, not a contradiction
    line = precision.review(chosen, 350)
    assert line.startswith("auto: this run's steps ran at 350 img/s in bf16, below the 400 img/s measured for fp32")
    assert not os.path.exists(path)
    chosen = choose_auto()
    assert "measured now" in chosen.reason
    assert "1.4x the 1000 img/s measured (the machine was busier then)" in precision.review(chosen, 1400)
    assert precision.review(precision.resolve("bf16", "cpu"), 1) is None  # nothing measured: nothing to review


def test_a_training_run_that_contradicts_auto_says_so_and_the_next_run_measures_again(tmp_path, monkeypatch, capsys):
    machine = FakeMachine(monkeypatch, "a CPU that was busy while measuring", fp32=0.02, bf16=0.01)
    assert train(tmp_path / "a", "train.steps=30") == 0  # any real step is far above 1.3 x 0.02 img/s
    out = capsys.readouterr().out
    assert "auto: this run's steps ran at" in out
    assert "(the machine was busier then); the next run measures again" in out
    assert train(tmp_path / "b", "train.steps=1") == 0
    assert machine.calls == 2 and "measured now" in capsys.readouterr().out.splitlines()[0]


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
