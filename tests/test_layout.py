"""The tests' own layout: test modules never import one another (nor conftest.py); what several of them
share lives in tests/helpers/, or in conftest.py as a fixture."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> set[str]:
    """The top-level names of every module ``source`` imports, imports inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_modules_import_no_test_module_and_no_conftest():
    offenders = {}
    for path in sorted([*TESTS.glob("test_*.py"), *TESTS.glob("helpers/*.py")]):
        wrong = sorted(n for n in imported_modules(path.read_text()) if n.startswith("test_") or n == "conftest")
        if wrong:
            offenders[str(path.relative_to(TESTS))] = wrong
    assert not offenders, f"move what these need into tests/helpers/ or a conftest.py fixture: {offenders}"


def test_imports_of_test_modules_are_found_at_any_depth():
    source = ("import os, test_a\nfrom helpers.project import sh\n"
              "def f():\n    from test_b import x\n    import conftest\n")
    assert imported_modules(source) == {"os", "test_a", "helpers", "test_b", "conftest"}
