"""k-step students: the chain against a hand-written one, per-seed sampling, one step unchanged, exact resume."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from helpers.training import DISTILL, assert_same_generators, same_weights, spec_for, straight_and_resumed, toy_data
from realuid.api import Generator, load_generator
from realuid.config import in_effect
from realuid.errors import ConfigError
from realuid.matching import make_family
from realuid.models import build_model
from realuid.training import distillation
from realuid.training.distillation import RealUID, distill, generator_times



def tiny_net(seed=0, classes=0):
    torch.manual_seed(seed)
    return build_model(spec_for(classes=classes)).eval()


def stream(seed: int, draws: int) -> list[torch.Tensor]:
    """The first ``draws`` normal [2] draws of one sample's own seed."""
    rng = torch.Generator().manual_seed(seed)
    return [torch.randn(2, generator=rng) for _ in range(draws)]


@torch.no_grad()
def test_fm_student_samples_are_the_chain_written_by_hand():
    net, times = tiny_net(), [0.4, 0.75]
    gen = Generator(make_family("fm"), net, spec_for(), meta={"generator_times": times})
    n, seed = 5, 11
    expected = []
    for i in range(n):
        z, *sources = stream(seed + i, 3)  # the start noise, then one fresh source per re-noising
        x = z[None] + net(torch.zeros(1), z[None], None)  # x1 = z + G(0, z)
        for t, x0 in zip(times, sources):
            x_t = t * x + (1 - t) * x0[None]  # re-noise along the fm path with a fresh source
            x = x_t + (1 - t) * net(torch.full((1,), t), x_t, None)
        expected.append(x[0])
    assert gen.steps == 3
    torch.testing.assert_close(gen.sample(n, seed=seed), torch.stack(expected), rtol=0, atol=1e-6)
    # Sample i is the same whatever n and batch_size (up to the matmul's rounding in another batch shape),
    # and steps = 1 is the one-step sample.
    torch.testing.assert_close(gen.sample(2, seed=seed + 3), gen.sample(n, seed=seed, batch_size=2)[3:],
                               rtol=0, atol=1e-6)
    one_step = Generator(make_family("fm"), net, spec_for()).sample(n, seed=seed)
    assert torch.equal(gen.sample(n, seed=seed, steps=1), one_step)


@torch.no_grad()
def test_bridge_student_keeps_its_corrupted_input_and_re_noises_with_path_noise():
    s, sigma, times = 0.1, 0.5, [0.6]
    family = make_family("bridge", sigma=sigma, generator_t=s)
    net = tiny_net(1)
    gen = Generator(family, net, spec_for(), meta={"generator_times": times})
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    expected = []
    for i in range(4):
        start_noise, stage_noise = stream(i, 2)  # path noise of the generator's start, then of the re-noising
        state = (1 - s) * x0[i:i + 1] + sigma * (s * (1 - s)) ** 0.5 * start_noise[None]
        x = state + (1 - s) * net(torch.full((1,), s), state, None)
        t = times[0]
        x_t = t * x + (1 - t) * x0[i:i + 1] + sigma * (t * (1 - t)) ** 0.5 * stage_noise[None]
        expected.append((x_t + (1 - t) * net(torch.full((1,), t), x_t, None))[0])
    torch.testing.assert_close(gen.sample(4, x0=x0), torch.stack(expected), rtol=0, atol=1e-6)


def test_more_steps_than_trained_is_one_clear_error():
    gen = Generator(make_family("fm"), tiny_net(), spec_for(), meta={"generator_times": [0.5]})
    for steps in (3, 0, True):
        with pytest.raises(ConfigError, match="from 1 to 2"):
            gen.sample(2, steps=steps)


