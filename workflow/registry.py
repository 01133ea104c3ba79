"""Read ``dvc.yaml``, the single stage registry, into plain stage records for the Snakefile.

The Snakefile never lists a stage itself: everything here comes from ``dvc.yaml``, so the two engines
cannot disagree about commands, inputs, outputs or edges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The one strict YAML reader (DVC's YAML 1.2, duplicate keys are errors): the Snakefile puts src/ on sys.path.
from realuid.yamlfile import read_yaml


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

    @property
    def slurm(self) -> "SlurmRequest":
        return slurm_request(self.name, self.meta)

    @property
    def nproc_param(self) -> str | None:
        """The params key holding the stage's process count (``meta.nproc``), if it runs under torchrun."""
        return self.meta.get("nproc")


# --------------------------------------------------------------------------------------------------
# Cluster resources: dvc.yaml `meta: slurm:` → Snakemake threads and resources
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmRequest:
    """What one stage asks of a cluster. Unset fields fall back to the profile's ``default-resources``."""

    partition: str | None = None
    account: str | None = None
    runtime: int | str | None = None  # minutes, or a Snakemake duration such as "2h30m"
    mem_mb: int | None = None
    cpus: int = 1  # the rule's threads: --cpus-per-task on Slurm, OMP_NUM_THREADS for the command
    gpus: int = 0  # used only where the cluster has GPUs (Snakemake config `gpus=true`)


SLURM_KEYS = ("partition", "account", "runtime", "mem_mb", "cpus", "gpus")


def _positive_int(stage: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"stage {stage}: meta.slurm.{key} must be a positive integer, got {value!r}")
    return value


def _non_empty_str(stage: str, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"stage {stage}: meta.slurm.{key} must be a non-empty string, got {value!r}")
    return value.strip()


def slurm_request(stage: str, meta: dict) -> SlurmRequest:
    """Validate ``meta.slurm`` of one dvc.yaml stage. GPU stages (``meta.gpu: true``) ask for one GPU
    unless ``gpus`` says otherwise; other stages may not ask for any. A stage whose process count is a
    param (``meta.nproc``) asks for one GPU per process (:func:`snakemake_resources`), so ``gpus`` may not
    be set there: two numbers for one thing would drift apart."""
    block = meta.get("slurm") or {}
    if not isinstance(block, dict):
        raise ValueError(f"stage {stage}: meta.slurm must be a mapping, got {block!r}")
    unknown = sorted(set(block) - set(SLURM_KEYS))
    if unknown:
        raise ValueError(f"stage {stage}: unknown key(s) meta.slurm.{', meta.slurm.'.join(unknown)}; "
                         f"allowed: {', '.join(SLURM_KEYS)}")
    uses_gpu = bool(meta.get("gpu"))
    fields = {}
    for key in ("partition", "account"):
        if key in block:
            fields[key] = _non_empty_str(stage, key, block[key])
    if "runtime" in block:
        runtime = block["runtime"]
        fields["runtime"] = (_non_empty_str(stage, "runtime", runtime) if isinstance(runtime, str)
                             else _positive_int(stage, "runtime", runtime))
    for key in ("mem_mb", "cpus"):
        if key in block:
            fields[key] = _positive_int(stage, key, block[key])
    if "gpus" in block:
        if meta.get("nproc"):
            raise ValueError(f"stage {stage}: meta.slurm.gpus is set, but the stage asks for one GPU per process "
                             f"and reads the process count from {meta['nproc']}: remove meta.slurm.gpus")
        if not uses_gpu:
            raise ValueError(f"stage {stage}: meta.slurm.gpus is set but the stage is not marked meta.gpu: true")
        fields["gpus"] = _positive_int(stage, "gpus", block["gpus"])
    elif uses_gpu:
        fields["gpus"] = 1
    return SlurmRequest(**fields)


