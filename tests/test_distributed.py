"""Data parallelism on CPU with gloo: real processes against the one-process runs they must equal.

Worker processes are spawned with torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and enter :func:`realuid.distributed.session` exactly as a stage does; one test starts a
stage through the real ``torch.distributed.run`` entry point.

Tolerance of the equivalence: a 2-process step averages two half-batch means where one process takes
one full-batch mean, so the runs differ by float32 summation order only (~1e-7 relative per step).
After 30 teacher steps and 36 distillation optimizer steps the weights agree to ``ATOL`` below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from helpers.digits import digit_images, evaluate_inputs
from helpers.training import DISTILL, MODEL, TEACHER, same_weights, spec_for, toy_data
from realuid import distributed
from realuid.checkpoints import Checkpoint, read_checkpoint, read_state, save_checkpoint
from realuid.config import ConfigError, GanConfig, Params, build, in_effect
from realuid.distributed import SINGLE_PROCESS, Dist
from realuid.matching import make_family
from realuid.metrics import image_features
from realuid.models import build_model, data_shape, model_spec
from realuid.sampling import OneStepGenerator, draw_samples, one_step_inputs, stream_samples
from realuid.training.batches import TrainData
from realuid.stages import sample as sample_stage
from realuid.training import distillation
from realuid.training.distillation import distill
from realuid.training.teacher import train_teacher

ATOL = 1e-5  # weights after a few dozen steps, 2 processes vs 1 (measured: < 1e-6; summation order only)
WORLD = 2
TEACHER_RUN = dataclasses.replace(TEACHER, steps=30, checkpoint_every_steps=10, log_every_steps=5)
DISTILL_RUN = dataclasses.replace(DISTILL, steps=12, checkpoint_every_steps=4, log_every_steps=2)
GAN = GanConfig(enabled=True, gen_coef=1.0, disc_coef=3.0)
# (name, family, alpha, beta, classes, config): plain RealUID, and a paired, class-conditional run with the GAN head.
DISTILL_CASES = [("fm", "fm", 0.9, 0.95, 0, DISTILL_RUN),
                 ("bridge_gan", "bridge", 0.94, 0.9, 3, dataclasses.replace(DISTILL_RUN, gan=GAN)),
                 # A 3-step student: each stage's re-noising is drawn for the global batch too.
                 ("fm_3_steps", "fm", 0.9, 0.95, 0,
                  dataclasses.replace(DISTILL_RUN, generator_steps=3, generator_times=[0.3, 0.7])),
                 # Guidance of the teacher and the fake model: the fake model's guided field is one forward.
                 ("fm_guided_fake", "fm", 0.9, 0.95, 3,
                  dataclasses.replace(DISTILL_RUN, guidance_scale=2.0, guide_fake=True))]


# --------------------------------------------------------------------------------------------------
# Running a function in WORLD real processes
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, job, args) -> None:
    """One process of the job: torchrun's environment, then the stage's own session set-up."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.session(torch.device("cpu")) as dist:
        job(dist, *args)


def run_processes(job, *args, world: int = WORLD) -> None:
    mp.start_processes(_entry, args=(world, free_port(), job, args), nprocs=world, start_method="spawn")


def teacher_setup(name="fm"):
    family = make_family(name)
    return family, toy_data(family), spec_for()


def distill_setup(case):
    _, family_name, alpha, beta, classes, cfg = case
    family = make_family(family_name)
    dropout = 0.2 if cfg.guidance_scale != 1 else 0.0  # guidance needs a teacher with a null label
    data, spec = toy_data(family, classes=classes), spec_for(classes=classes, class_dropout=dropout)
    torch.manual_seed(0)
    teacher = build_model(spec)
    return family, data, teacher, spec, cfg, dict(alpha=alpha, beta=beta)


