"""The project source files a stage's command runs, computed from the sources.

``dvc.yaml`` lists each stage's code deps by hand; ``tests/test_stage_deps.py`` checks them against
:func:`closure`, so editing a module a stage runs always reruns it, and editing one it does not never
does. ``python workflow/code_deps.py --write`` rewrites the code deps of every stage in dvc.yaml (the
other deps and everything else stay as they are); without ``--write`` it prints them.

Rules: every ``import`` counts, at module level or inside a function (a lazy import runs when the stage
takes that branch), except inside a module-level ``__getattr__``: a package's lazy attributes run only
when someone asks for that attribute, and no stage does. Importing ``a.b.c`` runs ``a/__init__.py`` and
``a/b/__init__.py`` first, so those count too. Modules outside the source root (torch, numpy, ...) are
the environment's, pinned in requirements.txt, and are not followed.
"""

from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path


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


def stage_module(cmd: str) -> str:
    """The module a stage's command runs with ``python -m``."""
    argv = shlex.split(cmd)
    return argv[argv.index("-m") + 1]


def code_deps(root: Path, cmd: str, src: str = "src") -> list[str]:
    """The source files (paths relative to ``root``) a stage with command ``cmd`` runs."""
    files = closure(root / src, stage_module(cmd))
    return sorted(p.relative_to(root).as_posix() for p in files)


def compact(root: Path, files: list[str]) -> list[str]:
    """``files`` with each folder whose every ``.py`` file is among them named once, as the folder."""
    chosen = set(files)
    for folder in sorted({str(Path(f).parent) for f in files}, key=len):
        inside = {p.relative_to(root).as_posix() for p in (root / folder).rglob("*.py")}
        if inside <= chosen and not any(folder.startswith(c + "/") for c in chosen):
            chosen = (chosen - inside) | {folder}
    return sorted(chosen)


def rewrite_deps(text: str, deps_by_stage: dict[str, list[str]], src: str = "src") -> str:
    """dvc.yaml's text with each stage's ``src/`` deps replaced by ``deps_by_stage[stage]``.

    Works on the text, so comments and layout survive: a stage is a two-space-indented ``name:`` line,
    its deps the ``      - path`` lines after its ``    deps:`` line.
    """
    out, stage, in_deps = [], None, False
    for line in text.splitlines(keepends=True):
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if in_deps and not line.startswith("      - "):
            out.extend(f"      - {dep}\n" for dep in deps_by_stage[stage])
            in_deps = False
        if in_deps and line.strip()[2:].startswith(src + "/"):
            continue
        out.append(line)
        if line.rstrip() == "    deps:" and stage in deps_by_stage:
            in_deps = True
    return "".join(out)


def expand(root: Path, deps: list[str], src: str = "src") -> set[str]:
    """The source files that declared deps under ``src/`` name (a folder stands for its ``.py`` files)."""
    files: set[str] = set()
    for dep in deps:
        if not (dep == src or dep.startswith(src + "/")):
            continue
        path = root / dep
        found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        files.update(p.relative_to(root).as_posix() for p in found)
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from registry import load_stages

    top = Path(__file__).resolve().parents[1]
    wanted = {stage.name: compact(top, code_deps(top, stage.cmd)) for stage in load_stages(top / "dvc.yaml")}
    if sys.argv[1:] == ["--write"]:
        registry = top / "dvc.yaml"
        registry.write_text(rewrite_deps(registry.read_text(), wanted))
    else:
        for name, deps in wanted.items():
            print(f"{name}:", *(f"  - {dep}" for dep in deps), sep="\n")
