"""Classifier-free guidance: the null label's layout, label dropout, the guided field's identities, errors."""

import dataclasses

import pytest
import torch

from helpers.training import DISTILL, MODEL, TEACHER, Crash, crash_at, same_weights, toy_data
from realuid.api import Teacher
from realuid.config import in_effect
from realuid.errors import ConfigError
from realuid.matching import make_family
from realuid.models import build_model, check_guidance, guided, model_spec, null_label
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
