"""``bench/bridge_noise``: does a bridge generator need noise to match ``p(x1 | x0)``?

A generator read at ``generator_t = 0`` sees ``x0`` alone and is one deterministic map of it; with
``generator_t = s > 0`` it reads ``(1-s) x0 + sigma sqrt(s(1-s)) noise`` with fresh path noise. Both are distilled
from the same teacher with the same seeds, so their difference is the input alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from realuid.data import make_toy, pair_noise, rng_for
from realuid.matching import make_family
from realuid.metrics import sliced_wasserstein2
from realuid.api import load_generator, load_teacher
from realuid.models import model_spec
from realuid.sampling import sample_teacher
from realuid.training.batches import TrainData
from realuid.training.distillation import distill
from realuid.training.teacher import train_teacher

from .figures import _pyplot, _save
from .settings import PIPELINE_DISTILL, PIPELINE_MODEL, PIPELINE_TEACHER
from .stats import summarize

SIGMA = 0.5
N_TRAIN, N_TEST = 20000, 4000
N_FIGURE = 2000  # test points drawn in the picture (the first ones; the test set is in random order)
ALPHA, BETA = 0.94, 0.96
FLOOR = "real pairs (2nd sample): the floor"
REAL = "real test x1"
TEACHER = "teacher (SDE, NFE 99)"


def paired_data(strength: float) -> tuple[np.ndarray, np.ndarray]:
    """(x0, x1) [N_TRAIN + N_TEST, 2]: 8-mode mixture and its noisy partner, fixed streams."""
    x1 = make_toy("gmm8", N_TRAIN + N_TEST, rng_for(0, 1)).astype(np.float32)
    return pair_noise(x1, strength, rng_for(0, 2)), x1


def floor_pairs(strength: float) -> tuple[np.ndarray, np.ndarray]:
    """(x0, x1) [N_TEST, 2]: a second real held-out set, drawn like ``paired_data`` from streams of its
    own, so that the train and test draws stay as they were. Its distance to the test pairs is what a
    perfect generator would score."""
    x1 = make_toy("gmm8", N_TEST, rng_for(0, 3)).astype(np.float32)
    return pair_noise(x1, strength, rng_for(0, 4)), x1


class Scores:
    """Sliced W2 of held-out pairs and of the x1 marginal."""

    def __init__(self, x0_test: np.ndarray, x1_test: np.ndarray):
        self.x0, self.x1 = x0_test, x1_test
        self.pairs = np.concatenate([x0_test, x1_test], axis=1)

    def __call__(self, x1_gen: np.ndarray, x0: np.ndarray | None = None) -> dict[str, float]:
        """``x0``: the inputs ``x1_gen`` belongs to; the test inputs unless a second real set is scored."""
        x0 = self.x0 if x0 is None else x0
        return {"joint": sliced_wasserstein2(np.concatenate([x0, x1_gen], axis=1), self.pairs, seed=0),
                "marginal": sliced_wasserstein2(x1_gen, self.x1, seed=0)}


def run(strength: float, generator_ts: list[float], steps: int, seeds: list[int], work: Path,
        teacher_steps: int = PIPELINE_TEACHER.steps) -> tuple[dict, dict]:
    """Returns (rows, samples): per row the scores of each seed; for the picture, the real x1 of the
    first N_FIGURE test pairs and the x1 the teacher and each student (first seed) draw for their x0."""
    torch.set_num_threads(1)
    x0, x1 = paired_data(strength)
    train = TrainData(torch.tensor(x1[:N_TRAIN]), None, torch.tensor(x0[:N_TRAIN]))
    x0_test = torch.tensor(x0[N_TRAIN:])
    score = Scores(x0[N_TRAIN:], x1[N_TRAIN:])
    family = make_family("bridge", sigma=SIGMA)
    spec = model_spec(PIPELINE_MODEL, (2,), 0)
    teacher_cfg = dataclasses.replace(PIPELINE_TEACHER, steps=teacher_steps)
    result = train_teacher(family, train, spec, teacher_cfg, work / f"teacher-{strength:g}-{teacher_steps}", progress=False)
    teacher = load_teacher(result).net
    with torch.no_grad():
        drawn = sample_teacher(family, teacher, x0_test, nfe=99, method="sde", rng=torch.Generator().manual_seed(1))
    x0_floor, x1_floor = floor_pairs(strength)
    rows = {FLOOR: [score(x1_floor, x0_floor)], TEACHER: [score(drawn.numpy())]}
    samples = {REAL: x1[N_TRAIN:N_TRAIN + N_FIGURE], TEACHER: drawn.numpy()[:N_FIGURE]}
    for generator_t in generator_ts:
        generator_family = make_family("bridge", sigma=SIGMA, generator_t=generator_t)
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            cfg = dataclasses.replace(PIPELINE_DISTILL, steps=steps, seed=seed,
                                      checkpoint_every_steps=min(steps, PIPELINE_DISTILL.checkpoint_every_steps))
            out = distill(generator_family, train, teacher, spec, cfg,
                          work / f"distill-{strength:g}-{generator_t:g}-{steps}-{seed}", alpha=ALPHA, beta=BETA,
                          progress=False)
            generator = load_generator(out, ema=0.999)
            noise = (torch.randn(x0_test.shape, generator=torch.Generator().manual_seed(10_000 + seed))
                     if generator_family.generator_noise else None)
            with torch.no_grad():
                x1_gen = generator(x0_test, None, noise).numpy()
            runs.append(score(x1_gen))
            print(f"generator_t {generator_t:g} seed {seed}: joint {runs[-1]['joint']:.4f} marginal "
                  f"{runs[-1]['marginal']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
            if seed == seeds[0]:
                samples[f"student, generator_t = {generator_t:g}"] = x1_gen[:N_FIGURE]
        rows[f"student, generator_t = {generator_t:g}"] = runs
    return rows, samples


def table(rows: dict) -> str:
    lines = ["| model | pairs (x0, x1): sliced W2 | x1 marginal: sliced W2 | seeds |", "|---|---|---|---|"]
    for name, runs in rows.items():
        joint, marginal = (summarize([r[k] for r in runs]).text() for k in ("joint", "marginal"))
        lines.append(f"| {name} | {joint} | {marginal} | {len(runs)} |")
    return "\n".join(lines)


def figure(rows: dict, samples: dict, path: Path, strength: float) -> None:
    """One panel of x1 per entry of ``samples`` (``run``'s), the real test x1 in grey behind each model;
    titles give the row's marginal sliced W2 (first seed, on all test points)."""
    plt = _pyplot()
    real = samples[REAL]
    colors = ["0.5", "tab:green", "tab:red", "tab:blue", "tab:purple", "tab:orange", "tab:brown"]
    fig, axes = plt.subplots(1, len(samples), figsize=(2.6 * len(samples), 2.9), squeeze=False)
    for k, (ax, (name, pts)) in enumerate(zip(axes[0], samples.items())):
        title = name
        if name != REAL:
            ax.scatter(real[:, 0], real[:, 1], s=0.5, c="0.85", rasterized=True)
            title = f"{name}\nmarginal SW2 {rows[name][0]['marginal']:.4f}"
        if np.isfinite(pts).all():
            ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c=colors[k % len(colors)], alpha=0.6, rasterized=True)
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"x1 for {len(real)} test inputs x0 (pairing strength {strength:g}); "
                 f"floor: marginal SW2 {rows[FLOOR][0]['marginal']:.4f}", fontsize=9)
    _save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/bridge_noise", description=__doc__.splitlines()[0])
    p.add_argument("--strength", type=float, default=0.5, help="pairing noise: x0 = x1 + strength * N(0, I)")
    p.add_argument("--generator-t", type=float, nargs="+", default=[0.0, 0.2, 0.35])
    p.add_argument("--steps", type=int, default=2000, help="generator updates per distillation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--teacher-steps", type=int, default=PIPELINE_TEACHER.steps)
    p.add_argument("--work", default="/tmp/realuid-bridge-noise", help="checkpoints (a rerun resumes)")
    p.add_argument("--out", default=None, help="write the table here (Markdown)")
    p.add_argument("--figure", default=None,
                   help="draw x1 of the real test set, the teacher and each student here (PNG); linked from "
                        "--out when it lies in a figures/ folder next to it")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows, samples = run(args.strength, args.generator_t, args.steps, args.seeds, Path(args.work),
                        args.teacher_steps)
    text = table(rows)
    print(text)
    if args.figure:
        figure(rows, samples, Path(args.figure), args.strength)
    if args.out:
        command = "bench/bridge_noise " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        body = f"<!-- {command} ({(time.perf_counter() - start) / 60:.0f} min) -->\n{text}\n"
        if args.figure:
            link = Path(os.path.relpath(Path(args.figure).resolve(), Path(args.out).resolve().parent))
            # Only a figure in figures/ next to the Markdown is a stable link (it travels with the file).
            if link.parts[:-1] == ("figures",):
                body += f"\n![bridge samples]({link.as_posix()})\n"
        Path(args.out).write_text(body)
    return 0
