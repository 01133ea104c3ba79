"""The checkpoint schema (safetensors + JSON record, content hash) and the Python API on top of it.

Unit tests write and read checkpoints directly; the stage tests run a tiny fm pipeline once (prepare,
features, train_teacher, distill, finetune enabled, sample) and check what its files hold, that
``load_generator`` / ``load_teacher`` sample exactly what the sample stage wrote, and that every wrong
file given to a stage is one ``error:`` line naming what it is and what the stage needs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import realuid
from helpers.training import MODEL, spec_for
from realuid import checkpoints
from realuid.api import Generator, Teacher, load_generator, load_teacher
from realuid.checkpoints import Checkpoint, CheckpointError, read_checkpoint, read_state, save_checkpoint, save_state
from realuid.models import build_model, model_spec

FM = {"name": "fm", "options": {}}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def tiny(kind="generator", classes=0, family=FM) -> Checkpoint:
    spec = spec_for(classes=classes)
    torch.manual_seed(0)
    raw, ema = build_model(spec).state_dict(), build_model(spec).state_dict()
    copies = {"ema_0.99": ema} if kind == "teacher" else {"ema_0.9": ema, "ema_0.99": raw, "best": ema}
    meta = {"step": 3} if kind == "teacher" else {"step": 3, "alpha": 0.9, "beta": 0.95,
                                                  "best": {"copy": "ema_0.9", "step": 2, "sliced_wasserstein2": 0.1}}
    return Checkpoint(kind, spec, family, raw, copies, meta, {"steps": 3, "betas": [0.0, 0.999]})


# --------------------------------------------------------------------------------------------------
# The file format
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["teacher", "generator"])
def test_round_trip_keeps_every_field_and_identical_content_gives_identical_bytes(tmp_path, kind):
    original = tiny(kind)
    save_checkpoint(original, tmp_path / "a.pt")
    save_checkpoint(original, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "a.pt").read_bytes()[8:9] == b"{"  # safetensors: a JSON header, no pickle
    back = read_checkpoint(tmp_path / "a.pt", kind, needed_by="the test")
    assert (back.kind, back.spec, back.family, back.meta, back.config) == (
        kind, original.spec, original.family, original.meta, original.config)
    assert same_weights(back.weights, original.weights)
    assert back.copies.keys() == original.copies.keys()
    assert all(same_weights(back.copies[k], original.copies[k]) for k in original.copies)
    assert back.code["version"] == realuid.__version__ and "commit" in back.code


def test_a_header_length_that_starts_like_a_pickle_is_still_read_as_safetensors(tmp_path):
    # The file opens with its header's length (8 bytes, little-endian); a low byte of 0x80 is also how
    # a pickle starts. Pad the record until it happens.
    for pad in range(256):
        ckpt = dataclasses.replace(tiny("teacher"), meta={"note": "x" * pad})
        save_checkpoint(ckpt, tmp_path / "t.pt")
        if (tmp_path / "t.pt").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "t.pt").read_bytes()[0] == 0x80
    assert read_checkpoint(tmp_path / "t.pt", "teacher", needed_by="the test").meta == ckpt.meta


def test_copies_are_chosen_by_decay_or_name(tmp_path):
    ckpt = tiny()
    assert ckpt.state_dict(None) is ckpt.weights and ckpt.state_dict("none") is ckpt.weights
    assert ckpt.state_dict(0.9) is ckpt.copies["ema_0.9"] and ckpt.state_dict("0.99") is ckpt.copies["ema_0.99"]
    assert ckpt.state_dict("best") is ckpt.copies["best"]
    with pytest.raises(CheckpointError, match=r"has no copy 0\.5; it has the raw weights \('none'\) and best, ema_0\.9"):
        ckpt.state_dict(0.5)


def test_resumable_state_round_trips_exactly(tmp_path):
    net = build_model(spec_for())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(2):
        net(torch.rand(4), torch.randn(4, 2)).square().mean().backward()
        opt.step()
        sched.step()
    state = {"step": 2, "model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "extra": {0: (1, 2.5), "nan": float("nan"), "none": None, "flags": [True, "x"]}}
    save_state(state, tmp_path / "checkpoint.pt")
    back = read_state(tmp_path / "checkpoint.pt")
    assert back["opt"]["param_groups"] == opt.state_dict()["param_groups"]  # tuples and key order included
    assert back["sched"] == sched.state_dict() and back["step"] == 2
    assert back["extra"][0] == (1, 2.5) and np.isnan(back["extra"]["nan"]) and back["extra"]["flags"] == [True, "x"]
    for index, moments in opt.state_dict()["state"].items():
        assert same_weights(back["opt"]["state"][index], moments)
    twin = torch.optim.Adam(build_model(spec_for()).parameters(), lr=1e-3, betas=(0.0, 0.999))
    twin.load_state_dict(back["opt"])  # what resuming does
    with pytest.raises(CheckpointError, match="is a training-state checkpoint; sample needs a generator checkpoint"):
        read_checkpoint(tmp_path / "checkpoint.pt", "generator", needed_by="sample")


def test_a_flipped_byte_in_tensor_data_is_refused(tmp_path):
    save_checkpoint(tiny(), tmp_path / "g.pt")
    raw = bytearray((tmp_path / "g.pt").read_bytes())
    raw[-5] ^= 0x01  # the last tensor's data
    (tmp_path / "g.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is damaged: its content does not match the sha256"):
        read_checkpoint(tmp_path / "g.pt", "generator", needed_by="sample")


def test_the_commit_is_optional(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert checkpoints.code_provenance() == {"version": realuid.__version__, "commit": None, "dirty": None}
    save_checkpoint(tiny(), tmp_path / "g.pt")
    assert read_checkpoint(tmp_path / "g.pt", "generator", needed_by="the test").code["commit"] is None


def test_format_1_checkpoints_still_load(tmp_path):
    spec = spec_for()
    raw, ema = build_model(spec).state_dict(), build_model(spec).state_dict()
    torch.save({"format": "realuid-checkpoint/1", "kind": "teacher", "spec": spec, "family": FM, "step": 5,
                "state_dict": raw, "ema_state_dict": ema}, tmp_path / "teacher.pt")
    torch.save({"format": "realuid-checkpoint/1", "kind": "generator", "spec": spec, "family": FM, "step": 5,
                "alpha": 0.9, "beta": 0.9, "state_dict": raw, "ema": {"0.999": ema}}, tmp_path / "generator.pt")
    teacher = load_teacher(tmp_path / "teacher.pt")
    assert same_weights(teacher.net.state_dict(), ema)  # the teacher samples with its EMA copy, as before
    generator = load_generator(tmp_path / "generator.pt", ema=0.999)
    assert generator.copy == "ema_0.999" and same_weights(generator.net.state_dict(), ema)
    assert generator.checkpoint_meta == {"step": 5, "alpha": 0.9, "beta": 0.9}
    # A format-1 training state resumes too.
    torch.save({"step": 4, "model": raw}, tmp_path / "checkpoint.pt")
    assert read_state(tmp_path / "checkpoint.pt")["step"] == 4


class RunsCode:
    """Unpickling this would create ``marker``: a stand-in for a checkpoint carrying code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def wrong_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are no teacher nor generator: {label: (path, what the message calls it)}."""
    spec = spec_for()
    files = {"bare": (folder / "bare.pt", "is a bare tensor"),
             "plain": (folder / "plain.pt", r"is a plain state dict \(weights without a model spec\)"),
             "empty": (folder / "empty.pt", r"is an empty file \(0 bytes\)"),
             "pickle": (folder / "evil.pt", "contains objects other than tensors"),
             "authors": (folder / "authors.pt", "is a RealUID authors' checkpoint"),
             "state": (folder / "checkpoint.pt", "is a training-state checkpoint"),
             "text": (folder / "notes.pt", "is neither a safetensors nor a torch file")}
    torch.save(torch.zeros(3), files["bare"][0])
    torch.save(build_model(spec).state_dict(), files["plain"][0])
    files["empty"][0].write_bytes(b"")
    files["pickle"][0].write_bytes(pickle.dumps({"weights": RunsCode(folder / "ran")}))
    torch.save({"net_model": build_model(spec).state_dict(), "ema_models": {}}, files["authors"][0])
    save_state({"step": 1, "model": build_model(spec).state_dict()}, files["state"][0])
    files["text"][0].write_text("not weights\n")
    return files


@pytest.mark.parametrize("kind", ["teacher", "generator"])
def test_every_wrong_file_says_what_it_is_and_what_was_needed(tmp_path, kind):
    for label, (path, what) in wrong_files(tmp_path).items():
        with pytest.raises(CheckpointError, match=rf"^{path} {what}") as refused:
            read_checkpoint(path, kind, needed_by="distill")
        message = str(refused.value)
        assert "\n" not in message and "weights_only" not in message, label
        if label != "pickle":
            assert message.endswith(f"distill needs a {kind} checkpoint") or "(import it with" in message, label
    assert not (tmp_path / "ran").exists()  # the pickle's code never ran
    other = "generator" if kind == "teacher" else "teacher"
    save_checkpoint(tiny(other), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=f"is a {other} checkpoint; distill needs a {kind} checkpoint$"):
        read_checkpoint(tmp_path / "other.pt", kind, needed_by="distill")


# --------------------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------------------


def test_import_realuid_stays_light():
    import subprocess
    import sys

    code = "import sys, realuid; assert 'torch' not in sys.modules; assert callable(realuid.load_generator)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(realuid.__file__).parents[1])})


SAMPLED_FAMILIES = pytest.mark.parametrize(
    "family, classes", [(FM, 0), (FM, 3), ({"name": "bridge", "options": {"generator_t": 0.1}}, 0)],
    ids=["fm", "fm-conditional", "bridge-with-noise"])


def saved_pair(tmp_path, family, classes) -> tuple[Generator, Teacher]:
    """A tiny generator (its copy ema_0.9) and teacher of ``family``, written and loaded back."""
    save_checkpoint(tiny("generator", classes, family), tmp_path / "g.pt")
    save_checkpoint(tiny("teacher", classes, family), tmp_path / "t.pt")
    return load_generator(tmp_path / "g.pt", ema=0.9), load_teacher(tmp_path / "t.pt")


SAMPLERS = pytest.mark.parametrize(
    "family, classes, shape", [(FM, 0, (2,)), (FM, 3, (2,)), ({"name": "bridge", "options": {"generator_t": 0.1}}, 0, (2,)),
                               (FM, 0, (1, 8, 8))],
    ids=["fm", "fm-conditional", "bridge-with-noise", "fm-unet"])


def samplers(tmp_path, family, classes, shape):
    """A tiny generator and teacher of ``family`` (an MLP on points, a UNet on 8x8 images), and a bridge's x0."""
    spec = spec_for(shape, classes) if len(shape) == 1 else \
        model_spec(dataclasses.replace(MODEL, channels=32), shape, classes)
    torch.manual_seed(0)
    teacher = Checkpoint("teacher", spec, family, build_model(spec).state_dict(), {}, {"step": 3}, {})
    generator = dataclasses.replace(teacher, kind="generator", weights=build_model(spec).state_dict(),
                                    meta={"step": 3, "alpha": 0.9, "beta": 0.95})
    save_checkpoint(generator, tmp_path / "g.pt")
    save_checkpoint(teacher, tmp_path / "t.pt")
    x0 = torch.randn(5, *shape) if family["name"] == "bridge" else None  # a bridge reads corrupted inputs, cycled
    return load_generator(tmp_path / "g.pt"), load_teacher(tmp_path / "t.pt"), x0


