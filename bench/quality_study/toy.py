"""One job of the 2-D study: a teacher, its samples at NFE 99 and 1, and the data-free and RealUID students.

A job is a (family, data set, seed, variant). Before any of them, a budget job per (family, data set)
trains one teacher up a ladder of step counts and picks the budget on the validation set
(:func:`choose_budget`); the ``main`` and ``exact`` jobs train their teachers for that many steps.
Variants:

- ``main``: the teacher is trained for the chosen budget; the fake model starts from the teacher (the
  authors' setting).
- ``imperfect``: the same teacher stopped after a few hundred steps (deliberately under-trained).
- ``exact``: flow matching on the 8-mode mixture with the closed-form velocity as the teacher. The
  generator starts from a trained MLP teacher (so both students start where the ``main`` ones do) and
  the fake model from random weights, since an MLP cannot copy the closed form.

Both students of a job share the teacher, the seed and hence every random draw of the loop, so their
difference is the effect of ``alpha, beta`` alone.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realuid import metrics
from realuid.analytic import ExactFMTeacher, gmm8
from realuid.matching import make_family
from realuid.api import load_generator, load_teacher
from realuid.models import model_spec
from realuid.sampling import OneStepGenerator, sample_teacher
from realuid.training.batches import TrainData
from realuid.training.distillation import distill
from realuid.training.teacher import train_teacher

from . import tasks
from .settings import FAMILY_OPTIONS, TEACHER_METHOD, StudySettings

VARIANTS = ("main", "imperfect", "exact")
STUDENTS = ("data_free", "realuid")
SCATTER_POINTS = 2000  # points kept for the figures (first seed only)
# A budget is good enough when more steps on the ladder gain less than this on the validation set.
BUDGET_SW2_FACTOR = 1.1  # sliced W2 within 10% of the ladder's best
BUDGET_PRECISION_GAP = 0.02  # k-NN precision within 0.02 of the ladder's best


@dataclass(frozen=True)
class ToyJob:
    family: str
    dataset: str  # a toy name, or "user" for the --points file
    seed: int
    variant: str = "main"

    @property
    def key(self) -> str:
        return f"toy-{self.variant}-{self.family}-{self.dataset}-s{self.seed}"


def distances(points: np.ndarray, reference: np.ndarray, *, n_projections: int, seed: int) -> dict[str, float]:
    """Sliced W2 (data units), squared energy distance, and k-NN precision/recall (k = 3) of points [N, D]
    to reference [M, D]. The moment-like distances barely move for a sample set that fills the data's hull
    instead of its structure; k-NN precision (samples inside the data's neighbourhoods) does.

    A sample set with NaN/Inf (a diverged sampler) scores NaN rather than stopping the study.
    """
    if not np.isfinite(points).all():
        return dict.fromkeys(("sw2", "energy", "knn_precision", "knn_recall"), float("nan"))
    return {
        "sw2": metrics.sliced_wasserstein2(points, reference, n_projections=n_projections, seed=seed),
        "energy": metrics.energy_distance(points, reference),
        **metrics.knn_precision_recall(points, reference),
    }


def _generator_inputs(family, task: tasks.PointTask, n: int, seed: int) -> torch.Tensor:
    """Inputs [n, D] of generators and teacher samplers: noise, or the corrupted floor points (bridge)."""
    if family.paired:
        return torch.as_tensor(task.floor_x0[:n])
    return torch.randn(n, task.dim, generator=torch.Generator().manual_seed(10_000 + seed))


@torch.no_grad()
def _one_step(family, net: torch.nn.Module, z: torch.Tensor) -> np.ndarray:
    return OneStepGenerator(family, net)(z).numpy()


def _teacher_config(settings: StudySettings, seed: int, steps: int, *, shortest: int | None = None):
    """The toy teacher's config for ``steps`` steps; its warm-up fits in a quarter of ``shortest``
    (default ``steps``), so that an under-trained teacher does learn something, and every rung of the
    budget ladder shares one schedule with the runs trained at that budget."""
    cfg = settings.toy.teacher
    warmup = min(cfg.optim.warmup_steps, (shortest or steps) // 4)
    return dataclasses.replace(cfg, seed=seed, steps=steps, checkpoint_every_steps=steps,
                               optim=dataclasses.replace(cfg.optim, warmup_steps=warmup))


def _train_mlp_teacher(family, train: TrainData, spec: dict, settings: StudySettings, seed: int, steps: int,
                       state_dir: Path, *, shortest: int | None = None) -> torch.nn.Module:
    cfg = _teacher_config(settings, seed, steps, shortest=shortest)
    result = train_teacher(family, train, spec, cfg, state_dir, progress=False)
    return load_teacher(result).net  # its EMA copy, as the pipeline samples it


def _sample_teacher(family, teacher, z: torch.Tensor, settings: StudySettings, seed: int) -> np.ndarray:
    return sample_teacher(family, teacher, z, nfe=settings.toy.teacher_nfe, method=TEACHER_METHOD[family.name],
                          rng=torch.Generator().manual_seed(seed)).numpy()


def choose_budget(rungs: list[dict]) -> int:
    """The smallest budget on the ladder within reach of the ladder's best on the validation set.

    rungs: ``[{"steps", "sw2", "knn_precision", ...}]`` in increasing steps. Within reach: sliced W2 at
    most ``BUDGET_SW2_FACTOR`` times the best and k-NN precision at most ``BUDGET_PRECISION_GAP`` below
    the best; both, because a teacher that smears mass over the data's hull keeps a small sliced W2.
    When no rung is within reach of both bests, the rung of the best precision: the metric that sees
    the structure decides. When every rung diverged, the top rung; its NaN rows show in the report.
    """
    finite = [r for r in rungs if np.isfinite(r["sw2"]) and np.isfinite(r["knn_precision"])]
    if not finite:
        return int(rungs[-1]["steps"])
    best_sw2 = min(r["sw2"] for r in finite)
    best_precision = max(r["knn_precision"] for r in finite)
    for r in finite:
        if r["sw2"] <= BUDGET_SW2_FACTOR * best_sw2 and r["knn_precision"] >= best_precision - BUDGET_PRECISION_GAP:
            return int(r["steps"])
    return int(max(finite, key=lambda r: r["knn_precision"])["steps"])


def run_teacher_budget(family_name: str, dataset: str, settings: StudySettings, work_dir: Path,
                       user: tasks.UserPoints | None = None) -> dict:
    """Train one teacher (first seed) up the ladder ``toy.teacher_budget_steps`` and score each rung.

    The teacher runs once to the top rung with the learning-rate schedule of the top rung and stops at
    each lower rung to be sampled (NFE 99, EMA copy) and scored against the validation set, never the
    reference set the tables report. With the default constant learning rate a rung is the teacher
    that a run of exactly that many steps would train. Returns the rungs, the validation floor, the
    chosen budget and the seconds.
    """
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    start = time.perf_counter()
    toy, seed = settings.toy, settings.seeds[0]
    family = make_family(family_name, **FAMILY_OPTIONS[family_name])
    task = build_task(ToyJob(family_name, dataset, seed), settings, user)
    x1, x0 = task.train_tensors()
    spec = model_spec(toy.teacher.model, (task.dim,), 0)
    cfg = _teacher_config(settings, seed, max(toy.teacher_budget_steps), shortest=min(toy.teacher_budget_steps))
    z = _generator_inputs(family, task, len(task.validation), seed)
    measure = lambda pts: distances(pts, task.validation, n_projections=toy.n_projections, seed=seed)  # noqa: E731
    rungs = []
    for steps in sorted(toy.teacher_budget_steps):
        result = train_teacher(family, TrainData(x1, None, x0), spec, cfg, work_dir, progress=False, stop_after=steps)
        rungs.append({"steps": steps, **measure(_sample_teacher(family, load_teacher(result).net, z, settings, seed))})
    return {"family": family_name, "dataset": dataset, "rungs": rungs, "floor": measure(task.floor),
            "chosen_steps": choose_budget(rungs), "seconds": time.perf_counter() - start}


def build_task(job: ToyJob, settings: StudySettings, user: tasks.UserPoints | None = None) -> tasks.PointTask:
    toy, paired = settings.toy, job.family == "bridge"
    if job.dataset == "user":
        if user is None:
            raise ValueError("a 'user' job needs the user's points")
        return tasks.user_task(user, job.seed, n_train=toy.n_train, n_eval=toy.n_eval, paired=paired,
                               pairing_strength=toy.pairing_strength)
    return tasks.toy_task(job.dataset, job.seed, n_train=toy.n_train, n_eval=toy.n_eval, paired=paired,
                          pairing_strength=toy.pairing_strength)


def run_toy_job(job: ToyJob, settings: StudySettings, work_dir: Path,
                user: tasks.UserPoints | None = None, budget: dict | None = None) -> dict:
    """Run one job from scratch in ``work_dir`` (emptied first) and return its plain-data results.

    ``budget``: the :func:`run_teacher_budget` result whose chosen steps the teacher trains for (the
    ``imperfect`` variant trains ``toy.imperfect_teacher_steps``); without one, ``toy.teacher.steps``.

    Returns ``{"job", "metrics": {row: {"sw2", "energy"}}, "curves": {student: [{"step", "sw2", "energy"}]},
    "samples": {row: [n, D] array} (first seed only), "seconds": {...}}``. Rows: ``floor`` (a second real
    sample), ``teacher_nfe99``, ``teacher_nfe1`` (the teacher read once: the students' starting point),
    ``data_free``, ``realuid`` (EMA generators) and ``data_free_raw``, ``realuid_raw``; the exact-teacher
    variant adds ``student_start`` (the network the students start from).
    """
    if job.variant not in VARIANTS:
        raise ValueError(f"unknown variant {job.variant!r}; expected one of {VARIANTS}")
    if job.variant == "exact" and (job.family != "fm" or job.dataset != "gmm8"):
        raise ValueError("the exact teacher exists for flow matching on gmm8 only")
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    toy, clock = settings.toy, {}
    family = make_family(job.family, **FAMILY_OPTIONS[job.family])
    task = build_task(job, settings, user)
    x1, x0 = task.train_tensors()
    train = TrainData(x1, None, x0)
    spec = model_spec(toy.teacher.model, (task.dim,), 0)
    measure = lambda pts, ref=task.reference: distances(pts, ref, n_projections=toy.n_projections, seed=job.seed)  # noqa: E731

    start = time.perf_counter()
    steps = budget["chosen_steps"] if budget is not None else toy.teacher.steps
    shortest = min(toy.teacher_budget_steps)
    if job.variant == "imperfect":
        steps = shortest = toy.imperfect_teacher_steps
    mlp_teacher = _train_mlp_teacher(family, train, spec, settings, job.seed, steps, work_dir / "teacher",
                                     shortest=shortest)
    teacher, student_init, fake_init = mlp_teacher, None, toy.distill.fake_init
    if job.variant == "exact":
        teacher, student_init, fake_init = ExactFMTeacher(gmm8()).eval(), mlp_teacher, "random"
    clock["teacher_train"] = time.perf_counter() - start

    z = _generator_inputs(family, task, len(task.reference), job.seed)
    start = time.perf_counter()
    samples = {
        "floor": task.floor,
        "teacher_nfe99": _sample_teacher(family, teacher, z, settings, job.seed),
        # Read once at the generator's source time, the teacher is the students' starting point...
        "teacher_nfe1": _one_step(family, teacher, z),
    }
    if student_init is not None:  # ...unless they start from another network (the exact-teacher runs).
        samples["student_start"] = _one_step(family, student_init, z)
    start_row = "student_start" if student_init is not None else "teacher_nfe1"
    clock["teacher_sample"] = time.perf_counter() - start

    curves = {}
    n_curve = min(toy.n_curve, len(z))
    z_curve, ref_curve = z[:n_curve], task.reference[:n_curve]
    for student, (alpha, beta) in zip(STUDENTS, ((1.0, 1.0), (settings.alpha, settings.beta))):
        start = time.perf_counter()
        curve = [{"step": 0, **measure(samples[start_row][:n_curve], ref_curve)}]

        def on_log(row, generator, curve=curve):
            with torch.no_grad():
                curve.append({"step": int(row["step"]), **measure(generator(z_curve).numpy(), ref_curve)})

        cfg = dataclasses.replace(toy.distill, seed=job.seed, fake_init=fake_init)
        result = distill(family, train, teacher, spec, cfg, work_dir / student, alpha=alpha, beta=beta,
                         progress=False, student_init=student_init, on_log=on_log)
        with torch.no_grad():  # the library's generator, fed the study's own noise z
            samples[student] = load_generator(result, ema=toy.student_ema)(z).numpy()
            samples[f"{student}_raw"] = load_generator(result)(z).numpy()
        curves[student] = curve
        clock[student] = time.perf_counter() - start

    results = {name: measure(points) for name, points in samples.items()}
    keep = job.seed == settings.seeds[0]
    return {
        "job": dataclasses.asdict(job),
        "metrics": results,
        "curves": curves,
        "samples": {k: v[:SCATTER_POINTS] for k, v in samples.items()} if keep else {},
        "reference": task.reference[:SCATTER_POINTS] if keep else None,
        "teacher_steps": steps,
        "seconds": clock,
    }
