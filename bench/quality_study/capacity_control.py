"""``bench/capacity_control``: is the one-step gap of the 2-D students the map's or the training's?

The control (Luhman & Luhman 2021): the same one-step network as the RealUID student (the teacher's
weights read at ``t_src`` through :class:`realuid.sampling.OneStepGenerator`) trained by plain MSE
regression on a fixed set of (noise ``z`` -> teacher ODE sample from ``z``) pairs, with the student's
batch, optimizer and number of generator updates. Regression on deterministic pairs asks nothing of the
training but to fit a map, so:

- the control reaches its teacher where RealUID does not: the map exists within the network's reach and
  the gap is RealUID's training (then the levers of :data:`LEVERS` are measured one at a time);
- the control does not reach it either: the gap is the map's (the network as a one-step map), or the
  budget's, which the control's longer runs (:data:`CONTROL_UPDATES`) tell apart at little cost.

Flow matching on gmm8, checkerboard (``realuid.data.make_toy``) and the spiral of bench/points/spiral.npz,
with the teachers, data splits and distillation settings of ``bench/quality`` (bench/results/RESULTS.md,
RESULTS-spiral.md). Besides them: RealUID k = 2 and k = 4 students. Every generated set is scored against
the held-out reference set (the tables) and the validation set (where a setting would be chosen).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realuid.api import load_generator
from realuid.atomic import atomic_write
from realuid.matching import make_family
from realuid.models import build_model, model_spec
from realuid.sampling import OneStepGenerator
from realuid.training.batches import TrainData
from realuid.training.distillation import distill
from realuid.training.optimization import EMA, make_optimizer, optimizer_step

from . import settings as presets
from . import tasks
from .cli import BENCH, Job, JobCache, accumulate_wall_seconds, code_version, run_jobs, settings_digest
from .figures import _pyplot, _save
from .stats import phrase, summarize, verdict
from .toy import _generator_inputs, _sample_teacher, _train_mlp_teacher, distances
from .training_levers import DataEndWeightedFM, widened_mlp

FAMILY = "fm"
DATASETS = ("gmm8", "checkerboard", "spiral")
SPIRAL_POINTS = BENCH / "points" / "spiral.npz"
# The budget bench/quality chose for every flow-matching teacher on these three sets (the top of its
# ladder [1500, 3000, 6000], RESULTS.md and RESULTS-spiral.md section 1); not chosen again here.
TEACHER_STEPS = 6000
# The target: a student within this factor of its teacher's sliced W2 ...
TARGET_SW2_RATIO = 1.5
# ... and with k-NN precision at most this far below the teacher's.
TARGET_PRECISION_GAP = 0.05
# Luhman & Luhman's recipe: a fixed set of teacher pairs, drawn once, regressed on.
N_PAIRS = 20000
# The control's budgets as multiples of the student's generator updates: 1x is the like-for-like
# control; the longer runs tell a budget gap from a capacity gap. 16x on the lever data sets only.
CONTROL_UPDATES = (1, 4, 16)
# A k-step student re-noises its estimate at k - 1 evenly spaced times.
K_STEP_TIMES = {2: [0.5], 4: [0.25, 0.5, 0.75]}
# The training's levers, each changed from the study's RealUID student (spiral by default). Levers join
# with "+" into one run that changes all of them: "updates_4x+cosine".
LEVERS = {
    "steps_2": "2 steps",  # a k-step student: the k of its row's name, re-noised at K_STEP_TIMES[k]
    "steps_4": "4 steps",
    "updates_4x": "4x generator updates (1600)",
    "updates_16x": "16x generator updates (6400)",
    "batch_4x": "4x batch (1024) for both networks",
    "momentum": "Adam beta1 0.9 for both networks (the authors' 0)",
    "lr_2x": "both learning rates doubled",
    "lr_half": "both learning rates halved",
    "cosine": "cosine decay of both learning rates to 0",
    "fake_1": "1 fake update per generator update (instead of 5)",
    "fake_wide": "fake model twice as wide, started as the teacher's function",
    "time_weight": "losses weighted toward the data end, w(t) ∝ 1 / (1.05 − t)",
    "data_free": "(α, β) = (1, 1): no real data",
    "real_weighted": "(α, β) = (0.2, 1): the digits default's weight on real data",
}
# Levers in combination on the spiral: the budget with a decay to zero, a larger batch, Adam's momentum.
COMBINATIONS = ("updates_4x+cosine", "batch_4x+cosine", "updates_4x+momentum", "momentum+batch_4x",
                "updates_16x+cosine", "steps_2+updates_16x+cosine", "steps_4+updates_16x+cosine")
# The budgets with the decay to zero, measured on every data set: 4x updates (the spiral's best combination on
# its validation set), 4x batch (the same number of generated samples in 400 updates) and 16x updates.
EVERY_SET_LEVERS = ("updates_4x+cosine", "batch_4x+cosine", "updates_16x+cosine")
# The spiral's runs by default: every single lever (the step counts alone are the k = 2, 4 rows) and the combinations.
DEFAULT_LEVERS = tuple(x for x in LEVERS if not x.startswith("steps_")) + COMBINATIONS
# The levers that change RealUID's coefficients instead of the training settings.
COEFFICIENTS = {"data_free": (1.0, 1.0), "real_weighted": (0.2, 1.0)}


def lever_parts(lever: str) -> list[str]:
    """The single levers of ``lever`` ("updates_4x+cosine" -> both); ValueError names an unknown one."""
    parts = lever.split("+")
    unknown = [x for x in parts if x not in LEVERS]
    one_of = (COEFFICIENTS, [x for x in LEVERS if x.startswith("steps_")],
              [x for x in LEVERS if x.startswith("updates_")])
    if unknown or len(set(parts)) != len(parts) or any(sum(x in group for x in parts) > 1 for group in one_of):
        raise ValueError(f"unknown or conflicting lever {lever!r}: join distinct names of {', '.join(LEVERS)} "
                         "with '+' (at most one coefficient, step count and update count)")
    return parts


def lever_label(lever: str) -> str:
    """A lever's row name: "RealUID k = 1, 4x generator updates (1600) + cosine decay ..."."""
    parts = lever_parts(lever)
    k = next((int(x.removeprefix("steps_")) for x in parts if x.startswith("steps_")), 1)
    return f"RealUID k = {k}, " + " + ".join(LEVERS[x] for x in parts if not x.startswith("steps_"))


