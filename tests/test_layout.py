"""README's Layout and Extending sections, held to the code.

The tree: one README line per package of job/, listed so that each imports (at module
level) only the packages above it; storage and shardsets import nothing above them even
inside functions (shardsets is what user code reads sets with); no command's module imports
another command's, directly or through others; `import job.readers` loads neither
accelerate nor the models. Extending: each axis (model kind, shard format, layout, dataset,
storage scheme) has one registry, lives in the files README names, and no other module
compares against its names, so adding one touches only those files. One autocast policy.
A format registered at run time works end to end without touching anything else."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, train
from job import storage
from job.cli import MAINS, main
from job.core.kinds import KINDS
from job.data.datasets import CATALOG
from job.shardsets import formats, layouts
from job.shardsets.sets import read_manifest, shard_set_digits

README = (REPO / "README.md").read_text()
JOB = REPO / "job"
SOURCES = sorted(JOB.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layout_folders() -> list[str]:
    """The folders of job/ README's Layout lists, in its order: 'job/core/' -> 'core'."""
    section = README.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^    job/(\w+)/ ", section, flags=re.M)


def layout_packages() -> list[str]:
    """The packages among them (configs/ and weights/ are package data)."""
    return [f for f in layout_folders() if (JOB / f / "__init__.py").is_file()]


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (JOB / parts[1]).is_dir()) else None


