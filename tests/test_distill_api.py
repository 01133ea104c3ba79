"""realuid.distill: the pipeline's RealUID loop from Python, on a teacher module of one's own or a realuid.Teacher."""

import re

import pytest
import torch
import yaml

import realuid
from helpers.training import spec_for
from realuid.api import Teacher
from realuid.checkpoints import CheckpointError, read_checkpoint
from realuid.config import ConfigError
from realuid.distill_api import DEFAULT_SETTINGS, distill_settings
from realuid.matching import make_family
from realuid.models import MLP, build_model

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
QUICK = dict(steps=6, batch_size=32, fake_updates_per_generator_update=2, ema_decays=[0.9], device="cpu")


def own_teacher(classes: int = 0) -> MLP:
    torch.manual_seed(0)
    return MLP(dim=2, hidden_dim=16, depth=1, time_embed_dim=8, num_classes=classes)


def points(n: int = 128) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1)) * 0.3 + 0.5


def test_the_docstring_example_runs(tmp_path, monkeypatch):
    doc = realuid.distill.__doc__
    block = doc.split("::\n\n", 1)[1].split("\n\n    ``teacher``", 1)[0]
    code = "\n".join(line[8:] for line in block.splitlines())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "realuid.distill.__doc__", "exec"), scope)  # noqa: S102 - the documented example itself
    x, ema = scope["x"], scope["ema"]
    assert x.shape == (1000, 2) and torch.isfinite(x).all()
    saved = read_checkpoint(tmp_path / "runs/gmm8/generator.pt", "generator", needed_by="test")
    assert saved.spec is None and saved.meta["step"] == 100 and saved.meta["data_shape"] == [2]
    assert torch.equal(ema.sample(8, seed=3), ema.sample(8, seed=3)) and ema.copy == "ema_0.999"
    assert not torch.allclose(ema.sample(8, seed=3), scope["generator"].sample(8, seed=3))  # EMA differs from raw


def test_defaults_are_the_distill_section_of_params_yaml():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]
    assert section.pop("eval_every_steps") > 0 and DEFAULT_SETTINGS["eval_every_steps"] == 0  # off from Python
    assert {k: v for k, v in DEFAULT_SETTINGS.items() if k != "eval_every_steps"} == section
    cfg = distill_settings(steps=7, generator_optim={"lr": 1e-3}, ema_decays=(0.5,))
    assert (cfg.steps, cfg.generator_optim.lr, cfg.generator_optim.decay, cfg.ema_decays) == (7, 1e-3, "cosine", [0.5])
    with pytest.raises(ConfigError, match=r"unknown key distill\.stepz \(valid keys of distill: steps,"):
        distill_settings(stepz=3)
    with pytest.raises(ConfigError, match=r"distill\.generator_optim\.lr: must be > 0"):
        distill_settings(generator_optim={"lr": -1.0})


def test_an_interrupted_run_called_again_ends_with_the_same_weights(tmp_path):
    data, labels = points(), torch.arange(128) % 3
    whole = realuid.distill(own_teacher(3), data, labels=labels, family="fm", alpha=0.9, beta=0.95,
                            out=tmp_path / "whole", progress=False, **QUICK)
    realuid.distill(own_teacher(3), data, labels=labels, family="fm", alpha=0.9, beta=0.95, out=tmp_path / "cut",
                    progress=False, stop_after=4, **QUICK)
    assert read_checkpoint(tmp_path / "cut/generator.pt", "generator", needed_by="test").meta["step"] == 4
    again = realuid.distill(own_teacher(3), data, labels=labels, family="fm", alpha=0.9, beta=0.95,
                            out=tmp_path / "cut", progress=False, **QUICK)
    a, b = (read_checkpoint(tmp_path / f"{d}/generator.pt", "generator", needed_by="test") for d in ("whole", "cut"))
    assert a.meta == b.meta and a.meta["num_classes"] == 3
    for copy in (None, "ema_0.9"):
        assert all(torch.equal(v, b.state_dict(copy)[k]) for k, v in a.state_dict(copy).items())
    assert not all(torch.equal(v, own_teacher(3).state_dict()[k]) for k, v in a.weights.items())  # it trained
    assert torch.equal(whole.sample(6, seed=2), again.sample(6, seed=2))
    reloaded = realuid.load_generator(tmp_path / "cut/generator.pt", net=own_teacher(3))
    assert reloaded.num_classes == 3 and torch.equal(reloaded.sample(6, seed=2), again.sample(6, seed=2))
    with pytest.raises(CheckpointError, match="weights of a module of one's own .* load_generator\\(path, net=MyModule"):
        realuid.load_generator(tmp_path / "cut/generator.pt")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'cut'} holds a run started with another alpha, settings")):
        realuid.distill(own_teacher(3), data, labels=labels, family="fm", alpha=0.8, beta=0.95, out=tmp_path / "cut",
                        **{**QUICK, "steps": 7})