SCATTER_POINTS = 2000
EVAL_SETS = ("reference", "validation")


@dataclass(frozen=True)
class Settings:
    study: presets.StudySettings  # the bench/quality preset whose toy settings every run uses
    n_pairs: int
    teacher_steps: int
    datasets: tuple[str, ...] = DATASETS
    levers: tuple[str, ...] = DEFAULT_LEVERS
    lever_datasets: tuple[str, ...] = ("spiral",)
    every_set_levers: tuple[str, ...] = EVERY_SET_LEVERS  # on every data set, the lever data sets' too


def full() -> Settings:
    return Settings(study=presets.full(), n_pairs=N_PAIRS, teacher_steps=TEACHER_STEPS)


def tiny() -> Settings:
    """Seconds: bench/quality's tiny nets and sizes, every method and lever once."""
    return Settings(study=presets.tiny(), n_pairs=256, teacher_steps=presets.tiny().toy.teacher.steps)


PRESETS = {"full": full, "tiny": tiny}


# ---------------------------------------------------------------------------------------------- data


def build_task(dataset: str, seed: int, cfg: Settings) -> tasks.PointTask:
    """The split bench/quality uses for (dataset, seed): same streams, same sizes."""
    toy = cfg.study.toy
    if dataset == "spiral":
        return tasks.user_task(tasks.load_user_points(SPIRAL_POINTS), seed, n_train=toy.n_train, n_eval=toy.n_eval)
    return tasks.toy_task(dataset, seed, n_train=toy.n_train, n_eval=toy.n_eval)


def _scores(points: np.ndarray, task: tasks.PointTask, cfg: Settings, seed: int) -> dict[str, dict[str, float]]:
    return {name: distances(points, getattr(task, name), n_projections=cfg.study.toy.n_projections, seed=seed)
            for name in EVAL_SETS}


def _spec(task: tasks.PointTask, cfg: Settings) -> dict:
    return model_spec(cfg.study.toy.teacher.model, (task.dim,), 0)


def _teacher_net(state: dict, spec: dict) -> torch.nn.Module:
    net = build_model(spec)
    net.load_state_dict(state)
    return net.eval()


def _kept(points: np.ndarray, seed: int, cfg: Settings) -> np.ndarray | None:
    return points[:SCATTER_POINTS] if seed == cfg.study.seeds[0] else None


# ---------------------------------------------------------------------------------------------- jobs


