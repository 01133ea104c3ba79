"""Training loops: exact resume, phase isolation, divergence handling, and that distillation works."""

import dataclasses

import pytest
import torch

from helpers.training import (DISTILL, MODEL, OPTIM, TEACHER, Crash, assert_same_generators, crash_at, same_weights,
                              spec_for, straight_and_resumed, toy_data)
from realuid.analytic import gmm8
from realuid.checkpoints import read_state
from realuid.matching import make_family
from realuid.metrics import sliced_wasserstein2
from realuid import devices
from realuid.models import build_model, model_spec
from realuid.training import distillation, rng
from realuid.training.batches import TrainData
from realuid.training.bookkeeping import Meter, TrainingDiverged
from realuid.training.distillation import RealUID, distill
from realuid.training.teacher import train_teacher


@pytest.mark.parametrize("family_name", ["fm", "bridge", "si", "diffusion"])
def test_teacher_resume_is_bit_identical(tmp_path, monkeypatch, family_name):
    family = make_family(family_name)
    data, spec = toy_data(family), spec_for()
    straight = train_teacher(family, data, spec, TEACHER, tmp_path / "a", progress=False)
    undo = crash_at(monkeypatch, 8)  # between the checkpoints at steps 5 and 10
    with pytest.raises(Crash):
        train_teacher(family, data, spec, TEACHER, tmp_path / "b", progress=False)
    undo()
    resumed = train_teacher(family, data, spec, TEACHER, tmp_path / "b", progress=False)
    assert same_weights(straight.weights, resumed.weights)
    assert straight.copies.keys() == resumed.copies.keys() == {"ema_0.99"}
    assert same_weights(straight.copies["ema_0.99"], resumed.copies["ema_0.99"])
    # The curve log of the resumed run equals the uninterrupted one (rows after the crash are redone once).
    assert (tmp_path / "a" / "curves.csv").read_text() == (tmp_path / "b" / "curves.csv").read_text()


@pytest.mark.parametrize("family_name, options, alpha, beta, classes", [
    ("fm", {}, 0.9, 0.95, 0), ("bridge", {}, 1.0, 0.9, 0), ("bridge", {"generator_t": 0.1}, 0.94, 0.96, 0),
    ("fm", {}, 1.0, 1.0, 3)])
def test_distill_resume_is_bit_identical(tmp_path, monkeypatch, family_name, options, alpha, beta, classes):
    family = make_family(family_name, **options)
    data, spec = toy_data(family, classes=classes), spec_for(classes=classes)
    torch.manual_seed(0)
    teacher = build_model(spec)
    run = lambda d: distill(family, data, teacher, spec, DISTILL, tmp_path / d, alpha=alpha, beta=beta, progress=False)
    straight, resumed = straight_and_resumed(run, monkeypatch)
    assert_same_generators(straight, resumed)
    assert not same_weights(straight.weights, teacher.state_dict())  # it did train


def test_distillation_update_is_the_loops_schedule(tmp_path):
    """Stepping the public update by hand (what the benchmarks time) ends where the loop does, bit for bit,
    and each update runs the fake phases, then the generator phase."""
    from realuid.training.batches import BatchStream

    family = make_family("fm")
    data, spec = toy_data(family), spec_for()
    torch.manual_seed(0)
    teacher = build_model(spec)
    looped = distill(family, data, teacher, spec, DISTILL, tmp_path, alpha=0.9, beta=0.95, progress=False)
    uid = RealUID(family, teacher, spec, DISTILL, alpha=0.9, beta=0.95, device=torch.device("cpu"))
    stream = BatchStream(data, DISTILL.batch_size, DISTILL.seed)
    for step in range(DISTILL.steps):
        phases = distillation.distillation_update(uid, stream, step, DISTILL.seed)
    assert len(phases) == DISTILL.fake_updates_per_generator_update + 1
    assert all(loss.dim() == 0 and norm.dim() == 0 for loss, norm in phases)
    assert same_weights(looped.weights, uid.generator.net.state_dict())


def test_finished_run_is_not_repeated(tmp_path, monkeypatch):
    family = make_family("fm")
    data, spec = toy_data(family), spec_for()
    first = train_teacher(family, data, spec, TEACHER, tmp_path, progress=False)
    crash_at(monkeypatch, 1)  # any optimizer step would now fail
    again = train_teacher(family, data, spec, TEACHER, tmp_path, progress=False)
    assert same_weights(first.weights, again.weights)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("family_name", ["fm", "diffusion", "bridge"])
