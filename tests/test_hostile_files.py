"""Hostile and broken input files: each is refused with one line on stderr and exit 2, and
nothing is written (the run folder or output is exactly as before). Crafted files never
run code. Configs from a property-based generator (hypothesis) either load or exit 2.

Cases covered elsewhere: a bit-flipped checkpoint file (test_training), a file that is not a
generator (test_sample), an image folder holding a non-image (test_datasets), a shard
manifest naming files outside its folder (test_evaluate), a YAML file with a Python tag
(test_config, and the marker test below)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import train
from job.cli import main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert train(run_dir, "train.steps=4", "train.checkpoint_every=2") == 0
    return run_dir


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with its size and mtime: what 'nothing written' compares."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def refused(capsys, argv: list[str], *, says: str) -> str:
    """Run the job in this process; it must exit 2 with one line saying `says`."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    return lines[0]


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir


# ----------------------------------------------------------------------------- checkpoints


def test_a_truncated_checkpoint_file_is_refused_by_its_sha256_and_the_run_is_untouched(finished_run, tmp_path,
                                                                                       capsys):
    run_dir = copy_run(finished_run, tmp_path)
    target = run_dir / "checkpoints" / "step-00000004" / "optimizer_generator.safetensors"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    before = snapshot(run_dir)
    refused(capsys, ["train", "--config", "debug", f"run.dir={run_dir}", "train.steps=8"],
            says="does not match the sha256 in meta.json")
    assert snapshot(run_dir) == before