def run_teacher(dataset: str, seed: int, cfg: Settings, work_dir: Path) -> dict:
    """Train the teacher as bench/quality does, score it at NFE 99, and draw the control's pairs.

    Returns ``{"state"`` (the EMA weights), ``"pairs": (z [n_pairs, D], x1 [n_pairs, D])``, ``"scores"``
    per row (``floor``, ``teacher``) and evaluation set, ``"samples"`` (first seed), ``"seconds"}``.
    """
    family = make_family(FAMILY)
    task = build_task(dataset, seed, cfg)
    x1, _ = task.train_tensors()
    start = time.perf_counter()
    net = _train_mlp_teacher(family, TrainData(x1, None, None), _spec(task, cfg), cfg.study, seed, cfg.teacher_steps,
                             work_dir, shortest=min(cfg.study.toy.teacher_budget_steps))
    trained = time.perf_counter() - start
    z = _generator_inputs(family, task, len(task.reference), seed)
    teacher = _sample_teacher(family, net, z, cfg.study, seed)
    # The pairs' noise is a stream of its own: the regression never sees the noise it is scored on.
    z_pairs = torch.randn(cfg.n_pairs, task.dim, generator=torch.Generator().manual_seed(30_000 + seed))
    x1_pairs = torch.as_tensor(_sample_teacher(family, net, z_pairs, cfg.study, seed))
    return {"state": {k: v.clone() for k, v in net.state_dict().items()}, "pairs": (z_pairs, x1_pairs),
            "scores": {"floor": _scores(task.floor, task, cfg, seed), "teacher": _scores(teacher, task, cfg, seed)},
            "samples": {"teacher": _kept(teacher, seed, cfg), "reference": _kept(task.reference, seed, cfg)},
            "seconds": {"teacher train": trained, "teacher sample + pairs": time.perf_counter() - start - trained}}


def regress_one_step(family, net: torch.nn.Module, z: torch.Tensor, x1: torch.Tensor, distill_cfg, updates: int,
                     seed: int) -> tuple[OneStepGenerator, list[float]]:
    """The Luhman control: ``OneStepGenerator(family, copy of net)`` fitted to pairs ``z -> x1`` ([N, D] each).

    Minibatches of ``distill_cfg.batch_size`` pairs drawn with replacement; Adam, warm-up and clipping of
    ``distill_cfg.generator_optim`` (the RealUID generator's optimizer) for ``updates`` steps. Returns the
    EMA generator (decay ``distill_cfg.ema_decays[0]``, the copy the tables report) and the loss per update
    (mean squared error per coordinate).
    """
    generator = OneStepGenerator(family, copy.deepcopy(net).requires_grad_(True)).eval()
    optim = distill_cfg.generator_optim
    opt, sched = make_optimizer(generator.parameters(), optim, updates)
    decay = distill_cfg.ema_decays[0]
    ema = EMA(generator.net, [decay])
    rng = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(updates):
        rows = torch.randint(len(z), (distill_cfg.batch_size,), generator=rng)
        loss = torch.nn.functional.mse_loss(generator(z[rows]), x1[rows])
        optimizer_step(loss, generator.parameters(), opt, sched, optim.grad_clip)
        ema.update(generator.net)
        losses.append(float(loss.detach()))
    generator.net.load_state_dict(ema.shadows[decay])
    return generator.requires_grad_(False), losses


def run_control(dataset: str, seed: int, multiple: int, cfg: Settings, teacher: dict) -> dict:
    """The control with ``multiple`` times the student's generator updates; scores, loss curve, samples."""
    family = make_family(FAMILY)
    task = build_task(dataset, seed, cfg)
    net = _teacher_net(teacher["state"], _spec(task, cfg))
    start = time.perf_counter()
    z_pairs, x1_pairs = teacher["pairs"]
    distill_cfg = cfg.study.toy.distill
    generator, losses = regress_one_step(family, net, z_pairs, x1_pairs, distill_cfg, multiple * distill_cfg.steps,
                                         seed)
    with torch.no_grad():
        points = generator(_generator_inputs(family, task, len(task.reference), seed)).numpy()
        # The fit on the pairs themselves: what regression alone achieves, before generalising to new noise.
        pair_error = float(torch.nn.functional.mse_loss(generator(z_pairs), x1_pairs))
        start_error = float(torch.nn.functional.mse_loss(OneStepGenerator(family, net)(z_pairs), x1_pairs))
    return {"scores": _scores(points, task, cfg, seed), "samples": _kept(points, seed, cfg),
            "loss": {"first": losses[0], "last": float(np.mean(losses[-20:])), "pairs_start": start_error,
                     "pairs_end": pair_error},
            "seconds": time.perf_counter() - start}