def test_one_step_student_trains_as_without_the_feature(tmp_path, monkeypatch):
    """k = 1 draws nothing more and runs the one-step generator itself: its weights and files are those of
    a run whose phases call the generator directly, with the re-noising code unreachable."""
    family = make_family("bridge", generator_t=0.1)
    data, spec = toy_data(family), spec_for()
    cfg = dataclasses.replace(DISTILL, steps=3)
    run = lambda d: distill(family, data, tiny_net(), spec, cfg, tmp_path / d, alpha=0.9, beta=0.95, progress=False)
    with_feature = run("a")

    def unreachable(*args, **kwargs):
        raise AssertionError("a one-step student re-noises nothing")

    monkeypatch.setattr(distillation, "renoise_inputs", unreachable)
    monkeypatch.setattr(RealUID, "_generate", lambda self, d, y, net: self.generator(d.z, y, d.z_noise))
    without = run("b")
    assert same_weights(with_feature.weights, without.weights)
    assert all(same_weights(with_feature.copies[k], without.copies[k]) for k in without.copies)
    assert (tmp_path / "a" / "curves.csv").read_text() == (tmp_path / "b" / "curves.csv").read_text()
    # Nothing new in the checkpoint, the state folder's name or the recorded config.
    assert "generator_times" not in with_feature.meta
    assert not {"generator_steps", "generator_times"} & set(in_effect(cfg)) & set(with_feature.config)


@pytest.mark.parametrize("family_name, options, times", [
    ("fm", {}, [0.3, 0.7]), ("bridge", {"generator_t": 0.1}, [0.5]), ("si", {}, [0.5])])
def test_k_step_resume_is_bit_identical(tmp_path, monkeypatch, family_name, options, times):
    family = make_family(family_name, **options)
    data, spec = toy_data(family), spec_for()
    cfg = dataclasses.replace(DISTILL, generator_steps=len(times) + 1, generator_times=times)
    teacher = tiny_net()
    run = lambda d: distill(family, data, teacher, spec, cfg, tmp_path / d, alpha=0.9, beta=0.95, progress=False)
    straight, resumed = straight_and_resumed(run, monkeypatch)
    assert_same_generators(straight, resumed)
    assert not same_weights(straight.weights, teacher.state_dict())  # it did train
    # The file records the times, so the loaded student samples its k steps.
    assert straight.meta["generator_times"] == times
    assert load_generator(straight).steps == len(times) + 1
    assert {"generator_steps", "generator_times"} <= set(straight.config)


@pytest.mark.parametrize("family_name, times, fragment", [
    ("si", [0.0005], "[0.001, 0.999)"),  # before the training range
    ("diffusion", [0.3], "start t = 0.559"),  # before the generator's own start
    ("fm", [0.6, 0.6], "increase strictly"),
    ("bridge", [0.9995], "[0, 0.999)")])
def test_times_outside_the_family_range_or_not_increasing_are_refused(family_name, times, fragment):
    cfg = dataclasses.replace(DISTILL, generator_steps=len(times) + 1, generator_times=times)
    with pytest.raises(ConfigError, match="generator_times") as err:
        generator_times(make_family(family_name), cfg)
    assert fragment in str(err.value)
    with pytest.raises(ConfigError, match="re-noises at 2 times"):
        generator_times(make_family("fm"), dataclasses.replace(DISTILL, generator_steps=3, generator_times=[0.5]))


class Recorder:
    """An in-training evaluator that keeps what it sampled (the real ones score the same call)."""

    every_steps, metrics, rank_by = 2, ("mean",), "mean"

    def __init__(self, z):
        self.z, self.seen = z, []

    def __call__(self, generator):
        with torch.no_grad():
            x = generator(self.z)
            self.seen.append((generator, x, generator(self.z)))
        return {"mean": float(x.mean())}


def test_in_training_evaluation_scores_the_whole_chain(tmp_path):
    family, times = make_family("fm"), [0.5]
    cfg = dataclasses.replace(DISTILL, steps=2, ema_decays=[0.9], generator_steps=2, generator_times=times)
    recorder = Recorder(torch.randn(16, 2, generator=torch.Generator().manual_seed(0)))
    distill(family, toy_data(family), tiny_net(), spec_for(), cfg, tmp_path, alpha=0.9, beta=0.95, progress=False,
            evaluator=recorder)
    (raw, x, again), (ema, _, _) = recorder.seen  # step 2: the raw weights, then the EMA copy
    one_step = raw.generator(recorder.z)
    assert x.shape == one_step.shape and not torch.allclose(x, one_step)  # two steps, not one
    assert not torch.equal(x, again)  # a second batch of the evaluation re-noises with its own draws
    assert (tmp_path / "eval.csv").read_text().count("\n") == 3