@SAMPLERS
def test_sample_i_is_bit_identical_in_a_batch_of_the_same_size_whatever_n(tmp_path, family, classes, shape):
    generator, teacher, x0 = samplers(tmp_path, family, classes, shape)
    assert isinstance(generator, Generator) and isinstance(teacher, Teacher) and generator.shape == shape
    few = generator.sample(6, seed=7, batch_size=3, x0=x0)
    assert few.shape == (6, *shape)
    assert torch.equal(few, generator.sample(11, seed=7, batch_size=3, x0=x0)[:6])  # the 11th: a batch of 2
    assert torch.equal(generator.sample(4, seed=7, x0=x0), generator.sample(8, seed=7, batch_size=4, x0=x0)[:4])
    assert not torch.allclose(few, generator.sample(6, seed=8, batch_size=3, x0=x0))  # the seed matters
    method = "sde" if family["name"] == "bridge" else "euler"  # the SDE's noise is drawn per batch
    drawn = teacher.sample(4, nfe=3, method=method, seed=7, x0=x0)
    assert torch.equal(drawn, teacher.sample(8, nfe=3, method=method, seed=7, batch_size=4, x0=x0)[:4])
    assert not torch.equal(drawn, teacher.sample(4, nfe=3, method=method, seed=8, x0=x0))


