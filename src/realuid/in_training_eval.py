"""Quality during training: score a one-step generator on a fixed input set against a fixed reference.

The distill and finetune loops call a :class:`QualityEvaluator` every ``distill.eval_every_steps``
generator updates, once per copy of the generator (raw weights and each EMA copy); the metric code is
:mod:`realuid.metrics`, the pipeline's own: FID and KID of the evaluate stage's feature extractor for
images, sliced W2 and energy distance for points.

Reference: the **training split** the stage already reads (images: all of it, as in FID against the
training split; points: a fixed subset of ``eval_samples`` points). Choosing a checkpoint by it uses no
held-out data, and evaluate still reports every copy against its own reference split.

Everything random here is fixed once, independently of the step and of the training seed: the generator
inputs are per-seed noise of seeds ``EVAL_SEED + i`` (the sample stage's convention), the reference subset
and the KID subsets are drawn with ``EVAL_SEED``. Evaluations at different steps, of different copies, or
of runs with other coefficients or training seeds are therefore scored on the same inputs, and a resumed
run computes the very rows an uninterrupted one does. The evaluator uses its own generators only, so the
training's random streams do not depend on whether it runs.

Under torchrun every process evaluates, together: each draws the samples of its own batches (dealt as the
sample stage deals them) and extracts their features, and the scoring is split among the processes
(:class:`realuid.metrics.ImageScorer`); every process gets the same numbers, those of one process.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError
from .distributed import SINGLE_PROCESS, Dist
from .metrics import PointReference, image_scorer
from .sampling import class_labels, seeded_noise

EVAL_SEED = 2_000_000  # generator inputs use seeds EVAL_SEED + i: far from sample.seed's usual 1_000_000 + i


class EvaluationError(ConfigError):
    """In-training evaluation settings that cannot work with this data (message names the key)."""


@dataclass
class EvalInputs:
    """The fixed generator inputs: ``x0`` [n, ...] (noise, or a bridge's corrupted inputs), labels ``y`` [n]
    or None, and the generator's own noise [n, ...] or None."""

    x0: torch.Tensor
    y: torch.Tensor | None
    noise: torch.Tensor | None

    def __len__(self) -> int:
        return self.x0.shape[0]


class QualityEvaluator:
    """``evaluator(generator) -> {metric: value}`` for a :class:`realuid.sampling.OneStepGenerator`.

    ``score(samples [n, ...] on device)`` computes the metrics; ``metrics`` names them in table order and its
    last entry, the headline (FID, sliced W2), ranks copies (lower is better). Last, because DVC plots a
    table's last column when a plot names no column, which lets one plot definition in dvc.yaml serve both
    kinds of data. Samples are drawn in batches of ``batch_size`` on
    ``device`` without autograd, each process drawing its batches of ``dist`` and all of them receiving all
    samples; non-finite samples score ``inf`` (the run's own finite check stops it). A collective: every
    process calls it.
    """

    def __init__(self, inputs: EvalInputs, score: Callable[[torch.Tensor], dict[str, float]], metrics: tuple[str, ...],
                 *, every_steps: int, batch_size: int, device: torch.device, describe: str,
                 dist: Dist = SINGLE_PROCESS):
        self.inputs, self.score, self.metrics = inputs, score, tuple(metrics)
        self.every_steps, self.batch_size, self.device, self.describe = every_steps, batch_size, device, describe
        self.dist = dist

    @property
    def rank_by(self) -> str:
        return self.metrics[-1]

    @torch.no_grad()
    def samples(self, generator) -> torch.Tensor:
        """All ``len(inputs)`` samples [n, ...] on ``device``, every process drawing only its own batches."""
        mine = {}
        for start in self.dist.batch_starts(len(self.inputs), self.batch_size):
            rows = slice(start, start + self.batch_size)
            pick = lambda a: None if a is None else a[rows].to(self.device)  # noqa: E731
            mine[start] = generator(pick(self.inputs.x0), pick(self.inputs.y), pick(self.inputs.noise)).float()
        return self.dist.all_gather_batches(mine, len(self.inputs), self.batch_size)

    def __call__(self, generator) -> dict[str, float]:
        x = self.samples(generator)
        if not torch.isfinite(x).all():  # the same samples everywhere: every process returns here
            return {name: math.inf for name in self.metrics}
        values = self.score(x)
        return {name: values[name] for name in self.metrics}


def eval_inputs(family, split, rows: np.ndarray, num_classes: int) -> EvalInputs:
    """Generator inputs of evaluation sample i: per-seed noise of ``EVAL_SEED + i`` (a paired family: the
    corrupted input of training pair ``rows[i]``), balanced labels ``i % num_classes``."""
    n, shape = len(rows), tuple(split.sample_shape)
    seeded = lambda: seeded_noise(list(range(EVAL_SEED, EVAL_SEED + n)), shape)  # noqa: E731
    x0 = torch.as_tensor(split.x0[rows], dtype=torch.float32) if family.paired else seeded()
    y = class_labels(np.arange(n), num_classes)
    return EvalInputs(x0, y, seeded() if family.generator_noise else None)


def check_settings(cfg, evaluate_cfg, split) -> None:
    """Stop before any work when ``cfg.eval_samples`` cannot be scored on this data (EvaluationError)."""
    if cfg.eval_every_steps == 0:
        return
    if split.kind == "points":
        if cfg.eval_samples > len(split):
            raise EvaluationError(f"distill.eval_samples {cfg.eval_samples} exceeds the {len(split)} training points "
                                  "the evaluation's reference is drawn from")
        return
    kid = evaluate_cfg.kid_subset_size
    if cfg.eval_samples < kid:
        raise EvaluationError(f"distill.eval_samples {cfg.eval_samples} is below evaluate.kid_subset_size {kid}: "
                              "KID draws subsets of that many generated images")
    if len(split) < kid:
        raise EvaluationError(f"the training split has {len(split)} images, fewer than evaluate.kid_subset_size {kid} "
                              "(KID subsets of the reference)")


def point_evaluator(family, split, cfg, *, num_classes: int, device: torch.device,
                    dist: Dist = SINGLE_PROCESS) -> QualityEvaluator:
    """Sliced W2 and energy distance against a fixed subset of ``cfg.eval_samples`` training points
    (every process scores the gathered samples: a few thousand points cost less than another collective)."""
    rows = np.sort(np.random.default_rng(EVAL_SEED).choice(len(split), size=cfg.eval_samples, replace=False))
    reference = PointReference(np.asarray(split.x1[rows]), seed=0)
    return QualityEvaluator(eval_inputs(family, split, rows, num_classes), lambda x: reference.score(x.cpu().numpy()),
                            ("energy_distance", "sliced_wasserstein2"), every_steps=cfg.eval_every_steps,
                            batch_size=cfg.batch_size, device=device, dist=dist,
                            describe=f"sliced W2 and energy distance of {cfg.eval_samples} samples vs "
                                     f"{cfg.eval_samples} training points")


def image_evaluator(family, split, cfg, evaluate_cfg, *, weights_path: str | os.PathLike,
                    cache_root: str | os.PathLike | None, num_classes: int, device: torch.device,
                    dist: Dist = SINGLE_PROCESS) -> QualityEvaluator:
    """FID and KID (evaluate's extractor and KID subset size) against the whole training split.

    The training split's features come from ``cache_root`` (the features stage's cache, read only) when
    that stage computed the same ones (``evaluate.reference: train``), else they are extracted here once,
    by all processes; the extractor runs on ``device``.
    """
    batch = cfg.batch_size
    extract, scorer = image_scorer(torch.as_tensor(split.x1), evaluate_cfg.feature_extractor, weights_path,
                                   batch_size=batch, kid_subset_size=evaluate_cfg.kid_subset_size, seed=EVAL_SEED,
                                   device=device, cache_root=cache_root, dist=dist)
    rows = np.arange(cfg.eval_samples)  # only paired families read training rows; images use noise
    score = lambda x: scorer.score(extract.everywhere(x.clamp(-1, 1), batch_size=batch, dist=dist),  # noqa: E731
                                   prc=False)
    return QualityEvaluator(eval_inputs(family, split, rows % len(split), num_classes), score,
                            ("kid_mean", "fid"), every_steps=cfg.eval_every_steps, batch_size=batch,
                            device=device, dist=dist, describe=f"FID and KID ({evaluate_cfg.feature_extractor}) of "
                                                    f"{cfg.eval_samples} samples vs {len(split)} training images")


def identity(cfg, evaluate_cfg, split, weights_path: str | os.PathLike | None) -> dict | None:
    """What the evaluation's rows depend on beyond the distill settings (for the state folder's name)."""
    if cfg.eval_every_steps == 0 or split.kind == "points":
        return None
    from .checkpoints import file_digest

    return {"extractor": evaluate_cfg.feature_extractor, "weights": file_digest(weights_path),
            "kid_subset_size": evaluate_cfg.kid_subset_size}


def build(family, split, cfg, evaluate_cfg, *, weights_path, cache_root: Path | None, num_classes: int,
          device: torch.device, dist: Dist = SINGLE_PROCESS) -> QualityEvaluator | None:
    """The evaluator the distill loop calls (on every process), or None when ``cfg.eval_every_steps`` is 0."""
    if cfg.eval_every_steps == 0:
        return None
    if split.kind == "points":
        return point_evaluator(family, split, cfg, num_classes=num_classes, device=device, dist=dist)
    return image_evaluator(family, split, cfg, evaluate_cfg, weights_path=weights_path, cache_root=cache_root,
                           num_classes=num_classes, device=device, dist=dist)