def test_sample_stage_writes_each_step_count_and_the_guided_teacher_as_the_library_samples(tmp_path):
    """The stage's files against ``Generator.sample(steps=j)`` and ``Teacher.sample(guidance_scale=w)`` at the
    stage's seed and batch size, bit for bit: a class-conditional 3-step student sampled at 1 and 3 steps,
    its teacher (trained with label dropout) at w = 2."""
    import numpy as np
    import yaml

    from realuid.api import load_teacher
    from realuid.checkpoints import Checkpoint, save_checkpoint
    from realuid.data import read_split, write_split
    from realuid.models import model_spec
    from realuid.stages import sample as sample_stage

    from helpers.training import MODEL

    family, fm, classes = make_family("fm"), {"name": "fm", "options": {}}, 3
    spec = model_spec(dataclasses.replace(MODEL, class_cond=True, class_dropout=0.1), (2,), classes)
    torch.manual_seed(1)
    teacher, student = build_model(spec), build_model(spec)
    save_checkpoint(Checkpoint("teacher", spec, fm, teacher.state_dict(), {"ema_0.999": teacher.state_dict()},
                               {"step": 1}), tmp_path / "teacher.pt")
    save_checkpoint(Checkpoint("generator", spec, fm, student.state_dict(), {"ema_0.999": student.state_dict()},
                               {"step": 1, "generator_times": [0.4, 0.7]}), tmp_path / "generator.pt")
    write_split(tmp_path / "test.h5", toy_data(family, n=64).x1.numpy(), attrs={"source": "toy"})
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/toy.yaml").read_text())
    params["train_teacher"]["model"].update(class_cond=True, class_dropout=0.1)
    params["distill"].update(ema_decays=[0.999], eval_every_steps=0, keep_best=False)
    cfg = dict(n_samples=40, batch_size=16, teacher_nfe=5, teacher_method="euler", generator_ema="0.999", seed=9,
               device="cpu", nproc=1, generator_steps=[1, 3], guidance_scale=2.0, precision="fp32")
    params["sample"] = cfg
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "params.yaml"), "--teacher", str(tmp_path / "teacher.pt"), "--generator",
            str(tmp_path / "generator.pt"), "--data", str(tmp_path / "test.h5"), "--out", str(tmp_path / "out")]
    assert sample_stage.cli(argv) == 0

    out = tmp_path / "out"
    assert {p.stem for p in out.glob("*.h5")} == {"teacher", "student", "student_nfe3", "student_raw",
                                                  "student_raw_nfe3", "student_ema_0_999", "student_ema_0_999_nfe3"}
    read = lambda name: read_split(out / f"{name}.h5").x1  # noqa: E731
    run = dict(seed=cfg["seed"], batch_size=cfg["batch_size"])
    generator = load_generator(tmp_path / "generator.pt", ema=0.999)
    for steps, row in ((1, "student"), (3, "student_nfe3")):
        assert np.array_equal(read(row), generator.sample(cfg["n_samples"], steps=steps, **run).numpy()), row
    raw = load_generator(tmp_path / "generator.pt")
    assert np.array_equal(read("student_raw_nfe3"), raw.sample(cfg["n_samples"], steps=3, **run).numpy())
    teacher = load_teacher(tmp_path / "teacher.pt")
    guided = teacher.sample(cfg["n_samples"], nfe=5, method="euler", guidance_scale=2.0, **run)
    plain = teacher.sample(cfg["n_samples"], nfe=5, method="euler", **run)
    assert np.array_equal(read("teacher"), guided.numpy()) and not torch.allclose(guided, plain)
    timing = json.loads((out / "timing.json").read_text())
    assert timing["teacher"]["guidance_scale"] == 2.0 and timing["student_nfe3"]["nfe"] == 3
    assert timing["student_raw_nfe3"]["nfe"] == 3 and "nfe" not in timing.get("student_raw", {})
    assert (out / "student_nfe3.png").is_file()