def student_config(cfg: Settings, variant: str, seed: int):
    """The DistillConfig of a RealUID ``variant``: ``k1``, ``k2``, ``k4``, or a lever of :data:`LEVERS`
    (single, or joined with "+")."""
    base = dataclasses.replace(cfg.study.toy.distill, seed=seed)
    if variant in ("k1", "k2", "k4"):
        return base if variant == "k1" else _apply_lever(base, f"steps_{variant[1:]}")
    out = base
    for part in lever_parts(variant):
        out = _apply_lever(out, part)
    return out


def _both_optims(cfg, **changes):
    return dataclasses.replace(cfg, generator_optim=dataclasses.replace(cfg.generator_optim, **changes),
                               fake_optim=dataclasses.replace(cfg.fake_optim, **changes))


def _apply_lever(cfg, lever: str):
    """``cfg`` with one lever of :data:`LEVERS` applied; the levers that change the fake model, the family
    or the coefficients leave it as it is (run_student applies them)."""
    if lever.startswith("steps_"):
        k = int(lever.removeprefix("steps_"))
        return dataclasses.replace(cfg, generator_steps=k, generator_times=K_STEP_TIMES[k])
    if lever.startswith("updates_"):
        steps = int(lever.removeprefix("updates_").removesuffix("x")) * cfg.steps
        return dataclasses.replace(cfg, steps=steps, checkpoint_every_steps=steps)
    if lever == "batch_4x":
        return dataclasses.replace(cfg, batch_size=4 * cfg.batch_size)
    if lever == "momentum":
        return _both_optims(cfg, betas=[0.9, cfg.generator_optim.betas[1]])
    if lever in ("lr_2x", "lr_half"):
        factor = 2 if lever == "lr_2x" else 0.5
        return dataclasses.replace(cfg, generator_optim=dataclasses.replace(cfg.generator_optim,
                                                                            lr=factor * cfg.generator_optim.lr),
                                   fake_optim=dataclasses.replace(cfg.fake_optim, lr=factor * cfg.fake_optim.lr))
    if lever == "cosine":
        return _both_optims(cfg, decay="cosine")
    if lever == "fake_1":
        return dataclasses.replace(cfg, fake_updates_per_generator_update=1)
    return cfg


def run_student(dataset: str, seed: int, variant: str, cfg: Settings, work_dir: Path, teacher: dict) -> dict:
    """A RealUID student (bench/quality's alpha, beta unless the variant sets them; the EMA copy it reports)
    distilled from the teacher."""
    parts = lever_parts(variant) if variant not in ("k1", "k2", "k4") else []
    family = DataEndWeightedFM() if "time_weight" in parts else make_family(FAMILY)
    task = build_task(dataset, seed, cfg)
    spec = _spec(task, cfg)
    x1, _ = task.train_tensors()
    distill_cfg = student_config(cfg, variant, seed)
    net = _teacher_net(teacher["state"], spec)
    fake_start = widened_mlp(net, spec, seed=seed)[0] if "fake_wide" in parts else None
    start = time.perf_counter()
    alpha, beta = next((COEFFICIENTS[x] for x in parts if x in COEFFICIENTS), (cfg.study.alpha, cfg.study.beta))
    result = distill(family, TrainData(x1, None, None), net, spec, distill_cfg, work_dir, alpha=alpha, beta=beta,
                     progress=False, fake_start=fake_start)
    generator = load_generator(result, ema=cfg.study.toy.student_ema)
    z = _generator_inputs(family, task, len(task.reference), seed)
    points = generator.sample_batch(z, None, None, start=0, seed=seed, steps=generator.steps).numpy()
    return {"scores": _scores(points, task, cfg, seed), "samples": _kept(points, seed, cfg),
            "seconds": time.perf_counter() - start}


def control_multiples(cfg: Settings, dataset: str) -> tuple[int, ...]:
    return CONTROL_UPDATES if dataset in cfg.lever_datasets else CONTROL_UPDATES[:2]


def methods(cfg: Settings, dataset: str) -> list[str]:
    """The rows of one data set's table, in order."""
    rows = ["teacher"] + [f"control_{m}x" for m in control_multiples(cfg, dataset)]
    rows += ["realuid_k1", "realuid_k2", "realuid_k4"]
    levers = [*cfg.levers] if dataset in cfg.lever_datasets else []
    rows += [f"realuid_{lever}" for lever in levers + [x for x in cfg.every_set_levers if x not in levers]]
    return rows


