"""Property-based tests (hypothesis) over every command and every key: random values of
every type, random extra keys, random URIs and random file contents. The only outcomes
allowed are exit 0, or exit 2 (bad input) or 3 (storage unreachable) with one `error:` line
on stderr; never a traceback; and on 2 or 3 nothing is written.

Two levels: every command's config with --print-config (hundreds of cases, milliseconds
each), then each command really run in a clean working folder with small sizes, so that a
case that is accepted finishes in a second or two. s3:// URIs point at a dead endpoint
(exit 3 within a fraction of a second) unless the bucket name is refused first (exit 2).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import swapped_environ
from job.cli import main
from job.core import config

# ----------------------------------------------------------------------------- keys


def leaf_keys(schema: type, prefix: str = "") -> dict[str, tuple[type, dict]]:
    """Every dotted key of a config schema -> (its type, its field metadata: min/max)."""
    hints = typing.get_type_hints(schema)
    out = {}
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (tp, dict(f.metadata))
    return out


KEYS = {command: leaf_keys(schema) for command, schema in config.SCHEMAS.items()}
# Keys no schema has, and keys that name a section or go below a value.
EXTRA_KEYS = ["bogus", "train.bogus", "model", "data", "data.name.deeper", "seed.x", "", ".", "a..b", "generator.x"]

# ----------------------------------------------------------------------------- values

JUNK_NUMBERS = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-0", "1_000", "0x10", "1.5", "", " 3", "½",
                                "9" * 30, "-9" * 20])
SMALL_INTS = st.integers(min_value=-3, max_value=40).map(str)
NUMBERS = SMALL_INTS | st.floats(allow_nan=True, allow_infinity=True).map(repr) | JUNK_NUMBERS
WORDS = st.sampled_from(["true", "false", "yes", "off", "null", "None", "~", "auto", "never", "no", "bf16", "fp16",
                         "balanced", "uniform", "3,5,8", "3,,5", "11", "digits", "strings", "idx", "webdataset",
                         "safetensors", "tar", "dcgan", "dcgan64", "mean", "classifier", "autoencoder", "mnist",
                         "fashion-mnist", "svhn", "imagefolder", "builtin:mnist", "builtin:nope", "class-means",
                         "2026", "12a", "4-8", "8-4", "-2,3", "1,1,1,1,1,1,1,1,1,2", "0.8,1.0", "x,y"])
SCHEMES = st.sampled_from(["gs", "http", "https", "file", "S3", "hdfs", "ftp", "s3a", "az"])
S3_BUCKETS = st.text(alphabet="abcXYZ019.-_", min_size=0, max_size=66)
PATH_TEXT = st.text(alphabet="abc019._-/", min_size=1, max_size=14)


def _relative(path: str) -> str:
    """A local path kept inside the test's working folder (no absolute path, no '..')."""
    parts = [p for p in path.split("/") if p not in ("", "..")]
    return "/".join(parts) or "out"


VALID_BUCKETS = st.from_regex(r"\A[a-z0-9][a-z0-9-]{1,10}[a-z0-9]\Z")
URIS = st.one_of(
    PATH_TEXT.map(_relative),
    st.builds(lambda b, k: f"s3://{b}/{k}", S3_BUCKETS, PATH_TEXT),
    st.builds(lambda b, k: f"s3://{b}/{k}", VALID_BUCKETS, PATH_TEXT),
    st.builds(lambda s, r: f"{s}://{r}", SCHEMES, PATH_TEXT),
    st.sampled_from(["s3:/bucket/x", "s3://", "s3:///x", "s3://b", "/dev/null", "/proc/self/nope", ".", "S3://ab/x"]),
)
LOCAL_MOSTLY = st.one_of(PATH_TEXT.map(_relative), PATH_TEXT.map(_relative), URIS)
ANY_TEXT = st.text(max_size=16).filter(lambda t: "\x00" not in t)
VALUES = NUMBERS | WORDS | URIS | ANY_TEXT


