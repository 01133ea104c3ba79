"""The code deps of each stage in dvc.yaml, computed from the sources.

``dvc.yaml`` lists each stage's code deps; ``tests/test_stage_deps.py`` checks them against the source
closure of the stage's command (:func:`realuid.code_digest.closure`: every import, lazy ones included), so
editing a module a stage runs always reruns it, and editing one it does not never does.
``python workflow/code_deps.py --write`` rewrites the code deps of every stage in dvc.yaml (the other
deps and everything else stay as they are); without ``--write`` it prints them.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from realuid.code_digest import closure  # noqa: E402


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