def jobs(cfg: Settings, work: Path) -> list[Job]:
    """Teachers first (one per data set and seed); every student and control waits for its own."""
    out = []
    for dataset in cfg.datasets:
        for seed in cfg.study.seeds:
            teacher = f"teacher-{dataset}-s{seed}"
            out.append(Job(teacher, run_teacher, (dataset, seed, cfg, work / teacher)))
            for m in control_multiples(cfg, dataset):
                out.append(Job(f"control_{m}x-{dataset}-s{seed}", run_control, (dataset, seed, m, cfg),
                               after=(teacher,)))
            for method in methods(cfg, dataset):
                if method.startswith("realuid_"):
                    key = f"{method}-{dataset}-s{seed}"
                    out.append(Job(key, run_student, (dataset, seed, method.removeprefix("realuid_"), cfg,
                                                      work / key), after=(teacher,)))
    return out


# ---------------------------------------------------------------------------------------------- report


LABELS = {
    "floor": "real (2nd sample)",
    "teacher": "teacher, NFE 99",
    **{f"control_{m}x": f"control (regression), {m}x updates" for m in CONTROL_UPDATES},
    "realuid_k1": "RealUID, k = 1",
    "realuid_k2": "RealUID, k = 2",
    "realuid_k4": "RealUID, k = 4",
}


def label(method: str) -> str:
    """A table row's name: LABELS, or a lever's (single or joined)."""
    return LABELS.get(method) or lever_label(method.removeprefix("realuid_"))
METRICS = ("sw2", "knn_precision", "knn_recall")


def collect(results: dict, cfg: Settings) -> dict:
    """``{dataset: {method: {eval_set: {metric: [per-seed values]}}}}``, floor and teacher included."""
    table = {}
    for dataset in cfg.datasets:
        rows = {}
        for method in ["floor", *methods(cfg, dataset)]:
            rows[method] = {s: {m: [] for m in METRICS} for s in EVAL_SETS}
            for seed in cfg.study.seeds:
                teacher = results[f"teacher-{dataset}-s{seed}"]
                scores = (teacher["scores"][method] if method in ("floor", "teacher")
                          else results[f"{method}-{dataset}-s{seed}"]["scores"])
                for s in EVAL_SETS:
                    for m in METRICS:
                        rows[method][s][m].append(scores[s][m])
        table[dataset] = rows
    return table


def reaches_teacher(row: dict, teacher: dict) -> bool:
    """The target, on seed means: SW2 within TARGET_SW2_RATIO of the teacher's and k-NN precision
    at most TARGET_PRECISION_GAP below it."""
    sw2 = np.mean(row["sw2"]) / np.mean(teacher["sw2"])
    gap = np.mean(teacher["knn_precision"]) - np.mean(row["knn_precision"])
    return bool(sw2 <= TARGET_SW2_RATIO and gap <= TARGET_PRECISION_GAP)


def _ratio_text(a: list[float], b: list[float]) -> str:
    return summarize(np.asarray(a) / np.asarray(b)).text(2)


