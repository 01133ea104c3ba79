"""Classifier-free guidance: the null label's layout, label dropout, the guided field's identities, errors."""

import dataclasses

import pytest
import torch

from helpers.training import DISTILL, MODEL, TEACHER, Crash, crash_at, same_weights, toy_data
from realuid.api import Teacher
from realuid.config import in_effect
from realuid.distillation_losses import fake_loss, generator_loss
from realuid.errors import ConfigError
from realuid.matching import make_family
from realuid.models import build_model, check_guidance, guided, model_spec, null_label
from realuid.sampling import generate_one_step
from realuid.training.distillation import RealUID, distill
from realuid.training.teacher import train_teacher


CLASSES = 3


def cond_spec(class_dropout=0.0, shape=(2,)):
    model = dataclasses.replace(MODEL, class_cond=True, class_dropout=class_dropout, channels=32)
    return model_spec(model, shape, CLASSES)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_the_null_label_is_one_more_row_only_with_label_dropout(shape):
    plain, dropping = cond_spec(shape=shape), cond_spec(0.1, shape=shape)
    assert "class_dropout" not in plain["args"] and null_label(plain) is None  # today's spec, today's files
    assert null_label(dropping) == CLASSES
    a, b = build_model(plain).state_dict(), build_model(dropping).state_dict()
    assert a.keys() == b.keys()
    changed = {k for k in a if a[k].shape != b[k].shape}
    assert [k.split(".")[0] for k in changed] == ["label_emb"]
    (key,) = changed
    assert b[key].shape[0] == a[key].shape[0] + 1 == CLASSES + 1


def test_guided_field_identities():
    torch.manual_seed(0)
    net = build_model(cond_spec(0.1)).eval()
    t, x, y = torch.rand(6), torch.randn(6, 2), torch.arange(6) % CLASSES
    with torch.no_grad():
        cond, uncond = net(t, x, y), net(t, x, torch.full_like(y, CLASSES))
        assert torch.equal(guided(net, CLASSES, 0.0)(t, x, y), uncond)  # w = 0: the unconditional field
        torch.testing.assert_close(guided(net, CLASSES, 1.0)(t, x, y), cond, rtol=0, atol=1e-6)
        torch.testing.assert_close(guided(net, CLASSES, 2.5)(t, x, y), uncond + 2.5 * (cond - uncond))


def test_label_dropout_trains_the_null_label_and_resumes_exactly(tmp_path, monkeypatch):
    family = make_family("fm")
    data, spec = toy_data(family, classes=CLASSES), cond_spec(0.5)
    straight = train_teacher(family, data, spec, TEACHER, tmp_path / "a", progress=False)
    undo = crash_at(monkeypatch, 8)
    with pytest.raises(Crash):
        train_teacher(family, data, spec, TEACHER, tmp_path / "b", progress=False)
    undo()
    resumed = train_teacher(family, data, spec, TEACHER, tmp_path / "b", progress=False)
    assert same_weights(straight.weights, resumed.weights)
    # The null row moved from its initial value: the model saw the null label.
    torch.manual_seed(TEACHER.seed)
    initial = build_model(spec).state_dict()["label_emb.weight"]
    assert not torch.equal(straight.weights["label_emb.weight"][CLASSES], initial[CLASSES])
    # Without label dropout the null row is never there.
    plain = train_teacher(family, data, cond_spec(), TEACHER, tmp_path / "c", progress=False)
    assert plain.weights["label_emb.weight"].shape[0] == CLASSES


def distill_run(tmp_path, name, teacher, spec, **changes):
    family = make_family("fm")
    cfg = dataclasses.replace(DISTILL, steps=3, **changes)
    return distill(family, toy_data(family, classes=CLASSES), teacher, spec, cfg, tmp_path / name,
                   alpha=0.9, beta=0.95, progress=False)


def test_scale_one_is_no_guidance_and_other_scales_read_the_null_label(tmp_path, monkeypatch):
    spec = cond_spec(0.2)
    torch.manual_seed(0)
    teacher = build_model(spec)
    labels = []
    real = type(teacher).forward
    monkeypatch.setattr(type(teacher), "forward", lambda self, t, x, y=None: labels.append(y) or real(self, t, x, y))
    plain = distill_run(tmp_path, "a", teacher, spec)
    assert all(y is None or int(y.max()) < CLASSES for y in labels)  # no null label anywhere
    one = distill_run(tmp_path, "b", teacher, spec, guidance_scale=1.0)
    assert same_weights(plain.weights, one.weights) and plain.config == one.config
    assert "guidance_scale" not in in_effect(dataclasses.replace(DISTILL, guidance_scale=1.0))
    labels.clear()
    two = distill_run(tmp_path, "c", teacher, spec, guidance_scale=2.0)
    assert any(y is not None and bool((y == CLASSES).all()) for y in labels)
    assert not same_weights(plain.weights, two.weights) and two.config["guidance_scale"] == 2.0


def test_scale_zero_gives_the_generator_loss_the_unconditional_teacher():
    spec = cond_spec(0.2)
    torch.manual_seed(0)
    teacher = build_model(spec)
    cfg = dataclasses.replace(DISTILL, guidance_scale=0.0)
    uid = RealUID(make_family("fm"), teacher, spec, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))
    t, x, y = torch.rand(5), torch.randn(5, 2), torch.arange(5) % CLASSES
    with torch.no_grad():
        assert torch.equal(uid.teacher_field(t, x, y), teacher(t, x, torch.full_like(y, CLASSES)))


