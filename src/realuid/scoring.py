"""What a metrics file holds: the numbers each row gets, by kind of data (the evaluate stage's policy).

Rows are the generated sample sets (teacher, student, every copy and step count) and ``real``: held-out
real data scored the same way, the floor that finite sample sizes put under every distance.

- Points: :func:`realuid.metrics.point_metrics` against the reference, k-NN precision and recall, on
  gmm8 (whose modes are known) the mass each mode receives, and on paired data the sliced W2 of the pairs.
- Images: FID, KID and precision/recall (:class:`realuid.metrics.ImageScorer`), FID over seed blocks, and
  where the pipeline's feature net is a classifier the class metrics (:class:`ClassMetrics`).

The metric functions themselves are :mod:`realuid.metrics`'; this module only chooses among them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .distributed import Dist
from .errors import DataError

# A gmm8 sample belongs to a mode within 4 standard deviations of its centre (a 2-D Gaussian leaves
# exp(-8) ~ 3e-4 of its mass beyond that).
GMM8_MODE_RADIUS_STDS = 4


def split_roles(train, test, reference: str) -> tuple:
    """``(reference split, other split)`` for ``evaluate.reference`` ('train' | 'test'): every row is
    compared with the reference, and the real floor is drawn from the other split."""
    return (train, test) if reference == "train" else (test, train)


def real_floor_rows(split, n: int, seed: int) -> np.ndarray:
    """Rows of ``n`` real samples (a fixed random subset) standing in for a perfect generator.

    They come from the split the samples are *not* compared with, so the floor is an honest one.
    """
    rng = np.random.default_rng(seed)
    return rng.choice(len(split), size=min(n, len(split)), replace=False)


# ------------------------------------------------------------------------------------------ points


def point_scores(gen: dict[str, np.ndarray], reference, *, seed: int, dataset: str | None,
                 sources: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """``{row: {metric: value}}`` of point rows ``gen`` ({row: [N, D]}) against the ``reference`` split.

    ``sources`` ({row: [N, D]}, the inputs x0 each row was drawn from) for paired data adds the joint score.
    """
    from .metrics import point_metrics

    metrics = {who: point_metrics(x, reference.x1, seed=seed) for who, x in gen.items()}
    structure_metrics(metrics, gen, reference.x1, dataset)
    if sources is not None:
        joint_metrics(metrics, gen, sources, reference, seed)
    return metrics


def structure_metrics(metrics: dict, gen: dict, reference: np.ndarray, dataset: str | None) -> None:
    """Points: k-NN precision and recall of every row against the reference (is each sample where data
    is, is all the data covered?), and on gmm8, whose modes are known, the mass each mode receives."""
    from .metrics import knn_precision_recall

    for who, x in gen.items():
        metrics[who].update(knn_precision_recall(x, reference))
        if dataset == "gmm8":
            metrics[who].update(gmm8_mode_metrics(x))


def gmm8_mode_metrics(x: np.ndarray) -> dict[str, float]:
    """:func:`realuid.metrics.mode_metrics` of points x [N, 2] at gmm8's eight equally weighted modes."""
    from .data import GMM8_NUM_COMPONENTS, GMM8_STD, gmm8_centers
    from .metrics import mode_metrics

    weights = np.full(GMM8_NUM_COMPONENTS, 1.0 / GMM8_NUM_COMPONENTS)
    return mode_metrics(x, gmm8_centers(), weights, GMM8_MODE_RADIUS_STDS * GMM8_STD)


def joint_metrics(metrics: dict, gen: dict, sources: dict, reference, seed: int) -> None:
    """Paired point data: sliced W2 of the pairs ``(x0, x1)``, so a student that ignores which ``x0`` it
    was given (or maps each to one point where ``p(x1 | x0)`` is spread) scores worse than its marginal says."""
    from .metrics import sliced_wasserstein2

    pairs = np.concatenate([reference.x0, reference.x1], axis=1)
    for who, x in gen.items():
        joint = np.concatenate([sources[who], x], axis=1)
        metrics[who]["joint_sliced_wasserstein2"] = sliced_wasserstein2(joint, pairs, seed=seed)


