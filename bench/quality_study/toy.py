"""One job of the 2-D study: a teacher, its samples at NFE 99 and 1, and the data-free and RealUID students.

A job is a (family, data set, seed, variant). Variants:

- ``main``: the teacher is trained in full; the fake model starts from the teacher (the authors' setting).
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
from realuid.models import OneStepGenerator, model_spec
from realuid.sampling import sample_teacher
from realuid.training import TrainData, distill, train_teacher

from . import tasks
from .settings import FAMILY_OPTIONS, TEACHER_METHOD, StudySettings

VARIANTS = ("main", "imperfect", "exact")
STUDENTS = ("data_free", "realuid")
SCATTER_POINTS = 2000  # points kept for the figures (first seed only)


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


def _train_mlp_teacher(family, train: TrainData, spec: dict, settings: StudySettings, seed: int, steps: int,
                       state_dir: Path) -> torch.nn.Module:
    cfg = settings.toy.teacher
    # An under-trained teacher keeps the warm-up short enough that it does learn something.
    cfg = dataclasses.replace(cfg, seed=seed, steps=steps, checkpoint_every_steps=steps,
                              optim=dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, steps // 4)))
    result = train_teacher(family, train, spec, cfg, state_dir, progress=False)
    return load_teacher(result).net  # its EMA copy, as the pipeline samples it


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
                user: tasks.UserPoints | None = None) -> dict:
    """Run one job from scratch in ``work_dir`` (emptied first) and return its plain-data results.

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
    steps = toy.imperfect_teacher_steps if job.variant == "imperfect" else toy.teacher.steps
    mlp_teacher = _train_mlp_teacher(family, train, spec, settings, job.seed, steps, work_dir / "teacher")
    teacher, student_init, fake_init = mlp_teacher, None, toy.distill.fake_init
    if job.variant == "exact":
        teacher, student_init, fake_init = ExactFMTeacher(gmm8()).eval(), mlp_teacher, "random"
    clock["teacher_train"] = time.perf_counter() - start

    z = _generator_inputs(family, task, len(task.reference), job.seed)
    start = time.perf_counter()
    samples = {
        "floor": task.floor,
        "teacher_nfe99": sample_teacher(family, teacher, z, nfe=toy.teacher_nfe, method=TEACHER_METHOD[job.family],
                                        rng=torch.Generator().manual_seed(job.seed)).numpy(),
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
        "seconds": clock,
    }
