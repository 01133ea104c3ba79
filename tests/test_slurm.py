"""Snakemake on Slurm: per-stage cluster requests from dvc.yaml, the profile, and a real local cluster.

The last test starts a real single-node Slurm (munged, slurmctld, slurmd through
workflow/slurm/start-local-slurm.sh), runs the tiny pipeline with `snakemake --executor slurm` and the
project's profile, and lets DVC adopt the results. Where Slurm cannot be started it is skipped with the
reason shown in the warnings summary; with REALUID_REQUIRE_SLURM=1 (CI) it fails instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from helpers.project import TOY, dvc_changed, make_project, sh, snakemake_pending, tiny_params

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
from registry import (SlurmRequest, gpus_flag, load_stages, slurm_request, snakemake_resources,  # noqa: E402
                      stage_processes, stage_threads)

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
START = ROOT / "workflow" / "slurm" / "start-local-slurm.sh"
STOP = ROOT / "workflow" / "slurm" / "stop-local-slurm.sh"
SLURM_STATE = Path("/tmp/realuid-slurm")


# --------------------------------------------------------------------------------------------------
# dvc.yaml `meta: slurm:` → requests
# --------------------------------------------------------------------------------------------------


def test_stage_without_slurm_block_asks_for_one_cpu_and_profile_defaults():
    assert slurm_request("prepare", {}) == SlurmRequest(cpus=1, gpus=0)
    assert slurm_request("prepare", {"slurm": None}) == SlurmRequest()


def test_gpu_stage_asks_for_one_gpu_unless_told_otherwise():
    assert slurm_request("distill", {"gpu": True}).gpus == 1
    assert slurm_request("distill", {"gpu": True, "slurm": {"gpus": 4}}).gpus == 4


def test_full_slurm_block_is_read():
    meta = {"gpu": True, "slurm": {"partition": " gpu ", "account": "lab", "runtime": "2h30m",
                                   "mem_mb": 32000, "cpus": 8, "gpus": 2}}
    assert slurm_request("distill", meta) == SlurmRequest("gpu", "lab", "2h30m", 32000, 8, 2)
    assert slurm_request("distill", {"slurm": {"runtime": 90}}).runtime == 90


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"slurm": {"memory": 100}}, "unknown key(s) meta.slurm.memory"),
        ({"slurm": ["gpu"]}, "meta.slurm must be a mapping"),
        ({"slurm": {"mem_mb": "4G"}}, "meta.slurm.mem_mb must be a positive integer"),
        ({"slurm": {"cpus": 0}}, "meta.slurm.cpus must be a positive integer"),
        ({"slurm": {"cpus": True}}, "meta.slurm.cpus must be a positive integer"),
        ({"slurm": {"runtime": -5}}, "meta.slurm.runtime must be a positive integer"),
        ({"slurm": {"runtime": " "}}, "meta.slurm.runtime must be a non-empty string"),
        ({"slurm": {"partition": 3}}, "meta.slurm.partition must be a non-empty string"),
        ({"slurm": {"gpus": 1}}, "not marked meta.gpu: true"),
        ({"gpu": True, "slurm": {"gpus": 0}}, "meta.slurm.gpus must be a positive integer"),
        ({"gpu": True, "nproc": "distill.nproc", "slurm": {"gpus": 2}}, "from distill.nproc: remove meta.slurm.gpus"),
    ],
)
def test_bad_slurm_block_is_a_clear_error(meta, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        slurm_request("distill", meta)
    assert "stage distill" in str(err.value)


def test_bad_slurm_block_fails_when_the_registry_is_read(tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["prepare"]["meta"] = {"slurm": {"mem": 1}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="stage prepare: unknown key"):
        load_stages(tmp_path / "dvc.yaml")


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (1, True), (0, False),
                                             ("true", True), ("Yes", True), ("0", False), (" no ", False)])
def test_gpus_flag_reads_config_spellings(value, expected):
    assert gpus_flag(value) is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, 1.0])
def test_gpus_flag_refuses_anything_else(value):
    with pytest.raises(ValueError, match="config gpus must be true or false"):
        gpus_flag(value)


def test_resources_carry_only_what_the_stage_sets_and_gpus_only_where_available():
    stage = next(s for s in load_stages(ROOT / "dvc.yaml") if s.name == "distill")
    stage = type(stage)(**{**stage.__dict__, "meta": {"gpu": True, "slurm": {
        "partition": "gpu", "account": "lab", "runtime": 90, "mem_mb": 8000, "gpus": 2}}})
    expected = {"slurm_partition": "gpu", "slurm_account": "lab", "runtime": 90, "mem_mb": 8000}
    assert snakemake_resources(stage, gpus_available=False) == expected
    assert snakemake_resources(stage, gpus_available=True) == {**expected, "gpu": 2}
    bare = type(stage)(**{**stage.__dict__, "meta": {}})
    assert snakemake_resources(bare, gpus_available=True) == {}


def test_a_stage_with_a_process_count_asks_for_one_gpu_per_process_on_one_node():
    stage = next(s for s in load_stages(ROOT / "dvc.yaml") if s.name == "distill")
    assert stage.nproc_param == "distill.nproc" and stage.slurm.cpus == 8
    assert snakemake_resources(stage, gpus_available=True, processes=4)["gpu"] == 4
    assert snakemake_resources(stage, gpus_available=True, processes=4)["nodes"] == 1
    assert "gpu" not in snakemake_resources(stage, gpus_available=False, processes=4)
    # Each process gets at least one core (gloo on a CPU cluster): cpus rises to the process count.
    assert stage_threads(stage, 1) == 8 and stage_threads(stage, 16) == 16


def test_process_count_is_read_from_params(tmp_path):
    stage = next(s for s in load_stages(ROOT / "dvc.yaml") if s.name == "evaluate")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for value, expected in ((1, 1), (3, 3)):
        params["evaluate"]["nproc"] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        assert stage_processes(stage, tmp_path / "params.yaml") == expected
    params["evaluate"]["nproc"] = "two"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="evaluate.nproc must be a positive integer"):
        stage_processes(stage, tmp_path / "params.yaml")
    report = next(s for s in load_stages(ROOT / "dvc.yaml") if s.name == "report")
    assert stage_processes(report, tmp_path / "params.yaml") == 1


@pytest.mark.parametrize("stage, nproc, message", [
    ("distill", "distill.batch_size", "must name a params key ending in .nproc"),
    ("distill", "sample.nproc", "which the stage does not declare in params"),
])
def test_bad_process_count_key_fails_when_the_registry_is_read(tmp_path, stage, nproc, message):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"][stage]["meta"]["nproc"] = nproc
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_stages(tmp_path / "dvc.yaml")


def test_repository_registry_asks_for_gpus_exactly_on_its_gpu_stages():
    stages = load_stages(ROOT / "dvc.yaml")
    assert {"train_teacher", "distill", "sample", "evaluate"} <= {s.name for s in stages if s.uses_gpu}
    assert {s.name for s in stages if s.slurm.gpus} == {s.name for s in stages if s.uses_gpu}
    # Every stage that starts processes takes their number from params, and asks for that many GPUs.
    assert {s.name for s in stages if s.nproc_param} == {s.name for s in stages if s.uses_gpu}
    assert all(s.slurm.cpus >= 1 for s in stages)


# --------------------------------------------------------------------------------------------------
# The profile and the generated rules
# --------------------------------------------------------------------------------------------------


def test_profile_uses_the_slurm_executor_and_no_gpus_by_default():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert {"runtime", "mem_mb"} <= set(profile["default-resources"])
    assert profile["config"] == ["gpus=false"]


def set_slurm_blocks(project, **blocks):
    """Replace every stage's ``meta.slurm`` in the project's dvc.yaml: ``blocks`` for the named stages,
    none for the others (the repository's own requests are sized for real data, not for this machine)."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        meta = stage.setdefault("meta", {})
        meta.pop("slurm", None)
        if name in blocks:
            meta["slurm"] = blocks[name]
    (project / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def dry_run_requests(project, *extra: str) -> dict:
    """Per rule: the ``resources:`` and ``threads:`` lines of a dry run."""
    out = sh(project, "snakemake", "--dry-run", *extra).stdout
    requests = {}
    for block in re.split(r"^rule ", out, flags=re.M)[1:]:
        name = block.split(":", 1)[0]
        resources = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.M)
        fields = dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {}
        fields["threads"] = int(threads.group(1)) if threads else 1
        requests[name] = fields
    return requests


def test_dry_run_shows_per_stage_requests_and_cluster_gpus_only_with_the_flag(tmp_path):
    params = tiny_params(TOY)
    params["distill"]["nproc"] = 2
    project = make_project(tmp_path / "project", params, git=False)
    set_slurm_blocks(project, distill={"partition": "gpu", "runtime": 90, "mem_mb": 8000, "cpus": 2})

    local = dry_run_requests(project, "--cores", "2")
    assert local["distill"]["threads"] == 2
    assert local["distill"]["slurm_partition"] == "gpu" and local["distill"]["runtime"] == "90"
    # On a workstation GPU stages carry a `gpu` resource (`--resources gpu=1` serialises them).
    assert {name for name, r in local.items() if "gpu" in r} == {s.name for s in load_stages(project / "dvc.yaml")
                                                                  if s.uses_gpu}

    on_cluster = dry_run_requests(project, "--profile", "workflow/profiles/slurm")
    assert on_cluster["distill"]["mem_mb"] == "8000" and on_cluster["prepare"]["mem_mb"] == "4000"
    assert on_cluster["prepare"]["runtime"] == "60"  # the profile's default
    assert not any("gpu" in r for r in on_cluster.values())

    with_gpus = dry_run_requests(project, "--profile", "workflow/profiles/slurm", "--config", "gpus=true")
    # One GPU per process: distill.nproc = 2 (finetune reads the same key), the other stages 1.
    expected = {s.name: "1" for s in load_stages(project / "dvc.yaml") if s.uses_gpu}
    expected.update(distill="2", finetune="2")
    assert {name: r["gpu"] for name, r in with_gpus.items() if "gpu" in r} == expected
    assert with_gpus["distill"]["nodes"] == "1" and "nodes" not in with_gpus["report"]


def test_start_script_reports_missing_slurm_with_its_own_exit_status(tmp_path):
    bin_dir = tmp_path / "bin"  # only the shell tools the script needs before it looks for Slurm
    bin_dir.mkdir()
    for tool in ("mkdir", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(["/bin/bash", str(START), str(tmp_path / "state")], capture_output=True,
                            text=True, env={"PATH": str(bin_dir)})
    assert result.returncode == 3, result.stderr
    assert "is not installed (run workflow/slurm/install-debian.sh)" in result.stderr


# --------------------------------------------------------------------------------------------------
# A real single-node cluster
# --------------------------------------------------------------------------------------------------


def cannot_use_slurm(reason: str):
    """Skip with the reason visible in the summary, or fail where Slurm is required (CI)."""
    if os.environ.get("REALUID_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm is required here (REALUID_REQUIRE_SLURM=1) but {reason}")
    warnings.warn(f"Slurm test skipped: {reason}", pytest.PytestWarning, stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def local_slurm():
    """A running single-node cluster; stopped afterwards only if this fixture started it."""
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        cannot_use_slurm("slurmctld is not installed (workflow/slurm/install-debian.sh installs it)")
    if os.geteuid() != 0:
        cannot_use_slurm("starting slurmd needs root")
    was_running = (SLURM_STATE / "slurmctld.pid").exists() and (SLURM_STATE / "slurmd.pid").exists()
    started = subprocess.run(["bash", str(START), str(SLURM_STATE)], capture_output=True, text=True,
                             timeout=120)
    if started.returncode != 0:
        cannot_use_slurm(f"the local cluster did not start (exit {started.returncode}):\n{started.stderr}")
    yield SLURM_STATE
    if not was_running:
        subprocess.run(["bash", str(STOP), str(SLURM_STATE)], check=False, timeout=60)


def submitted_jobs(log: str) -> dict:
    """Rule name → Slurm job id, from the submission lines Snakemake prints."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log)
    return {rule: job for job, rule in found}


def slurm_accounts_of(job_ids) -> dict:
    """Job id → (state, CPUs, time limit) while slurmctld still remembers the job (MinJobAge)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--jobs=" + ",".join(job_ids),
                          "--format=%i %T %C %l"], capture_output=True, text=True, check=True).stdout
    return {job: (state, int(cpus), limit) for job, state, cpus, limit in (l.split() for l in out.splitlines())}


@pytest.mark.slow  # about three minutes: the plugin polls squeue at growing intervals
def test_pipeline_runs_as_slurm_jobs_and_dvc_adopts_the_results(local_slurm, tmp_path):
    project = make_project(tmp_path / "project", tiny_params(TOY))
    distill_cpus = min(2, os.cpu_count() or 1)
    set_slurm_blocks(project, distill={"cpus": distill_cpus, "runtime": 7})

    # The profile as users run it; squeue because this cluster keeps no accounting database, and a short
    # first status check because the tiny stages finish in seconds.
    run = sh(project, "snakemake", "--profile", "workflow/profiles/slurm",
             "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
             "--default-resources", "mem_mb=1000", "runtime=10", "--jobs", "2", "--latency-wait", "5")
    log = run.stdout + run.stderr

    jobs = submitted_jobs(log)
    assert set(jobs) == {s.name for s in load_stages(project / "dvc.yaml")}, log
    accounts = slurm_accounts_of(jobs.values())
    assert {accounts[j][0] for j in jobs.values()} == {"COMPLETED"}
    assert accounts[jobs["distill"]][1:] == (distill_cpus, "7:00")  # from dvc.yaml meta.slurm
    assert accounts[jobs["prepare"]][1:] == (1, "10:00")  # from the default resources

    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert all(math.isfinite(v) for row in ("teacher", "student") for v in metrics[row].values())
    assert (project / "data/report/index.md").is_file()
    assert snakemake_pending(project) == set()

    sh(project, "dvc", "commit", "--force")
    assert dvc_changed(project) == set()
