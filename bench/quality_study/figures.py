"""The study's pictures (PNG, written atomically): scatter grids, distance bars, convergence, digit grids.

Every bar and curve is the mean over seeds with its spread (error bar: one standard deviation; band:
min to max over seeds); every figure says so in its title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from realuid.atomic import atomic_open

from .stats import summarize

ROW_LABELS = {
    "floor": "real (2nd sample)",
    "teacher_nfe99": "teacher, NFE 99",
    "teacher_nfe1": "teacher, NFE 1",
    "student_start": "student start",
    "data_free": "data-free student",
    "realuid": "RealUID student",
}
COLORS = {"floor": "0.6", "teacher_nfe99": "tab:green", "teacher_nfe1": "tab:olive", "student_start": "tab:olive",
          "data_free": "tab:blue", "realuid": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path) as fh:
            # No software/date metadata: the same results give byte-identical files.
            fig.savefig(fh, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    finally:
        _pyplot().close(fig)


def scatter_grid(samples: dict[str, dict[str, np.ndarray]], reference: dict[str, np.ndarray],
                 columns: Sequence[str], path: Path, title: str) -> None:
    """Rows: ``samples`` keys (e.g. families); columns: sample sets; real reference in grey behind each."""
    plt = _pyplot()
    rows = list(samples)
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            ax = axes[r][c]
            ref = reference[row]
            ax.scatter(ref[:, 0], ref[:, 1], s=0.5, c="0.85", rasterized=True)
            pts = samples[row].get(col)
            if pts is not None and np.isfinite(pts).all():
                ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c=COLORS.get(col, "k"), alpha=0.6, rasterized=True)
            ax.set_xlim(-1.3, 1.3)
            ax.set_ylim(-1.3, 1.3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if r == 0:
                ax.set_title(ROW_LABELS.get(col, col), fontsize=9)
            if c == 0:
                ax.set_ylabel(row, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def distance_bars(groups: dict[str, dict[str, Sequence[float]]], path: Path, *, metric_label: str,
                  title: str) -> None:
    """Grouped bars, one group per key of ``groups`` ({group: {row: per-seed values}}), mean ± std, log y."""
    plt = _pyplot()
    names = list(groups)
    rows = [r for r in ROW_LABELS if any(r in g for g in groups.values())]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 3.6))
    for i, row in enumerate(rows):
        means, errs, xs = [], [], []
        for j, name in enumerate(names):
            if row in groups[name]:
                s = summarize(groups[name][row])
                means.append(s.mean)
                errs.append(s.std)
                xs.append(j + (i - (len(rows) - 1) / 2) * width)
        ax.bar(xs, means, width, yerr=errs, capsize=2, color=COLORS[row], label=ROW_LABELS[row])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8, rotation=20)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_decimal_formatter())
    ax.yaxis.set_minor_formatter(_decimal_formatter(minor=True))
    ax.set_ylabel(metric_label)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def convergence(panels: dict[str, dict], path: Path, *, metric_label: str, title: str, columns: int = 4) -> None:
    """One panel per entry: {"curves": {student: {"step": [...], "values": [[seed values]...]}},
    "lines": {label: level}}; the mean curve of each student with a min–max band over seeds."""
    plt = _pyplot()
    names = list(panels)
    cols = min(columns, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        for student, curve in panels[name]["curves"].items():
            values = np.asarray(curve["values"], dtype=np.float64)  # [seeds, steps]
            steps = np.asarray(curve["step"])
            ax.plot(steps, values.mean(0), color=COLORS[student], label=ROW_LABELS[student])
            ax.fill_between(steps, values.min(0), values.max(0), color=COLORS[student], alpha=0.2, linewidth=0)
        for label, (level, color) in panels[name].get("lines", {}).items():
            ax.axhline(level, color=color, linestyle="--", linewidth=1, label=label)
        ax.set_yscale("log")
        # Plain decimal tick labels: log-scale defaults print 6x10^-2 style labels that overlap.
        ax.yaxis.set_major_formatter(_decimal_formatter())
        ax.yaxis.set_minor_formatter(_decimal_formatter(minor=True))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("generator updates", fontsize=8)
        ax.set_ylabel(metric_label, fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


def _decimal_formatter(minor: bool = False):
    from matplotlib.ticker import FuncFormatter

    def fmt(value, _pos):
        mantissa = value / 10 ** np.floor(np.log10(value)) if value > 0 else 0
        # Minor ticks: label only 2x and 5x, the rest would crowd the axis.
        if minor and round(mantissa) not in (2, 5):
            return ""
        return f"{value:.3g}"

    return FuncFormatter(fmt)


def image_panels(grids: dict[str, np.ndarray], path: Path, *, title: str, columns: int = 10) -> None:
    """Side-by-side grids of images [N, 1, H, W] in [-1, 1], one panel per entry."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(2.6 * len(grids), 1.6), squeeze=False)
    for ax, (name, images) in zip(axes[0], grids.items()):
        ax.imshow(_tile(np.clip(np.asarray(images), -1, 1), columns), cmap="gray", vmin=-1, vmax=1,
                  interpolation="nearest")
        ax.set_title(ROW_LABELS.get(name, name), fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
    """[N, 1, H, W] -> one [rows*(H+1), columns*(W+1)] canvas with 1-pixel white gutters."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + 1), columns * (w + 1)))
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = images[i, 0]
    return canvas


def teacher_budgets(budgets: dict[str, dict[str, dict]], path: Path, *, title: str) -> None:
    """Per data set, sliced W2 and k-NN precision of each family's teacher against the validation set
    at every rung of the budget ladder (one seed), the validation floor dashed, the chosen budget ringed.

    budgets: {data set: {family label: run_teacher_budget result}}.
    """
    plt = _pyplot()
    names = list(budgets)
    fig, axes = plt.subplots(len(names), 2, figsize=(7.2, 2.8 * len(names)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, dataset in enumerate(names):
        for c, (metric, label) in enumerate((("sw2", "sliced W2"), ("knn_precision", "k-NN precision"))):
            ax = axes[r][c]
            for k, (family, budget) in enumerate(budgets[dataset].items()):
                steps = [rung["steps"] for rung in budget["rungs"]]
                values = [rung[metric] for rung in budget["rungs"]]
                color = colors[k % len(colors)]
                ax.plot(steps, values, marker="o", markersize=3, color=color, label=family)
                chosen = steps.index(budget["chosen_steps"])
                ax.plot(steps[chosen], values[chosen], marker="o", markersize=9, markerfacecolor="none", color=color)
            floor = np.mean([b["floor"][metric] for b in budgets[dataset].values()])
            ax.axhline(floor, color="0.5", linestyle="--", linewidth=1, label="floor (real vs validation)")
            ax.set_xscale("log")
            ax.set_xticks(steps)
            ax.set_xticklabels([str(s) for s in steps], fontsize=7)
            ax.minorticks_off()
            ax.set_title(f"{dataset}: {label}", fontsize=9)
            ax.set_xlabel("teacher steps", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0 and c == 1:
                ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)