# ------------------------------------------------------------------------------------------ images


def image_scores(rows: dict[str, Callable], reference: np.ndarray, cfg, weights_path: str, *, cache_root: Path,
                 dist: Dist, same: dict[str, str] | None = None, reference_stats: dict | None = None) -> dict:
    """FID, KID and precision/recall of every row, scored by all processes together (every process returns
    the same numbers): the extractor and the reference [M, C, H, W] (features and FID statistics) are
    prepared once. ``rows`` maps each row to a function reading its split: one row's images and features
    are held at a time besides the reference's. ``cfg``: the ``evaluate`` settings.

    ``same`` maps a row to another row with identical samples (the headline ``student`` and its copy):
    it gets that row's numbers, as computing them again would (at paper scale: 150k Inception passes
    and K + 1 FIDs saved). ``reference_stats`` ({"mu", "sigma"}) replace the reference's own for FID.

    The reference features come from the features stage's cache ``cache_root``, which is read, never
    written: a miss (other images, other weights) recomputes them here. Where the extractor is the
    pipeline's classifier, rows also get :class:`ClassMetrics`.
    """
    from .metrics import image_scorer

    extract, scorer = image_scorer(torch.as_tensor(reference), cfg.feature_extractor, weights_path,
                                   batch_size=cfg.batch_size, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed,
                                   device=dist.device, cache_root=cache_root, reference_stats=reference_stats,
                                   dist=dist)
    classes = ClassMetrics.build(cfg.feature_extractor, weights_path, reference, dist.device)
    same = same or {}
    metrics = {}
    for who, read in rows.items():
        if who in same:
            continue
        split = read()
        try:
            features = extract.everywhere(torch.as_tensor(split.x1), batch_size=cfg.batch_size, dist=dist)
            metrics[who] = scorer.score(features)
            if who != "real":  # the floor's size follows the other split, not the seed blocks
                metrics[who].update(scorer.fid_blocks(features, cfg.fid_blocks))
        except ValueError as error:  # e.g. published statistics of another extractor's dimension
            raise DataError(f"{who}: {error}") from error
        del features
        if classes is not None:  # every process: the pipeline's small classifier, no collective
            metrics[who].update(classes.row(split, labelled=who != "real"))
    metrics.update({who: dict(metrics[copy]) for who, copy in same.items()})
    return {who: metrics[who] for who in rows}  # the rows in the order of rows


class ClassMetrics:
    """The pipeline's classifier on each row (``evaluate.feature_extractor: realuid-features`` trained for
    classification): ``class_accuracy`` (class-conditional samples: does it see the class each sample was
    asked for?) and ``class_tv`` with ``class_mass_<c>`` (does the model draw the classes as often as the
    reference does? the fraction labelled c, and the total variation distance of those fractions to the
    reference's own, 0 for the same histogram)."""

    def __init__(self, net, target: np.ndarray):
        self.net, self.target = net, target

    @classmethod
    def build(cls, extractor: str, weights_path: str, reference: np.ndarray,
              device: torch.device) -> "ClassMetrics | None":
        """The class metrics against reference images [M, C, H, W], or None unless the extractor is the
        pipeline's feature net (at ``weights_path``) trained as a classifier."""
        if extractor != "realuid-features":
            return None
        from .features import class_masses, load_feature_net

        net = load_feature_net(weights_path).to(device)
        if net.task != "classification":
            return None
        return cls(net, class_masses(net, torch.as_tensor(reference)))

    def row(self, split, *, labelled: bool) -> dict[str, float]:
        from .features import class_masses, classifier_accuracy

        images = torch.as_tensor(split.x1).clamp(-1, 1)
        out = {}
        if labelled and split.y is not None:
            acc = classifier_accuracy(self.net, images, torch.as_tensor(split.y))
            out["class_accuracy"] = acc["accuracy"]
            out.update({f"class_accuracy_{c}": a for c, a in acc["per_class_accuracy"].items()})
        masses = class_masses(self.net, images)
        out["class_tv"] = float(0.5 * np.abs(masses - self.target).sum())
        out.update({f"class_mass_{c}": float(m) for c, m in enumerate(masses)})
        return out