def dataset_table(rows: dict, eval_set: str) -> list[str]:
    teacher = rows["teacher"][eval_set]
    lines = ["| method | sliced W2 | SW2 / teacher | vs teacher (SW2) | k-NN precision | precision − teacher "
             "| vs teacher (precision) | k-NN recall | reaches the teacher |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, sets in rows.items():
        r = sets[eval_set]
        same = method == "teacher"
        cells = [label(method), summarize(r["sw2"]).text(), _ratio_text(r["sw2"], teacher["sw2"]),
                 "–" if same else verdict(r["sw2"], teacher["sw2"]),
                 summarize(r["knn_precision"]).text(),
                 summarize(np.asarray(r["knn_precision"]) - np.asarray(teacher["knn_precision"])).text(2),
                 "–" if same else verdict(r["knn_precision"], teacher["knn_precision"], lower_is_better=False),
                 summarize(r["knn_recall"]).text(),
                 "–" if method in ("floor", "teacher") else ("**yes**" if reaches_teacher(r, teacher) else "no")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure(results: dict, cfg: Settings, dataset: str, path: Path) -> None:
    """Samples of every method (first seed) over the real reference points, one panel each."""
    plt = _pyplot()
    seed = cfg.study.seeds[0]
    teacher = results[f"teacher-{dataset}-s{seed}"]
    panels = {"teacher": teacher["samples"]["teacher"]}
    panels.update({m: results[f"{m}-{dataset}-s{seed}"]["samples"] for m in methods(cfg, dataset) if m != "teacher"})
    reference = teacher["samples"]["reference"]
    cols = 4
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.7 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, points) in zip(axes.flat, panels.items()):
        ax.set_axis_on()
        ax.scatter(reference[:, 0], reference[:, 1], s=0.5, c="0.85", rasterized=True)
        ax.scatter(points[:, 0], points[:, 1], s=0.5, c="tab:green" if name == "teacher" else "tab:red",
                   alpha=0.6, rasterized=True)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        ax.set_title(textwrap.fill(label(name), 28), fontsize=8)
    fig.suptitle(f"{dataset}, flow matching: {len(reference)} samples of seed {seed} (real reference in grey)",
                 fontsize=9)
    _save(fig, path)


def verdict_of(reached: dict[str, bool]) -> str:
    """Whose the gap is, from which rows reach the teacher (``{method: bool}``, floor and teacher left out)."""
    if reached["realuid_k1"]:
        return "the RealUID one-step student meets the target here (the target leaves recall out)"
    if reached["control_1x"]:
        return ("the gap is **the training's**: the same network, started the same way, reaches the teacher by regression "
                "with the student's updates, batch and optimizer; RealUID does not")
    longer = [m for m in reached if m.startswith("control_") and reached[m]]
    if longer:
        return (f"the gap is **the budget's**: neither reaches the teacher with the student's updates; the control does with "
                f"{longer[0].split('_')[1]} updates, so the map is within the network's reach")
    return "the gap is **the map's**: the control reaches the teacher at none of its budgets"


def reading(table: dict, cfg: Settings) -> list[str]:
    """Whose the gap is per data set, and what each lever and k-step student changes (computed from the
    tables: the target rule and the spread rule against the RealUID one-step student)."""
    lines = []
    for dataset, rows in table.items():
        teacher = rows["teacher"]["reference"]
        reached = {m: reaches_teacher(rows[m]["reference"], teacher) for m in rows if m not in ("floor", "teacher")}
        lines.append(f"- **{dataset}**: {verdict_of(reached)}.")
        closing = [label(m) for m in rows if m.startswith("realuid_") and m != "realuid_k1" and reached[m]]
        if not reached["realuid_k1"]:
            lines.append("  - **RealUID runs that reach the teacher here**: " + ("; ".join(closing) if closing else "none"))
        base, control = rows["realuid_k1"]["reference"], rows["control_1x"]["reference"]
        lines.append(f"  - RealUID, k = 1 against the control at the same updates: sliced W2 "
                     f"{phrase(base['sw2'], control['sw2'])} it, k-NN precision "
                     f"{phrase(base['knn_precision'], control['knn_precision'], lower_is_better=False)} it")
        for method in [m for m in rows if m.startswith("realuid_") and m != "realuid_k1"]:
            r = rows[method]["reference"]
            lines.append(f"  - {label(method)}: sliced W2 {phrase(r['sw2'], base['sw2'])} the one-step student's, "
                         f"k-NN precision {phrase(r['knn_precision'], base['knn_precision'], lower_is_better=False)} "
                         f"it; {'reaches' if reached[method] else 'does not reach'} the teacher")
    return lines


def lever_notes(cfg: Settings) -> list[str]:
    """How the levers that change a network or the loss are built (bench/quality_study/training_levers.py)."""
    notes = {
        "fake_wide": f"- Wide fake model: MLP {2 * cfg.study.toy.teacher.model.hidden_dim} wide, same depth; the "
                     "teacher's weights in the first half of every layer, which reads nothing of the new half; the new "
                     "units inside the blocks start random with zero outgoing weights, the residual stream's as copies "
                     "of the old (LayerNorm statistics unchanged), so it starts as the teacher's function",
        "time_weight": "- Time weight: w(t) = 1 / ((1.05 − t) ln 21) (mean 1 over t ~ U[0, 1], 21x larger at the data "
                       "end than at the source) on the fake and the generator losses",
    }
    levers = (cfg.levers if set(cfg.lever_datasets) & set(cfg.datasets) else ()) + cfg.every_set_levers
    used = {part for lever in levers for part in lever_parts(lever)}
    return [text for lever, text in notes.items() if lever in used]


def write_report(results: dict, cfg: Settings, out: Path, json_path: Path, figures: Path, *, command: str,
                 wall: dict) -> None:
    table = collect(results, cfg)
    toy, distill_cfg = cfg.study.toy, cfg.study.toy.distill
    seeds = list(cfg.study.seeds)
    seconds: dict[str, list[float]] = {}
    for key, res in results.items():
        kind = key.rsplit("-", 2)[0]
        if kind.startswith("teacher"):
            for piece, s in res["seconds"].items():
                seconds.setdefault(piece, []).append(s)
        else:
            seconds.setdefault(kind, []).append(res["seconds"])
    lines = [
        "# Capacity control: is the one-step gap the map's or the training's?",
        "",
        f"- Command: `{command}` (from the repository root; a rerun resumes from cached job results)",
        f"- Code: commit {wall.get('code', code_version())} when the jobs ran",
        f"- Machine: {os.cpu_count()} CPU cores, no GPU ({platform.platform()}, Python {platform.python_version()}); "
        "each job runs in a worker process with one torch thread (a rerun may use other worker counts: --workers)",
        f"- Wall time: {wall['seconds'] / 60:.1f} min for all jobs ({wall['invocations']} invocation(s)); job compute: "
        f"{sum(sum(v) for v in seconds.values()) / 60:.1f} worker-minutes in total",
        f"- Seeds: {seeds}; every entry is `mean ± std` over them; **a difference smaller than the larger of the two "
        "spreads is reported as `no difference`** (the rule of bench/quality)",
        f"- Flow matching (linear path, Euler sampler at NFE {toy.teacher_nfe}); data and splits as in bench/quality: "
        f"gmm8 and checkerboard fresh draws of `realuid.data.make_toy` ({toy.n_train} training points, "
        f"{toy.n_eval} per evaluated set); the spiral `bench/points/spiral.npz` split per seed into reference, "
        "floor and validation sets of equal size and a training set",
        f"- Teacher: MLP {toy.teacher.model.hidden_dim} wide, {toy.teacher.model.depth} residual blocks, "
        f"{cfg.teacher_steps} steps (the budget bench/quality chose on its validation set for flow matching on all "
        f"three sets), batch {toy.teacher.batch_size}, Adam lr {toy.teacher.optim.lr:g}, EMA {toy.teacher.ema_decay:g}",
        f"- RealUID students (as bench/quality makes them): alpha = {cfg.study.alpha:g}, beta = {cfg.study.beta:g}, "
        f"{distill_cfg.steps} generator updates × {distill_cfg.fake_updates_per_generator_update} fake updates, "
        f"batch {distill_cfg.batch_size}, Adam {tuple(distill_cfg.generator_optim.betas)} lr "
        f"{distill_cfg.generator_optim.lr:g} (both), warm-up {distill_cfg.generator_optim.warmup_steps}, clip "
        f"{distill_cfg.generator_optim.grad_clip:g}, generator and fake model from the teacher, generator EMA "
        f"{toy.student_ema:g} reported. k = 2 and k = 4: re-noised at t = {K_STEP_TIMES[2]} and {K_STEP_TIMES[4]}, "
        "sampled with all k steps",
        f"- Control (Luhman & Luhman 2021): the RealUID student's network and start (the teacher's weights read at "
        f"t = 0 through `OneStepGenerator`, x1 = z + G(0, z)) fitted by mean squared error to a **fixed set of "
        f"{cfg.n_pairs} pairs** (noise z, the teacher's Euler ODE sample from z at NFE {toy.teacher_nfe}; the pairs' "
        f"noise is independent of the noise every method is scored on), minibatches of {distill_cfg.batch_size} drawn "
        f"with replacement, the generator's Adam, warm-up and clip; EMA {distill_cfg.ema_decays[0]:g} reported; "
        f"{distill_cfg.steps} updates (1x, the student's) and {CONTROL_UPDATES[1]}x; {CONTROL_UPDATES[2]}x too on "
        f"{', '.join(cfg.lever_datasets)}",
        *lever_notes(cfg),
        f"- Target: sliced W2 at most {TARGET_SW2_RATIO}× the teacher's and k-NN precision at most "
        f"{TARGET_PRECISION_GAP} below it (seed means); *reaches the teacher* says whether a row meets both",
        "",
        *([f"- Load: {wall['load']}"] if wall.get("load") else []),
        "- Compute per piece (mean wall seconds of a job in its worker; count): " + ", ".join(
            f"{k} {np.mean(v):.0f} s (×{len(v)})" for k, v in sorted(seconds.items())),
        "",
        "## Reading",
        "",
        *reading(table, cfg),
        "",
    ]
    for dataset in cfg.datasets:
        lines += [f"## {dataset}", "", "Held-out reference set (mean ± std over seeds):", "",
                  *dataset_table(table[dataset], "reference"), ""]
        multiples = control_multiples(cfg, dataset)
        losses = [results[f"control_{m}x-{dataset}-s{s}"]["loss"] for m in multiples for s in seeds]
        fits = {m: [results[f"control_{m}x-{dataset}-s{s}"]["loss"]["pairs_end"] for s in seeds] for m in multiples}
        lines += [f"Control regression loss (MSE per coordinate on its {cfg.n_pairs} pairs): "
                  f"{summarize([x['pairs_start'] for x in losses]).text()} at the start (the teacher read once); "
                  + "; ".join(f"{summarize(v).text()} after {m}x updates" for m, v in fits.items()) + ".", ""]
        name = f"capacity_control_{dataset}.png"
        figure(results, cfg, dataset, figures / name)
        lines += [f"![{dataset} samples](figures/{name})", ""]
    lines += ["## Validation set", "", "The same samples scored against the validation set (where a setting "
              "would be chosen):", ""]
    for dataset in cfg.datasets:
        lines += [f"**{dataset}**", "", *dataset_table(table[dataset], "validation"), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "\n".join(lines))
    reached = {d: {m: reaches_teacher(r["reference"], rows["teacher"]["reference"]) for m, r in rows.items()
                   if m not in ("floor", "teacher")} for d, rows in table.items()}
    control_loss = {d: {f"{m}x": [results[f"control_{m}x-{d}-s{s}"]["loss"] for s in seeds]
                        for m in control_multiples(cfg, d)} for d in cfg.datasets}
    atomic_write(json_path, json.dumps({"command": command, "wall": wall, "seeds": seeds, "table": table,
                                        "reaches_teacher": reached, "control_loss": control_loss}, indent=1))


# ---------------------------------------------------------------------------------------------- command


def _lever(text: str) -> str:
    try:
        lever_parts(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/capacity_control", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full", help=argparse.SUPPRESS)
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--levers", nargs="*", type=_lever, default=list(DEFAULT_LEVERS), metavar="LEVER",
                   help=f"RealUID levers measured on the spiral, single or joined with '+' (updates_4x+cosine); "
                        f"none: --levers with no names. Single levers: {', '.join(LEVERS)}")
    p.add_argument("--every-set-levers", nargs="*", type=_lever, default=list(EVERY_SET_LEVERS), metavar="LEVER",
                   help="levers measured on every data set (default: the spiral's fixes, "
                        f"{' '.join(EVERY_SET_LEVERS)}; none: the option with no names)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--workers", type=int, default=2, help="parallel jobs, one torch thread each")
    p.add_argument("--work", help="folder for checkpoints and cached job results (default: a temp folder)")
    p.add_argument("--out", default=str(BENCH / "results" / "RESULTS-capacity-control.md"))
    p.add_argument("--json", default=None, help="default: --out with .json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 1 or args.workers < 1:
        print("error: --seeds and --workers must be >= 1", file=sys.stderr)
        return 2
    cfg = PRESETS[args.preset]()
    cfg = dataclasses.replace(cfg, datasets=tuple(args.datasets), levers=tuple(args.levers),
                              every_set_levers=tuple(args.every_set_levers),
                              study=dataclasses.replace(cfg.study, seeds=tuple(range(args.seeds)), workers=args.workers))
    # The number of workers never changes a result, so it does not name the cache.
    digest = settings_digest(dataclasses.replace(cfg.study, workers=0), None)
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / f"realuid-capacity-control-{digest}"
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_suffix(".json")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    command = "bench/capacity_control" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    code = code_version()
    log(f"capacity control '{args.preset}', seeds {list(cfg.study.seeds)}, work folder {work}")
    started = time.perf_counter()
    # Cached results are keyed by the study's settings too: a changed setting never reads a stale result.
    results, ran = run_jobs(jobs(cfg, work), JobCache(work / "results" / f"{digest}-{cfg.n_pairs}"),
                            cfg.study.workers, log)
    wall = accumulate_wall_seconds(work / "wall.json", time.perf_counter() - started if ran else 0.0,
                                   command=command, code=code)
    write_report(results, cfg, out, json_path, out.parent / "figures", command=command, wall=wall)
    log(f"wrote {out} and {json_path}")
    return 0
