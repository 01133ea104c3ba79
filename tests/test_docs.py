"""Every shell command in README.md and docs/ is run by something: this test, a named test, or the CI.

Each fenced ``bash`` block is preceded by a marker line ``<!-- runs: WHERE -->``, WHERE being one or more
of (separated by ``;``, each optionally followed by words in parentheses):

- ``doc-test``: the block runs here, as printed, in a tiny project (:func:`test_runnable_blocks_run_as_printed`);
  only the sizes named in :data:`AT_A_TINY_SIZE` change (eight GPUs become two gloo processes, two nodes one);
- ``tests/<file>.py::<test>``: that test runs the block's commands (it must exist);
- ``.ci/run``: the CI script runs (one of) its commands;
- ``not here: <reason>``: it needs what no test machine has (a GPU, a second node, a cloud bucket).
"""

from __future__ import annotations

import ast
import re
import shlex
import socket
from pathlib import Path

import pytest

from helpers.project import make_project, sh, tiny_params

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*runs:\s*(.+?)\s*-->")


def bash_blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, marker text or '', block text)`` of every fenced bash block of ``page``."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            above = next((lines[k] for k in range(i - 1, max(i - 3, -1), -1) if lines[k].strip()), "")
            found = MARKER.search(above)
            end = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == "```")
            blocks.append((i + 1, found.group(1) if found else "", "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


def places(marker: str) -> list[str]:
    """The WHERE items of a marker, without their parenthesised remarks."""
    return [re.sub(r"\s*\(.*\)\s*$", "", item).strip() for item in marker.split(";") if item.strip()]


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(shlex.join(shlex.split(line, comments=True)))
    return out


def test_every_bash_block_says_what_runs_it():
    for page in PAGES:
        for line, marker, block in bash_blocks(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            assert marker, f"{where}: a bash block without a '<!-- runs: ... -->' marker"
            for place in places(marker):
                if place == "doc-test":
                    assert commands(block), f"{where}: nothing to run"
                elif place == ".ci/run":
                    ci = (ROOT / ".ci/run").read_text()
                    assert any(c in ci for c in commands(block)), f"{where}: .ci/run runs none of it"
                elif place.startswith("not here:"):
                    assert len(place) > len("not here:") + 10, f"{where}: say why it cannot run here"
                else:
                    file, _, name = place.partition("::")
                    tree = ast.parse((ROOT / file).read_text())
                    tests = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
                    assert name in tests, f"{where}: {place} names no test"


def test_a_block_without_marker_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash\ndvc repro\n```\n\n<!-- runs: doc-test -->\n```bash\nls  # x\n```\n")
    assert [(m, commands(b)) for _, m, b in bash_blocks(page)] == [("", ["dvc repro"]), ("doc-test", ["ls"])]


# --------------------------------------------------------------------------------------------------
# The runnable blocks, as printed
# --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What changes between a page's command and the doc-test's: process counts and nodes only.
AT_A_TINY_SIZE = {
    "docs/scale-out.md:nproc": [("nproc=8", "nproc=2")],
    "docs/scale-out.md:torchrun": [("--nnodes 2", "--nnodes 1"), ("--nproc_per_node 8", "--nproc_per_node 2"),
                                   ("node0:29500", "127.0.0.1:{port}")],
}


def runnable_blocks() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for line, marker, block in bash_blocks(page):
            if "doc-test" in places(marker):
                out.append((f"{page.relative_to(ROOT)}:{line}", commands(block)))
    return out


def tiny_size(where: str, command: str) -> str:
    for key, swaps in AT_A_TINY_SIZE.items():
        page, _, what = key.partition(":")
        if where.startswith(page + ":") and what in command:
            for old, new in swaps:
                command = command.replace(old, new.format(port=_free_port()))
    return command


@pytest.fixture(scope="module")
def committed_project(tmp_path_factory):
    """A tiny project of the committed default, run once and committed (so `dvc metrics diff` has a base)."""
    project = make_project(tmp_path_factory.mktemp("docs") / "project", tiny_params())
    sh(project, "dvc", "repro")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "tiny default")
    return project


@pytest.mark.slow  # a tiny pipeline run, then every runnable block: a few minutes on 2 cores
@pytest.mark.parametrize("where, cmds", runnable_blocks(), ids=[w for w, _ in runnable_blocks()])
def test_runnable_blocks_run_as_printed(committed_project, where, cmds):
    for command in cmds:
        result = sh(committed_project, "bash", "-c", tiny_size(where, command), check=False)
        assert result.returncode == 0, f"{where}: `{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