def plausible(tp: type, meta: dict, run_level: bool):
    """Values a user would likely pass for a key of type `tp`: its choices, booleans, numbers
    in (or just outside) its range. At the run level numbers stay small, so an accepted case
    finishes quickly (a huge count is a valid, slow job, not a bug)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return st.sampled_from([str(a) for a in args])
    if type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return st.just("null") | plausible(inner, meta, run_level)
    lo, hi = meta.get("min"), meta.get("max")
    if tp is bool:
        return st.sampled_from(["true", "false"])
    if tp is int:
        low = -2 if lo is None else int(lo) - 1
        high = (40 if run_level else 10**9) if hi is None else int(min(hi, 40) if run_level else hi) + 1
        return st.integers(min_value=low, max_value=max(low, high)).map(str)
    if tp is float:
        low, high = -1.0 if lo is None else lo - 0.5, 1.0 if hi is None else hi + 0.5
        return st.floats(min_value=low, max_value=high).map(repr)
    return WORDS | URIS


def override(command: str, run_level: bool):
    """`key=value` for one of the command's keys or an extra key: usually a plausible value
    for the key, sometimes anything."""
    keys = list(KEYS[command]) + EXTRA_KEYS

    def value(key: str):
        if key not in KEYS[command]:
            return VALUES
        tp, meta = KEYS[command][key]
        likely = plausible(tp, meta, run_level)
        return st.one_of(likely, likely, likely, SMALL_INTS | JUNK_NUMBERS | WORDS if run_level else VALUES)

    return st.sampled_from(keys).flatmap(lambda k: value(k).map(lambda v: f"{k}={v}"))


def one_line_or_success(code: int, err: str) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics: how often each outcome came up
    assert code in (0, 2, 3), err
    if code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------- config level

# What each command needs to get past its required keys (the overrides come after it).
COMMAND_ARGS = {"data": ["push", "mnist", "dest"], "sample": ["generator=g", "count=1", "out=o"],
                "evaluate": ["generator=g"], "transform": ["inputs=i", "out=o"]}


@pytest.mark.parametrize("command", list(config.SCHEMAS))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_overrides_of_any_command_print_a_config_or_exit_2_with_one_line(command, capsys, data):
    overrides = data.draw(st.lists(override(command, run_level=False), max_size=4))
    code = main([command, *COMMAND_ARGS.get(command, []), "--print-config", *overrides])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    one_line_or_success(code, err)


# ----------------------------------------------------------------------------- run level


@pytest.fixture(scope="module")
def dead_s3(tmp_path_factory):
    """boto3 settings that point at a closed port, failing fast (exit 3), then restored."""
    dead = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_MAX_ATTEMPTS": "1", "DIGITS_S3_CONNECT_TIMEOUT": "0.3", "AWS_ENDPOINT_URL_S3": None}
    with swapped_environ(dead):
        yield


def run_in_clean_folder(argv: list[str], files: dict[str, bytes], capsys) -> None:
    """Run the job in a fresh working folder holding `files`; check the outcome, and that
    nothing was written on exit 2 or 3."""
    folder = Path(tempfile.mkdtemp(prefix="prop-"))
    for name, blob in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)
    before = tree(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    one_line_or_success(code, err)
    if code != 0:
        assert tree(folder) == before, (argv, err)


def _ink_png() -> bytes:
    """A readable image with a stroke of ink, as a scanned digit would have."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(image).line([(12, 6), (26, 6), (18, 34)], fill=0, width=4)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


AN_IMAGE = _ink_png()
RANDOM_FILE = st.just(AN_IMAGE) | st.binary(max_size=300) | st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n", b"{}", b"PK\x03\x04", b"\x00\x00\x08\x03\x00\x00\x00\x01"])
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_sample_with_random_keys_uris_and_generator_files_exits_0_2_or_3(dead_s3, generator_file, capsys, data):
    generator = data.draw(st.sampled_from([generator_file, "given.safetensors"]) | URIS, label="generator")
    out = data.draw(LOCAL_MOSTLY, label="out")
    overrides = data.draw(st.lists(override("sample", run_level=True), max_size=4), label="overrides")
    files = {"given.safetensors": data.draw(RANDOM_FILE, label="file"), "texts.txt": data.draw(RANDOM_FILE)}
    argv = ["sample", f"generator={generator}", "count=12", "shard_size=5", f"out={out}", "progress=false",
            *overrides]
    run_in_clean_folder(argv, files, capsys)


@SETTINGS
@given(data=st.data())
def test_train_with_random_keys_and_uris_exits_0_2_or_3(dead_s3, capsys, data):
    run_dir = data.draw(LOCAL_MOSTLY, label="run.dir")
    overrides = data.draw(st.lists(override("train", run_level=True), max_size=4), label="overrides")
    argv = ["train", "--config", "debug", "train.steps=2", "train.progress=false", f"run.dir={run_dir}", *overrides]
    run_in_clean_folder(argv, {"config.yaml": data.draw(RANDOM_FILE)}, capsys)


@SETTINGS
@given(data=st.data())
def test_transform_with_random_inputs_and_keys_exits_0_2_or_3(dead_s3, capsys, data):
    inputs = data.draw(st.sampled_from(["in", "in/a.png"]) | URIS, label="inputs")
    out = data.draw(LOCAL_MOSTLY, label="out")
    overrides = data.draw(st.lists(override("transform", run_level=True), max_size=3), label="overrides")
    blobs = data.draw(st.lists(RANDOM_FILE, min_size=1, max_size=3), label="files")
    argv = ["transform", f"inputs={inputs}", f"out={out}", *overrides]
    run_in_clean_folder(argv, {f"in/{i}.png": blob for i, blob in enumerate(blobs)}, capsys)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(data=st.data())
def test_evaluate_with_random_keys_and_uris_exits_0_2_or_3(dead_s3, generator_file, capsys, data):
    subject = data.draw(st.sampled_from([f"generator={generator_file}", "samples=given", "generator=given"])
                        | URIS.map(lambda u: f"samples={u}"), label="subject")
    overrides = data.draw(st.lists(override("evaluate", run_level=True), max_size=3), label="overrides")
    argv = ["evaluate", subject, "n=20", "tstr.n=0", "baseline=none", "out=report", *overrides]
    run_in_clean_folder(argv, {"given": data.draw(RANDOM_FILE)}, capsys)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_data_push_with_random_names_and_uris_exits_0_2_or_3(dead_s3, capsys, data):
    name = data.draw(st.sampled_from(["mnist", "mnist", "kmnist"]) | WORDS | ANY_TEXT, label="dataset")
    dest = data.draw(LOCAL_MOSTLY, label="dest")
    overrides = data.draw(st.lists(override("data", run_level=True), max_size=2), label="overrides")
    run_in_clean_folder(["data", "push", name, dest, *overrides], {}, capsys)
