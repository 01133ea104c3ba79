"""``bench/bridge_noise``: does a bridge generator need noise to match ``p(x1 | x0)``?

A generator read at ``generator_t = 0`` sees ``x0`` alone and is one deterministic map of it; with
``generator_t = s > 0`` it reads ``(1-s) x0 + sigma sqrt(s(1-s)) z`` with fresh ``z``. Both are distilled
from the same teacher with the same seeds, so their difference is the input alone.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from realuid.training import TrainData, distill, train_teacher

from .settings import PIPELINE_DISTILL, PIPELINE_MODEL, PIPELINE_TEACHER
from .stats import summarize

SIGMA = 0.5
N_TRAIN, N_TEST = 20000, 4000
ALPHA, BETA = 0.94, 0.96


def paired_data(strength: float) -> tuple[np.ndarray, np.ndarray]:
    """(x0, x1) [N_TRAIN + N_TEST, 2]: 8-mode mixture and its noisy partner, fixed streams."""
    x1 = make_toy("gmm8", N_TRAIN + N_TEST, rng_for(0, 1)).astype(np.float32)
    return pair_noise(x1, strength, rng_for(0, 2)), x1


class Scores:
    """Sliced W2 of held-out pairs and of the x1 marginal."""

    def __init__(self, x0_test: np.ndarray, x1_test: np.ndarray):
        self.x0, self.x1 = x0_test, x1_test
        self.pairs = np.concatenate([x0_test, x1_test], axis=1)

    def __call__(self, x1_gen: np.ndarray) -> dict[str, float]:
        return {"joint": sliced_wasserstein2(np.concatenate([self.x0, x1_gen], axis=1), self.pairs, seed=0),
                "marginal": sliced_wasserstein2(x1_gen, self.x1, seed=0)}


def run(strength: float, generator_ts: list[float], steps: int, seeds: list[int], work: Path,
        teacher_steps: int = PIPELINE_TEACHER.steps) -> dict:
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
    rows = {"teacher (SDE, NFE 99)": [score(drawn.numpy())]}
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
                runs.append(score(generator(x0_test, None, noise).numpy()))
            print(f"generator_t {generator_t:g} seed {seed}: joint {runs[-1]['joint']:.4f} marginal "
                  f"{runs[-1]['marginal']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
        rows[f"student, generator_t = {generator_t:g}"] = runs
    return rows


def table(rows: dict) -> str:
    lines = ["| model | pairs (x0, x1): sliced W2 | x1 marginal: sliced W2 | seeds |", "|---|---|---|---|"]
    for name, runs in rows.items():
        joint, marginal = (summarize([r[k] for r in runs]).text() for k in ("joint", "marginal"))
        lines.append(f"| {name} | {joint} | {marginal} | {len(runs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/bridge_noise", description=__doc__.splitlines()[0])
    p.add_argument("--strength", type=float, default=0.5, help="pairing noise: x0 = x1 + strength * N(0, I)")
    p.add_argument("--generator-t", type=float, nargs="+", default=[0.0, 0.2, 0.35])
    p.add_argument("--steps", type=int, default=2000, help="generator updates per distillation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--teacher-steps", type=int, default=PIPELINE_TEACHER.steps)
    p.add_argument("--work", default="/tmp/realuid-bridge-noise", help="checkpoints (a rerun resumes)")
    p.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.strength, args.generator_t, args.steps, args.seeds, Path(args.work), args.teacher_steps)
    text = table(rows)
    print(text)
    if args.out:
        command = "bench/bridge_noise " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        Path(args.out).write_text(f"<!-- {command} ({(time.perf_counter() - start) / 60:.0f} min) -->\n{text}\n")
    return 0