def test_each_phase_touches_only_its_own_network(family_name):
    family = make_family(family_name)
    data, spec = toy_data(family), spec_for()
    torch.manual_seed(1)
    teacher = build_model(spec)
    uid = RealUID(family, teacher, spec, DISTILL, alpha=0.9, beta=0.95, device=torch.device("cpu"))
    batch, rng = TrainData(data.x1[:32], None, None if data.x0 is None else data.x0[:32]), torch.Generator().manual_seed(0)
    t0, g0, f0 = snapshot(uid.teacher), snapshot(uid.generator.net), snapshot(uid.fake)

    uid.fake_step(batch, rng)
    assert same_weights(snapshot(uid.teacher), t0) and same_weights(snapshot(uid.generator.net), g0)
    assert not same_weights(snapshot(uid.fake), f0)
    assert all(p.grad is None for p in uid.generator.parameters())
    assert all(p.grad is None for p in uid.teacher.parameters())

    f1, fake_grads = snapshot(uid.fake), grads(uid.fake)
    uid.generator_step(batch, rng)
    assert same_weights(snapshot(uid.teacher), t0) and same_weights(snapshot(uid.fake), f1)
    assert not same_weights(snapshot(uid.generator.net), g0)
    assert all(torch.equal(a, b) for a, b in zip(fake_grads, grads(uid.fake)))
    assert all(p.grad is None for p in uid.teacher.parameters())
    assert all(p.requires_grad for p in uid.fake.parameters())  # restored for the next fake step


def test_fake_init_from_teacher_or_random():
    family, spec = make_family("fm"), spec_for()
    torch.manual_seed(1)
    teacher = build_model(spec)
    from_teacher = RealUID(family, teacher, spec, dataclasses.replace(DISTILL, fake_init="teacher"),
                           alpha=0.9, beta=0.9, device=torch.device("cpu"))
    random = RealUID(family, teacher, spec, DISTILL, alpha=0.9, beta=0.9, device=torch.device("cpu"))
    assert same_weights(from_teacher.fake.state_dict(), teacher.state_dict())
    assert not same_weights(random.fake.state_dict(), teacher.state_dict())
    assert same_weights(random.generator.net.state_dict(), teacher.state_dict())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    family = make_family("fm")
    data, spec = toy_data(family), spec_for()
    train_teacher(family, data, spec, dataclasses.replace(TEACHER, steps=5), tmp_path, progress=False)
    good = read_state(tmp_path / "checkpoint.pt")
    poisoned = TrainData(torch.full_like(data.x1, float("nan")))
    with pytest.raises(TrainingDiverged, match="last good checkpoint is kept"):
        train_teacher(family, poisoned, spec, TEACHER, tmp_path, progress=False)
    kept = read_state(tmp_path / "checkpoint.pt")
    assert kept["step"] == 5 and same_weights(kept["model"], good["model"])


def test_batch_larger_than_data_is_a_clear_error(tmp_path):
    family = make_family("fm")
    with pytest.raises(ValueError, match="larger than the training set"):
        train_teacher(family, toy_data(family, n=10), spec_for(), TEACHER, tmp_path, progress=False)


def test_short_distillation_lowers_distance_to_data(tmp_path):
    """A rough teacher used as a one-step generator is poor; a short RealUID run improves it."""
    torch.manual_seed(0)
    family, mixture = make_family("fm"), gmm8()
    rng = torch.Generator().manual_seed(0)
    data, test = TrainData(mixture.sample(4096, rng=rng)), mixture.sample(2000, rng=rng)
    model = dataclasses.replace(MODEL, hidden_dim=64, depth=2)
    spec = model_spec(model, (2,), 0)
    tcfg = dataclasses.replace(TEACHER, model=model, steps=400, batch_size=256, checkpoint_every_steps=400,
                               log_every_steps=100, optim=dataclasses.replace(OPTIM, lr=3e-3))
    teacher = build_model(spec)
    teacher.load_state_dict(train_teacher(family, data, spec, tcfg, tmp_path / "t", progress=False).state_dict(tcfg.ema_decay))
    dcfg = dataclasses.replace(DISTILL, steps=150, batch_size=256, fake_init="teacher", ema_decays=[0.95],
                               checkpoint_every_steps=150, log_every_steps=50,
                               generator_optim=dataclasses.replace(DISTILL.generator_optim, lr=1e-3, warmup_steps=20),
                               fake_optim=dataclasses.replace(DISTILL.fake_optim, lr=1e-3, warmup_steps=20))
    z = torch.randn(2000, 2, generator=rng)
    from realuid.sampling import OneStepGenerator

    with torch.no_grad():
        before = sliced_wasserstein2(OneStepGenerator(family, teacher)(z), test)
    result = distill(family, data, teacher, spec, dcfg, tmp_path / "d", alpha=0.94, beta=0.96, progress=False)
    with torch.no_grad():
        net = build_model(spec)
        net.load_state_dict(result.state_dict(0.95))
        after = sliced_wasserstein2(OneStepGenerator(family, net)(z), test)
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("family_name", ["fm", "diffusion"])
def test_bf16_autocast_runs_on_cpu_and_keeps_float32_weights(tmp_path, family_name):
    family = make_family(family_name)
    data, spec = toy_data(family), spec_for()
    torch.manual_seed(0)
    teacher = build_model(spec)
    result = distill(family, data, teacher, spec, dataclasses.replace(DISTILL, precision="bf16"), tmp_path,
                     alpha=0.9, beta=0.95, progress=False)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in result.weights.values())
    teacher_run = train_teacher(family, data, spec, dataclasses.replace(TEACHER, precision="bf16"), tmp_path / "t",
                                progress=False)
    assert all(torch.isfinite(v).all() for v in teacher_run.weights.values())


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        devices.autocast(torch.device("cpu"), "fp16")