# Across batch sizes a network's kernels sum in another order: float32 rounding, a few units in the last
# place of values of order 1, well inside this bound.
ROUNDING = dict(rtol=1e-6, atol=1e-6)


@SAMPLERS
def test_sample_i_agrees_to_float_rounding_across_batch_sizes(tmp_path, family, classes, shape):
    generator, teacher, x0 = samplers(tmp_path, family, classes, shape)
    few = generator.sample(4, seed=7, x0=x0)
    for batch_size in (1, 3, 5):
        torch.testing.assert_close(generator.sample(8, seed=7, batch_size=batch_size, x0=x0)[:4], few, **ROUNDING)
    assert not torch.allclose(few, generator.sample(4, seed=8, x0=x0), **ROUNDING)  # the bound is tight enough
    if family["name"] != "bridge":  # the ODE depends on its inputs only
        torch.testing.assert_close(teacher.sample(8, nfe=3, method="euler", seed=7, batch_size=3)[:4],
                                   teacher.sample(4, nfe=3, method="euler", seed=7), **ROUNDING)


@SAMPLED_FAMILIES
def test_given_noise_replaces_the_per_seed_draws(tmp_path, family, classes):
    from realuid.sampling import seeded_noise

    generator, teacher = saved_pair(tmp_path, family, classes)
    x0 = torch.randn(5, 2) if family["name"] == "bridge" else None
    seeded = seeded_noise(list(range(7, 13)), (2,))  # the draws of seed 7 for 6 samples
    other = torch.randn(6, 2)
    assert torch.equal(generator.sample(6, noise=seeded, batch_size=4, x0=x0), generator.sample(6, seed=7, x0=x0))
    assert not torch.allclose(generator.sample(6, noise=other, x0=x0), generator.sample(6, seed=7, x0=x0))
    if family["name"] != "bridge":  # a bridge's teacher starts from x0 alone
        assert torch.equal(teacher.sample(6, nfe=3, method="euler", noise=seeded, batch_size=4),
                           teacher.sample(6, nfe=3, method="euler", seed=7, batch_size=4))
        assert not torch.allclose(teacher.sample(6, nfe=3, method="euler", noise=other),
                                  teacher.sample(6, nfe=3, method="euler", seed=7))


