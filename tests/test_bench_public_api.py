"""bench/ runs on the library's public API: no name starting with ``_`` imported from realuid and no
``realuid.<...>._name`` attribute, in every Python file under bench/ (the extension-less launchers too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def bench_sources() -> list[Path]:
    """Every .py file under bench/, and the launchers: the extension-less files in bench/ itself."""
    launchers = [p for p in BENCH.iterdir() if p.is_file() and not p.suffix]
    return sorted(BENCH.rglob("*.py")) + sorted(launchers)


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, filename: str) -> list[str]:
    """Each use of a private realuid name in ``source``, as 'line: what'."""
    tree = ast.parse(source, filename)
    library = {}  # local name -> the realuid name it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "realuid":
                    library[alias.asname or "realuid"] = alias.name if alias.asname else "realuid"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "realuid":
            for alias in node.names:
                library[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            chain = [node.attr]
            inner = node.value
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            names = [".".join([library[inner.id], *chain])] if isinstance(inner, ast.Name) and inner.id in library else []
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names
                  if name.split(".")[0] == "realuid" and any(private(part) for part in name.split("."))]
    return sorted(set(found))


def test_the_launchers_are_found_and_parse():
    names = {p.name for p in bench_sources()}
    assert {"quality", "sweep", "fixed_points", "launch.py", "cli.py", "gpu_check.py"} <= names


@pytest.mark.parametrize("path", bench_sources(), ids=lambda p: str(p.relative_to(BENCH)))
def test_bench_imports_no_private_realuid_name(path):
    assert private_uses(path.read_text(), str(path)) == []


@pytest.mark.parametrize("source, use", [
    ("from realuid.training.rng import _seed_value", "1: realuid.training.rng._seed_value"),
    ("from realuid._internal import thing", "1: realuid._internal.thing"),
    ("import realuid._internal", "1: realuid._internal"),
    ("import realuid\nrealuid.training.rng._seed_value(0)", "2: realuid.training.rng._seed_value"),
    ("from realuid import config as c\nc._check_value", "2: realuid.config._check_value"),
    ("from realuid.training.batches import BatchStream\nBatchStream._epoch", "2: realuid.training.batches.BatchStream._epoch"),
])
def test_the_check_finds_each_kind_of_private_use(source, use):
    assert private_uses(source, "<snippet>") == [use]


def test_public_names_and_dunders_pass():
    source = "import realuid\nfrom realuid.training.rng import seeded\nrealuid.__version__\nfrom .figures import _save\n"
    assert private_uses(source, "<snippet>") == []