class OwnModule(torch.nn.Module):
    """A network of one's own (no spec) holding a parameter its forward never uses, as user modules may."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.unused = build_model(spec_for()), torch.nn.Parameter(torch.zeros(3))

    def forward(self, t, x, y=None):
        return self.net(t, x, y)


OWN_MODULE_RUN = dataclasses.replace(DISTILL_RUN, fake_init="teacher")


def sampling_setup(family_name: str, method: str):
    """A tiny class-conditional teacher, two generator copies and 50 inputs (7 batches of 8, the last short)."""
    family, spec = make_family(family_name), spec_for(classes=3)
    torch.manual_seed(1)
    teacher, student = build_model(spec).eval(), build_model(spec).eval()
    generators = {name: lambda start, x0, y, noise, g=OneStepGenerator(family, net): g(x0, y, noise)
                  for name, net in (("student_raw", teacher), ("student_ema", student))}
    cfg = dataclasses.make_dataclass("Cfg", ["batch_size", "teacher_nfe", "teacher_method", "seed"])(8, 6, method, 7)
    split = toy_data(family)
    inputs = lambda start, n: one_step_inputs(family, start, n, seed=100, shape=(2,), num_classes=3,  # noqa: E731
                                              x0=split.x0 if family.paired else None)
    return family, teacher, generators, inputs, cfg


SAMPLING_CASES = [("fm", "euler"), ("bridge", "sde")]
SINK_SLEEP_S = 0.3  # rank 0's sink, per batch
SLOW_SINK_SAMPLES = 32  # 4 batches of 8: two rounds of two processes, 1.2 s of rank 0's writing


def slow_sink_sampling(dist: Dist) -> dict:
    """Sharded sampling whose sink on rank 0 sleeps for every batch: this rank's wall time and the batches
    its sink got, in the order it got them."""
    family, teacher, generators, inputs, cfg = sampling_setup("fm", "euler")
    delivered = []

    def slow_sink(batch):
        time.sleep(SINK_SLEEP_S)
        delivered.append(batch)

    dist.barrier()  # both processes start the clock together
    began = time.perf_counter()
    stream_samples(family, teacher, generators, inputs, SLOW_SINK_SAMPLES, cfg, dist, sink=slow_sink)
    return {"wall_s": time.perf_counter() - began, "delivered": delivered}


FEATURE_BATCH = 16  # 90 images: 6 batches, the last short, 3 per process


def feature_setup(folder: Path) -> tuple[torch.Tensor, str]:
    """90 images and an untrained classifier feature net saved under ``folder`` (one per rank: no race)."""
    from realuid.features import FeatureNet, save_feature_net

    path = folder / f"extractor{os.environ.get('RANK', '')}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_feature_net(path, FeatureNet(1, 8, num_classes=10, width=8), {"trained": False})
    return digit_images(90)[0], str(path)


def in_training_evaluation(folder: Path, dist: Dist = SINGLE_PROCESS) -> dict[str, float]:
    """The in-training image evaluation (FID, KID of 60 samples in batches of 16 against 90 digits) of a
    fixed one-step map, as the distill loop calls it on every process."""
    from types import SimpleNamespace

    from realuid import in_training_eval as quality
    from realuid.data import Split

    images, extractor = feature_setup(folder)
    cfg = SimpleNamespace(eval_every_steps=1, eval_samples=60, batch_size=16)
    evaluate_cfg = SimpleNamespace(feature_extractor="realuid-features", kid_subset_size=20)
    evaluator = quality.build(make_family("fm"), Split(images.numpy()), cfg, evaluate_cfg, weights_path=extractor,
                              cache_root=None, num_classes=0, device=torch.device("cpu"), dist=dist)
    return evaluator(lambda x0, y, noise: torch.tanh(1.5 * x0))


def _equivalence_job(dist: Dist, folder: str) -> None:
    """Teacher and distillation runs, the rerun of the killed run, and sharded sampling; each rank saves
    what it ended with."""
    folder = Path(folder)
    out = {}
    family, data, spec = teacher_setup()
    out["teacher"] = train_teacher(family, data, spec, TEACHER_RUN, folder / "teacher", progress=False, dist=dist)
    for case in DISTILL_CASES:
        family, data, teacher, spec, cfg, coef = distill_setup(case)
        out[case[0]] = distill(family, data, teacher, spec, cfg, folder / case[0], progress=False, dist=dist, **coef)
    family = make_family("fm")
    out["own_module"] = distill(family, toy_data(family), OwnModule(), None, OWN_MODULE_RUN, folder / "own_module",
                                progress=False, dist=dist, alpha=0.9, beta=0.95)
    # The same command as the killed run, again: it resumes from the killed run's last checkpoint.
    family, data, teacher, spec, cfg, coef = distill_setup(DISTILL_CASES[0])
    out["rerun"] = distill(family, data, teacher, spec, cfg, folder / "killed", progress=False, dist=dist, **coef)
    for family_name, method in SAMPLING_CASES:
        family, teacher, generators, inputs, cfg = sampling_setup(family_name, method)
        out[f"samples_{method}"] = draw_samples(family, teacher, generators, inputs, 50, cfg, dist)[0]
    out["slow_sink"] = slow_sink_sampling(dist)
    images, extractor = feature_setup(folder)
    out["features"] = image_features(images, extractor_weights_path=extractor, batch_size=FEATURE_BATCH,
                                     device="cpu", dist=dist)
    out["in_training"] = in_training_evaluation(folder, dist)
    out = {k: dataclasses.asdict(v) if isinstance(v, Checkpoint) else v for k, v in out.items()}
    torch.save(out, folder / f"rank{dist.rank}.pt")


def _killed_job(dist: Dist, folder: str, kill_call: int) -> None:
    """The fm distillation in ``folder``, with rank 1 killed at its ``kill_call``-th optimizer step."""
    if dist.rank == 1:
        real, calls = distillation.optimizer_step, {"n": 0}

        def dying(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_call:
                os._exit(9)  # like a kill: no cleanup, no message to the peer
            return real(*args, **kwargs)

        distillation.optimizer_step = dying
    family, data, teacher, spec, cfg, coef = distill_setup(DISTILL_CASES[0])
    distill(family, data, teacher, spec, cfg, folder, progress=False, dist=dist, **coef)


# Rank 1 is killed inside generator update 7 (checkpoints every 4): the state on disk is then step 4.
KILL_CALL = 6 * (DISTILL_RUN.fake_updates_per_generator_update + 1) + 2
KILLED_AT_STEP = 4


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Two spawns of two processes: a killed distillation, then every run (its rerun included)."""
    folder = tmp_path_factory.mktemp("ddp")
    with pytest.raises(mp.ProcessExitedException, match="exit code 9"):
        run_processes(_killed_job, str(folder / "killed"), KILL_CALL)
    shutil.copytree(folder / "killed", folder / "killed_copy")  # for a rerun with one process
    run_processes(_equivalence_job, str(folder))
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for rank in ranks:  # training results travel as plain dicts (no pickled classes): rebuild them
        for run in ("teacher", *(case[0] for case in DISTILL_CASES), "own_module", "rerun"):
            rank[run] = Checkpoint(**rank[run])
    return folder, ranks


