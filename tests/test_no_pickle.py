"""Nothing in the package or the scripts can unpickle: a crafted file must never run code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

SOURCES = sorted([*(REPO / "job").rglob("*.py"), *(REPO / "scripts").glob("*.py")])

# Calls that unpickle (or may), and modules whose import means pickling is in play.
FORBIDDEN_CALLS = {"torch.load", "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "numpy.load",
                   "np.load", "torch.jit.load", "marshal.loads"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_the_sources_are_found():
    assert len(SOURCES) > 20 and REPO / "job" / "training" / "checkpoint.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_source_file_unpickles_or_imports_a_pickle_module(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            assert name not in FORBIDDEN_CALLS, f"{path}:{node.lineno} calls {name}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in FORBIDDEN_MODULES, f"{path}:{node.lineno} imports {alias.name}"
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.module.split(".")[0] not in FORBIDDEN_MODULES, f"{path}:{node.lineno} imports {node.module}"
            if node.module in ("torch", "yaml"):
                names = {a.name for a in node.names}
                assert not names & {"load", "unsafe_load"}, f"{path}:{node.lineno} imports {node.module}.load"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_is_only_ever_read_with_the_safe_loader(path: Path):
    """yaml.load with a full Loader builds Python objects from tags; only safe_* is used."""
    allowed = {"yaml.safe_load", "yaml.safe_load_all", "yaml.safe_dump", "yaml.safe_dump_all", "yaml.YAMLError"}
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _dotted(node).startswith("yaml."):
            assert _dotted(node) in allowed, f"{path}:{node.lineno} uses {_dotted(node)}"
