"""Tiny training configurations, model specs and data, and the crash that checks exact resume."""

import dataclasses

import pytest
import torch

from realuid.config import DistillConfig, ModelConfig, OptimConfig, TrainTeacherConfig
from realuid.models import model_spec
from realuid.training import distillation, teacher
from realuid.training.batches import TrainData

MODEL = ModelConfig(arch="auto", hidden_dim=32, depth=1, time_embed_dim=16, channels=8, channel_mult=[1, 2],
                    num_res_blocks=1, attention_resolutions="", num_heads=1, num_head_channels=-1,
                    dropout=0.0, class_cond=False)
OPTIM = OptimConfig(lr=2e-3, betas=[0.9, 0.999], warmup_steps=5, grad_clip=1.0)
TEACHER = TrainTeacherConfig(model=MODEL, optim=OPTIM, steps=12, batch_size=64, ema_decay=0.99,
                             checkpoint_every_steps=5, log_every_steps=2, seed=3, device="cpu", precision="fp32")
DISTILL = DistillConfig(steps=6, fake_updates_per_generator_update=2, batch_size=64, precision="fp32",
                        generator_optim=dataclasses.replace(OPTIM, betas=[0.0, 0.999]),
                        fake_optim=dataclasses.replace(OPTIM, betas=[0.0, 0.999]), fake_init="random",
                        ema_decays=[0.9, 0.99], checkpoint_every_steps=4, log_every_steps=2, seed=5, device="cpu")


def toy_data(family, n=256, shape=(2,), classes=0):
    rng = torch.Generator().manual_seed(0)
    x1 = torch.rand(n, *shape, generator=rng) * 2 - 1
    y = torch.randint(0, classes, (n,), generator=rng) if classes else None
    x0 = (x1 + 0.3 * torch.randn(x1.shape, generator=rng)).clamp(-1, 1) if family.paired else None
    return TrainData(x1, y, x0)


def spec_for(shape=(2,), classes=0, class_dropout=0.0):
    return model_spec(dataclasses.replace(MODEL, class_cond=bool(classes), class_dropout=class_dropout), shape, classes)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Crash(Exception):
    pass


def crash_at(monkeypatch, call: int):
    """Make the n-th optimizer step raise, like a kill at an arbitrary point between checkpoints."""
    real, calls = teacher.optimizer_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Crash()
        return real(*args, **kwargs)

    loops = (teacher, distillation)  # each loop calls the step it imported
    for loop in loops:
        monkeypatch.setattr(loop, "optimizer_step", step)
    return lambda: [monkeypatch.setattr(loop, "optimizer_step", real) for loop in loops]


def straight_and_resumed(run, monkeypatch, crash_call: int = 16):
    """``run("a")`` uninterrupted, and ``run("b")`` crashed at optimizer step ``crash_call`` then run again
    (by default inside generator update 6 of 6 of a distillation with 3 optimizer steps per update)."""
    straight = run("a")
    undo = crash_at(monkeypatch, crash_call)
    with pytest.raises(Crash):
        run("b")
    undo()
    return straight, run("b")


def assert_same_generators(straight, resumed) -> None:
    assert same_weights(straight.weights, resumed.weights)
    for key in straight.copies:
        assert same_weights(straight.copies[key], resumed.copies[key])
