"""Means over seeds, their spread, and the one rule every comparison of the study follows.

The rule: a difference between two quantities counts only when the difference of their seed means is
larger than the spread (sample standard deviation over seeds) of either; otherwise it is reported as
"no difference". Paired per-seed wins are shown beside it, never instead of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Seed statistics of one quantity: mean, sample std (ddof=1; 0 for one seed), min, max, seeds."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def text(self, digits: int = 3) -> str:
        """``mean ± std`` in a fixed number of significant digits (``nan`` when a seed diverged)."""
        if not math.isfinite(self.mean):
            return "nan"
        return f"{_sig(self.mean, digits)} ± {_sig(self.std, 2)}"


def _sig(value: float, digits: int) -> str:
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 else f"{value:.{max(digits - 1, 1)}e}"


def summarize(values: Sequence[float]) -> Summary:
    """Summary of per-seed values; any NaN (a diverged run) makes the mean NaN, so it cannot hide."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values to summarise")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return Summary(float(arr.mean()), std, float(arr.min()), float(arr.max()), int(arr.size))


def verdict(a: Sequence[float], b: Sequence[float], *, lower_is_better: bool = True) -> str:
    """``"better"`` / ``"worse"`` (a relative to b) or ``"no difference"`` under the spread rule.

    a, b: per-seed values of the same quantity for two methods (same seeds, same order).
    """
    sa, sb = summarize(a), summarize(b)
    if not (math.isfinite(sa.mean) and math.isfinite(sb.mean)):
        return "undetermined (a run diverged)"
    diff = sa.mean - sb.mean
    if abs(diff) <= max(sa.std, sb.std):
        return "no difference"
    a_lower = diff < 0
    return "better" if a_lower == lower_is_better else "worse"


PHRASES = {"better": "better than", "worse": "worse than", "no difference": "no different from"}


def phrase(a: Sequence[float], b: Sequence[float], *, lower_is_better: bool = True) -> str:
    """The verdict as words that read between two names: "better than", "worse than", "no different from"."""
    v = verdict(a, b, lower_is_better=lower_is_better)
    return PHRASES.get(v, v)


def paired_wins(a: Sequence[float], b: Sequence[float]) -> str:
    """``k/n``: seeds in which a is strictly lower than b (the paired view of the same runs)."""
    a, b = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    return f"{int((a < b).sum())}/{a.size}"


def ratio(a: Sequence[float], b: Sequence[float]) -> Summary:
    """Per-seed ratios a/b summarised (e.g. student distance over teacher distance)."""
    a, b = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return summarize(a / b)


def first_step_at_or_below(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """The first logged step whose value is <= target, or None when the curve never gets there."""
    for step, value in zip(steps, values):
        if value <= target:
            return int(step)
    return None


def crossing_steps(curves: Sequence[dict[str, Sequence[float]]], target: float) -> list[int | None]:
    """Per seed, the first step a curve (``{"step": [...], "value": [...]}``) reaches ``target``."""
    return [first_step_at_or_below(c["step"], c["value"], target) for c in curves]
