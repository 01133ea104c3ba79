"""bench/capacity_control: the regression control really regresses, and a tiny study writes its tables."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import capacity_control as cc  # noqa: E402
from quality_study import settings  # noqa: E402
from quality_study.training_levers import DataEndWeightedFM, widened_mlp  # noqa: E402

from realuid.checkpoints import read_state  # noqa: E402
from realuid.distillation_losses import fake_loss, generator_loss  # noqa: E402
from realuid.matching import make_family  # noqa: E402
from realuid.models import build_model, model_spec  # noqa: E402
from realuid.sampling import OneStepGenerator  # noqa: E402
from realuid.sampling import generate_one_step, sample_teacher  # noqa: E402
from realuid.training.batches import TrainData  # noqa: E402
from realuid.training.distillation import RealUID  # noqa: E402


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


def random_mlp(num_classes: int = 0, hidden_dim: int = 16) -> tuple[torch.nn.Module, dict]:
    """A tiny MLP whose every weight (LayerNorm scales and shifts included) is random."""
    model = dataclasses.replace(settings.tiny().toy.teacher.model, hidden_dim=hidden_dim, depth=2,
                                class_cond=bool(num_classes))
    spec = model_spec(model, (2,), num_classes)
    net = build_model(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)
    return net.eval(), spec


@pytest.mark.parametrize("num_classes", [0, 3])
def test_the_wide_fake_model_starts_as_the_teachers_function_and_its_new_units_learn(num_classes):
    teacher, spec = random_mlp(num_classes)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    wide, wide_spec = widened_mlp(teacher, spec, seed=0)
    assert wide_spec["args"]["hidden_dim"] == 32 and wide.inp.out_features == 32
    rng = torch.Generator().manual_seed(1)
    t, x = torch.rand(256, generator=rng), 2 * torch.randn(256, 2, generator=rng)
    y = torch.randint(num_classes, (256,), generator=rng) if num_classes else None
    torch.testing.assert_close(wide(t, x, y), teacher(t, x, y), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # read, not changed
    # Silent at the start, not dead: the weights leaving the new units get gradients.
    wide(t, x, y).square().sum().backward()
    for layer in (wide.out[2], wide.blocks[0].fc2, wide.blocks[1].fc1):
        assert layer.weight.grad[:, 16:].abs().sum() > 0
    assert widened_mlp(teacher, spec, seed=0)[0].state_dict()["blocks.0.fc1.weight"].equal(
        wide.state_dict()["blocks.0.fc1.weight"])  # the new units' start is the seed's


def per_sample_losses(uid: RealUID, batch: TrainData, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Times ``t`` [B] and the unweighted fake and generator losses [B] of the phase drawn from ``seed``."""
    d = uid._draws(batch, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x1_gen = generate_one_step(uid.family, uid.generator.net, d.z)
        gen, data = (uid.family.path_sample(d.x0, x1, d.t) for x1 in (x1_gen, d.x1))
        f_gen, f_data = uid.fake(d.t, gen.x_t), uid.fake(d.t, data.x_t)
        fake = fake_loss(f_gen, gen.target, f_data, data.target, alpha=uid.alpha, beta=uid.beta)
        generator = generator_loss(f_gen, uid.teacher(d.t, gen.x_t), gen.target, alpha=uid.alpha, beta=uid.beta)
    return d.t, fake, generator


def test_the_data_end_weight_has_mean_one_and_weighs_both_losses_of_the_loop():
    family = DataEndWeightedFM()
    midpoints = (torch.arange(10_000, dtype=torch.float64) + 0.5) / 10_000
    assert abs(float(family.time_weight(midpoints).mean()) - 1) < 1e-4
    ends = [1 / (1.05 * np.log(21)), 1 / (0.05 * np.log(21))]  # 0.31 and 6.6
    assert family.time_weight(torch.tensor([0.0, 1.0])).tolist() == pytest.approx(ends, rel=1e-6)
    assert family.to_dict() == make_family("fm").to_dict()  # its checkpoints load as plain flow matching
    teacher, spec = random_mlp()
    batch = TrainData(torch.randn(64, 2, generator=torch.Generator().manual_seed(2)), None, None)
    cfg = dataclasses.replace(settings.tiny().toy.distill, fake_init="teacher")
    fake_means = []
    for fam in (make_family("fm"), family):
        uid = RealUID(fam, teacher, spec, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))
        t, fake, generator = per_sample_losses(uid, batch, seed=3)
        w = fam.time_weight(t)
        # Each phase returns its loss before its update: the batch mean of w(t) times the per-sample loss.
        fake_means.append(uid.fake_step(batch, torch.Generator().manual_seed(3))[0])
        torch.testing.assert_close(fake_means[-1], (w * fake).mean())
        uid = RealUID(fam, teacher, spec, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))
        torch.testing.assert_close(uid.generator_step(batch, torch.Generator().manual_seed(3))[0],
                                   (w * generator).mean())
    assert abs(fake_means[1] - fake_means[0]) > 1e-3


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
    levers = ("cosine", "lr_half", "fake_wide", "time_weight", "data_free", "momentum+batch_4x+fake_wide",
              "steps_2+cosine")
    code = cc.main(["--preset", "tiny", "--seeds", "2", "--workers", "1", "--datasets", "spiral",
                    "--levers", *levers, "--work", str(tmp_path / "w"), "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert "Command: `bench/capacity_control" in text and "## spiral" in text and "## Reading" in text
    for label in ("control (regression), 1x updates", "RealUID, k = 4", *(cc.label(f"realuid_{x}") for x in levers)):
        assert f"| {label} |" in text
    assert "fake update per generator update" not in text  # levers not asked for are not run
    assert "- Wide fake model: MLP 32 wide" in text and "- Time weight:" in text
    for run in ("realuid_fake_wide-spiral-s0", "realuid_momentum+batch_4x+fake_wide-spiral-s0"):
        fake = read_state(tmp_path / "w" / run / "checkpoint.pt")["fake"]
        assert fake["inp.weight"].shape == (32, 2)  # the tiny teacher is 16 wide: the wide fake model trained
    result = json.loads(out.with_suffix(".json").read_text())
    spiral = result["table"]["spiral"]
    assert len(spiral["control_16x"]["reference"]["sw2"]) == 2
    for losses in result["control_loss"]["spiral"].values():
        assert all(x["pairs_end"] < x["pairs_start"] for x in losses)
    assert (tmp_path / "figures" / "capacity_control_spiral.png").stat().st_size > 0
    # A note on the load, written into the study's wall record, is printed when the report is written again.
    wall = tmp_path / "w" / "wall.json"
    wall.write_text(json.dumps({**json.loads(wall.read_text()), "load": "beside two other jobs"}))
    assert cc.main(["--preset", "tiny", "--seeds", "2", "--workers", "1", "--datasets", "spiral",
                    "--levers", *levers, "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    assert "- Load: beside two other jobs\n" in out.read_text() and "1 invocation(s)" in out.read_text()


def test_bad_input_is_one_error_line_before_any_work(tmp_path, capsys):
    assert cc.main(["--seeds", "0", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "R.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "w").exists() and not (tmp_path / "R.md").exists()


def test_levers_join_into_one_run_that_changes_each():
    cfg = cc.full()
    base = cc.student_config(cfg, "k1", 0)
    joined = cc.student_config(cfg, "updates_4x+cosine+momentum+batch_4x", 0)
    assert (joined.steps, joined.checkpoint_every_steps, joined.batch_size) == (4 * base.steps, 4 * base.steps,
                                                                                4 * base.batch_size)
    for optim in (joined.generator_optim, joined.fake_optim):
        assert optim.decay == "cosine" and optim.betas == [0.9, base.generator_optim.betas[1]]
        assert optim.lr == base.generator_optim.lr
    # One lever alone changes only its own setting; the order of a join does not matter.
    assert cc.student_config(cfg, "cosine", 0) == dataclasses.replace(
        base, generator_optim=dataclasses.replace(base.generator_optim, decay="cosine"),
        fake_optim=dataclasses.replace(base.fake_optim, decay="cosine"))
    assert cc.student_config(cfg, "cosine+updates_16x", 0) == cc.student_config(cfg, "updates_16x+cosine", 0)
    assert cc.student_config(cfg, "updates_16x", 0).steps == 16 * base.steps
    assert cc.label("realuid_updates_4x+cosine") == ("RealUID k = 1, 4x generator updates (1600) + cosine decay of "
                                                     "both learning rates to 0")
    # A step count makes a k-step student of the same run, re-noised where the k = 2, 4 rows are.
    k4 = cc.student_config(cfg, "steps_4+updates_16x+cosine", 0)
    assert k4 == dataclasses.replace(cc.student_config(cfg, "updates_16x+cosine", 0), generator_steps=4,
                                     generator_times=cc.K_STEP_TIMES[4])
    assert cc.student_config(cfg, "steps_2", 0) == cc.student_config(cfg, "k2", 0)
    assert cc.label("realuid_steps_4+updates_16x+cosine").startswith("RealUID k = 4, 16x generator updates (6400) + ")
    assert not any(x.startswith("steps_") for x in cc.DEFAULT_LEVERS if "+" not in x)  # alone they are the k rows


@pytest.mark.parametrize("lever", ["lr_3x", "cosine+cosine", "data_free+real_weighted", "cosine+", "steps_2+steps_4",
                                   "updates_4x+updates_16x"])
def test_an_unknown_or_conflicting_lever_is_one_error_line(tmp_path, capsys, lever):
    with pytest.raises(SystemExit):
        cc.main(["--levers", lever, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "R.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench/capacity_control: error: argument --levers") and lever in err[-1]
    assert not (tmp_path / "w").exists()
