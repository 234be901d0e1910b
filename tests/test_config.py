"""Config: presets load, overrides are typed and strict, bad input is one line and exit 2."""

from __future__ import annotations

import re

import pytest

from conftest import run_job
from job.core import config
from job.core.errors import BadInput


@pytest.mark.parametrize("preset", config.preset_names())
def test_every_shipped_preset_loads(preset):
    cfg = config.load("train", preset, [])
    assert cfg.train.steps > 0 and cfg.data.image_size in (28, 64)


def test_overrides_are_parsed_to_the_field_types():
    cfg = config.load("train", "debug", ["train.steps=12", "train.lr_g=1e-3", "model.conditional=false", "seed=7"])
    assert (cfg.train.steps, cfg.train.lr_g, cfg.model.conditional, cfg.seed) == (12, 1e-3, False, 7)


def test_the_64_pixel_preset_resizes_data_to_64():
    assert config.load("train", "dcgan64-mnist", []).data.image_size == 64


def test_data_root_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("DIGITS_DATA_DIR", "/somewhere/mnist")
    assert config.load("train", None, []).data.root == "/somewhere/mnist"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.stepz=3"], "unknown config key 'train.stepz' (did you mean train.steps?): valid keys here are "
                            "train.steps"),
        (["train.steps=ten"], "train.steps='ten' has the wrong type: expected int"),
        (["train.batch_size=-4"], "train.batch_size=-4 is out of range: must be between 1 and 65536"),
        (["train.precision=fp8"], "use one of auto, fp32, no, tf32, bf16, fp16"),
        (["train=3"], "train is a section, not a value"),
        (["steps"], "is not key=value"),
        (["model.arch=dcgan64", "data.image_size=28"], "does not fit model.arch=dcgan64 (64x64 only)"),
        (["data.image_size=30"], "data.image_size=30 does not fit model.kind=dcgan: it must be a multiple of 4"),
        (["data.name=cifar"], "data.name='cifar' is not allowed: use one of mnist, fashion-mnist"),
        (["data.channels=3"], "data.channels is for data.name=imagefolder"),
        (["data.name=imagefolder", "data.channels=2"], "data.channels=2 is not allowed"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_allowed(overrides, expected):
    with pytest.raises(BadInput) as err:
        config.load("train", "debug", overrides)
    assert expected in str(err.value)


def test_yaml_with_a_python_object_tag_is_refused(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(BadInput, match="is not valid YAML"):
        config.load("train", str(bad), [])


def test_yaml_values_are_type_checked_like_overrides(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  steps: 1.5\n")
    with pytest.raises(BadInput, match="train.steps=1.5 has the wrong type"):
        config.load("train", str(bad), [])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config", "debug", "train.bogus=1"], "unknown config key 'train.bogus'"),
        (["--config", "debug", "train.batch_size=abc"], "wrong type"),
        (["--config", "debug", "train.batch_size=-64"], "out of range"),
        (["--config", "no-such-preset"], "unknown config preset 'no-such-preset'"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_creates_no_run_folder(tmp_path, args, expected):
    run_dir = tmp_path / "run"
    proc = run_job("train", *args, f"run.dir={run_dir}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_missing_dataset_is_bad_input_on_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_job("train", "--config", "debug", f"run.dir={run_dir}", f"data.root={tmp_path / 'empty'}",
                   env={"DIGITS_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "mnist could not be loaded from data.root=" in error_lines[0]
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_print_config_shows_the_resolved_values():
    proc = run_job("train", "--config", "debug", "train.steps=42", "--print-config")
    assert proc.returncode == 0 and "steps: 42" in proc.stdout


def test_a_train_preset_passed_to_another_command_is_named_as_such():
    with pytest.raises(BadInput, match="preset debug is a config for `train`, not `sample`"):
        config.load("sample", "debug", [])
    with pytest.raises(BadInput, match="preset classifier-mnist is a config for `train`, not `evaluate`"):
        config.load("evaluate", "classifier-mnist", [])


def float_keys(schema: type, prefix: str = "") -> list[str]:
    """Every float key of a command's config, dotted (train.lr, sample.min_confidence, ...)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += float_keys(tp, f"{prefix}{f.name}.")
        elif tp is float:
            keys.append(f"{prefix}{f.name}")
    return keys


EVERY_FLOAT_KEY = [(command, key) for command, schema in config.SCHEMAS.items() for key in float_keys(schema)]


def test_every_command_has_float_keys_to_check():
    assert {"train", "sample", "evaluate"} <= {command for command, _ in EVERY_FLOAT_KEY}


@pytest.mark.parametrize("command, key", EVERY_FLOAT_KEY)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "NaN"])
def test_no_float_key_takes_a_number_that_is_not_finite(command, key, value):
    with pytest.raises(BadInput, match=rf"^{re.escape(key)}={re.escape(value)} is not a finite number$"):
        config.load(command, None, [f"{key}={value}"])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_yaml_config_with_a_non_finite_float_is_refused(tmp_path, value):
    path = tmp_path / "bad.yaml"
    path.write_text(f"train:\n  lr_g: {value}\n")
    with pytest.raises(BadInput, match="train.lr_g=.* is not a finite number"):
        config.load("train", str(path), [])