def job_imports(path: Path, module_level_only: bool) -> set[str]:
    """The job modules `path` imports (`from job.x import y` counts as job.x.y when that is a
    module), at module level or anywhere."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("job")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("job"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (REPO / sub.replace(".", "/")).with_suffix(".py").is_file() or (
                    REPO / sub.replace(".", "/") / "__init__.py").is_file()
                found.add(sub if is_module else node.module)
    return found


def test_readme_layout_has_one_line_per_package_of_job():
    packages = {p.parent.name for p in JOB.glob("*/__init__.py")}
    assert sorted(layout_packages()) == sorted(packages)
    assert all((JOB / folder).is_dir() for folder in layout_folders())
    entry_points = ("__init__.py", "__main__.py", "cli.py", "readers.py")
    assert [p.name for p in JOB.glob("*.py") if p.name not in entry_points] == []


def test_git_ignores_no_file_of_the_job_package():
    """A pattern meant for a run's output (once `data/`) must not hide a package's modules
    from commits: the working copy would import them and a clean clone would not."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout, or no git to ask")
    files = [str(p.relative_to(REPO)) for p in JOB.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert ignored == []


def test_each_package_imports_only_the_packages_above_it_in_readme():
    order = layout_packages()
    upward = []
    for path in SOURCES:
        own = package_of(module_name(path))
        if own is None:
            continue  # job/cli.py, job/readers.py: the entry points sit above everything
        for imported in job_imports(path, module_level_only=True):
            other = package_of(imported)
            if other is not None and other != own and order.index(other) > order.index(own):
                upward.append(f"{path.relative_to(REPO)} imports {imported}")
    assert upward == []


def test_storage_and_shardsets_import_nothing_above_them_even_inside_functions():
    allowed = {"storage": {"core", "storage"}, "shardsets": {"core", "storage", "shardsets"}}
    found = [f"{path.relative_to(REPO)} imports {imported}"
             for package, ok in allowed.items() for path in sorted((JOB / package).rglob("*.py"))
             for imported in job_imports(path, module_level_only=False)
             if imported != "job" and package_of(imported) not in ok]
    assert found == []


def test_the_import_rules_see_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "sets.py"
    late_import = "\n\ndef _x():\n    from job.sampling import generation\n"
    probe.write_text((JOB / "shardsets" / "sets.py").read_text() + late_import)
    assert "job.sampling.generation" in job_imports(probe, module_level_only=False)
    assert "job.sampling.generation" not in job_imports(probe, module_level_only=True)


def _closure(module: str, seen: set[str]) -> set[str]:
    path = REPO / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if module in seen or not path.is_file():
        return seen
    seen.add(module)
    for imported in job_imports(path, module_level_only=False):
        _closure(imported, seen)
    return seen


def test_no_command_imports_another_commands_module_directly_or_through_others():
    commands = set(MAINS.values())
    assert len(commands) == 5 and all(hasattr(importlib.import_module(m), "main") for m in commands)
    for command in sorted(commands):
        assert _closure(command, set()) & commands == {command}, command


def test_importing_job_readers_loads_neither_accelerate_nor_the_models_nor_a_command():
    code = ("import sys; import job.readers; print(*sorted(m for m in sys.modules if m == 'accelerate' "
            "or m.startswith(('accelerate.', 'job.models', 'job.training', 'job.sampling', 'job.evaluation', "
            "'job.core.runtime'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == []
    from job import readers
    from job.shardsets import readers as shardset_readers

    assert readers.ShardDataset is shardset_readers.ShardDataset and readers.ShardStream is shardset_readers.ShardStream


def extending_bullets() -> dict[str, str]:
    """README's 'Extending' bullets: axis ('model kind', ...) -> the bullet's text."""
    section = README.split("Extending:", 1)[1].split("\n\n", 2)[1]
    bullets = [" ".join(b.split()) for b in section.split("\n- ")]
    return {re.match(r"-? ?An? ([a-z ]+):", b).group(1): b for b in bullets}


def paths_in(text: str) -> list[str]:
    return re.findall(r"`(job/[^`]+)`", text)


def module_file(spec: str) -> str:
    """'job.models.dcgan:Generator28' -> 'job/models/dcgan.py'."""
    return spec.split(":")[0].replace(".", "/") + ".py"


def test_readme_names_the_files_where_every_registered_kind_format_layout_dataset_and_scheme_lives():
    bullets = extending_bullets()
    assert set(bullets) == {"model kind", "shard format", "layout", "dataset", "storage scheme"}
    kind_paths = paths_in(bullets["model kind"])
    assert kind_paths == ["job/models/<kind>.py", "job/training/<kind>.py", "job/core/kinds.py", "job/core/config.py"]
    for kind in KINDS.values():
        assert module_file(kind.trainer) == f"job/training/{kind.name}.py", kind.name
        for arch in kind.archs.values():
            assert module_file(arch) == f"job/models/{kind.name}.py", kind.name
    assert paths_in(bullets["shard format"]) == ["job/shardsets/formats.py"]
    assert {f.encode.__module__ for f in formats.FORMATS.values()} == {"job.shardsets.formats"}
    assert paths_in(bullets["layout"])[0] == "job/shardsets/layouts.py"
    for layout in layouts.LAYOUTS.values():
        for role in ("check_config", "check_generator", "draw", "evaluate"):
            assert callable(layout.function(role)), (layout.name, role)
        assert module_file(layout.draw) == "job/sampling/generation.py"
        assert module_file(layout.evaluate).startswith("job/evaluation/")
    assert paths_in(bullets["dataset"]) == ["job/data/datasets.py", "job/core/config.py"]
    assert paths_in(bullets["storage scheme"]) == ["job/storage/<scheme>.py", "job/storage/__init__.py"]
    for scheme, backend in storage.BACKENDS.items():
        assert type(backend).__module__ == f"job.storage.{scheme or 'local'}"
    named = {p for b in bullets.values() for p in paths_in(b)} - {"job/models/<kind>.py", "job/training/<kind>.py",
                                                                    "job/storage/<scheme>.py"}
    for path in named:
        assert (REPO / path).exists(), path


def _branches_on(names: set[str], subject: re.Pattern) -> list[str]:
    """file:line of every comparison of something named like `subject` with one of `names`."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            constants = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
            named = [ast.unparse(s) for s in sides if not isinstance(s, (ast.Constant, ast.Tuple, ast.List))]
            if constants & names and any(subject.search(n) for n in named):
                where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_branches_on_a_model_kind_or_architecture_name():
    assert _branches_on(set(KINDS), re.compile(r"kind")) == []
    archs = {arch for kind in KINDS.values() for arch in kind.archs}
    assert _branches_on(archs, re.compile(r"arch")) == []


def test_no_module_branches_on_a_shard_format_name():
    assert _branches_on(set(formats.FORMATS), re.compile(r"fmt|format")) == []


def test_no_module_branches_on_a_layout_name():
    assert _branches_on(set(layouts.LAYOUTS), re.compile(r"layout")) == []


def test_no_module_branches_on_a_dataset_name_not_even_the_catalogue():
    """What differs per dataset (torchvision's arguments, a transposed file) is a field of
    its row, not an if on its name."""
    assert _branches_on(set(CATALOG), re.compile(r"name|dataset")) == []


def test_the_branch_check_finds_a_branch_on_a_layout_name(tmp_path, monkeypatch):
    """The check is not vacuous: the comparison sample.py once made is found."""
    probe = tmp_path / "probe.py"
    probe.write_text('def f(plan):\n    return plan.layout == "strings"\n')
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", [probe])
    assert _branches_on(set(layouts.LAYOUTS), re.compile(r"layout")) == ["probe.py:2: plan.layout == 'strings'"]


def test_one_autocast_policy_job_core_precision_is_the_only_module_that_calls_torch_autocast():
    callers = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "autocast" and ast.unparse(node.value).startswith(
                    "torch"):
                callers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert [c.split(":")[0] for c in callers] == ["job/core/precision.py"]


def test_no_module_outside_storage_asks_whether_a_uri_is_s3():
    offenders = [f"{p.relative_to(REPO)}" for p in SOURCES
                 if "storage" not in p.relative_to(REPO).parts and re.search(r"""startswith\(\s*["']s3:""",
                                                                           p.read_text())]
    assert offenders == []


def _npz_like_files(index: int, labeled: bool) -> list[str]:
    return [f"shard-{index:06d}.pt-free"]


def test_a_format_registered_in_the_table_alone_works_for_sample_and_evaluate(tmp_path, monkeypatch):
    """A new format added only to formats.FORMATS: `sample format=<it>` writes it and the
    shard-set reader reads it back, with no other change."""
    from safetensors.torch import load, save

    fmt = formats.ShardFormat(
        "raw-safetensors", _npz_like_files,
        lambda i, x, y, labeled: {_npz_like_files(i, labeled)[0]: save({"x": x.contiguous(), "y": y.contiguous()})},
        lambda files: (lambda t: (t["x"], t["y"]))(load(files[sorted(files)[0]])),
    )
    monkeypatch.setitem(formats.FORMATS, fmt.name, fmt)
    run_dir = tmp_path / "run"
    assert train(run_dir, "train.steps=2") == 0
    out = tmp_path / "shards"
    assert main(["sample", f"generator={run_dir / 'generator.safetensors'}", "count=25", "shard_size=10",
                 f"out={out}", f"format={fmt.name}", "progress=false"]) == 0
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-00000{i}.pt-free" for i in range(3)]
    images, labels = shard_set_digits(str(out), read_manifest(str(out)), 25)
    assert images.shape == (25, 1, 28, 28) and images.dtype == torch.uint8 and len(labels) == 25
