"""The source files a module runs, and a digest of them: what names "the code" of a stage.

Every ``import`` counts, at module level or inside a function (a lazy import runs when the stage takes
that branch), except inside a module-level ``__getattr__``: a package's lazy attributes run only when
someone asks for that attribute, and no stage does. Importing ``a.b.c`` runs ``a/__init__.py`` and
``a/b/__init__.py`` first, so those count too. Modules outside the source root (torch, numpy, ...) are
the environment's, pinned in requirements.txt, and are not followed.

``dvc.yaml`` lists each stage's closure as its code deps (checked by a test), and the training stages
put :func:`code_digest` into the names of their state folders: after an edit of code a stage runs, the
rerun trains afresh instead of publishing a finished state that older code produced.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the realuid package


def module_file(src: Path, name: str) -> Path | None:
    """The file of module ``name`` under the source root ``src`` (a package's ``__init__.py``), or None."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Dotted names of the modules (or maybe-modules) that ``module``'s source imports."""
    package = module if is_package else module.rpartition(".")[0]
    skip = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for n in ast.walk(f)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            names.add(base)
            # `from pkg import mod` imports the submodule mod when there is one.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def closure(src: Path, module: str) -> set[Path]:
    """Every source file under ``src`` that running ``python -m module`` executes."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # Importing a.b.c runs the packages a and a.b first.
        for i in range(1, len(parts) + 1):
            path = module_file(src, ".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            sub = ".".join(parts[:i])
            tree = ast.parse(path.read_text(), filename=str(path))
            todo.extend(_imported_names(tree, sub, path.name == "__init__.py"))
    return seen


def code_digest(module: str, src: Path = SOURCE_ROOT) -> str:
    """sha256 over the names and bytes of every source file ``module`` runs (:func:`closure`)."""
    h = hashlib.sha256()
    for path in sorted(closure(src, module)):
        h.update(f"{path.relative_to(src).as_posix()}\0".encode())
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()