def test_dropout_seed_keeps_the_one_process_stream_on_rank_zero_and_differs_per_rank():
    masks = []
    for rank in (0, 1, 2):
        rng.seed_dropout(5, 7, rank)
        masks.append(torch.rand(8))
    torch.manual_seed(rng._seed_value(5, 7, -1))  # the one-process seed of step 7
    assert torch.equal(masks[0], torch.rand(8))
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_meter_reads_means_since_the_last_read():
    meter = Meter()
    for v in (1.0, 2.0, 6.0):
        meter.add(loss=torch.tensor(v), norm=torch.tensor(2 * v))
    assert meter.read() == {"loss": 3.0, "norm": 6.0}
    meter.add(loss=torch.tensor(5.0), norm=torch.tensor(1.0))
    assert meter.read() == {"loss": 5.0, "norm": 1.0} and meter.read() == {}


def test_loops_leave_the_callers_random_stream_alone(tmp_path):
    family = make_family("fm")
    data, spec = toy_data(family), spec_for()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_teacher(family, data, spec, dataclasses.replace(TEACHER, steps=2), tmp_path, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_fake_init_teacher_needs_a_teacher_of_the_same_spec():
    from realuid.analytic import ExactFMTeacher

    family, spec = make_family("fm"), spec_for()
    with pytest.raises(ValueError, match="fake_init='random'"):
        RealUID(family, ExactFMTeacher(gmm8()), spec, dataclasses.replace(DISTILL, fake_init="teacher"),
                alpha=0.9, beta=0.9, device=torch.device("cpu"), student_init=build_model(spec))


def test_the_fake_model_starts_as_a_copy_of_the_network_handed_in_and_trains():
    family, spec = make_family("fm"), spec_for()
    torch.manual_seed(0)
    teacher = build_model(spec).eval()
    wide = build_model({**spec, "args": {**spec["args"], "hidden_dim": 2 * spec["args"]["hidden_dim"]}})
    start = {k: v.clone() for k, v in wide.state_dict().items()}
    # It takes the place of cfg.fake_init's network (the teacher's weights would not even fit).
    uid = RealUID(family, teacher, spec, dataclasses.replace(DISTILL, fake_init="teacher"), alpha=0.9, beta=0.95,
                  device=torch.device("cpu"), fake_start=wide)
    assert uid.fake is not wide and same_weights(uid.fake.state_dict(), start)
    uid.fake_step(toy_data(family, n=64), torch.Generator().manual_seed(1))
    assert not same_weights(uid.fake.state_dict(), start)  # its optimizer holds the copy's parameters
    assert same_weights(wide.state_dict(), start)  # the caller's network is left as it was


def with_dropout(spec: dict, p: float) -> dict:
    return {**spec, "args": {**spec["args"], "dropout": p}}


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["mlp", "unet"])
@pytest.mark.parametrize("finetune", [False, True], ids=["distill", "finetune"])
def test_distillation_runs_without_dropout_whatever_the_teacher_trained_with(tmp_path, shape, finetune):
    family = make_family("fm")
    spec = model_spec(dataclasses.replace(MODEL, channels=32), shape, 0)
    data = toy_data(family, n=64, shape=shape)
    cfg = dataclasses.replace(DISTILL, steps=3, batch_size=8, fake_init="teacher", checkpoint_every_steps=3)
    torch.manual_seed(0)
    weights = build_model(spec).state_dict()
    student = build_model(spec)
    student.load_state_dict({k: v + 0.01 for k, v in weights.items()})  # a distilled generator to fine-tune
    results = []
    for p in (0.3, 0.0):
        teacher = build_model(with_dropout(spec, p))
        teacher.load_state_dict(weights)  # same weights: dropout does not change the layout
        init = None
        if finetune:
            init = build_model(with_dropout(spec, p))
            init.load_state_dict(student.state_dict())
        results.append(distill(family, data, teacher.eval(), with_dropout(spec, p), cfg, tmp_path / f"p{p}",
                               alpha=0.9, beta=0.95, progress=False, student_init=init))
    with_p, without = results
    assert same_weights(with_p.weights, without.weights)
    assert all(same_weights(with_p.copies[k], without.copies[k]) for k in without.copies)
    assert not same_weights(without.weights, weights if not finetune else student.state_dict())  # it trained


