"""Pictures for people: sample grids, scatter plots and training curves (PNG, written atomically)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .atomic import atomic_open


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    try:
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    finally:
        _pyplot().close(fig)


def image_grid(images: np.ndarray, path: str | Path, *, columns: int = 10, scale: int = 4) -> None:
    """Write ``images`` [N, C, H, W] in [-1, 1] as one PNG grid (each pixel enlarged ``scale`` times)."""
    from PIL import Image

    x = np.clip((np.asarray(images, dtype=np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    n, c, h, w = x.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = x[i].transpose(1, 2, 0)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_open(path) as fh:
        img.save(fh, format="PNG")


def scatter(points: np.ndarray, path: str | Path, *, title: str, reference: np.ndarray | None = None) -> None:
    """2-D scatter of ``points`` [N, 2] (first two coordinates), real ``reference`` points in grey behind."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", label="real (test)", rasterized=True)
    ax.scatter(points[:, 0], points[:, 1], s=1, c="tab:blue", alpha=0.6, label="samples", rasterized=True)
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7, markerscale=4)
    _save(fig, path)


def read_curves(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a curves CSV written by the training loops."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def curves(series: dict[str, dict[str, np.ndarray]], path: str | Path, *, title: str) -> None:
    """One panel per curve file: ``{panel title: columns}``; every non-step column is a line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.2), squeeze=False)
    for ax, (name, cols) in zip(axes[0], series.items()):
        for key, values in cols.items():
            if key != "step" and "grad_norm" not in key and key != "lr":
                ax.plot(cols["step"], values, label=key)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV table (an in-training evaluation table: step, copy, metrics); [] when absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def quality_curves(tables: dict[str, list[dict[str, str]]], metric: str, path: str | Path, *, title: str) -> None:
    """One panel per evaluation table ``{panel title: rows}``: ``metric`` against step, one line per copy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(4.5 * len(tables), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], tables.items()):
        for copy in dict.fromkeys(r["copy"] for r in rows):  # first-seen order: raw, then the EMA copies
            mine = [r for r in rows if r["copy"] == copy]
            ax.plot([int(r["step"]) for r in mine], [float(r[metric]) for r in mine], marker=".", label=copy)
        ax.set_xlabel("generator updates")
        ax.set_ylabel(metric)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def quality_against_nfe(series: dict[str, tuple[list[int], list[float]]], metric: str, path: str | Path, *,
                        title: str, floor: float | None = None) -> None:
    """``metric`` against the number of function evaluations, one line (or point) per model
    ``{label: (nfes, values)}``; ``floor`` (real data scored alike) as a dotted line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, (nfes, values) in series.items():
        ax.plot(nfes, values, marker="o", label=label)
    if floor is not None:
        ax.axhline(floor, color="0.5", linestyle=":", label="real data (floor)")
    ax.set_xscale("log")  # one student step to a teacher's ~100
    ax.set_xticks(sorted({n for nfes, _ in series.values() for n in nfes}))
    ax.xaxis.set_major_formatter("{x:.0f}")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)