def test_a_realuid_teacher_gives_a_generator_that_load_generator_rebuilds(tmp_path):
    spec = spec_for(classes=3)
    torch.manual_seed(0)
    teacher = Teacher(make_family("fm"), build_model(spec), spec)
    data, labels = points(), torch.arange(128) % 3
    generator = realuid.distill(teacher, data, labels=labels, alpha=1.0, beta=1.0, out=tmp_path / "run",
                                progress=False, eval_every_steps=3, eval_samples=64, **QUICK)
    loaded = realuid.load_generator(tmp_path / "run/generator.pt")
    assert loaded.spec == spec and loaded.family.name == "fm"
    noise = torch.randn(5, 2)
    assert torch.equal(loaded.sample(5, noise=noise), generator.sample(5, noise=noise))
    rows = (tmp_path / "run/eval.csv").read_text().splitlines()  # in-training evaluation of every copy
    assert rows[0] == "step,copy,energy_distance,sliced_wasserstein2" and len(rows) == 1 + 2 * 2


def test_bad_input_is_one_error_before_any_work(tmp_path):
    spec = spec_for(classes=3)
    conditional = Teacher(make_family("fm"), build_model(spec), spec)
    cases = [
        (dict(teacher=own_teacher(), data=points()), "needs family= .*'fm'"),
        (dict(teacher=conditional, data=points()), r"class-conditional \(3 classes\): pass labels"),
        (dict(teacher=conditional, data=points(), labels=torch.full((128,), 3)), r"labels must lie in \[0, 3\)"),
        (dict(teacher=conditional, data=torch.randn(128, 3), labels=torch.zeros(128, dtype=torch.long)),
         r"samples of shape \[2\], data has \[3\]"),
        (dict(teacher=own_teacher(), data=points(), family="bridge"), "bridge family is paired: pass x0"),
        (dict(teacher=own_teacher(), data=points(), family="fm", fake_init="random"), "fake_init: a teacher module"),
        (dict(teacher=own_teacher(), data=points(16), family="fm"), "batch_size 32 is larger than the data"),
        (dict(teacher=own_teacher(), data=points(), family="fm", keep_best=True), "keep_best: the best copy"),
        (dict(teacher=own_teacher(), data=points(), family="fm", alpha=0.0), r"alpha must be a number in \(0, 1\]"),
        (dict(teacher=own_teacher(), data=points(), family="fm", stepz=3), "unknown key distill.stepz"),
        (dict(teacher=torch.nn.Identity(), data=points(), family="fm"), "the teacher has no parameters"),
    ]
    for case, message in cases:
        kwargs = {"alpha": 0.9, "beta": 0.95, "out": tmp_path / "out", **QUICK, **case}
        with pytest.raises(ValueError, match=message):
            realuid.distill(**kwargs)
        assert not (tmp_path / "out").exists(), message
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder and holds no run of realuid.distill"):
        realuid.distill(own_teacher(), points(), family="fm", alpha=0.9, beta=0.95, out=tmp_path / "busy", **QUICK)


def test_a_family_given_for_a_teacher_may_place_the_generator_only(tmp_path):
    spec = spec_for()
    teacher = Teacher(make_family("diffusion", schedule="vp", prediction="eps"), build_model(spec), spec)
    run = dict(alpha=0.9, beta=0.95, progress=False, **{**QUICK, "steps": 1})
    generator = realuid.distill(teacher, points(), family=make_family("diffusion", generator_sigma=1.5),
                                out=tmp_path / "placed", **run)
    assert generator.family.generator_sigma == 1.5
    with pytest.raises(ValueError, match="only the generator_\\* options may differ"):
        realuid.distill(teacher, points(), family=make_family("diffusion", schedule="ve"), out=tmp_path / "ve", **run)
    assert not (tmp_path / "ve").exists()