def gpus_flag(value) -> bool:
    """Snakemake config ``gpus`` (``--config gpus=true``): whether the cluster has GPUs to hand out."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ValueError(f"config gpus must be true or false, got {value!r}")


def stage_processes(stage: Stage, params_yaml: str | Path = "params.yaml") -> int:
    """How many processes the stage starts (the value of its ``meta.nproc`` key in params.yaml), else 1."""
    if not stage.nproc_param:
        return 1
    value = _param_value(read_yaml(params_yaml), stage.nproc_param)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"stage {stage.name}: {stage.nproc_param} must be a positive integer, got {value!r}")
    return value


def stage_threads(stage: Stage, processes: int = 1) -> int:
    """The rule's threads (``--cpus-per-task``): the stage's ``cpus``, and at least one per process."""
    return max(stage.slurm.cpus, processes)


def snakemake_resources(stage: Stage, *, gpus_available: bool, processes: int = 1) -> dict:
    """Snakemake ``resources`` of a stage's rule, named as the Slurm executor plugin reads them.

    Only what the stage sets is returned, so the profile's ``default-resources`` fill in the rest. GPUs
    are requested only when ``gpus_available``: asking a cluster without GPUs for one leaves the job
    pending forever. A stage with a process count (``meta.nproc``) runs its ``processes`` under
    ``torchrun --standalone`` on one node, each on its own GPU: it asks for one node and ``processes`` GPUs.
    """
    req = stage.slurm
    names = {"partition": "slurm_partition", "account": "slurm_account", "runtime": "runtime",
             "mem_mb": "mem_mb"}
    resources = {names[k]: getattr(req, k) for k in names if getattr(req, k) is not None}
    if stage.nproc_param:
        resources["nodes"] = 1
    if gpus_available and req.gpus:
        resources["gpu"] = processes if stage.nproc_param else req.gpus
    return resources


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


def _check_nproc_param(stage: Stage) -> None:
    key = stage.nproc_param
    if key is None:
        return
    if not isinstance(key, str) or not key.endswith(".nproc"):
        raise ValueError(f"stage {stage.name}: meta.nproc must name a params key ending in .nproc, got {key!r}")
    if not any(key == declared or key.startswith(declared + ".") for declared in stage.params):
        raise ValueError(f"stage {stage.name}: meta.nproc names {key}, which the stage does not declare in params")


PLAN_FILE = "plan.json"  # `python -m realuid.plan --slurm-resources plan.json`, beside dvc.yaml


def planned_requests(plan_json: Path) -> dict:
    """{stage: {runtime, mem_mb, cpus}} from the plan's Slurm requests (:mod:`realuid.plan`), if the file exists."""
    if not plan_json.exists():
        return {}
    try:
        planned = json.loads(plan_json.read_text())["stages"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{plan_json} is not a plan's Slurm requests ({err}): write it again with "
                         f"`python -m realuid.plan --slurm-resources {plan_json.name}`, or remove it") from None
    if not isinstance(planned, dict) or not all(isinstance(v, dict) for v in planned.values()):
        raise ValueError(f"{plan_json}: 'stages' must map each stage to its requests")
    return planned


def load_stages(dvc_yaml: str | Path = "dvc.yaml") -> list[Stage]:
    """The stages of ``dvc.yaml`` in file order. Where a plan's Slurm requests lie beside it
    (:data:`PLAN_FILE`), they replace the stages' ``meta.slurm`` numbers they name."""
    spec = read_yaml(dvc_yaml)
    planned = planned_requests(Path(dvc_yaml).with_name(PLAN_FILE))
    stages = []
    for name, s in spec["stages"].items():
        if "foreach" in s or "matrix" in s:
            raise ValueError(f"stage {name}: foreach/matrix stages are not supported by the Snakefile bridge")
        cmd = s["cmd"] if isinstance(s["cmd"], str) else " && ".join(s["cmd"])
        outs = _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
        meta = dict(s.get("meta") or {})
        if name in planned:
            meta["slurm"] = {**(meta.get("slurm") or {}), **planned[name]}
        stage = Stage(name, " ".join(cmd.split()), _paths(s.get("deps")), outs,
                      _param_keys(s.get("params")), meta)
        stage.slurm  # a bad meta.slurm block fails when the registry is read, not when a job is submitted
        _check_nproc_param(stage)
        stages.append(stage)
    return stages


def param_values(keys: list[str], params_yaml: str | Path = "params.yaml") -> str:
    """The values of ``keys`` in params.yaml as one canonical string.

    Snakemake reruns a job when its ``params`` change, so a rule that carries this string reruns exactly
    when a key it declares changes, like DVC.
    """
    data = read_yaml(params_yaml)
    picked = {key: _param_value(data, key) for key in keys}
    # PyYAML only writes this string (Snakemake's own dependency); its text is kept as it was, so an
    # unchanged value never looks changed to Snakemake.
    return yaml.safe_dump(picked, sort_keys=True, default_flow_style=True).strip()


def _param_value(data: dict, key: str):
    """The value of the dotted ``key`` in the params document ``data``."""
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"dvc.yaml declares param {key!r}, which params.yaml does not have")
        node = node[part]
    return node


def final_outputs(stages: list[Stage]) -> list[str]:
    """Outputs no other stage consumes: the targets of ``rule all``."""
    consumed = {d for s in stages for d in s.deps}
    return [o for s in stages for o in s.outs if o not in consumed]
