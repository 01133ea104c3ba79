"""The pipeline's stages as dvc.yaml declares them, and their CLIs run in-process as dvc.yaml invokes them."""

from __future__ import annotations

import dataclasses
import importlib
import shlex
import sys

from helpers.project import ROOT
from realuid.config import load_params
from realuid.stages import common

sys.path.insert(0, str(ROOT / "workflow"))
from registry import load_stages  # noqa: E402

STAGES = load_stages(ROOT / "dvc.yaml")


def stage_named(name):
    return next(s for s in STAGES if s.name == name)


def recording(obj, seen: set, prefix: str = ""):
    """A copy of a params dataclass that records every leaf key read (``"distill.steps"``)."""
    values = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values[f.name] = recording(value, seen, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else value
    names = {f.name for f in dataclasses.fields(obj)}

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        if name in names and not dataclasses.is_dataclass(value):
            seen.add(prefix + name)
        return value

    cls = type(type(obj).__name__, (type(obj),), {"__getattribute__": getattribute})
    return cls(**values)


def stage_argv(stage) -> list[str]:
    """The arguments of a stage's command in dvc.yaml, after ``PYTHONPATH=src python -m <module>``."""
    argv = shlex.split(stage.cmd)
    assert argv[:4] == ["PYTHONPATH=src", "python", "-m", f"realuid.stages.{stage.name}"], argv[:4]
    return argv[4:]


def run_stage(stage, monkeypatch) -> set:
    """Run one stage's CLI in-process exactly as dvc.yaml writes it; returns the params keys it read."""
    seen: set = set()
    monkeypatch.setattr(common, "load_params", lambda path: recording(load_params(path), seen))
    code = importlib.import_module(f"realuid.stages.{stage.name}").cli(stage_argv(stage))
    assert code == 0, f"stage {stage.name} exited with {code}"
    return seen
