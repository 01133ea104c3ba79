"""A throwaway copy of the project (dvc.yaml, Snakefile, workflow/, src/ and a tiny params.yaml) in a
temporary folder, made a git + DVC repository, and the commands that run both engines in it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs/toy.yaml"  # the 2-D default (`make config CONFIG=toy`)
DEFAULT = ROOT / "params.yaml"  # the committed default: the 8x8 digits with a UNet teacher


def tiny_params(base: Path = DEFAULT, **sections) -> dict:
    """A params file (the committed params.yaml unless ``base``) shrunk to seconds of work.

    Only sizes shrink (steps, batches, sample counts; batch sizes never grow): the layout, such as the
    UNet's ``channel_mult``, stays the file's. ``sections`` override whole keys (``distill__steps=3``).
    """
    p = yaml.safe_load(Path(base).read_text())
    p["prepare"].update(n_train=1000, n_test=300)
    p["features"].update(steps=40, batch_size=64)
    p["train_teacher"]["model"].update(hidden_dim=32, depth=1, time_embed_dim=16, channels=32)
    p["train_teacher"].update(steps=30, batch_size=min(128, p["train_teacher"]["batch_size"]),
                              checkpoint_every_steps=30, log_every_steps=10)
    # 5 in-training evaluations of every copy (steps 2, 4, ..., 10), as the embedded default does every 50.
    p["distill"].update(steps=10, batch_size=min(128, p["distill"]["batch_size"]), checkpoint_every_steps=4,
                        log_every_steps=2, eval_every_steps=2, eval_samples=200)
    p["sample"].update(n_samples=300, batch_size=150, teacher_nfe=8)
    p["evaluate"].update(kid_subset_size=100, batch_size=100)
    for key, value in sections.items():
        node = p
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return p


def make_project(folder: Path, params: dict, *, git: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "Snakefile", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("workflow", "src"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
            subprocess.run(cmd, cwd=folder, check=True, capture_output=True, env=shell_env(folder))
    return folder


def shell_env(folder: Path) -> dict:
    env = dict(os.environ)
    # A new user's shell: the venv's bin first on PATH (as README says), no PYTHONPATH.
    env.pop("PYTHONPATH", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.com")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.com")
    return env


def sh(folder: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=shell_env(folder))
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def snakemake_pending(project) -> set:
    """Rules a dry run would execute (parsed from the job-stats table)."""
    out = sh(project, "snakemake", "--cores", "1", "--dry-run", "--quiet", "rules").stdout
    rows = re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M)
    return {name for name, _ in rows if name not in ("all", "total")}


def dvc_reproduce(project) -> set:
    """Run ``dvc repro``; returns the stages it executed (restored-from-run-cache ones included)."""
    out = sh(project, "dvc", "repro").stdout
    return set(re.findall(r"Running stage '(\w+)'", out)) | set(re.findall(r"Stage '(\w+)' is cached", out))


def dvc_changed(project) -> set:
    """Stages whose own recorded inputs or outputs differ from dvc.lock."""
    return set(json.loads(sh(project, "dvc", "status", "--json").stdout))

