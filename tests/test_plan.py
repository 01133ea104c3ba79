"""The plan before the run (realuid.plan): FLOP counts against hand counts, the JSON's shape, errors, the
registry reading the plan's Slurm requests, and (slow) the projection against a measured `dvc repro`."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from helpers.project import TOY, make_project, sh, tiny_params
from realuid.config import load_params
from realuid.matching import make_family
from realuid.models import build_model, model_spec
from realuid.plan import cli, count_flops, make_plan, measure_loop
from realuid.sampling import OneStepGenerator
from realuid.training.batches import TrainData
from realuid.training.distillation import distill

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
from registry import PLAN_FILE, load_stages  # noqa: E402


def test_flops_of_an_mlp_are_its_matrix_products_counted_by_hand():
    batch, d_in, hidden, d_out = 16, 3, 40, 5
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    x = torch.randn(batch, d_in)  # no gradient: the first layer's input gradient is never formed
    forward = 2 * batch * (d_in * hidden + hidden * d_out)
    assert count_flops(lambda: net(x)) == forward
    # backward: every weight gradient (as many FLOPs as the forward) and the second layer's input gradient
    backward = forward + 2 * batch * hidden * d_out
    assert count_flops(lambda: net(x).sum().backward()) == forward + backward


def toy_distillation(tmp_path: Path, **changes):
    """A tiny RealUID setting on 2-D points: (family, data, teacher, spec, distill cfg, params)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(TOY)))
    params = load_params(tmp_path / "params.yaml")
    family = make_family("fm")
    spec = model_spec(params.train_teacher.model, (2,), 0)
    torch.manual_seed(0)
    teacher = build_model(spec)
    data = TrainData(torch.randn(256, 2))
    return family, data, teacher, spec, dataclasses.replace(params.distill, eval_every_steps=0, **changes), params


def test_a_realuid_iteration_counts_its_fake_updates_and_generator_update(tmp_path):
    family, data, teacher, spec, cfg, params = toy_distillation(tmp_path, fake_updates_per_generator_update=2)
    assert (params.alpha, params.beta) != (1, 1)  # the fake step sees generated and real samples together
    measured = measure_loop(lambda n: distill(family, data, teacher, spec, cfg, tmp_path / "state", alpha=params.alpha,
                                              beta=params.beta, progress=False, stop_after=n),
                            torch.device("cpu"), steps=1)

    # The same phases written out by hand on copies of the networks, at the same batch.
    b = cfg.batch_size
    generator = OneStepGenerator(family, copy.deepcopy(teacher).requires_grad_(True))
    fake = copy.deepcopy(teacher).requires_grad_(True)
    t, z = torch.rand(b), torch.randn(b, 2)

    def fake_step():
        with torch.no_grad():
            x1 = generator(z, None, None)  # the generator only samples here
        # one forward over [generated; real] and the fake model's backward (its weights)
        fake(t.repeat(2), torch.cat([x1, torch.randn(b, 2)])).sum().backward()

    def generator_step():
        fake.requires_grad_(False)
        teacher.requires_grad_(False)
        x1 = generator(z, None, None)
        x_t = (1 - t[:, None]) * z + t[:, None] * x1
        # gradients pass through the frozen fake model and teacher into the generator's weights
        (fake(t, x_t) - teacher(t, x_t)).square().sum().backward()

    expected = 2 * count_flops(fake_step) + count_flops(generator_step)
    assert measured.flops_per_step == expected > 0
    assert measured.seconds_per_step > 0 and measured.peak_bytes > 0


@pytest.fixture(scope="module")
def toy_plan(tmp_path_factory):
    """The plan of the tiny toy run (about 20 s on a shared machine, most of it the prepare stage's data
    validation, which the plan runs as the pipeline does)."""
    folder = tmp_path_factory.mktemp("plan")
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(TOY)))
    return make_plan(folder / "params.yaml", device="cpu", dvc_yaml=ROOT / "dvc.yaml", steps=1)


@pytest.mark.slow
def test_the_plan_has_one_entry_per_stage_and_their_sum(toy_plan):
    stages = [s.name for s in load_stages(ROOT / "dvc.yaml")]
    assert [p["stage"] for p in toy_plan["stages"]] == stages
    assert toy_plan["total_seconds"] == pytest.approx(sum(p["seconds"] for p in toy_plan["stages"]))
    for p in toy_plan["stages"]:
        assert p["seconds"] > 0 and p["peak_memory_mb"] > 0
        assert p["slurm"]["runtime"] >= 5 and p["slurm"]["mem_mb"] >= 1000
        assert p["slurm"]["gpus"] == (p["processes"] if p["gpu"] else 0)
        assert p["gpu_hours"] == pytest.approx(p["processes"] * p["seconds"] / 3600 if p["gpu"] else 0)
    by_stage = {p["stage"]: p for p in toy_plan["stages"]}
    assert by_stage["train_teacher"]["flops"] > 0 and by_stage["distill"]["flops"] > 0
    json.dumps(toy_plan)  # --json prints exactly this


def test_the_registry_takes_the_plans_slurm_requests(tmp_path):
    from realuid.plan import slurm_resources, write_json_atomic

    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    before = {s.name: s.slurm for s in load_stages(tmp_path / "dvc.yaml")}
    plan = {"stages": [{"stage": name, "slurm": {"runtime": 7 + i, "mem_mb": 3000 + i, "cpus": 2, "gpus": 0}}
                       for i, name in enumerate(before)]}
    write_json_atomic(slurm_resources(plan), tmp_path / PLAN_FILE)
    after = {s.name: s.slurm for s in load_stages(tmp_path / "dvc.yaml")}
    for p in plan["stages"]:
        request = after[p["stage"]]
        assert (request.runtime, request.mem_mb, request.cpus) == (p["slurm"]["runtime"], p["slurm"]["mem_mb"],
                                                                   p["slurm"]["cpus"])
        assert request.gpus == before[p["stage"]].gpus  # one per process, as before
    (tmp_path / PLAN_FILE).write_text("{")
    with pytest.raises(ValueError, match="is not a plan's Slurm requests"):
        load_stages(tmp_path / "dvc.yaml")


@pytest.mark.parametrize("change, message", [
    (lambda p: p["distill"].update(batch_size=0), "distill.batch_size"),
    (lambda p: p.update(colour="red"), "colour"),
])
def test_bad_params_are_one_error_line_and_nothing_written(tmp_path, capsys, change, message):
    params = tiny_params(TOY)
    change(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = cli(["--params", str(tmp_path / "params.yaml"), "--dvc", str(ROOT / "dvc.yaml"), "--json",
                "--slurm-resources", str(tmp_path / PLAN_FILE)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / PLAN_FILE).exists()


@pytest.mark.slow
def test_the_projection_of_a_tiny_run_is_near_its_measured_dvc_repro(tmp_path):
    """The plan's total against the wall time of `dvc repro` from an empty state, on the tiny digits run.

    The band is wide (a factor 2.5 either way): on a machine shared with other work both numbers move.
    The issue's ±30% on the embedded default is checked on an idle machine by bench/plan_check.py.
    """
    project = make_project(tmp_path / "project", tiny_params())
    # the project's own sources, as its stages run them
    plan = json.loads(sh(project, "env", "PYTHONPATH=src", sys.executable, "-m", "realuid.plan", "--json",
                         "--device", "cpu").stdout)
    start = time.perf_counter()
    sh(project, "dvc", "repro", "-q")
    measured = time.perf_counter() - start
    assert 1 / 2.5 < plan["total_seconds"] / measured < 2.5, (plan["total_seconds"], measured)
