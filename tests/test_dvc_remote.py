"""Sharing artifacts through a DVC remote: push from one checkout, lose everything local, pull it back.

A local folder stands in for the remote (S3, SSH, ... behave the same for DVC). After the pull the
pipeline is up to date without rerunning anything, and evaluating the pulled samples again gives
byte-identical metrics, so the pulled files are the ones that were pushed.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from helpers.project import TOY, dvc_changed, dvc_reproduce, make_project, sh, tiny_params

pytestmark = pytest.mark.slow  # a full tiny pipeline run: about a minute on 2 cores

METRICS = "data/evaluate/metrics.json"


def cached_outputs(project) -> list[str]:
    """Outputs that DVC keeps in its cache (and so pushes); ``cache: false`` metrics stay with git."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sorted({out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])
                   if out["path"] != METRICS})


def test_push_delete_pull_restores_the_pipeline_exactly(tmp_path):
    project = make_project(tmp_path / "project", tiny_params(TOY))
    remote = tmp_path / "remote"
    sh(project, "dvc", "remote", "add", "--default", "shared", str(remote))
    sh(project, "dvc", "repro")
    metrics_before = (project / METRICS).read_bytes()
    outputs = cached_outputs(project)
    assert {"data/prepare", "data/train_teacher", "data/distill", "data/sample"} <= set(outputs)

    sh(project, "dvc", "push")
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push wrote nothing to the remote"

    shutil.rmtree(project / ".dvc" / "cache")
    for out in outputs:
        shutil.rmtree(project / out) if (project / out).is_dir() else (project / out).unlink()
    assert dvc_changed(project), "dvc status did not notice the deleted outputs"

    sh(project, "dvc", "pull")
    for out in outputs:
        assert (project / out).exists(), f"dvc pull did not restore {out}"
    assert dvc_changed(project) == set()
    assert dvc_reproduce(project) == set()

    # Recompute the metrics from the pulled data and samples: identical bytes.
    sh(project, "dvc", "repro", "--force", "--single-item", "evaluate")
    assert (project / METRICS).read_bytes() == metrics_before
    assert json.loads(metrics_before)["student"]["nfe"] == 1
    assert dvc_changed(project) == set()


def test_pull_from_an_empty_remote_fails_clearly(tmp_path):
    project = make_project(tmp_path / "project", tiny_params(TOY))
    sh(project, "dvc", "remote", "add", "--default", "shared", str(tmp_path / "empty-remote"))
    sh(project, "dvc", "repro", "prepare")
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "prepare")
    result = sh(project, "dvc", "pull", check=False)
    assert result.returncode != 0
    assert "missing" in (result.stdout + result.stderr).lower()
    assert not (project / "data" / "prepare").exists()