def test_wrong_noise_is_one_clear_error(tmp_path):
    save_checkpoint(tiny("generator"), tmp_path / "g.pt")
    save_checkpoint(tiny("teacher"), tmp_path / "t.pt")
    save_checkpoint(tiny("teacher", family={"name": "bridge", "options": {}}), tmp_path / "bridge.pt")
    generator, teacher = load_generator(tmp_path / "g.pt"), load_teacher(tmp_path / "t.pt")
    for noise, message in [(torch.zeros(3, 2), r"shape \[4, 2\] \(n samples of the model's shape\), got \[3, 2\]"),
                           (torch.zeros(4, 2, dtype=torch.float64), "the model's dtype torch.float32, got torch.float64"),
                           (torch.zeros(4, 2, device="meta"), "noise is on meta, the model on cpu"),
                           ([[0.0, 0.0]] * 4, "noise must be a tensor")]:
        for sample in (lambda: generator.sample(4, noise=noise), lambda: teacher.sample(4, nfe=2, method="euler", noise=noise)):
            with pytest.raises(ValueError, match=message):
                sample()
    with pytest.raises(ValueError, match="the bridge teacher starts from x0"):
        load_teacher(tmp_path / "bridge.pt").sample(2, nfe=2, method="sde", x0=torch.zeros(2, 2), noise=torch.zeros(2, 2))


