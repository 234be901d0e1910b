"""What a newcomer meets at the command line: help that lists every key with its type,
default and comment, defaults printable before anything is set, a "did you mean", the
version, the console script named as called, and plurals right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_job
from job.cli import main
from job.core import config, console


@pytest.mark.parametrize("command", list(config.SCHEMAS))
def test_each_commands_help_lists_every_key_with_type_default_and_comment(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for key, type_name, default, _ in config.key_docs(command):
        assert f"  {key} ({type_name}; default {default})" in text, key
    assert ("train.steps=100" in text) == (command == "train")  # each command its own example


def test_sample_help_explains_count_and_precision_from_the_config_comments(capsys):
    main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "count (int; default 0) Number of digits in total, over all shards." in text
    assert "precision (one of auto, fp32, no, tf32, bf16; default 'auto')" in text


@pytest.mark.parametrize("command", ["sample", "evaluate", "transform"])
def test_print_config_shows_the_defaults_before_the_required_keys_are_given(command, capsys):
    assert main([command, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# required, not set yet: ") and "\nbatch_size: " in out  # and every default


def test_an_unknown_key_or_preset_gets_a_did_you_mean(capsys):
    assert main(["sample", "generator=g", "out=o", "cont=5"]) == 2
    assert "(did you mean count?)" in capsys.readouterr().err
    assert main(["train", "--config", "quickstrat"]) == 2
    assert "(did you mean quickstart?)" in capsys.readouterr().err
    assert main(["train", "train.stpes=5"]) == 2
    assert "(did you mean train.steps?)" in capsys.readouterr().err


def test_version_and_the_console_script_named_as_it_was_called():
    assert run_job("--version").stdout.startswith("digit-job ")
    script = Path(sys.executable).with_name("digit-job")
    if not script.exists():
        pytest.skip("the digit-job console script is not installed (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: digit-job")


def test_counts_take_their_plural_only_when_they_should():
    assert console.count(1, "safetensors shard") == "1 safetensors shard"
    assert console.count(2, "worker") == "2 workers" and console.count(0, "shard") == "0 shards"
