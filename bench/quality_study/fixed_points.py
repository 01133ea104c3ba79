"""``bench/fixed_points``: where does real data move the RealUID student? Theory vs trained students.

For each case (a teacher distribution p_T and a data distribution p_d, Gaussian mixtures on the same
modes with different weights) and family, the fixed point of :mod:`realuid.fixed_point` is computed on a
fine (α, β) grid, and students are distilled with the project's :func:`realuid.training.distillation.distill` at a
few (α, β) from the **exact closed-form teacher** of p_T (:class:`realuid.analytic.ExactTeacher`): the
teacher has no training error by construction, so any gap between student and data is the method's.
The teacher's distribution is wrong on purpose (its weights differ from the data's); the question is
whether the real data pulls the student from p_T towards p_d.

Per trained run: the mode weights of the raw generator (mass per mode over the mass on any mode, a mode
being within 4 of its standard deviations) and its sliced W2 to held-out real data, every
``log_every`` updates on fixed inputs, averaged over the second half of training; at the end, k-NN
precision/recall against held-out data. Mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realuid.fixed_point import FixedPointProblem, Quadrature
from realuid.analytic import ExactTeacher, GaussianMixture
from realuid.atomic import atomic_write
from realuid.matching import make_family
from realuid.metrics import knn_precision_recall, mode_masses, sliced_wasserstein2
from realuid.models import build_model, model_spec
from realuid.sampling import OneStepGenerator
from realuid.training.batches import TrainData
from realuid.training.distillation import distill
from realuid.training.teacher import train_teacher

from . import cli
from .settings import FAMILY_OPTIONS, _toy_settings
from .stats import summarize

ROOT = Path(__file__).resolve().parents[2]
THEORY_QUADRATURE = Quadrature(n_times=32, points_per_std=3.0, cutoff=7.0)
MODE_RADIUS_STDS = 4.0  # a 2-D Gaussian leaves exp(-8) ~ 3e-4 of its mass beyond 4 std


@dataclass(frozen=True)
class Case:
    """Modes (means [K][D], isotropic std per mode) shared by teacher and data; their weights differ."""

    name: str
    means: list[list[float]]
    stds: list[float]
    teacher_weights: list[float]
    data_weights: list[float]

    def __post_init__(self):
        k = len(self.means)
        if k < 2 or any(len(m) != len(self.means[0]) for m in self.means) or len(self.means[0]) not in (1, 2):
            raise ValueError(f"case {self.name!r}: means must be >= 2 points of one dimension, 1 or 2")
        for what in ("stds", "teacher_weights", "data_weights"):
            values = getattr(self, what)
            if len(values) != k or any(not math.isfinite(v) or v <= 0 for v in values):
                raise ValueError(f"case {self.name!r}: {what} must be {k} positive numbers, got {values}")

    def mixture(self, weights: list[float], dtype=torch.float64) -> GaussianMixture:
        means = torch.tensor(self.means, dtype=dtype)
        eye = torch.eye(means.shape[1], dtype=dtype)
        covariances = torch.stack([s**2 * eye for s in self.stds])
        return GaussianMixture(means, weights=torch.tensor(weights, dtype=dtype), covariances=covariances)

    @property
    def data_w(self) -> np.ndarray:
        w = np.asarray(self.data_weights, dtype=np.float64)
        return w / w.sum()

    @property
    def teacher_w(self) -> np.ndarray:
        w = np.asarray(self.teacher_weights, dtype=np.float64)
        return w / w.sum()


BUILTIN_CASES = {
    # issue 14: two modes at (±1, 0), std 0.2; data 0.75/0.25, teacher 0.5/0.5
    "two-modes": Case("two-modes", [[-1.0, 0.0], [1.0, 0.0]], [0.2, 0.2], [0.5, 0.5], [0.75, 0.25]),
    # three modes of different widths; the teacher spreads its mass evenly where the data is 0.6/0.3/0.1
    "three-modes": Case("three-modes", [[-1.0, -0.6], [1.0, -0.6], [0.0, 1.0]], [0.15, 0.25, 0.2],
                        [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]),
}
DEFAULT_TRAINED = ((1.0, 1.0), (0.94, 0.96), (0.5, 0.5), (0.5, 1.0), (0.2, 1.0))


def tv(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum())


def grid_values(step: float) -> list[float]:
    """α or β values from 0.2 to 1 inclusive in ``step``."""
    n = int(round(0.8 / step))
    if n < 1 or not math.isclose(n * step, 0.8, abs_tol=1e-9):
        raise ValueError(f"--theory-step must divide 0.8, got {step}")
    return [round(0.2 + i * step, 6) for i in range(n + 1)]


# ------------------------------------------------------------------------------------------ theory


def theory_cache(work: Path, case: Case, family_name: str) -> Path:
    key = json.dumps([dataclasses.asdict(case), family_name, FAMILY_OPTIONS[family_name],
                      dataclasses.asdict(THEORY_QUADRATURE)], sort_keys=True)
    return work / f"theory-{case.name}-{family_name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def theory_map(case: Case, family_name: str, values: list[float], extra: list[tuple[float, float]],
               work: Path | None = None) -> dict:
    """Predicted generator weights for every (α, β) of the grid (and the trained points); points already
    solved for the same case, family and quadrature are read from ``work``."""
    cache = None if work is None else theory_cache(work, case, family_name)
    out = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    points = sorted({(a, b) for a in values for b in values} | set(extra))
    missing = [(a, b) for a, b in points if f"{a:g},{b:g}" not in out]
    if missing:
        family = make_family(family_name, **FAMILY_OPTIONS[family_name])
        problem = FixedPointProblem(family, case.mixture(case.teacher_weights), case.mixture(case.data_weights),
                                    quadrature=THEORY_QUADRATURE)
        for a, b in missing:
            fp = problem.solve(alpha=a, beta=b)
            out[f"{a:g},{b:g}"] = {"alpha": a, "beta": b, "weights": fp.weights.tolist(), "value": fp.value,
                                   "converged": fp.converged}
        if cache is not None:
            atomic_write(cache, json.dumps(out))
    return {f"{a:g},{b:g}": out[f"{a:g},{b:g}"] for a, b in points}


# ----------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    log_every: int = 25
    n_train: int = 20000
    n_eval: int = 2000
    hidden: int = 64
    init_steps: int = 1000  # the student's starting MLP: fit to the teacher's distribution
    batch_size: int = 256
    fake_updates: int = 5


def _configs(s: TrainSettings):
    toy = _toy_settings()
    model = dataclasses.replace(toy.teacher.model, hidden_dim=s.hidden)
    teacher_cfg = dataclasses.replace(toy.teacher, model=model, steps=s.init_steps,
                                      batch_size=min(toy.teacher.batch_size, s.n_train),
                                      checkpoint_every_steps=s.init_steps, log_every_steps=min(100, s.init_steps))
    # The study's distillation settings (lr 1e-3, Adam (0, 0.999), clip 1, 5 fake updates per generator
    # update), a random fake model: a closed-form teacher has no network to copy it from.
    distill_cfg = dataclasses.replace(toy.distill, steps=s.steps, batch_size=s.batch_size, fake_init="random",
                                      fake_updates_per_generator_update=s.fake_updates,
                                      checkpoint_every_steps=s.steps, log_every_steps=s.log_every)
    return model, teacher_cfg, distill_cfg


def _ema_weights(result, decay: float) -> dict:
    # train_teacher returns its checkpoint; read its EMA copy (the checkpoint object's accessor, or the
    # older plain-dict layout).
    return result.state_dict(decay) if hasattr(result, "state_dict") else result["ema_state_dict"]


class Scorer:
    """Mode weights and sliced W2 to held-out real data of a point set."""

    def __init__(self, case: Case, held_out: np.ndarray):
        self.case, self.held_out = case, held_out
        self.centres = np.asarray(case.means, dtype=np.float64)
        self.radius = MODE_RADIUS_STDS * np.asarray(case.stds, dtype=np.float64)

    def weights(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        masses = mode_masses(x, self.centres, self.radius)
        on_mode = masses[:-1].sum()
        return (masses[:-1] / on_mode if on_mode > 0 else np.full(len(self.centres), np.nan)), float(masses[-1])

    def __call__(self, x: np.ndarray, *, final: bool = False) -> dict:
        w, off = self.weights(x)
        row = {"weights": w.tolist(), "off_mode": off, "tv_to_data": tv(w, self.case.data_w),
               "sw2": sliced_wasserstein2(x, self.held_out, n_projections=64, seed=0)}
        if final:
            row.update(knn_precision_recall(x, self.held_out))
        return row


def _samples(case: Case, weights: list[float], n: int, seed: int) -> np.ndarray:
    return case.mixture(weights, torch.float32).sample(n, torch.Generator().manual_seed(seed)).numpy()


def train_case(case: Case, family_name: str, trained: list[tuple[float, float]], seeds: list[int],
               s: TrainSettings, work: Path, log=print) -> dict:
    """Teacher/floor rows and every trained run of one case and family (cached per run in ``work``)."""
    torch.set_num_threads(1)
    family = make_family(family_name, **FAMILY_OPTIONS[family_name])
    model, teacher_cfg, distill_cfg = _configs(s)
    spec = model_spec(model, (len(case.means[0]),), 0)
    teacher = ExactTeacher(case.mixture(case.teacher_weights, torch.float32), family)
    real = TrainData(torch.tensor(_samples(case, case.data_weights, s.n_train, 1)))
    held_out = _samples(case, case.data_weights, s.n_eval, 2)
    score = Scorer(case, held_out)
    tag = f"{case.name}-{family_name}-h{s.hidden}"
    # The student's start: an MLP fit by the project's teacher loop to samples of p_T (the generator is
    # a copy of it, as the pipeline copies its teacher).
    fit = train_teacher(family, TrainData(torch.tensor(_samples(case, case.teacher_weights, s.n_train, 3))), spec,
                        teacher_cfg, work / f"init-{tag}-{s.init_steps}", progress=False)
    init = build_model(spec)
    init.load_state_dict(_ema_weights(fit, teacher_cfg.ema_decay))
    z = torch.randn(s.n_eval, len(case.means[0]), generator=torch.Generator().manual_seed(10_000))
    with torch.no_grad():
        start_samples = OneStepGenerator(family, init).eval()(z, None).numpy()
    rows = {"floor": score(_samples(case, case.data_weights, s.n_eval, 4), final=True),
            "teacher": score(_samples(case, case.teacher_weights, s.n_eval, 5), final=True),
            "student_start": score(start_samples, final=True), "runs": {}, "pictures": {}}
    for a, b in trained:
        for seed in seeds:
            key = f"{a:g},{b:g},{seed}"
            cache = work / f"run-{tag}-a{a:g}-b{b:g}-s{seed}-{s.steps}-{s.batch_size}-{s.fake_updates}.json"
            if cache.exists():
                rows["runs"][key] = json.loads(cache.read_text())
                continue
            start = time.perf_counter()
            trajectory, live = [], {}

            def on_log(row, generator):
                live["generator"] = generator
                with torch.no_grad():
                    x = generator(z, None).numpy()
                trajectory.append({"step": int(row["step"]), **score(x)})

            cfg = dataclasses.replace(distill_cfg, seed=seed)
            distill(family, real, teacher, spec, cfg, work / f"distill-{cache.stem}", alpha=a, beta=b, progress=False,
                    student_init=init, on_log=on_log)
            if not trajectory:
                raise RuntimeError(f"{key}: distillation logged nothing (resumed past its end?); delete {work}")
            with torch.no_grad():
                final_x = live["generator"](z, None).numpy()
            second = [r for r in trajectory if r["step"] > s.steps / 2] or trajectory[-1:]
            run = {"alpha": a, "beta": b, "seed": seed,
                   "weights": np.mean([r["weights"] for r in second], axis=0).tolist(),
                   "tv_to_data": float(np.mean([r["tv_to_data"] for r in second])),
                   "sw2": float(np.mean([r["sw2"] for r in second])),
                   "off_mode": float(np.mean([r["off_mode"] for r in second])),
                   "weight_spread_in_time": np.std([r["weights"] for r in second], axis=0).tolist(),
                   "final": score(final_x, final=True), "trajectory": trajectory,
                   "seconds": time.perf_counter() - start, "picture": final_x[:1000].round(4).tolist()}
            atomic_write(cache, json.dumps(run))
            rows["runs"][key] = run
            log(f"{case.name} {family_name} alpha {a:g} beta {b:g} seed {seed}: w1 {run['weights'][0]:.3f} "
                f"sw2 {run['sw2']:.4f} ({run['seconds']:.0f} s)")
    rows["pictures"] = {"data": held_out[:1000].tolist(),
                        "teacher": _samples(case, case.teacher_weights, 1000, 5).tolist()}
    return rows


# ---------------------------------------------------------------------------------------- reporting


def _fmt(values, digits=3) -> str:
    return summarize(values).text(digits)


def tables(case: Case, family: str, theory: dict, train: dict | None, trained, seeds) -> list[str]:
    lines = [f"#### {case.name}, {family}", ""]
    w_d, w_t = case.data_w, case.teacher_w
    k = len(w_d)
    if train is not None:
        lines += ["| reference row | w1 | TV to data weights | sliced W2 to held-out data | k-NN precision | k-NN recall |",
                  "|---|---|---|---|---|---|"]
        for name, label in (("floor", "real data (2nd sample): the floor"),
                            ("teacher", "teacher p_T (exact samples)"),
                            ("student_start", "student start (MLP fit to p_T, one step)")):
            r = train[name]
            lines.append(f"| {label} | {r['weights'][0]:.3f} | {r['tv_to_data']:.3f} | {r['sw2']:.4f} | "
                         f"{r['knn_precision']:.3f} | {r['knn_recall']:.3f} |")
        lines += ["", f"Data weights {np.round(w_d, 3).tolist()}, teacher weights {np.round(w_t, 3).tolist()}; "
                      f"TV(teacher, data) = {tv(w_t, w_d):.3f}.", ""]
        header = ("| (α, β) | w1 theory | w1 trained | TV to data: theory | TV trained | sliced W2 | "
                  "k-NN precision | k-NN recall | off-mode mass |")
        lines += [header, "|---|---|---|---|---|---|---|---|---|"]
        for a, b in trained:
            runs = [train["runs"][f"{a:g},{b:g},{s}"] for s in seeds]
            th = theory[f"{a:g},{b:g}"]["weights"]
            lines.append(
                f"| ({a:g}, {b:g}) | {th[0]:.3f} | {_fmt([r['weights'][0] for r in runs])} | {tv(th, w_d):.3f} | "
                f"{_fmt([r['tv_to_data'] for r in runs])} | {_fmt([r['sw2'] for r in runs])} | "
                f"{_fmt([r['final']['knn_precision'] for r in runs])} | {_fmt([r['final']['knn_recall'] for r in runs])} | "
                f"{_fmt([r['off_mode'] for r in runs])} |")
        if k > 2:
            lines += ["", "All weights (theory → trained mean): " + "; ".join(
                f"({a:g}, {b:g}): {np.round(theory[f'{a:g},{b:g}']['weights'], 3).tolist()} → "
                f"{np.round(np.mean([train['runs'][f'{a:g},{b:g},{s}']['weights'] for s in seeds], axis=0), 3).tolist()}"
                for a, b in trained)]
    else:
        lines += ["| (α, β) | w1 theory | TV to data: theory |", "|---|---|---|"]
        for a, b in trained:
            th = theory[f"{a:g},{b:g}"]["weights"]
            lines.append(f"| ({a:g}, {b:g}) | {th[0]:.3f} | {tv(th, w_d):.3f} |")
    towards = [v for v in theory.values() if tv(v["weights"], w_d) < tv(w_t, w_d) - 1e-6]
    best = min(theory.values(), key=lambda v: tv(v["weights"], w_d))
    lines += ["", f"Theory over the grid: {len(towards)} of {len(theory)} (α, β) move the student towards the data "
                  f"(TV to the data weights below the teacher's {tv(w_t, w_d):.3f}); the closest is "
                  f"(α, β) = ({best['alpha']:g}, {best['beta']:g}) with TV {tv(best['weights'], w_d):.3f}.", ""]
    return lines


def heatmap(case: Case, theory: dict[str, dict], train: dict[str, dict | None], trained, seeds, values, path: Path):
    from .figures import _pyplot, _save

    plt = _pyplot()
    families = list(theory)
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.8), squeeze=False)
    w_d, w_t = case.data_w, case.teacher_w
    n = len(values)
    edges = np.concatenate([[values[0] - (values[1] - values[0]) / 2],
                            (np.asarray(values[1:]) + np.asarray(values[:-1])) / 2,
                            [values[-1] + (values[-1] - values[-2]) / 2]])
    from matplotlib.colors import TwoSlopeNorm

    # Centred on the teacher's weight: one colour side is "towards the data", the other "away from it".
    norm = TwoSlopeNorm(vmin=0.0, vcenter=float(w_t[0]), vmax=1.0)
    for ax, fam in zip(axes[0], families):
        w1 = np.array([[theory[fam][f"{a:g},{b:g}"]["weights"][0] for a in values] for b in values])  # [beta, alpha]
        ratio = np.array([[tv(theory[fam][f"{a:g},{b:g}"]["weights"], w_d) / tv(w_t, w_d) for a in values]
                          for b in values])
        mesh = ax.pcolormesh(edges, edges, w1, cmap="coolwarm", norm=norm, shading="flat")
        ax.contour(values, values, ratio, levels=[1.0], colors="k", linestyles="--", linewidths=1)
        res = train.get(fam)
        if res is not None:
            for a, b in trained:
                measured = np.mean([res["runs"][f"{a:g},{b:g},{s}"]["weights"][0] for s in seeds])
                ax.scatter([a], [b], c=[measured], cmap="coolwarm", norm=norm, s=120, edgecolors="k")
                ax.annotate(f"{measured:.2f}", (a, b), textcoords="offset points", xytext=(0, -15), ha="center",
                            fontsize=7)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_title(f"{fam}" + ("" if res is not None else " (theory only)"), fontsize=9)
        fig.colorbar(mesh, ax=ax, label="weight of mode 1")
    fig.suptitle(f"{case.name}: predicted weight of mode 1 (data {w_d[0]:.2f}, teacher {w_t[0]:.2f})\n"
                 f"dashed: as far from the data weights (TV) as the teacher; dots: trained students, mean of "
                 f"{len(seeds)} seeds", fontsize=8, y=1.06)
    _save(fig, path)


def scatter(case: Case, train: dict[str, dict | None], trained, seed: int, path: Path):
    from .figures import _pyplot, _save

    plt = _pyplot()
    families = [f for f, r in train.items() if r is not None]
    columns = ["data", "teacher"] + [f"{a:g},{b:g}" for a, b in trained]
    fig, axes = plt.subplots(len(families), len(columns), figsize=(2.0 * len(columns), 2.0 * len(families)),
                             squeeze=False)
    means = np.asarray(case.means)
    span = (means.min(0) - 4 * max(case.stds), means.max(0) + 4 * max(case.stds))
    for r, fam in enumerate(families):
        res = train[fam]
        for c, col in enumerate(columns):
            ax = axes[r][c]
            pts = np.asarray(res["pictures"][col] if col in ("data", "teacher") else res["runs"][f"{col},{seed}"]["picture"])
            if pts.shape[1] == 1:
                pts = np.concatenate([pts, np.zeros_like(pts)], axis=1)
            ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c="k" if col in ("data", "teacher") else "tab:red", alpha=0.5,
                       rasterized=True)
            ax.set_xlim(span[0][0], span[1][0])
            if means.shape[1] > 1:
                ax.set_ylim(span[0][1], span[1][1])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col if col in ("data", "teacher") else f"(α, β) = ({col})", fontsize=8)
            if c == 0:
                ax.set_ylabel(fam, fontsize=9)
    fig.suptitle(f"{case.name}: held-out data, the teacher's distribution, students (first seed, final raw generator)",
                 fontsize=9)
    _save(fig, path)


# -------------------------------------------------------------------------------------------- CLI


def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ALPHA,BETA, got {text!r}") from exc
    if not (0 < a <= 1 and 0 < b <= 1):
        raise argparse.ArgumentTypeError(f"alpha and beta must lie in (0, 1], got {text!r}")
    return a, b


def _points(text: str) -> list[list[float]]:
    # One argument holding every mean: argparse would read a lone "-1,0" as an option, but an argument
    # with a space in it is always a value.
    try:
        return [[float(v) for v in point.split(",")] for point in text.split()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected means as 'X,Y X,Y ...' (or 'X X ...'), got {text!r}") from exc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/fixed_points", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(BUILTIN_CASES), choices=list(BUILTIN_CASES),
                   help="built-in cases (ignored when a case is given by the options below or --case-file)")
    p.add_argument("--case-file", help="JSON list of cases: {name, means, stds, teacher_weights, data_weights}")
    p.add_argument("--means", type=_points, help="your case: the modes' means as one argument, "
                   "space-separated X or X,Y (quote it: --means '-1,0 1,0')")
    p.add_argument("--stds", nargs="+", type=float, help="your case: one isotropic std per mode")
    p.add_argument("--teacher-weights", nargs="+", type=float, help="your case: the teacher's mode weights")
    p.add_argument("--data-weights", nargs="+", type=float, help="your case: the real data's mode weights")
    p.add_argument("--families", nargs="+", default=["fm", "si"], choices=["fm", "si", "diffusion"],
                   help="families with trained students")
    p.add_argument("--theory-families", nargs="+", default=["fm", "si", "diffusion"],
                   choices=["fm", "si", "diffusion"], help="families with a theory map")
    p.add_argument("--theory-step", type=float, default=0.05, help="grid step of the theory map over [0.2, 1]")
    p.add_argument("--trained", nargs="+", type=_pair, default=list(DEFAULT_TRAINED), metavar="ALPHA,BETA")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=TrainSettings.steps, help="generator updates per run")
    p.add_argument("--init-steps", type=int, default=TrainSettings.init_steps)
    p.add_argument("--hidden", type=int, default=TrainSettings.hidden, help="MLP width")
    p.add_argument("--n-train", type=int, default=TrainSettings.n_train)
    p.add_argument("--n-eval", type=int, default=TrainSettings.n_eval)
    p.add_argument("--log-every", type=int, default=TrainSettings.log_every)
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--work", default="/tmp/realuid-fixed-points", help="cached runs (a rerun skips finished runs)")
    p.add_argument("--out", default=None, help="write the Markdown report here")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--figures", default=None, help="write the heat maps and scatter plots into this folder")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="only redraw the figures of a results JSON (pictures from the runs cached in --work)")
    return p


def cases_from(args) -> list[Case]:
    custom = [args.means, args.stds, args.teacher_weights, args.data_weights]
    if any(v is not None for v in custom):
        if any(v is None for v in custom):
            raise ValueError("a case of your own needs all of --means, --stds, --teacher-weights, --data-weights")
        return [Case("custom", args.means, args.stds, args.teacher_weights, args.data_weights)]
    if args.case_file:
        return [Case(**c) for c in json.loads(Path(args.case_file).read_text())]
    return [BUILTIN_CASES[name] for name in args.cases]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _grid_from(theory: dict) -> list[float]:
    """The grid values of a theory map (the trained points off the grid appear with one beta each)."""
    counts: dict[float, int] = {}
    for v in theory.values():
        counts[v["alpha"]] = counts.get(v["alpha"], 0) + 1
    most = max(counts.values())
    return sorted(a for a, c in counts.items() if c >= most / 2)


def replot(json_path: Path, work: Path, figures: Path) -> None:
    """Redraw the figures of a results JSON: numbers from the JSON, pictures from the run cache in ``work``."""
    blob = json.loads(json_path.read_text())
    settings = TrainSettings(**blob["settings"])
    seeds = blob["seeds"]
    for res in blob["results"].values():
        case = Case(**res["case"])
        trained = list(dict.fromkeys((r["alpha"], r["beta"]) for tr in res["train"].values() for r in tr["runs"].values()))
        for fam, tr in res["train"].items():
            tag = f"{case.name}-{fam}-h{settings.hidden}"
            for run in tr["runs"].values():
                cache = work / (f"run-{tag}-a{run['alpha']:g}-b{run['beta']:g}-s{run['seed']}-{settings.steps}-"
                                f"{settings.batch_size}-{settings.fake_updates}.json")
                run["picture"] = json.loads(cache.read_text())["picture"]
            tr["pictures"] = {"data": _samples(case, case.data_weights, settings.n_eval, 2)[:1000].tolist(),
                              "teacher": _samples(case, case.teacher_weights, 1000, 5).tolist()}
        values = _grid_from(next(iter(res["theory"].values())))
        heatmap(case, res["theory"], res["train"], trained, seeds, values, figures / f"fixed_points_{case.name}_heatmap.png")
        scatter(case, res["train"], trained, seeds[0], figures / f"fixed_points_{case.name}_samples.png")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.replot:
        if not args.figures:
            print("error: --replot needs --figures (the folder to draw into)", file=sys.stderr)
            return 2
        replot(Path(args.replot), Path(args.work), Path(args.figures))
        return 0
    try:
        cases = cases_from(args)
        values = grid_values(args.theory_step)
        settings = TrainSettings(steps=args.steps, log_every=args.log_every, n_train=args.n_train,
                                 n_eval=args.n_eval, hidden=args.hidden, init_steps=args.init_steps,
                                 batch_size=args.batch_size)
        for name in ("steps", "log_every", "n_train", "n_eval", "hidden", "init_steps", "batch_size"):
            if getattr(settings, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    except (ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    code_version = cli.code_version()  # at the start: other commits may land while it runs
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results, times = {}, {}
    for case in cases:
        t0 = time.perf_counter()
        theory = {f: theory_map(case, f, values, args.trained, work) for f in args.theory_families}
        times[f"{case.name} theory"] = time.perf_counter() - t0
        print(f"{case.name}: theory maps ({len(values)}² points × {len(theory)} families) in "
              f"{times[f'{case.name} theory']:.0f} s", flush=True)
        train = {}
        for fam in args.families:
            t0 = time.perf_counter()
            train[fam] = train_case(case, fam, args.trained, args.seeds, settings, work)
            times[f"{case.name} {fam} training"] = time.perf_counter() - t0
        for fam in args.families:  # trained families need a theory map for their table
            if fam not in theory:
                theory[fam] = theory_map(case, fam, values, args.trained, work)
        results[case.name] = {"case": dataclasses.asdict(case), "theory": theory, "train": train}
    wall = time.perf_counter() - start
    command = "bench/fixed_points " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = [f"<!-- written by: {command} -->", "",
             f"Command: `{command}`  ", f"Code version at the start: {code_version}  ",
             f"Seeds: {args.seeds}; {settings.steps} generator updates per run, batch {settings.batch_size}, "
             f"{settings.fake_updates} fake updates per generator update; MLP width {settings.hidden}; "
             f"student start fit for {settings.init_steps} steps.  ",
             f"Wall time: {wall / 60:.1f} min with OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
             f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in times.items())}); CPU time of the process "
             f"{_cpu_seconds() / 60:.1f} min.", ""]
    for case in cases:
        res = results[case.name]
        for fam in res["theory"]:
            lines += tables(case, fam, res["theory"][fam], res["train"].get(fam), args.trained, args.seeds)
        if args.figures:
            figs = Path(args.figures)
            heatmap(case, res["theory"], res["train"], args.trained, args.seeds, values,
                    figs / f"fixed_points_{case.name}_heatmap.png")
            scatter(case, res["train"], args.trained, args.seeds[0], figs / f"fixed_points_{case.name}_samples.png")
            lines += [f"![{case.name} heat map]({os.path.relpath(figs / f'fixed_points_{case.name}_heatmap.png', Path(args.out).parent if args.out else '.')})",
                      f"![{case.name} samples]({os.path.relpath(figs / f'fixed_points_{case.name}_samples.png', Path(args.out).parent if args.out else '.')})", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        for res in results.values():  # pictures stay in the figures; the JSON keeps the numbers
            for tr in res["train"].values():
                tr.pop("pictures", None)
                for run in tr["runs"].values():
                    run.pop("picture", None)
        Path(args.json).write_text(json.dumps({"command": command, "code": code_version, "wall_seconds": wall,
                                               "seeds": args.seeds, "settings": dataclasses.asdict(settings),
                                               "trained": args.trained, "theory_step": args.theory_step,
                                               "results": results}, indent=1) + "\n")
    return 0