def test_api_refuses_what_it_cannot_sample(tmp_path):
    save_checkpoint(tiny("generator", 3), tmp_path / "g.pt")
    save_checkpoint(tiny("generator", 0, {"name": "bridge", "options": {}}), tmp_path / "bridge.pt")
    conditional = load_generator(tmp_path / "g.pt")
    labels = torch.tensor([2, 2, 2, 2])
    assert not torch.equal(conditional.sample(4, labels=labels), conditional.sample(4))  # default: i % 3
    with pytest.raises(ValueError, match="one class per sample"):
        conditional.sample(4, labels=[1, 2])
    with pytest.raises(ValueError, match="paired: pass x0"):
        load_generator(tmp_path / "bridge.pt").sample(2)
    with pytest.raises(CheckpointError, match="is a generator checkpoint; load_teacher needs a teacher checkpoint"):
        load_teacher(tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="for family bridge; sample is set up for family fm"):
        load_generator(tmp_path / "bridge.pt", needed_by="sample", expect_family="fm")


# --------------------------------------------------------------------------------------------------
# Through the stages
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny 2-D fm project run through every stage up to sample, fine-tuning on (in-process CLIs)."""
    from helpers.project import TOY, make_project, tiny_params
    from helpers.stages import run_stage, stage_named

    project = make_project(tmp_path_factory.mktemp("ckpt"),
                           tiny_params(TOY, finetune__enabled=True, finetune__steps=2), git=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        for name in ("prepare", "features", "train_teacher", "distill", "finetune", "sample"):
            run_stage(stage_named(name), patch)
    return project


def test_stage_checkpoints_round_trip(pipeline):
    from realuid.config import load_params

    params = load_params(pipeline / "params.yaml")
    teacher = read_checkpoint(pipeline / "data/train_teacher/teacher.pt", "teacher", needed_by="the test")
    assert teacher.copies.keys() == {f"ema_{params.train_teacher.ema_decay!r}"}
    assert teacher.meta["step"] == params.train_teacher.steps and teacher.config["steps"] == params.train_teacher.steps
    assert teacher.spec == model_spec(params.train_teacher.model, (2,), 0) and teacher.family["name"] == "fm"
    distilled = read_checkpoint(pipeline / "data/distill/generator.pt", "generator", needed_by="the test")
    tuned = read_checkpoint(pipeline / "data/finetune/generator.pt", "generator", needed_by="the test")
    emas = {f"ema_{d!r}" for d in params.distill.ema_decays}
    assert distilled.copies.keys() == tuned.copies.keys() == emas
    assert distilled.meta["alpha"] == params.alpha and tuned.meta["alpha"] == params.finetune.alpha
    assert tuned.meta["finetuned_from"]["copy"] == params.finetune.from_ema
    assert tuned.config["steps"] == params.finetune.steps
    assert not same_weights(distilled.weights, tuned.weights)  # it did fine-tune
    for path in ("data/distill/generator.pt", "data/finetune/generator.pt"):  # a model that rebuilds itself
        assert load_generator(pipeline / path, ema=params.sample.generator_ema).sample(3).shape == (3, 2)


def test_api_samples_what_the_sample_stage_wrote(pipeline):
    from realuid.config import load_params
    from realuid.data import read_split

    cfg = load_params(pipeline / "params.yaml").sample
    generator = load_generator(pipeline / "data/finetune/generator.pt", ema=cfg.generator_ema)
    teacher = load_teacher(pipeline / "data/train_teacher/teacher.pt")
    staged = {who: torch.as_tensor(read_split(pipeline / f"data/sample/{who}.h5").x1) for who in ("student", "teacher")}
    assert torch.equal(generator.sample(cfg.n_samples, seed=cfg.seed, batch_size=cfg.batch_size), staged["student"])
    assert torch.equal(teacher.sample(cfg.n_samples, nfe=cfg.teacher_nfe, method=cfg.teacher_method, seed=cfg.seed,
                                      batch_size=cfg.batch_size), staged["teacher"])
    # Any n, any batch size: the first samples are the stage's (up to float summation order in a batch).
    torch.testing.assert_close(generator.sample(4, seed=cfg.seed), staged["student"][:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(generator.sample(8, seed=cfg.seed, batch_size=3)[:4], staged["student"][:4],
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(teacher.sample(4, nfe=cfg.teacher_nfe, method=cfg.teacher_method, seed=cfg.seed),
                               staged["teacher"][:4], rtol=0, atol=1e-6)
    raw = load_generator(pipeline / "data/finetune/generator.pt")  # ema=None: the raw weights
    staged_raw = torch.as_tensor(read_split(pipeline / "data/sample/student_raw.h5").x1)
    assert torch.equal(raw.sample(cfg.n_samples, seed=cfg.seed, batch_size=cfg.batch_size), staged_raw)


def stage_error(pipeline, stage: str, swap: dict, capsys) -> str:
    """Run ``stage``'s CLI with the arguments of ``swap`` replaced; returns its one stderr line."""
    from helpers.stages import stage_argv, stage_named

    argv = stage_argv(stage_named(stage))
    for flag, value in swap.items():
        argv[argv.index(flag) + 1] = str(value)
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(pipeline)
    try:
        code = importlib.import_module(f"realuid.stages.{stage}").cli(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_flipped_byte_is_one_error_line_through_a_stage(pipeline, tmp_path, capsys):
    damaged = tmp_path / "generator.pt"
    raw = bytearray((pipeline / "data/finetune/generator.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x10  # somewhere in the tensor data
    damaged.write_bytes(bytes(raw))
    line = stage_error(pipeline, "sample", {"--generator": damaged, "--out": tmp_path / "out"}, capsys)
    assert f"{damaged} is damaged" in line
    assert not (tmp_path / "out").exists()


def test_wrong_checkpoints_given_to_stages_say_what_they_are(pipeline, tmp_path, capsys):
    teacher, generator = pipeline / "data/train_teacher/teacher.pt", pipeline / "data/distill/generator.pt"
    line = stage_error(pipeline, "distill", {"--teacher": generator, "--out": tmp_path / "d"}, capsys)
    assert line == f"error: {generator} is a generator checkpoint; distill needs a teacher checkpoint"
    line = stage_error(pipeline, "sample", {"--generator": teacher, "--out": tmp_path / "s"}, capsys)
    assert line == f"error: {teacher} is a teacher checkpoint; sample needs a generator checkpoint"
    line = stage_error(pipeline, "finetune", {"--generator": teacher, "--out": tmp_path / "f"}, capsys)
    assert line == f"error: {teacher} is a teacher checkpoint; finetune needs a generator checkpoint"
    for label, (path, what) in wrong_files(tmp_path).items():
        line = stage_error(pipeline, "distill", {"--teacher": path, "--out": tmp_path / "d"}, capsys)
        assert line.startswith(f"error: {path} ") and "weights_only" not in line, label
        assert (label == "pickle") == ("contains objects other than tensors" in line), line
        if label in ("bare", "plain", "empty"):
            assert line.endswith("distill needs a teacher checkpoint"), line
    assert not (tmp_path / "ran").exists() and not (tmp_path / "d").exists()
