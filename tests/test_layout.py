"""README's Layout says where a model kind, a shard format and a storage scheme are added.
These tests hold the code to it: the files it names are where the registered ones live, and
no other module branches on a kind, format or scheme name (the if-chains that once fell
through to a default), so adding one touches only those files. A format registered at run
time works end to end without touching anything else."""

from __future__ import annotations

import ast
import re

import torch

from conftest import REPO, train
from job import shards, storage
from job.cli import main
from job.kinds import KINDS
from job.shard_sets import read_manifest, shard_set_digits

README = (REPO / "README.md").read_text()
JOB = REPO / "job"


def extending_bullets() -> dict[str, str]:
    """README's 'Extending' bullets: axis ('model kind', ...) -> the bullet's text."""
    section = README.split("Extending:", 1)[1].split("\n\n", 2)[1]
    bullets = [" ".join(b.split()) for b in section.split("\n- ")]
    return {re.match(r"-? ?A ([a-z ]+):", b).group(1): b for b in bullets}


def paths_in(text: str) -> list[str]:
    return re.findall(r"`(job/[^`]+)`", text)


def module_file(spec: str) -> str:
    """'job.models.dcgan:Generator28' -> 'job/models/dcgan.py'."""
    return spec.split(":")[0].replace(".", "/") + ".py"


def test_readme_names_the_files_where_every_registered_kind_format_and_scheme_lives():
    bullets = extending_bullets()
    assert set(bullets) == {"model kind", "shard format", "storage scheme"}
    kind_paths = paths_in(bullets["model kind"])
    assert kind_paths == ["job/models/<kind>.py", "job/train_<kind>.py", "job/kinds.py", "job/config.py"]
    for kind in KINDS.values():
        assert re.fullmatch(r"job/train_\w+\.py", module_file(kind.trainer)), kind.name
        for arch in kind.archs.values():
            assert re.fullmatch(r"job/models/\w+\.py", module_file(arch)), kind.name
    assert paths_in(bullets["shard format"]) == ["job/shards.py"]
    assert {f.encode.__module__ for f in shards.FORMATS.values()} == {"job.shards"}
    assert paths_in(bullets["storage scheme"]) == ["job/storage_<scheme>.py", "job/storage.py"]
    for scheme, backend in storage.BACKENDS.items():
        assert type(backend).__module__ == f"job.storage_{scheme or 'local'}"
    for path in {*kind_paths, "job/shards.py", "job/storage.py"} - {"job/models/<kind>.py", "job/train_<kind>.py"}:
        assert (REPO / path).is_file(), path


def _branches_on(names: set[str], subject: re.Pattern) -> list[str]:
    """file:line of every comparison of something named like `subject` with one of `names`,
    in the package outside the registries."""
    found = []
    for path in sorted(JOB.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            constants = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
            named = [ast.unparse(s) for s in sides if not isinstance(s, (ast.Constant, ast.Tuple, ast.List))]
            if constants & names and any(subject.search(n) for n in named):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_branches_on_a_model_kind_name():
    assert _branches_on(set(KINDS), re.compile(r"kind")) == []


def test_no_module_branches_on_a_shard_format_name():
    assert _branches_on(set(shards.FORMATS), re.compile(r"fmt|format")) == []


def test_no_module_outside_storage_asks_whether_a_uri_is_s3():
    offenders = [f"{p.relative_to(REPO)}" for p in JOB.rglob("*.py")
                 if not p.name.startswith("storage") and re.search(r"""startswith\(\s*["']s3:""", p.read_text())]
    assert offenders == []


def _npz_like_files(index: int, labeled: bool) -> list[str]:
    return [f"shard-{index:06d}.pt-free"]


def test_a_format_registered_in_the_table_alone_works_for_sample_and_evaluate(tmp_path, monkeypatch):
    """A new format added only to shards.FORMATS: `sample format=<it>` writes it and the
    shard-set reader reads it back, with no other change."""
    from safetensors.torch import load, save

    fmt = shards.ShardFormat(
        "raw-safetensors", _npz_like_files,
        lambda i, x, y, labeled: {_npz_like_files(i, labeled)[0]: save({"x": x.contiguous(), "y": y.contiguous()})},
        lambda files: (lambda t: (t["x"], t["y"]))(load(files[sorted(files)[0]])),
    )
    monkeypatch.setitem(shards.FORMATS, fmt.name, fmt)
    run_dir = tmp_path / "run"
    assert train(run_dir, "train.steps=2") == 0
    out = tmp_path / "shards"
    assert main(["sample", f"generator={run_dir / 'generator.safetensors'}", "count=25", "shard_size=10",
                 f"out={out}", f"format={fmt.name}", "progress=false"]) == 0
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-00000{i}.pt-free" for i in range(3)]
    images, labels = shard_set_digits(str(out), read_manifest(str(out)), 25)
    assert images.shape == (25, 1, 28, 28) and images.dtype == torch.uint8 and len(labels) == 25