@torch.no_grad()
def test_teacher_sampler_takes_the_same_scale():
    spec = cond_spec(0.2)
    torch.manual_seed(0)
    teacher = Teacher(make_family("fm"), build_model(spec).eval(), spec)
    unconditional = teacher.sample(4, nfe=3, method="euler", labels=[CLASSES] * 4)
    assert torch.equal(teacher.sample(4, nfe=3, method="euler", guidance_scale=0.0), unconditional)
    assert not torch.equal(teacher.sample(4, nfe=3, method="euler", guidance_scale=2.0), unconditional)


@pytest.mark.parametrize("spec", [model_spec(MODEL, (2,), 0), cond_spec(), None])
def test_guidance_without_a_null_label_is_one_clear_error(tmp_path, spec):
    assert check_guidance(spec, 1.0) is None
    with pytest.raises(ConfigError, match="label dropout"):
        check_guidance(spec, 2.0)
    torch.manual_seed(0)
    teacher = build_model(spec or cond_spec())
    with pytest.raises(ConfigError, match="label dropout"):
        distill_run(tmp_path, "x", teacher, spec, guidance_scale=1.5)
    assert not (tmp_path / "x").exists()  # before any work
    if spec is not None:
        with pytest.raises(ConfigError, match="label dropout"):
            Teacher(make_family("fm"), teacher, spec).sample(2, nfe=2, method="euler", guidance_scale=2.0)


# ---------------------------------------------------------------------------------------------- guide_fake


def phase_losses(uid: RealUID, batch, seed: int, fake_field) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake and the generator loss of the phases drawn from ``seed``, written out by hand with the fake
    model's field ``fake_field(t, x, y)`` (a one-step fm student)."""
    d = uid._draws(batch, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x1_gen = generate_one_step(uid.family, uid.generator.net, d.z, d.y)
        gen, data = (uid.family.path_sample(d.x0, x1, d.t, d.noise) for x1 in (x1_gen, d.x1))
        fake = fake_loss(fake_field(d.t, gen.x_t, d.y), gen.target, fake_field(d.t, data.x_t, d.y), data.target,
                         alpha=uid.alpha, beta=uid.beta).mean()
        generator = generator_loss(fake_field(d.t, gen.x_t, d.y), uid.teacher_field(d.t, gen.x_t, d.y), gen.target,
                                   alpha=uid.alpha, beta=uid.beta).mean()
    return fake, generator


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_guide_fake_gives_both_losses_the_fake_models_guided_field(scale):
    spec = cond_spec(0.2)
    torch.manual_seed(0)
    teacher = build_model(spec).eval()
    family = make_family("fm")
    batch = toy_data(family, n=64, classes=CLASSES)
    cfg = dataclasses.replace(DISTILL, guidance_scale=scale, guide_fake=True)
    make = lambda: RealUID(family, teacher, spec, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))  # noqa: E731
    uid = make()
    with torch.no_grad():  # the fake model starts as a copy of the teacher: perturb it so the fields differ
        for p in uid.fake.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    state = {k: v.clone() for k, v in uid.fake.state_dict().items()}
    # By hand: the two labels in two separate calls of the fake model; w = 0 is its unconditional field.
    two_calls = guided(uid.fake, CLASSES, scale)
    if scale == 0:
        two_calls = lambda t, x, y: uid.fake(t, x, torch.full_like(y, CLASSES))  # noqa: E731
    fake, generator = phase_losses(uid, batch, 3, two_calls)
    # Each phase returns its loss before its update.
    torch.testing.assert_close(uid.fake_step(batch, torch.Generator().manual_seed(3))[0], fake)
    uid = make()
    uid.fake.load_state_dict(state)
    torch.testing.assert_close(uid.generator_step(batch, torch.Generator().manual_seed(3))[0], generator)
    # Without the flag the fake model's own field is read: the losses differ.
    plain = RealUID(family, teacher, spec, dataclasses.replace(cfg, guide_fake=False), alpha=0.9, beta=0.95,
                    device=torch.device("cpu"))
    plain.fake.load_state_dict(state)
    assert abs(float(plain.fake_step(batch, torch.Generator().manual_seed(3))[0]) - float(fake)) > 1e-4


def test_guide_fake_at_scale_one_trains_bit_identically_and_keeps_the_state_folder(tmp_path):
    spec = cond_spec(0.2)
    torch.manual_seed(0)
    teacher = build_model(spec)
    plain = distill_run(tmp_path, "a", teacher, spec)
    flagged = distill_run(tmp_path, "b", teacher, spec, guide_fake=True)
    assert same_weights(plain.weights, flagged.weights)
    assert all(same_weights(plain.copies[k], flagged.copies[k]) for k in plain.copies)
    for scale in (1.0, 2.0):
        off = in_effect(dataclasses.replace(DISTILL, guidance_scale=scale))
        on = in_effect(dataclasses.replace(DISTILL, guidance_scale=scale, guide_fake=True))
        assert "guide_fake" not in off and (on == off) == (scale == 1)
    guided_fake = distill_run(tmp_path, "c", teacher, spec, guidance_scale=2.0, guide_fake=True)
    teacher_only = distill_run(tmp_path, "d", teacher, spec, guidance_scale=2.0)
    assert not same_weights(guided_fake.weights, teacher_only.weights)