def assert_close_weights(a: dict, b: dict, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def curve_columns(path: Path) -> dict[str, np.ndarray]:
    rows = np.genfromtxt(path, delimiter=",", names=True)
    return {name: rows[name] for name in rows.dtype.names}


# --------------------------------------------------------------------------------------------------
# Two processes equal one process
# --------------------------------------------------------------------------------------------------


def test_two_process_teacher_equals_one_process(two_process_runs, tmp_path):
    folder, ranks = two_process_runs
    family, data, spec = teacher_setup()
    single = train_teacher(family, data, spec, TEACHER_RUN, tmp_path, progress=False)
    assert_close_weights(ranks[0]["teacher"].weights, single.weights)
    assert_close_weights(ranks[0]["teacher"].copies["ema_0.99"], single.copies["ema_0.99"])
    assert not same_weights(single.weights, build_model(spec).state_dict())  # it did train
    # Every process ends with the same weights, bit for bit: gradients were averaged, not merely summed.
    assert same_weights(ranks[0]["teacher"].weights, ranks[1]["teacher"].weights)
    # Logged losses are global-batch means: the average over processes equals the one-process mean.
    two, one = curve_columns(folder / "teacher/curves.csv"), curve_columns(tmp_path / "curves.csv")
    np.testing.assert_array_equal(two["step"], one["step"])
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)