def test_a_meta_json_naming_a_file_outside_its_folder_is_refused(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    meta_path = run_dir / "checkpoints" / "step-00000004" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["../../config.yaml"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    before = snapshot(run_dir)
    refused(capsys, ["train", "--config", "debug", f"run.dir={run_dir}", "train.steps=8"],
            says="names a file outside its folder")
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------- model files


class RunsCode:
    """Unpickling this runs a shell command: what a malicious .pt/.pkl file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_renamed_safetensors_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "generator.safetensors"
    evil.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}))
    for argv in (["sample", f"generator={evil}", "count=10", f"out={tmp_path / 'out'}"],
                 ["evaluate", f"generator={evil}", f"out={tmp_path / 'eval'}"],
                 ["evaluate", f"generator={evil}", f"classifier={evil}", f"out={tmp_path / 'eval'}"]):
        refused(capsys, argv, says="is not a valid safetensors file")
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def safetensors_with_header(header: dict, data: bytes = b"", declared_length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared_length is None else declared_length) + text + data


@pytest.mark.parametrize("name, blob", [
    ("header length of 2**62 bytes", safetensors_with_header({}, declared_length=2**62)),
    ("a tensor of 10**12 floats in a 16-byte file",
     safetensors_with_header({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}},
                             b"\0" * 16)),
    ("offsets past the end of the file",
     safetensors_with_header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)),
    ("a header that is not JSON", struct.pack("<Q", 8) + b"{{{{{{{{"),
])
def test_a_safetensors_header_claiming_impossible_sizes_is_refused_without_allocating(tmp_path, capsys, name,
                                                                                     blob):
    bad = tmp_path / "generator.safetensors"
    bad.write_bytes(blob)
    refused(capsys, ["sample", f"generator={bad}", "count=10", f"out={tmp_path / 'out'}"],
            says="is not a valid safetensors file")
    assert not (tmp_path / "out").exists()


def rewrite_metadata(path: Path, dest: Path, **changes: str) -> None:
    """A copy of a model file with some metadata values replaced (tensors untouched)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    dest.write_bytes(safetensors_with_header(header, data[8 + n :]))


@pytest.mark.parametrize("changes, says", [
    ({"kwargs": json.dumps({"latent_dim": 100, "width": 8, "channels": 1, "num_classes": 10, "image_size": 28})},
     "do not match the architecture"),
    ({"kwargs": json.dumps({"latent_dim": 16, "width": 8, "channels": 1, "num_classes": 10, "image_size": 28,
                            "evil": "__import__('os')"})}, "do not fit"),
    ({"arch": "dcgan999"}, "is not one this version can build"),
    ({"kind": "classifier"}, "holds a classifier model"),
    ({"kwargs": "[1, 2"}, "is not a digit-job model file"),
])
def test_a_generator_whose_metadata_does_not_match_its_tensors_is_refused(finished_run, tmp_path, capsys, changes,
                                                                          says):
    bad = tmp_path / "generator.safetensors"
    rewrite_metadata(finished_run / "generator.safetensors", bad, **changes)
    refused(capsys, ["sample", f"generator={bad}", "count=10", f"out={tmp_path / 'out'}"], says=says)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- datasets


@pytest.fixture
def mnist_copy(tmp_path) -> Path:
    """The four MNIST files, flat and decompressed, in a folder of this test's own."""
    source = Path(os.environ["DIGITS_DATA_DIR"])
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        gz = next(iter(source.rglob(name + ".gz")), None)
        raw = next(iter(source.rglob(name)), None)
        if gz is None and raw is None:
            pytest.skip(f"MNIST's {name} is not under DIGITS_DATA_DIR={source}")
        (folder / name).write_bytes(gzip.decompress(gz.read_bytes()) if gz else raw.read_bytes())
    return folder


@pytest.mark.parametrize("damage", ["wrong magic number", "truncated data", "truncated gzip"])
def test_a_broken_idx_file_is_refused_before_the_run_writes_anything(mnist_copy, tmp_path, capsys, damage):
    images = mnist_copy / "train-images-idx3-ubyte"
    data = images.read_bytes()
    if damage == "wrong magic number":
        images.write_bytes(b"\x00\x00\x08\x99" + data[4:])
    elif damage == "truncated data":
        images.write_bytes(data[: len(data) // 3])
    else:
        images.unlink()
        (mnist_copy / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:50_000])
    run_dir = tmp_path / "run"
    refused(capsys, ["train", "--config", "debug", f"run.dir={run_dir}", f"data.root={mnist_copy}"],
            says=str(mnist_copy) if damage == "truncated gzip" else "mnist could not be loaded")
    assert not run_dir.exists()


def test_a_repaired_idx_file_is_read_again_not_taken_from_the_cache(mnist_copy, tmp_path, capsys):
    """The flat files are staged into the cache; a fixed file must not meet a stale copy."""
    images = mnist_copy / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[: len(good) // 3])
    refused(capsys, ["train", "--config", "debug", f"run.dir={tmp_path / 'run'}", f"data.root={mnist_copy}"],
            says="could not be loaded")
    images.write_bytes(good)
    assert train(tmp_path / "run", "train.steps=1", f"data.root={mnist_copy}") == 0


@pytest.mark.s3
def test_a_dataset_manifest_naming_keys_outside_its_prefix_is_refused(s3_server, bucket, tmp_path, capsys):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name=s3_server.region)
    manifest = {"format": "digit-job/dataset", "name": "mnist",
                "files": {"../../elsewhere/secret": {"sha256": "0" * 64, "bytes": 1}}}
    client.put_object(Bucket=bucket, Key="datasets/mnist/manifest.json", Body=json.dumps(manifest).encode())
    run_dir = tmp_path / "run"
    refused(capsys, ["train", "--config", "debug", f"run.dir={run_dir}", f"data.root=s3://{bucket}/datasets/mnist"],
            says="outside its prefix")
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- configs


def test_a_yaml_python_tag_is_refused_and_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    refused(capsys, ["train", "--config", str(evil), f"run.dir={tmp_path / 'run'}"], says="is not valid YAML")
    assert not marker.exists() and not (tmp_path / "run").exists()


# Keys the train schema has (and a few it does not), values of every YAML type.
KNOWN_KEYS = ["seed", "resume", "data.name", "data.root", "data.image_size", "data.channels", "model.kind",
              "model.arch", "model.conditional", "model.latent_dim", "model.g_width", "model.width", "model.font",
              "model.pixel_noise", "train.steps", "train.batch_size", "train.lr", "train.mixed_precision",
              "train.precision", "train.log_every", "run.dir", "bogus", "train.bogus", "model", "data.name.deeper"]
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def nest(flat: dict) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[leaf] = value
    return tree


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flat=st.dictionaries(st.sampled_from(KNOWN_KEYS), YAML_VALUES, max_size=5),
       overrides=st.lists(st.tuples(st.sampled_from(KNOWN_KEYS), st.text(max_size=12)), max_size=3))
def test_any_generated_config_loads_or_exits_2_with_one_line(tmp_path, capsys, flat, overrides):
    path = tmp_path / "generated.yaml"
    path.write_text(yaml.safe_dump(nest(flat), allow_unicode=True))
    argv = ["train", "--config", str(path), "--print-config", *(f"{k}={v}" for k, v in overrides)]
    code = main(argv)  # anything but a clean 0 or 2 raises here, with its traceback
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err


@settings(max_examples=150, deadline=None)
@given(blob=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_config_file_load_or_are_bad_input(tmp_path_factory, blob):
    """Any file handed over as --config: text, YAML of any shape, or bytes that are not UTF-8."""
    from job.core import config
    from job.core.errors import BadInput

    path = tmp_path_factory.mktemp("cfg") / "any.yaml"
    path.write_bytes(blob)
    try:
        config.load("sample", str(path), ["generator=g.safetensors", "out=o", "count=1"])
    except BadInput:
        pass  # the only failure allowed: anything else propagates and fails the test
