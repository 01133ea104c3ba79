"""bench/capacity_control: the regression control really regresses, and a tiny study writes its tables."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import capacity_control as cc  # noqa: E402
from quality_study import settings  # noqa: E402

from realuid.matching import make_family  # noqa: E402
from realuid.models import build_model, model_spec  # noqa: E402
from realuid.sampling import OneStepGenerator  # noqa: E402
from realuid.sampling import sample_teacher  # noqa: E402


def test_the_control_fits_the_teachers_ode_map_better_than_its_start():
    torch.manual_seed(0)
    family = make_family("fm")
    model = dataclasses.replace(settings.tiny().toy.teacher.model, hidden_dim=32)
    teacher = build_model(model_spec(model, (2,), 0)).eval()
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in teacher.parameters():  # a strong random field whose flow bends: read once, it misses its
            p.mul_(3.0)                 # ODE's end point by about as much as the points spread
        x1 = sample_teacher(family, teacher, z, nfe=20, method="euler")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = settings.tiny().toy.distill
    cfg = dataclasses.replace(cfg, batch_size=128, generator_optim=dataclasses.replace(cfg.generator_optim,
                                                                                        warmup_steps=10))
    generator, losses = cc.regress_one_step(family, teacher, z, x1, cfg, updates=200, seed=0)
    fresh = torch.randn(256, 2, generator=torch.Generator().manual_seed(2))  # noise the pairs never held
    with torch.no_grad():
        target = sample_teacher(family, teacher, fresh, nfe=20, method="euler")
        start = torch.mean((OneStepGenerator(family, teacher)(fresh) - target) ** 2)
        end = torch.mean((generator(fresh) - target) ** 2)
    assert np.mean(losses[-20:]) < 0.05 * losses[0]
    assert end < 0.05 * start
    assert all(not p.requires_grad for p in generator.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # it trained a copy


def test_the_target_rule():
    teacher = {"sw2": [0.02, 0.04], "knn_precision": [0.9, 0.9]}
    assert cc.reaches_teacher({"sw2": [0.04, 0.05], "knn_precision": [0.86, 0.86]}, teacher)  # 1.5x, 0.04 below
    assert not cc.reaches_teacher({"sw2": [0.05, 0.05], "knn_precision": [0.9, 0.9]}, teacher)  # 1.67x
    assert not cc.reaches_teacher({"sw2": [0.02, 0.04], "knn_precision": [0.8, 0.84]}, teacher)  # 0.08 below


def test_whose_gap_it_is():
    rows = {"control_1x": False, "control_4x": False, "control_16x": False, "realuid_k1": False}
    assert "the map's" in cc.verdict_of(rows)
    assert "the budget's" in cc.verdict_of({**rows, "control_4x": True, "control_16x": True})
    assert "4x updates" in cc.verdict_of({**rows, "control_4x": True, "control_16x": True})
    assert "the training's" in cc.verdict_of({**rows, "control_1x": True})
    assert "meets the target" in cc.verdict_of({**rows, "control_1x": True, "realuid_k1": True})


def test_tiny_study_writes_its_tables_and_figure(tmp_path):
    out = tmp_path / "R.md"
    code = cc.main(["--preset", "tiny", "--seeds", "2", "--workers", "1", "--datasets", "spiral",
                    "--levers", "cosine", "--work", str(tmp_path / "w"), "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert "Command: `bench/capacity_control" in text and "## spiral" in text and "## Reading" in text
    for label in ("control (regression), 1x updates", "RealUID, k = 4", cc.LABELS["realuid_cosine"]):
        assert f"| {label} |" in text
    assert "fake update per generator update" not in text  # levers not asked for are not run
    result = json.loads(out.with_suffix(".json").read_text())
    spiral = result["table"]["spiral"]
    assert len(spiral["control_16x"]["reference"]["sw2"]) == 2
    for losses in result["control_loss"]["spiral"].values():
        assert all(x["pairs_end"] < x["pairs_start"] for x in losses)
    assert (tmp_path / "figures" / "capacity_control_spiral.png").stat().st_size > 0


def test_bad_input_is_one_error_line_before_any_work(tmp_path, capsys):
    assert cc.main(["--seeds", "0", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "R.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "w").exists() and not (tmp_path / "R.md").exists()