# --------------------------------------------------------------------------------------------------
# The learning-rate schedule: linear warm-up, then constant or a half cosine to 0 at the last update
# --------------------------------------------------------------------------------------------------


def test_lr_factor_warms_up_linearly_then_stays_constant_or_falls_by_a_half_cosine():
    import math

    from realuid.training.optimization import lr_factor

    warmup, total = 10, 110  # a decay of 100 updates after the warm-up
    constant, cosine = (dataclasses.replace(OPTIM, warmup_steps=warmup, decay=d) for d in ("constant", "cosine"))
    for cfg in (constant, cosine):  # the warm-up is the same line whatever the decay
        warming = [lr_factor(s, cfg, total) for s in range(warmup)]
        assert warming == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert all(lr_factor(s, constant, total) == 1.0 for s in range(warmup - 1, total + 5))

    factors = [lr_factor(s, cosine, total) for s in range(total)]
    assert factors[warmup - 1] == 1.0 and factors[warmup] > 0.999  # 1 at the end of the warm-up, no jump after
    assert factors[-1] == pytest.approx(0.0, abs=1e-3)  # ~0 at the run's last update
    assert all(a < b for a, b in zip(factors[: warmup - 1], factors[1:warmup]))  # rising in the warm-up
    assert all(b <= a for a, b in zip(factors[warmup - 1 :], factors[warmup:]))  # then never rising
    assert factors[warmup] > factors[-1] and len(set(factors[warmup:])) == total - warmup  # strictly falling
    # Closed form: after k updates, 0.5 * (1 + cos(pi * (k - warmup) / (total - warmup))); 0.5 halfway.
    halfway = warmup + (total - warmup) // 2
    assert lr_factor(halfway - 1, cosine, total) == pytest.approx(0.5, abs=1e-12)
    for k in (warmup + 1, warmup + 25, warmup + 75, total):
        expected = 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))
        assert lr_factor(k - 1, cosine, total) == pytest.approx(expected)
    # Without a warm-up the cosine starts at the first update.
    bare = dataclasses.replace(cosine, warmup_steps=0)
    assert lr_factor(0, bare, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4))) and lr_factor(3, bare, 4) == 0.0


def test_optimizers_follow_the_schedule_over_the_steps_of_their_own_run(tmp_path):
    from realuid.training.optimization import lr_factor, make_optimizer

    cosine = dataclasses.replace(OPTIM, lr=0.01, warmup_steps=3, decay="cosine")
    weight = torch.nn.Parameter(torch.zeros(2))
    opt, sched = make_optimizer([weight], cosine, 20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])  # the rate this update uses
        weight.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.01 * lr_factor(s, cosine, 20) for s in range(20)], rel=1e-12, abs=1e-15)

    # distill: the generator's schedule spans distill.steps, the fake model's every one of its updates.
    family = make_family("fm")
    spec = spec_for()
    cfg = dataclasses.replace(DISTILL, generator_optim=dataclasses.replace(DISTILL.generator_optim, decay="cosine"),
                              fake_optim=dataclasses.replace(DISTILL.fake_optim, decay="cosine"))
    uid = RealUID(family, build_model(spec), spec, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))
    fake_total = cfg.steps * cfg.fake_updates_per_generator_update
    assert fake_total > cfg.steps
    for sched, optim_cfg, total in ((uid.gen_sched, cfg.generator_optim, cfg.steps),
                                    (uid.fake_sched, cfg.fake_optim, fake_total)):
        assert [sched.lr_lambdas[0](s) for s in range(total)] == [lr_factor(s, optim_cfg, total) for s in range(total)]

    # train_teacher logs the rate in its curves: it ends at 0 after the last update under a cosine.
    tcfg = dataclasses.replace(TEACHER, optim=dataclasses.replace(OPTIM, decay="cosine"), log_every_steps=1)
    train_teacher(family, toy_data(family), spec, tcfg, tmp_path / "t", progress=False)
    import csv

    with open(tmp_path / "t" / "curves.csv", newline="") as fh:
        logged = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(fh)}  # the rate after `step` updates
    assert logged[tcfg.steps] == 0.0 and logged[tcfg.optim.warmup_steps - 1] == OPTIM.lr
    assert logged == pytest.approx({k: OPTIM.lr * lr_factor(k, tcfg.optim, tcfg.steps) for k in logged})