@pytest.mark.parametrize("case", DISTILL_CASES, ids=[c[0] for c in DISTILL_CASES])
def test_two_process_distillation_equals_one_process(two_process_runs, tmp_path, case):
    folder, ranks = two_process_runs
    family, data, teacher, spec, cfg, coef = distill_setup(case)
    single = distill(family, data, teacher, spec, cfg, tmp_path, progress=False, **coef)
    two = ranks[0][case[0]]
    assert_close_weights(two.weights, single.weights)
    for decay in single.copies:
        assert_close_weights(two.copies[decay], single.copies[decay])
    assert not same_weights(single.weights, teacher.state_dict())  # it did train
    # EMA and the phase schedule are identical on every process.
    assert same_weights(two.weights, ranks[1][case[0]].weights)
    assert all(same_weights(two.copies[d], ranks[1][case[0]].copies[d]) for d in two.copies)
    curves_two, curves_one = curve_columns(folder / case[0] / "curves.csv"), curve_columns(tmp_path / "curves.csv")
    for name in ("fake_loss", "generator_loss"):
        np.testing.assert_allclose(curves_two[name], curves_one[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_module_of_ones_own_with_an_unused_parameter_trains_on_two_processes(two_process_runs, tmp_path):
    # DDP searches such a module's graph for unused parameters (a network realuid builds skips the search:
    # see the next test), so the unused parameter neither hangs nor fails the run.
    _, ranks = two_process_runs
    family = make_family("fm")
    single = distill(family, toy_data(family), OwnModule(), None, OWN_MODULE_RUN, tmp_path, progress=False,
                     alpha=0.9, beta=0.95)
    assert_close_weights(ranks[0]["own_module"].weights, single.weights)
    assert same_weights(ranks[0]["own_module"].weights, ranks[1]["own_module"].weights)
    assert torch.equal(single.weights["unused"], torch.zeros(3))


def _tiny_diffusers_teacher(tmp_path: Path, classes: int) -> tuple[dict, dict]:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from realuid.teachers.diffusers import load_diffusers_teacher

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=classes or None)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    spec, _, record = load_diffusers_teacher(tmp_path)
    return spec, make_family(record["name"], **record["options"])


@pytest.mark.parametrize("arch, classes, gan", [("mlp", 0, False), ("mlp", 3, True), ("unet", 0, False),
                                                ("unet", 3, True), ("diffusers", 3, False)])
def test_every_parameter_of_a_built_network_gets_a_gradient_in_its_phase(tmp_path, arch, classes, gan):
    """The precondition of DDP without unused-parameter search (``Dist.data_parallel``), for every
    architecture realuid builds: after each phase's backward, every parameter the phase trains has a
    gradient (else a multi-process run would fail at its next step)."""
    if arch == "diffusers":
        spec, family = _tiny_diffusers_teacher(tmp_path, classes)
    else:
        shape = (2,) if arch == "mlp" else (1, 8, 8)
        model = dataclasses.replace(MODEL, class_cond=bool(classes), channels=32,
                                    attention_resolutions="4" if arch == "unet" else "")
        spec, family = model_spec(model, shape, classes), make_family("fm")
    shape = data_shape(spec)
    gen = torch.Generator().manual_seed(0)
    data = TrainData(torch.rand(8, *shape, generator=gen) * 2 - 1,
                     torch.randint(0, classes, (8,), generator=gen) if classes else None)
    torch.manual_seed(0)
    teacher = build_model(spec)
    cfg = dataclasses.replace(DISTILL_RUN, batch_size=8, gan=GAN if gan else DISTILL_RUN.gan, fake_init="teacher")
    uid = distillation.RealUID(family, teacher, spec, cfg, alpha=0.9, beta=0.95, device=torch.device("cpu"))
    uid.fake_step(data, torch.Generator().manual_seed(1))
    assert [n for n, p in uid.fake_trained.named_parameters() if p.grad is None] == []
    uid.generator_step(data, torch.Generator().manual_seed(2))
    assert [n for n, p in uid.generator.net.named_parameters() if p.grad is None] == []


def test_only_rank_zero_writes_the_state(two_process_runs):
    folder, _ = two_process_runs
    for run in ("teacher", "fm", "bridge_gan", "killed"):
        assert sorted(p.name for p in (folder / run).iterdir()) == ["checkpoint.pt", "curves.csv"], run


@pytest.mark.parametrize("family_name, method", SAMPLING_CASES)
def test_sharded_sampling_equals_one_process_exactly(two_process_runs, family_name, method):
    _, ranks = two_process_runs
    family, teacher, generators, inputs, cfg = sampling_setup(family_name, method)
    single, seconds = draw_samples(family, teacher, generators, inputs, 50, cfg)
    sharded = ranks[0][f"samples_{method}"]
    assert sharded.keys() == single.keys() == {"teacher", *generators}
    for who in single:
        assert single[who].shape == (50, 2)
        assert torch.equal(sharded[who], single[who]), who
    assert ranks[1][f"samples_{method}"] is None  # only rank 0 receives the samples
    assert set(seconds) == set(single)


def test_the_other_process_does_not_wait_while_rank_zero_writes_samples(two_process_runs):
    # Writing in rank 0's sink used to sit between two gathers: rank 1 waited for every round's write
    # (here 1.2 s in all) in the next gather or in the final all-gather. Now rank 0 writes behind them.
    ranks = [rank["slow_sink"] for rank in two_process_runs[1]]
    total_sleep_s = SINK_SLEEP_S * SLOW_SINK_SAMPLES / 8
    assert ranks[0]["wall_s"] >= total_sleep_s  # rank 0 returns once every batch is written ...
    assert ranks[1]["wall_s"] < total_sleep_s / 2, ranks[1]["wall_s"]  # ... rank 1 never waited for it
    family, teacher, generators, inputs, cfg = sampling_setup("fm", "euler")
    single, _ = draw_samples(family, teacher, generators, inputs, SLOW_SINK_SAMPLES, cfg)
    delivered = ranks[0]["delivered"]
    assert len(delivered) == 4 and all(len(batch["teacher"]) == 8 for batch in delivered)
    for who in single:  # every batch, in order
        assert torch.equal(torch.cat([batch[who] for batch in delivered]), single[who]), who
    assert ranks[1]["delivered"] == []


@pytest.mark.parametrize("failing_call", [2, 7], ids=["raised-at-a-later-round", "raised-at-the-end"])
def test_an_exception_in_the_sink_reaches_the_caller(failing_call):
    # 7 batches in one process: one round each. The sink raises while the main thread samples on; its
    # exception, the same object, comes out of stream_samples and nothing is written after it.
    family, teacher, generators, inputs, cfg = sampling_setup("fm", "euler")
    error, calls = OSError(28, "No space left on device"), []

    def failing_sink(batch):
        calls.append(batch)
        if len(calls) == failing_call:
            raise error

    with pytest.raises(OSError) as raised:
        stream_samples(family, teacher, generators, inputs, 50, cfg, sink=failing_sink)
    assert raised.value is error and len(calls) == failing_call
    assert not [t for t in threading.enumerate() if t.name == "sample-writer"]


def test_an_exception_in_sampling_stops_the_writer_before_it_comes_out():
    family, teacher, generators, inputs, cfg = sampling_setup("fm", "euler")
    calls = []

    def failing_generator(start, x0, y, noise):
        if start == 3 * cfg.batch_size:
            raise RuntimeError("the fourth batch fails")
        return x0

    with pytest.raises(RuntimeError, match="the fourth batch fails"):
        stream_samples(family, teacher, {"student": failing_generator}, inputs, 50, cfg, sink=calls.append)
    assert not [t for t in threading.enumerate() if t.name == "sample-writer"]
    assert len(calls) <= 3  # at most the batches handed off before the error; none after it


def test_sharded_image_features_equal_one_process_exactly(two_process_runs, tmp_path):
    _, ranks = two_process_runs
    images, extractor = feature_setup(tmp_path)
    single = image_features(images, extractor_weights_path=extractor, batch_size=FEATURE_BATCH, device="cpu")
    sharded = ranks[0]["features"]
    assert sharded.keys() == single.keys() and single["features"].shape[0] == 90
    for layer in single:
        assert torch.equal(sharded[layer], single[layer]), layer
    assert ranks[1]["features"] is None  # only rank 0 receives the features


def test_in_training_evaluation_shared_by_two_processes_equals_one(two_process_runs, tmp_path):
    # Both processes sample, extract and score their shares and end with the one-process numbers (up to
    # the float64 summation order of the FID statistics and KID values).
    _, ranks = two_process_runs
    single = in_training_evaluation(tmp_path)
    assert set(single) == {"kid_mean", "fid"} and single["fid"] > 0
    for rank in ranks:
        assert rank["in_training"] == pytest.approx(single, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Killed and rerun; resumed with another number of processes
# --------------------------------------------------------------------------------------------------


def test_killed_two_process_run_resumes_bit_identically(two_process_runs):
    folder, ranks = two_process_runs
    killed = read_state(folder / "killed_copy/checkpoint.pt")
    assert killed["step"] == KILLED_AT_STEP
    # The same command again, with two processes: the uninterrupted two-process run, bit for bit.
    rerun, straight = ranks[0]["rerun"], ranks[0]["fm"]
    assert same_weights(rerun.weights, straight.weights)
    assert all(same_weights(rerun.copies[d], straight.copies[d]) for d in straight.copies)
    assert (folder / "killed/curves.csv").read_text() == (folder / "fm/curves.csv").read_text()


def test_two_process_state_resumes_in_one_process(two_process_runs, tmp_path):
    folder, _ = two_process_runs
    family, data, teacher, spec, cfg, coef = distill_setup(DISTILL_CASES[0])
    single = distill(family, data, teacher, spec, cfg, tmp_path, progress=False, **coef)
    # The state holds nothing per process: one process continues the killed two-process run.
    one_after_two = distill(family, data, teacher, spec, cfg, folder / "killed_copy", progress=False, **coef)
    assert_close_weights(one_after_two.weights, single.weights)
    for decay in single.copies:
        assert_close_weights(one_after_two.copies[decay], single.copies[decay])


# --------------------------------------------------------------------------------------------------
# Pieces without processes
# --------------------------------------------------------------------------------------------------


def test_rows_split_the_global_batch_evenly():
    assert [Dist(rank=r, world_size=4).rows(64) for r in range(4)] == [slice(0, 16), slice(16, 32),
                                                                        slice(32, 48), slice(48, 64)]
    assert SINGLE_PROCESS.rows(7) == slice(0, 7)
    with pytest.raises(ValueError, match="batch_size 64 is not divisible by the 3 processes"):
        Dist(rank=0, world_size=3).rows(64)


def test_indivisible_global_batch_stops_training_before_any_work(tmp_path):
    family, data, spec = teacher_setup()
    three = Dist(rank=0, world_size=3)  # no process group needed: the check comes first
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        train_teacher(family, data, spec, TEACHER_RUN, tmp_path / "t", progress=False, dist=three)
    family, data, teacher, spec, cfg, coef = distill_setup(DISTILL_CASES[0])
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        distill(family, data, teacher, spec, cfg, tmp_path / "d", progress=False, dist=three, **coef)
    assert not (tmp_path / "t/checkpoint.pt").exists() and not (tmp_path / "d/checkpoint.pt").exists()


def test_single_process_collectives_change_nothing():
    tensors = [torch.randn(3, 2), torch.randn(4)]
    before = [t.clone() for t in tensors]
    SINGLE_PROCESS.average_(tensors)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))
    assert SINGLE_PROCESS.all_gather(5) == [5] and SINGLE_PROCESS.gather_to_main("x") == ["x"]
    assert SINGLE_PROCESS.same_everywhere(3, "anything") == 3 and SINGLE_PROCESS.is_main


