"""The pipeline end to end on tiny configs: every stage CLI, DVC and Snakemake on one registry.

A project folder is laid out in a temporary directory (dvc.yaml, Snakefile, workflow/, src/ and a tiny
params.yaml), made a git + DVC repository, and run for real by both engines.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.project import (ROOT, TOY, dvc_changed, dvc_reproduce, make_project, sh, shell_env, snakemake_pending,
                             tiny_params)
from helpers.stages import STAGES, run_stage, stage_argv, stage_named
from helpers.umask import current_umask
from realuid.config import load_params

DOWNSTREAM_OF_ALPHA = {"distill", "finetune", "sample", "evaluate", "report"}


# --------------------------------------------------------------------------------------------------
# Stage CLIs in-process, recording which params each stage reads
# --------------------------------------------------------------------------------------------------


def test_stage_commands_run_the_code_of_the_folder_they_run_in(tmp_path):
    # A queued DVC experiment runs in a copy of the repository: its stages must import the copy's
    # package, not the one the virtual environment's editable install points at.
    prefixes = {stage.cmd.split(" -m ")[0] for stage in STAGES}
    assert prefixes == {"PYTHONPATH=src python"}
    project = make_project(tmp_path / "copy", tiny_params(), git=False)
    env = shell_env(project)
    for prefix, inside in ((prefixes.pop(), True), ("python", False)):
        probe = f"{prefix} -c 'import realuid; print(realuid.__file__)'"
        done = subprocess.run(["sh", "-c", probe], cwd=project, capture_output=True, text=True, env=env)
        # Without the prefix the import finds another copy (the installed one), or none at all.
        imported = Path(done.stdout.strip()).resolve() if done.returncode == 0 else None
        assert (imported is not None and imported.is_relative_to(project.resolve())) == inside, (prefix, done)


def covers(declared: list[str], key: str) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


CONFIGS = {
    "digits-default": tiny_params(),  # the committed default as it stands, in sizes only smaller
    "toy-fm": tiny_params(TOY),
    "digits-fm-conditional": tiny_params(TOY, prepare__source="digits", train_teacher__model__class_cond=True,
                                         evaluate__reference="train", distill__gan__enabled=True,
                                         sample__n_samples=200, evaluate__kid_subset_size=50,
                                         finetune__enabled=True, finetune__steps=2),  # image evaluation in finetune
    "toy-bridge-finetuned": tiny_params(TOY, family__name="bridge", prepare__pairing="noise",
                                        sample__teacher_method="sde", generator__t=0.1, finetune__enabled=True,
                                        finetune__steps=2, distill__keep_best=True, sample__generator_ema="best"),
}


def test_every_stage_cli_runs_and_reads_exactly_its_declared_params(tmp_path, monkeypatch):
    """The committed default (images), points, images with classes and a paired family through every
    stage CLI, as dvc.yaml invokes them.

    A stage may skip a declared key on some data (``features`` on points), so "declared and never
    read" is checked over all configurations together; "read but not declared" on each run.
    """
    read_by_stage = {s.name: set() for s in STAGES}
    for label, params in CONFIGS.items():
        project = make_project(tmp_path / label, params, git=False)
        monkeypatch.chdir(project)
        for stage in STAGES:
            seen = run_stage(stage, monkeypatch)
            undeclared = sorted(k for k in seen if not covers(stage.params, k))
            assert not undeclared, f"{label}: {stage.name} reads params not declared in dvc.yaml: {undeclared}"
            read_by_stage[stage.name] |= seen
            for out in stage.outs:
                assert (project / out).exists(), f"{label}: {stage.name} did not write {out}"
        metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
        for who in ("teacher", "student", "real"):
            assert metrics[who] and all(math.isfinite(v) for v in metrics[who].values()), (label, who)
        assert metrics["student"]["nfe"] == 1 and metrics["teacher"]["nfe"] == params["sample"]["teacher_nfe"]
        if label.startswith("digits"):
            assert {"fid", "kid_mean", "precision", "recall"} <= set(metrics["student"])
            conditional = params["train_teacher"]["model"]["class_cond"]  # a classifier scores the asked-for classes
            assert ("class_accuracy" in metrics["student"]) == conditional
            assert ({f"class_accuracy_{c}" for c in range(10)} <= set(metrics["teacher"])) == conditional
            for who in ("teacher", "student", "real"):  # the classifier's histogram of every model
                masses = [metrics[who][f"class_mass_{c}"] for c in range(10)]
                assert sum(masses) == pytest.approx(1.0) and 0 <= metrics[who]["class_tv"] <= 1
            assert (project / "data/features/extractor.pt").is_file()
            assert any((project / "data/features/reference_cache").iterdir())
        if label == "digits-default":  # the file's own backbone, not the toy file's `auto`
            check_default_teacher(project, params)
        page = (project / "data/report/index.md").read_text()
        assert "one-step student" in page and "![student](student.png)" in page
        assert not list(project.glob("data/.*")), f"{label}: a temporary file or folder was left behind"
        if label == "toy-fm":
            check_samples_do_not_depend_on_batch_size(project, params)
        if label.startswith("toy-bridge"):  # paired data: the pairs are scored too
            assert all("joint_sliced_wasserstein2" in row for who, row in metrics.items() if who != "protocol")
        check_quality_during_training(project, params, metrics, page)
        passed_through = (project / "data/finetune/generator.pt").read_bytes() == (
            project / "data/distill/generator.pt").read_bytes()
        assert passed_through != params["finetune"]["enabled"], label
    for stage in STAGES:
        unread = sorted(d for d in stage.params if not any(covers([d], k) for k in read_by_stage[stage.name]))
        assert not unread, f"{stage.name} declares params it never reads: {unread}"


def check_default_teacher(project: Path, params: dict) -> None:
    from realuid.checkpoints import read_checkpoint

    model = params["train_teacher"]["model"]
    teacher = read_checkpoint(project / "data/train_teacher/teacher.pt", "teacher", needed_by="the test")
    assert model["arch"] == teacher.spec["arch"] == "unet"
    assert teacher.spec["args"]["channel_mult"] == model["channel_mult"]
    assert teacher.meta["step"] == params["train_teacher"]["steps"]


def eval_table(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_quality_during_training(project: Path, params: dict, metrics: dict, page: str) -> None:
    """The evaluation tables, the protocol in metrics.json, and the best copy where it is kept."""
    images = params["prepare"]["source"] == "digits"
    headline = "fid" if images else "sliced_wasserstein2"
    rows = eval_table(project / "data/distill/eval.csv")
    copies = ["raw", *(f"ema_{float(d)!r}" for d in params["distill"]["ema_decays"])]
    steps = list(range(2, params["distill"]["steps"] + 1, 2))
    assert len(steps) >= 5 and [(int(r["step"]), r["copy"]) for r in rows] == [(s, c) for s in steps for c in copies]
    assert list(rows[0])[-1] == headline and all(math.isfinite(float(r[headline])) for r in rows)
    finetuned = eval_table(project / "data/finetune/eval.csv")
    assert bool(finetuned) == params["finetune"]["enabled"]  # a disabled finetune writes the header only
    assert "## Quality during training" in page and (project / "data/report/quality.png").is_file()
    protocol = metrics["protocol"]
    assert protocol["reference_split"] == params["evaluate"]["reference"]
    assert protocol["n_generated"] == params["sample"]["n_samples"]
    assert protocol["sample_seed"] == params["sample"]["seed"] and protocol["evaluate_seed"] == params["evaluate"]["seed"]
    if images:
        assert protocol["extractor"] == "realuid-features" and len(protocol["extractor_weights_sha256"]) == 64
        assert protocol["fid_blocks"] == 1 and metrics["student"]["fid_std"] == 0.0
        assert metrics["student"]["fid_mean"] == metrics["student"]["fid_min"]
        np.testing.assert_allclose(metrics["student"]["fid_mean"], metrics["student"]["fid"], rtol=1e-9)
    if params["distill"]["keep_best"]:
        # The headline is the kept copy; the final copies are scored beside it, and the report says so.
        timing = json.loads((project / "data/sample/timing.json").read_text())
        table = finetuned if params["finetune"]["enabled"] else rows
        lowest = min(table, key=lambda r: float(r[headline]))
        assert timing["student_copy"] == "student_best"
        assert (timing["best"]["copy"], timing["best"]["step"]) == (lowest["copy"], int(lowest["step"]))
        assert metrics["student"][headline] == metrics["student_best"][headline] and "student_ema_0_999" in metrics
        assert "optimistic" in page and f"best `{lowest['copy']}` at step {lowest['step']}" in page


def check_samples_do_not_depend_on_batch_size(project: Path, params: dict) -> None:
    """Per-seed noise: sample i is the same whatever the batch split."""
    from realuid.data import read_split

    other = copy.deepcopy(params)
    other["sample"]["batch_size"] = 70
    (project / "params_b.yaml").write_text(yaml.safe_dump(other))
    argv = stage_argv(stage_named("sample"))
    argv[argv.index("--params") + 1] = "params_b.yaml"
    argv[argv.index("--out") + 1] = "data/sample_b"
    assert importlib.import_module("realuid.stages.sample").cli(argv) == 0
    for who in ("teacher", "student"):
        a, b = (read_split(project / folder / f"{who}.h5").x1 for folder in ("data/sample", "data/sample_b"))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=who)
    shutil.rmtree(project / "data/sample_b")

    # A copy the generator does not have (params changed, distill not rerun) is a clear error, no output.
    other["distill"]["ema_decays"], other["sample"]["generator_ema"] = [0.5], "0.5"
    (project / "params_b.yaml").write_text(yaml.safe_dump(other))
    assert importlib.import_module("realuid.stages.sample").cli(argv) == 1
    assert not (project / "data/sample_b").exists()


# --------------------------------------------------------------------------------------------------
# Bad input: a clear message and no output
# --------------------------------------------------------------------------------------------------


def test_unknown_param_key_stops_before_any_work(tmp_path, monkeypatch, capsys):
    params = tiny_params()
    params["distill"]["learning_rate"] = 0.1
    project = make_project(tmp_path, params, git=False)
    monkeypatch.chdir(project)
    code = importlib.import_module("realuid.stages.prepare").cli(["--out", "data/prepare"])
    assert code == 1
    assert "unknown key distill.learning_rate" in capsys.readouterr().err
    assert not (project / "data").exists()


def test_corrupted_hdf5_is_a_clear_error_without_output(tmp_path, monkeypatch, capsys):
    project = make_project(tmp_path, tiny_params(TOY), git=False)
    monkeypatch.chdir(project)
    run_stage(stage_named("prepare"), monkeypatch)
    path = project / "data/prepare/train.h5"
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    argv = stage_argv(stage_named("train_teacher"))
    assert importlib.import_module("realuid.stages.train_teacher").cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "train.h5" in err and "Traceback" not in err
    assert not (project / "data/train_teacher").exists()


def test_in_training_evaluation_the_data_cannot_score_stops_before_any_work(tmp_path, monkeypatch, capsys):
    project = make_project(tmp_path, tiny_params(TOY), git=False)
    monkeypatch.chdir(project)
    run_stage(stage_named("prepare"), monkeypatch)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(TOY, distill__eval_samples=1001)))  # 1000 points
    assert importlib.import_module("realuid.stages.distill").cli(stage_argv(stage_named("distill"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: distill.eval_samples 1001 exceeds the 1000 training points") and err.count("\n") == 1
    assert not (project / "data/distill").exists() and not (project / "state").exists()


def test_bridge_on_unpaired_data_is_refused(tmp_path, monkeypatch, capsys):
    project = make_project(tmp_path, tiny_params(TOY), git=False)
    monkeypatch.chdir(project)
    run_stage(stage_named("prepare"), monkeypatch)
    params = tiny_params(TOY, family__name="bridge", prepare__pairing="noise", sample__teacher_method="sde")
    (project / "params.yaml").write_text(yaml.safe_dump(params))  # data still unpaired: prepare not rerun
    argv = stage_argv(stage_named("train_teacher"))
    assert importlib.import_module("realuid.stages.train_teacher").cli(argv) == 1
    assert "needs paired data" in capsys.readouterr().err
    assert not (project / "data/train_teacher").exists()


# --------------------------------------------------------------------------------------------------
# Both engines on one graph
# --------------------------------------------------------------------------------------------------


def dvc_edges(project) -> set:
    dot = sh(project, "dvc", "dag", "--dot").stdout
    return set(re.findall(r'"(\w+)" -> "(\w+)"', dot))


def snakemake_edges(project) -> set:
    dot = sh(project, "snakemake", "--rulegraph", "dot").stdout
    labels = dict(re.findall(r'(\d+)\[label = "(\w+)"', dot))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dot)}
    return {(a, b) for a, b in edges if "all" not in (a, b)}


def set_alpha(project, value):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["alpha"] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_and_snakemake_share_one_dag_and_rerun_the_same_stages(tmp_path):
    project = make_project(tmp_path / "project", tiny_params(TOY))

    # One registry, one graph.
    expected = {(s.name, t.name) for t in STAGES for s in STAGES if any(o in t.deps for o in s.outs)}
    assert dvc_edges(project) == expected
    assert snakemake_edges(project) == expected

    # DVC: a full run, then nothing to do.
    sh(project, "dvc", "repro")
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert all(math.isfinite(v) for row in ("teacher", "student") for v in metrics[row].values())
    assert dvc_reproduce(project) == set()
    assert dvc_changed(project) == set()

    # The in-training evaluation table is a DVC plot: one line of the headline metric per generator copy.
    shown = json.loads(sh(project, "dvc", "plots", "show", "--json").stdout)
    assert "errors" not in shown, shown["errors"]
    (plot,) = shown["data"]["data/distill/eval.csv"]
    encoding = plot["content"]["encoding"]
    assert encoding["x"]["field"] == "step" and encoding["y"]["field"] == "sliced_wasserstein2"
    values = plot["content"]["data"]["values"]
    assert {v["copy"] for v in values} == {"raw", "ema_0.99", "ema_0.999"} and len(values) == 15
    assert shown["data"]["data/finetune/eval.csv"] == [] or not shown["data"]["data/finetune/eval.csv"][0]["content"]["data"]["values"]

    # Changing alpha reruns exactly distill and what follows.
    set_alpha(project, 0.9)
    assert dvc_changed(project) == {"distill", "report"}  # the stages that declare alpha
    assert dvc_reproduce(project) == DOWNSTREAM_OF_ALPHA
    set_alpha(project, tiny_params(TOY)["alpha"])
    assert dvc_reproduce(project) == DOWNSTREAM_OF_ALPHA  # back to the first results (DVC's run cache)
    assert dvc_reproduce(project) == set()

    # Snakemake: a full run on the same rules, adopted by DVC with `dvc commit`.
    before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    sh(project, "snakemake", "--cores", "2", "--max-threads", "1", "--forceall", "--quiet")  # DVC runs use 1 thread too
    assert (project / "logs" / "distill.log").is_file()
    assert snakemake_pending(project) == set()
    set_alpha(project, 0.9)
    assert snakemake_pending(project) == DOWNSTREAM_OF_ALPHA
    set_alpha(project, tiny_params(TOY)["alpha"])
    assert snakemake_pending(project) == set()
    sh(project, "dvc", "commit", "--force")
    assert dvc_changed(project) == set()
    # The training stages are bit-reproducible: both engines produced byte-identical artifacts.
    after = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for name in ("prepare", "features", "train_teacher", "distill"):
        assert after[name]["outs"] == before[name]["outs"], name


def test_snakemake_targets_a_stage_by_name(tmp_path):
    project = make_project(tmp_path / "project", tiny_params(TOY))
    sh(project, "snakemake", "train_teacher", "--cores", "2")
    assert (project / "data/train_teacher/teacher.pt").is_file()
    assert not (project / "data/distill").exists()


def test_dvc_repro_runs_the_committed_default_on_images(tmp_path):
    """The committed params.yaml (digits, UNet teacher), in sizes only smaller, under ``dvc repro``."""
    from PIL import Image

    from realuid.data import read_split
    from realuid.stages.sample import GRID_IMAGES

    params = tiny_params(features__steps=5, train_teacher__steps=4, train_teacher__checkpoint_every_steps=4,
                         distill__steps=2, distill__eval_samples=50, sample__n_samples=100, sample__batch_size=100,
                         sample__teacher_nfe=2, evaluate__kid_subset_size=50)
    assert params["prepare"]["source"] == "digits" and params["train_teacher"]["model"]["arch"] == "unet"
    project = make_project(tmp_path / "project", params)
    assert dvc_reproduce(project) == {s.name for s in STAGES}
    assert dvc_changed(project) == set()
    check_modes_follow_the_umask(project)
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    for who in ("teacher", "student"):
        assert math.isfinite(metrics[who]["fid"]) and metrics[who]["fid"] >= 0, who
    assert metrics["student"]["nfe"] == 1 and metrics["protocol"]["extractor"] == "realuid-features"
    check_default_teacher(project, params)
    # The report shows grids of sample images (100 digits, 10 to a row, each pixel 4 x 4), not scatter plots.
    page = (project / "data/report/index.md").read_text()
    assert "![teacher](teacher.png)" in page and "![student](student.png)" in page
    channels, height, width = read_split(project / "data/prepare/test.h5").sample_shape
    rows = -(-min(GRID_IMAGES, params["sample"]["n_samples"]) // 10)
    for who in ("teacher", "student"):
        with Image.open(project / f"data/report/{who}.png") as picture:
            assert picture.mode == ("L" if channels == 1 else "RGB"), who
            assert picture.size == (4 * (10 * (width + 1) + 1), 4 * (rows * (height + 1) + 1)), who


def check_modes_follow_the_umask(project: Path) -> None:
    """Every artifact and state file has the mode a plain ``open()`` (folders: ``mkdir``) gives under the
    umask: on a shared file system colleagues read the checkpoints as they read the data."""
    umask = current_umask()
    paths = [p for folder in ("data", "state") for p in (project / folder).rglob("*")]
    assert {"teacher.pt", "generator.pt", "checkpoint.pt", "train.h5", "metrics.json", "student.png"} <= {p.name for p in paths}
    wrong = {str(p.relative_to(project)): oct(p.stat().st_mode & 0o777) for p in paths
             if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask}
    assert not wrong, f"umask {umask:03o}: {wrong}"


# Keys the toy flow-matching configuration does not use: other families' options and generator
# placements, a file source's settings, the pairing strength without pairing, the UNet's shape on points,
# the EMA of an import that is off, the GAN's coefficients with the GAN off.
UNUSED_ON_TOY_FM = {
    "family__schedule": "ve", "family__prediction": "x1", "family__interpolant": "trig", "family__sigma": 0.3,
    "generator__sigma": 1.5, "generator__t": 0.2,
    "prepare__path": "elsewhere.npz", "prepare__pairing_strength": 0.9, "prepare__normalize": True,
    "prepare__test_fraction": 0.3, "prepare__download": True,
    "train_teacher__model__channels": 64, "train_teacher__model__channel_mult": [1, 2, 2],
    "train_teacher__model__num_res_blocks": 2, "train_teacher__model__attention_resolutions": "4",
    "train_teacher__model__num_heads": 2, "train_teacher__import_ema": "none",
    "distill__gan__gen_coef": 1.0, "distill__gan__disc_coef": 3.0,
}
TRAINED = ("data/prepare/train.h5", "data/prepare/test.h5", "data/train_teacher/teacher.pt", "data/distill/generator.pt")


def digests(project: Path) -> dict:
    import hashlib

    return {name: hashlib.sha256((project / name).read_bytes()).hexdigest() for name in TRAINED}


def state_folders(project: Path) -> list[str]:
    """The resumable runs on disk: a new one means something trained afresh."""
    return sorted(p.relative_to(project).as_posix() for p in (project / "state").glob("*/*") if p.is_dir())


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def finished_toy(tmp_path_factory) -> Path:
    """The 2-D default at a tiny size after a full `dvc repro`; tests take a copy (:func:`copy_of`)."""
    project = make_project(tmp_path_factory.mktemp("finished") / "project", tiny_params(TOY))
    sh(project, "dvc", "repro")
    return project


def copy_of(project: Path, folder: Path) -> Path:
    """A copy of a finished project (git, DVC cache, outputs, states and its own src/) to edit freely."""
    return Path(shutil.copytree(project, folder / "project", symlinks=True))


@pytest.mark.slow  # three tiny pipeline runs after the shared one: about two minutes on 2 cores
def test_keys_the_configuration_does_not_use_retrain_nothing(finished_toy, tmp_path):
    project = copy_of(finished_toy, tmp_path)
    assert dvc_changed(project) == set()  # the copy is the finished run
    trained, states = digests(project), state_folders(project)
    assert len(states) == 2  # the teacher's and the distillation's

    write_params(project, tiny_params(TOY, **UNUSED_ON_TOY_FM))
    sh(project, "dvc", "repro")  # the stages that declare these keys rerun, from their finished states
    assert digests(project) == trained and state_folders(project) == states

    # Snakemake records each rule's params on a run, then reruns the rules whose params changed.
    sh(project, "snakemake", "--cores", "2", "--max-threads", "1", "--forceall", "--quiet")
    write_params(project, tiny_params(TOY))
    assert "train_teacher" in snakemake_pending(project)
    sh(project, "snakemake", "--cores", "2", "--max-threads", "1", "--quiet")
    assert digests(project) == trained and state_folders(project) == states


def test_state_names_hash_only_the_settings_in_effect():
    from realuid.config import in_effect

    params = load_params(ROOT / "params.yaml")
    d, t = params.distill, params.train_teacher
    assert not d.gan.enabled
    same = in_effect
    assert same(dataclasses.replace(d, gan=dataclasses.replace(d.gan, gen_coef=99.0))) == same(d)
    on = dataclasses.replace(d, gan=dataclasses.replace(d.gan, enabled=True))
    assert same(dataclasses.replace(on, gan=dataclasses.replace(on.gan, gen_coef=99.0))) != same(on)
    off = dataclasses.replace(d, eval_every_steps=0)
    assert same(dataclasses.replace(off, eval_samples=7)) == same(off)
    assert same(dataclasses.replace(d, eval_samples=7)) != same(d)
    # The teacher's network is named by its spec (hashed beside these settings), an import keeps no state.
    assert same(dataclasses.replace(t, model=dataclasses.replace(t.model, channels=64), import_ema="none")) == same(t)
    assert same(dataclasses.replace(t, steps=t.steps + 1)) != same(t)


@pytest.mark.slow  # the stages after the teacher, once per edit: about half a minute each on 2 cores
@pytest.mark.parametrize("module", [
    "in_training_eval.py",  # run by distill and finetune only
    # The teacher loop imports nothing of the distillation (realuid.training's modules), so an edit of
    # the GAN head (off in this config, but code the distillation runs) leaves the teacher's stage alone.
    "gan.py",
])
def test_editing_code_the_distillation_runs_reruns_it_and_nothing_upstream(finished_toy, tmp_path, module):
    project = copy_of(finished_toy, tmp_path)  # its own copy of src/: the edit stays there
    teacher_states = sorted(p.name for p in (project / "state/train_teacher").iterdir())
    distill_states = sorted(p.name for p in (project / "state/distill").iterdir())
    with open(project / "src/realuid" / module, "a") as fh:
        fh.write("\n# an edit\n")
    assert dvc_changed(project) == {"distill", "finetune"}
    rerun = dvc_reproduce(project)
    assert "distill" in rerun and rerun <= DOWNSTREAM_OF_ALPHA
    assert not rerun & {"prepare", "features", "train_teacher"}
    # A finished state of the older code is not published again: distill trained afresh, the teacher did not.
    assert sorted(p.name for p in (project / "state/train_teacher").iterdir()) == teacher_states
    assert len(list((project / "state/distill").iterdir())) == len(distill_states) + 1


@pytest.mark.slow  # one tiny pipeline run: about half a minute on 2 cores
def test_a_two_step_student_is_sampled_scored_and_reported_at_each_nfe(tmp_path, monkeypatch):
    from realuid.api import load_generator
    from realuid.data import read_split

    params = tiny_params(TOY, distill__generator_steps=2, distill__generator_times=[0.5])
    assert params["sample"]["generator_steps"] == []  # every step count from 1 to the trained k
    project = make_project(tmp_path / "project", params, git=False)
    monkeypatch.chdir(project)
    for stage in STAGES:
        run_stage(stage, monkeypatch)
    samples = project / "data/sample"
    copies = ["student_raw", *(f"student_ema_{d}".replace(".", "_") for d in params["distill"]["ema_decays"])]
    assert {p.stem for p in samples.glob("*.h5")} == {"teacher", "student", "student_nfe2", *copies,
                                                      *(f"{c}_nfe2" for c in copies)}
    # The files are the library's samples: Generator.sample at the stage's seed and batch size, bit for bit.
    cfg = params["sample"]
    generator = load_generator(project / "data/finetune/generator.pt", ema=cfg["generator_ema"])
    assert generator.steps == 2
    for steps, row in ((1, "student"), (2, "student_nfe2")):
        drawn = generator.sample(cfg["n_samples"], steps=steps, seed=cfg["seed"], batch_size=cfg["batch_size"])
        assert np.array_equal(read_split(samples / f"{row}.h5").x1, drawn.numpy()), row
    assert not np.array_equal(read_split(samples / "student.h5").x1, read_split(samples / "student_nfe2.h5").x1)

    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert metrics["student"]["nfe"] == 1 and "nfe" not in metrics["student_raw"]  # the one-step rows as before
    for row in ("student_nfe2", "student_raw_nfe2"):
        assert metrics[row]["nfe"] == 2 and math.isfinite(metrics[row]["sliced_wasserstein2"]), row
    assert metrics["student_nfe2"]["sliced_wasserstein2"] == metrics["student_ema_0_999_nfe2"]["sliced_wasserstein2"]

    page = (project / "data/report/index.md").read_text()
    assert "## Quality against NFE" in page and (project / "data/report/nfe.png").is_file()
    assert f"| student | 2 | {metrics['student_nfe2']['sliced_wasserstein2']:.4g} |" in page
    assert "![student_nfe2](student_nfe2.png)" in page and (project / "data/report/student_nfe2.png").is_file()
    assert "| student copy `raw`, 2 steps |" in page
