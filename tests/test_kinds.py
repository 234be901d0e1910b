"""The model-kind registry (job/core/kinds.py): each registration is complete, and keys a kind
does not read are refused naming the kind, instead of being silently unused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO
from job.cli import main
from job.core import config
from job.core.kinds import KINDS
from job.training.trainer import Trainer

SECTION_KEYS = {f"{section}.{f.name}" for section, schema in (("model", config.ModelConfig),
                                                                ("train", config.TrainConfig))
                for f in dataclasses.fields(schema)} - {"model.kind"}


def test_every_key_a_kind_reads_is_a_config_key_and_every_config_key_is_read_by_some_kind():
    for kind in KINDS.values():
        assert set(kind.keys) <= SECTION_KEYS, kind.name
    assert set().union(*(kind.keys for kind in KINDS.values())) == SECTION_KEYS


def test_every_registration_names_a_trainer_and_networks_that_exist():
    for kind in KINDS.values():
        assert issubclass(kind.trainer_class(), Trainer)
        for arch in kind.archs:
            assert callable(kind.network_class(arch))
        assert kind.model_file.endswith(".safetensors")


def test_the_config_schema_offers_exactly_the_registered_kinds():
    cfg = config.load("train", None, ["model.kind=mean"])
    assert cfg.model.kind == "mean"
    with pytest.raises(config.BadInput, match="use one of " + ", ".join(KINDS)):
        config.load("train", None, ["model.kind=vae"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_key_a_kind_does_not_read_exits_2_naming_the_kind_and_writes_nothing(kind, tmp_path, capsys):
    run_dir = tmp_path / "run"
    for key in sorted(SECTION_KEYS - set(KINDS[kind].keys)):
        section, name = key.split(".")
        value = getattr(getattr(config.TrainJob(), section), name)
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert main(["train", f"model.kind={kind}", f"{key}={text}", f"run.dir={run_dir}"]) == 2, key
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"the command line sets {key}, which model.kind={kind} does not use" in err
    assert not run_dir.exists()


def test_a_preset_for_another_kind_is_refused_naming_the_preset(capsys):
    assert main(["train", "--config", "debug", "model.kind=classifier"]) == 2
    err = capsys.readouterr().err
    assert "preset debug sets model.arch" in err and "model.kind=classifier does not use" in err


@pytest.mark.parametrize("preset", config.preset_names())
def test_every_preset_and_its_printed_config_load_back_as_the_same_config(preset, tmp_path, capsys):
    assert main(["train", "--config", preset, "--print-config"]) == 0
    printed = tmp_path / "config.yaml"
    printed.write_text(capsys.readouterr().out)
    again = config.load("train", str(printed), [])
    assert config.to_dict(again) == config.to_dict(config.load("train", preset, []))


def test_a_printed_config_holds_only_the_keys_its_kind_reads():
    for kind in KINDS.values():
        printed = config.to_dict(config.load("train", None, [f"model.kind={kind.name}"]))
        keys = {f"{s}.{k}" for s in ("model", "train") for k in printed[s]} - {"model.kind"}
        assert keys == set(kind.keys), kind.name


def test_train_help_lists_every_kind_and_the_file_it_writes():
    out = subprocess.run([sys.executable, "-m", "job", "train", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    for kind in KINDS.values():
        assert f"  {kind.name} " in out and kind.model_file in out