@pytest.mark.parametrize("n, batch, world", [(50, 8, 2), (50, 8, 3), (16, 8, 4), (5, 10, 2)])
def test_batches_are_dealt_round_robin_and_cover_every_sample_once(n, batch, world):
    starts = [Dist(rank=r, world_size=world).batch_starts(n, batch) for r in range(world)]
    assert sorted(s for shard in starts for s in shard) == list(range(0, n, batch))
    assert all(s // batch % world == r for r, shard in enumerate(starts) for s in shard)


def test_launch_only_when_asked_and_not_already_under_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.launch_if_needed(1, "realuid.stages.distill", ["--params", "p.yaml"]) is None
    monkeypatch.setenv("WORLD_SIZE", "16")  # e.g. a multi-node torchrun job: its world holds
    monkeypatch.setenv("RANK", "5")
    assert distributed.launch_if_needed(8, "realuid.stages.distill", []) is None
    assert distributed.launched_rank() == 5
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            distributed.launch_if_needed(bad, "realuid.stages.distill", [])
    cmd = distributed.launch_command(4, "realuid.stages.sample", ["--out", "x y"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                   "-m", "realuid.stages.sample", "--out", "x y"]


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    cpu = torch.device("cpu")
    assert distributed.process_device(cpu, 3, 4) == cpu
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.process_device(torch.device("cuda"), 2, 4) == torch.device("cuda", 2)
    with pytest.raises(RuntimeError, match="local rank 5 has no GPU"):
        distributed.process_device(torch.device("cuda"), 5, 8)
    with pytest.raises(ValueError, match="names one GPU"):
        distributed.process_device(torch.device("cuda", 1), 0, 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the launcher binds one GPU per process
    assert distributed.process_device(torch.device("cuda"), 3, 4) == torch.device("cuda", 0)


def test_nproc_settings_are_validated_and_leave_the_state_key_alone():
    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    assert all(params[s]["nproc"] == 1 for s in ("train_teacher", "distill", "sample"))
    params["distill"]["nproc"] = 0
    with pytest.raises(ConfigError, match="distill.nproc: must be >= 1"):
        build(Params, params)
    del params["sample"]["nproc"]
    with pytest.raises(ConfigError, match="missing key sample.nproc"):
        build(Params, {**params, "distill": {**params["distill"], "nproc": 1}})
    assert in_effect(dataclasses.replace(DISTILL, nproc=8)) == in_effect(DISTILL)
    assert "nproc" not in in_effect(TEACHER) and "steps" in in_effect(TEACHER)


# --------------------------------------------------------------------------------------------------
# The stage CLI under the real torchrun entry point
# --------------------------------------------------------------------------------------------------


def stage_inputs(folder: Path, nproc: int) -> list[str]:
    """A test split, teacher and generator files and a params file asking for ``nproc`` sample processes."""
    from realuid.data import write_split

    family, spec = make_family("fm"), spec_for()
    torch.manual_seed(2)
    teacher, student = build_model(spec), build_model(spec)
    fm = {"name": "fm", "options": {}}
    save_checkpoint(Checkpoint("teacher", spec, fm, teacher.state_dict(), {"ema_0.999": teacher.state_dict()},
                               {"step": 1}), folder / "teacher.pt")
    save_checkpoint(Checkpoint("generator", spec, fm, student.state_dict(),
                               {"ema_0.99": teacher.state_dict(), "ema_0.999": student.state_dict()},
                               {"step": 1, "alpha": 0.9, "beta": 0.9}), folder / "generator.pt")
    write_split(folder / "test.h5", toy_data(family, n=64).x1.numpy(), attrs={"source": "toy"})
    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("configs/toy.yaml").read_text())  # points
    params["sample"].update(n_samples=60, batch_size=16, teacher_nfe=5, device="cpu", nproc=nproc)
    (folder / f"params{nproc}.yaml").write_text(yaml.safe_dump(params))
    return ["--params", str(folder / f"params{nproc}.yaml"), "--teacher", str(folder / "teacher.pt"),
            "--generator", str(folder / "generator.pt"), "--data", str(folder / "test.h5"),
            "--out", str(folder / f"out{nproc}")]


def test_sample_stage_under_torchrun_writes_the_one_process_files(tmp_path, subprocess_env):
    assert sample_stage.cli(stage_inputs(tmp_path, 1)) == 0
    argv = stage_inputs(tmp_path, 2)
    # As dvc.yaml runs it: the stage reads sample.nproc = 2 and starts itself under torchrun.
    done = subprocess.run([sys.executable, "-m", "realuid.stages.sample", *argv], env=subprocess_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sample: teacher") == 1  # one report, from rank 0
    one, two = tmp_path / "out1", tmp_path / "out2"
    h5 = sorted(p.name for p in one.glob("*.h5"))
    assert h5 == sorted(p.name for p in two.glob("*.h5")) and "student.h5" in h5 and "teacher.h5" in h5
    for name in h5:  # byte-identical HDF5 files: the same samples in the same order
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert json.loads((two / "timing.json").read_text())["processes"] == 2
    assert not list(tmp_path.glob(".out*")), "a temporary folder was left behind"


def test_non_finite_samples_stop_the_sample_stage_with_one_line_and_no_output(tmp_path, capsys):
    # The check runs in rank 0's writer thread; its error ends the stage as before: one line, nothing written.
    argv = stage_inputs(tmp_path, 1)
    generator = read_checkpoint(tmp_path / "generator.pt", "generator", needed_by="the test")
    nan = {k: torch.full_like(v, float("nan")) for k, v in generator.copies["ema_0.99"].items()}
    save_checkpoint(dataclasses.replace(generator, copies={**generator.copies, "ema_0.99": nan}),
                    tmp_path / "generator.pt")
    assert sample_stage.cli(argv) == 1
    assert capsys.readouterr().err == "error: the student_ema_0_99 generator produced non-finite samples\n"
    assert not (tmp_path / "out1").exists() and not list(tmp_path.glob(".out1*"))


@pytest.mark.slow
def test_distill_stage_under_torchrun_matches_one_process(tmp_path, subprocess_env):
    """The distill stage as dvc.yaml runs it, with distill.nproc = 2, against nproc = 1."""
    from realuid.data import write_split

    family, spec = make_family("fm"), spec_for()
    torch.manual_seed(2)
    teacher = build_model(spec)
    save_checkpoint(Checkpoint("teacher", spec, {"name": "fm", "options": {}}, teacher.state_dict(),
                               {"ema_0.999": teacher.state_dict()}, {"step": 1}), tmp_path / "teacher.pt")
    write_split(tmp_path / "train.h5", toy_data(family, n=512).x1.numpy(), attrs={"source": "toy"})
    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("configs/toy.yaml").read_text())  # points
    # In-training evaluation on, keeping the best copy: rank 0 alone evaluates and writes the table.
    params["distill"].update(steps=8, batch_size=64, checkpoint_every_steps=4, log_every_steps=2, device="cpu",
                             eval_every_steps=4, eval_samples=64, keep_best=True)
    results = {}
    for nproc in (1, 2):
        params["distill"]["nproc"] = nproc
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        argv = ["--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "train.h5"),
                "--teacher", str(tmp_path / "teacher.pt"), "--features", str(tmp_path),
                "--out", str(tmp_path / f"out{nproc}"), "--state", str(tmp_path / f"state{nproc}")]
        done = subprocess.run([sys.executable, "-m", "realuid.stages.distill", *argv], env=subprocess_env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = read_checkpoint(tmp_path / f"out{nproc}/generator.pt", "generator", needed_by="the test")
        # The state folder is named without the process count: the other count would resume it.
        assert [p.name for p in (tmp_path / f"state{nproc}").iterdir()] == [p.name for p in (tmp_path / "state1").iterdir()]
    assert_close_weights(results[2].weights, results[1].weights)
    assert (tmp_path / "out2/curves.csv").read_text().count("\n") == (tmp_path / "out1/curves.csv").read_text().count("\n")
    tables = {n: (tmp_path / f"out{n}/eval.csv").read_text().splitlines() for n in (1, 2)}
    assert len(tables[2]) == len(tables[1]) == 1 + 2 * 3  # header, steps 4 and 8 x (raw + 2 EMA copies), once
    for one, two in zip(tables[1][1:], tables[2][1:]):  # same rows; values as close as the weights
        a, b = one.split(","), two.split(",")  # step, copy, ..., sliced_wasserstein2
        assert a[:2] == b[:2] and abs(float(a[-1]) - float(b[-1])) < 1e-4
    assert results[2].meta["best"]["copy"] == results[1].meta["best"]["copy"] and "best" in results[2].copies

    # A global batch that does not split over the processes: a clear error from each, exit code 1.
    params["distill"].update(batch_size=63, nproc=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv[argv.index("--out") + 1] = str(tmp_path / "out_bad")
    done = subprocess.run([sys.executable, "-m", "realuid.stages.distill", *argv], env=subprocess_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "[rank 1] error: batch_size 63 is not divisible by the 2 processes" in done.stderr
    # The last line is a worker's error line, not torchrun's report of the failed workers.
    assert "ChildFailedError" not in done.stderr
    assert re.match(r"\[rank \d\] error: ", done.stderr.strip().splitlines()[-1]), done.stderr[-2000:]
    assert not (tmp_path / "out_bad").exists()


def test_evaluate_stage_under_torchrun_writes_the_one_process_metrics(tmp_path, subprocess_env):
    from realuid.stages import evaluate as evaluate_stage

    params, argv = evaluate_inputs(tmp_path)
    params["evaluate"]["fid_blocks"] = 2  # FID also over 2 seed blocks of 50 samples each
    params["sample"]["n_samples"] = 100
    outputs = {}
    for nproc, features in ((1, "features_cached"), (2, "features_bare")):
        params["evaluate"]["nproc"] = nproc
        (tmp_path / f"params{nproc}.yaml").write_text(yaml.safe_dump(params))
        args = ["--params", str(tmp_path / f"params{nproc}.yaml"), *argv, "--features", str(tmp_path / features),
                "--out", str(tmp_path / f"metrics{nproc}.json")]
        if nproc == 1:
            assert evaluate_stage.cli(args) == 0
        else:  # as dvc.yaml runs it: the stage reads evaluate.nproc = 2 and starts itself under torchrun
            done = subprocess.run([sys.executable, "-m", "realuid.stages.evaluate", *args], env=subprocess_env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout.count("evaluate: student ") == 1  # one report, from rank 0
        outputs[nproc] = json.loads((tmp_path / f"metrics{nproc}.json").read_text())
    assert set(outputs[1]) == {"teacher", "student", "student_raw", "real", "protocol"}
    assert {"fid", "kid_mean", "precision", "recall", "class_accuracy", "fid_mean", "fid_min", "fid_std"} <= set(
        outputs[1]["student"])
    assert outputs[1]["student"]["fid_min"] <= outputs[1]["student"]["fid_mean"] and outputs[1]["student"]["fid_std"] > 0
    assert {k: outputs[1]["protocol"][k] for k in ("fid_blocks", "fid_block_size", "n_generated", "reference_size")} == {
        "fid_blocks": 2, "fid_block_size": 50, "n_generated": 100, "reference_size": 200}
    assert outputs[1]["teacher"]["fid"] < outputs[1]["student"]["fid"] < outputs[1]["student_raw"]["fid"]
    # Each process sums its share of rows (FID statistics) and scores its share of KID subsets and of
    # precision/recall rows: the same numbers up to float64 summation order.
    assert outputs[2]["protocol"] == outputs[1]["protocol"] and outputs[2].keys() == outputs[1].keys()
    for who in ("teacher", "student", "student_raw", "real"):
        assert outputs[2][who] == pytest.approx(outputs[1][who], rel=1e-9, abs=1e-12), who
    # The features stage's cache is read, never written: the bare folder stays bare.
    assert sorted(p.name for p in (tmp_path / "features_bare").iterdir()) == ["extractor.pt"]


RANK0_DELAY_S = 8.0  # rank 0's own work (writing metrics.json) made this slow ...
SHORT_TIMEOUT_S = 3  # ... against collectives that give up after this long


def _slow_rank_zero_job(rank: int, world: int, port: int, folder: str) -> None:
    """The evaluate stage in one process of two, with a short collective timeout; rank 0's write of the
    metrics file (its rank-0-only work) sleeps first. Each rank records when its stage returned."""
    import time

    from realuid.stages import common
    from realuid.stages import evaluate as evaluate_stage

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.COLLECTIVE_TIMEOUT = __import__("datetime").timedelta(seconds=SHORT_TIMEOUT_S)
    real_write = common.write_json

    def slow_write(*args, **kwargs):
        time.sleep(RANK0_DELAY_S)
        (Path(folder) / "rank0_wrote").write_text(repr(time.time()))
        return real_write(*args, **kwargs)

    common.write_json = slow_write
    argv = (Path(folder) / "argv").read_text().split("\n")
    assert evaluate_stage.cli(argv) == 0  # under torchrun's environment: this process is one of the two
    (Path(folder) / f"rank{rank}_done").write_text(repr(time.time()))


@pytest.mark.slow
def test_the_other_processes_never_wait_on_rank_zeros_own_work(tmp_path):
    # Rank 0 alone writes the metrics file; made slower than the collective timeout, it must neither time
    # the other process out nor hold it: rank 1 returns before rank 0 has written.
    params, argv = evaluate_inputs(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "argv").write_text("\n".join(["--params", str(tmp_path / "params.yaml"), *argv, "--features",
                                              str(tmp_path / "features_bare"), "--out", str(tmp_path / "m.json")]))
    mp.start_processes(_slow_rank_zero_job, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    rank1_done = float((tmp_path / "rank1_done").read_text())
    rank0_wrote = float((tmp_path / "rank0_wrote").read_text())
    assert rank1_done < rank0_wrote, "rank 1 waited for rank 0's write"
    assert json.loads((tmp_path / "m.json").read_text())["student"]["fid"] > 0
