"""Read ``dvc.yaml``, the single stage registry, into plain stage records for the Snakefile.

The Snakefile never lists a stage itself: everything here comes from ``dvc.yaml``, so the two engines
cannot disagree about commands, inputs, outputs or edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: list[str]
    outs: list[str]  # DVC outs and metrics alike; each is a file or a folder
    params: list[str]  # dotted keys of params.yaml the stage reads
    meta: dict = field(default_factory=dict)

    @property
    def uses_gpu(self) -> bool:
        return bool(self.meta.get("gpu"))


def _paths(entries) -> list[str]:
    """DVC lists entries as plain paths or as ``{path: {options}}``."""
    out = []
    for entry in entries or []:
        out.extend(entry if isinstance(entry, dict) else [entry])
    return [str(p) for p in out]


def _param_keys(entries) -> list[str]:
    keys = []
    for entry in entries or []:
        if isinstance(entry, dict):  # {params-file: [keys]}
            for file, names in entry.items():
                if Path(file).name != "params.yaml":
                    raise ValueError(f"only params.yaml is supported, dvc.yaml names {file}")
                keys.extend(names)
        else:
            keys.append(str(entry))
    return keys


def load_stages(dvc_yaml: str | Path = "dvc.yaml") -> list[Stage]:
    """The stages of ``dvc.yaml`` in file order."""
    spec = yaml.safe_load(Path(dvc_yaml).read_text())
    stages = []
    for name, s in spec["stages"].items():
        if "foreach" in s or "matrix" in s:
            raise ValueError(f"stage {name}: foreach/matrix stages are not supported by the Snakefile bridge")
        cmd = s["cmd"] if isinstance(s["cmd"], str) else " && ".join(s["cmd"])
        outs = _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
        stages.append(Stage(name, " ".join(cmd.split()), _paths(s.get("deps")), outs,
                            _param_keys(s.get("params")), dict(s.get("meta") or {})))
    return stages


def param_values(keys: list[str], params_yaml: str | Path = "params.yaml") -> str:
    """The values of ``keys`` in params.yaml as one canonical string.

    Snakemake reruns a job when its ``params`` change, so a rule that carries this string reruns exactly
    when a key it declares changes, like DVC.
    """
    data = yaml.safe_load(Path(params_yaml).read_text())
    picked = {}
    for key in keys:
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"dvc.yaml declares param {key!r}, which params.yaml does not have")
            node = node[part]
        picked[key] = node
    return yaml.safe_dump(picked, sort_keys=True, default_flow_style=True).strip()


def final_outputs(stages: list[Stage]) -> list[str]:
    """Outputs no other stage consumes: the targets of ``rule all``."""
    consumed = {d for s in stages for d in s.deps}
    return [o for s in stages for o in s.outs if o not in consumed]
