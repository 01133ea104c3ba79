"""``bench/sweep``: the α/β grid through the pipeline itself, as DVC experiments, and its heatmap.

    bench/sweep queue      queue one experiment per grid point and seed (dvc exp run --queue --set-param ...)
    bench/sweep start      dvc queue start (-j workers); dvc queue status shows progress
    bench/sweep collect    dvc exp show --json -> table of the metric per (alpha, beta) + heatmap PNG

The grid crosses a few values of alpha with the ratios beta/alpha the authors discuss (0.94, 0.98, 1,
1.02, 1.06), plus the data-free point alpha = beta = 1. Every point keeps beta <= 1 (params.yaml's range).
Seeds are distillation seeds (``distill.seed``): the teacher is shared, so each experiment reruns
distillation, sampling and evaluation only. ``collect`` reports mean ± std over the seeds found per point
and applies the study's rule: a difference counts only when it exceeds the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

ALPHAS = (0.86, 0.90, 0.94)
RATIOS = (0.94, 0.98, 1.0, 1.02, 1.06)
METRICS_FILE = "data/evaluate/metrics.json"
RESULTS = Path(__file__).resolve().parents[1] / "results"  # bench/results
# The headline distance of the data params.yaml distils: FID for images, sliced W2 for points.
DEFAULT_METRICS = ("student.fid", "student.sliced_wasserstein2")


def grid(alphas=ALPHAS, ratios=RATIOS) -> list[tuple[float, float]]:
    """(alpha, beta) points, beta = alpha * ratio rounded to 4 decimals, plus the data-free (1, 1)."""
    points = []
    for a in alphas:
        for r in ratios:
            b = round(a * r, 4)
            if not 0 < b <= 1:
                raise ValueError(f"alpha {a} with beta/alpha {r} gives beta {b} outside (0, 1]")
            points.append((a, b))
    return points + [(1.0, 1.0)]


def experiment_name(alpha: float, beta: float, seed: int = 0) -> str:
    """``sweep-a0p94-b0p96`` (seed 0, the params.yaml seed), ``sweep-a0p94-b0p96-s1`` for other seeds."""
    return f"sweep-a{alpha:g}-b{beta:g}".replace(".", "p") + (f"-s{seed}" if seed else "")


def queue_commands(points: list[tuple[float, float]], seeds=(0,)) -> list[list[str]]:
    return [["dvc", "exp", "run", "--queue", "-n", experiment_name(a, b, seed), "--set-param", f"alpha={a}",
             "--set-param", f"beta={b}", *(["--set-param", f"distill.seed={seed}"] if seed else [])]
            for seed in seeds for a, b in points]


def _nodes(tree: Any) -> Iterator[dict]:
    """Every dict in ``dvc exp show --json`` output that carries both params and metrics."""
    if isinstance(tree, dict):
        if "params" in tree and "metrics" in tree:
            yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def _lookup(data: dict, dotted: str | list[str]) -> Any:
    """``data[a][b]...`` for ``"a.b"`` (or a list of keys, for keys that contain dots); None if missing."""
    for part in dotted.split(".") if isinstance(dotted, str) else dotted:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def collect(exp_show: Any, metric: str = DEFAULT_METRICS[1], metrics_file: str = METRICS_FILE) -> dict:
    """{(alpha, beta): {distill seed: metric value}} from parsed ``dvc exp show --json``.

    The last entry per point and seed wins (the workspace and the baseline commit count as runs too).
    """
    values: dict[tuple[float, float], dict[int, float]] = {}
    for node in _nodes(exp_show):
        params = _lookup(node["params"], ["params.yaml", "data"]) or {}
        metrics = _lookup(node["metrics"], [metrics_file, "data"]) or {}
        alpha, beta, value = params.get("alpha"), params.get("beta"), _lookup(metrics, metric)
        seed = _lookup(params, "distill.seed") or 0
        if alpha is not None and beta is not None and isinstance(value, (int, float)):
            values.setdefault((float(alpha), float(beta)), {})[int(seed)] = float(value)
    return values


def references(exp_show: Any, metric: str, metrics_file: str = METRICS_FILE) -> dict[str, list[float]]:
    """The teacher's and the real floor's value of the student metric, over every experiment that reports
    them: {"teacher": [...], "real": [...]} for ``student.<name>`` (the teacher is shared by the sweep)."""
    name = metric.split(".", 1)[1] if metric.startswith("student.") else None
    found: dict[str, list[float]] = {"teacher": [], "real": []}
    for node in (_nodes(exp_show) if name else ()):
        metrics = _lookup(node["metrics"], [metrics_file, "data"]) or {}
        for row in found:
            value = _lookup(metrics, [row, name])
            if isinstance(value, (int, float)):
                found[row].append(float(value))
    return found


def _reference_lines(found: dict[str, list[float]], metric: str) -> list[str]:
    """The teacher and the floor before any student row: the range over experiments (one teacher)."""
    span = lambda v: f"{min(v):.3g}" if min(v) == max(v) else f"{min(v):.3g}–{max(v):.3g}"  # noqa: E731
    parts = [f"{label} {span(found[row])} ({len(found[row])} experiments)"
             for row, label in (("teacher", "teacher"), ("real", "real floor")) if found[row]]
    if not parts:
        return [f"No experiment reports the teacher's or the floor's {metric.split('.', 1)[-1]}.", ""]
    return [f"The teacher first, {metric.split('.', 1)[-1]} on the same evaluation: " + "; ".join(parts) + ".", ""]


def table(values: dict, metric: str) -> str:
    """Markdown rows: per point the seed mean ± std, the seeds, and the verdict against data-free (1, 1)."""
    from .stats import summarize, verdict

    data_free = values.get((1.0, 1.0))
    lines = [f"| alpha | beta | beta/alpha | {metric} (mean ± std) | per seed | seeds | vs data-free |",
             "|---|---|---|---|---|---|---|"]
    for (a, b), by_seed in sorted(values.items()):
        runs = [by_seed[s] for s in sorted(by_seed)]
        if data_free is None or (a, b) == (1.0, 1.0):
            against = "–"
        else:
            shared = sorted(set(by_seed) & set(data_free))
            against = verdict([by_seed[s] for s in shared], [data_free[s] for s in shared]) if shared else "–"
        seeds = ", ".join(str(s) for s in sorted(by_seed))
        each = ", ".join(f"{v:.3g}" for v in runs)
        lines.append(f"| {a:g} | {b:g} | {b / a:.3f} | {summarize(runs).text()} | {each} | {seeds} | {against} |")
    return "\n".join(lines)


def results_page(values: dict, metric: str, heatmap_name: str, found: dict[str, list[float]] | None = None) -> str:
    """``bench/results/RESULTS-sweep.md``: the teacher and the floor, the table, what it says against data-free,
    and how it was made."""
    rows = table(values, metric)
    verdicts = [line.rsplit("|", 2)[1].strip() for line in rows.splitlines()[2:]]
    counted = {v: verdicts.count(v) for v in sorted(set(verdicts)) if v != "–"}
    summary = ", ".join(f"{n} × {v}" for v, n in counted.items()) or "no point has data-free seeds to compare with"
    return "\n".join([
        "# α/β sweep through the pipeline", "",
        "Each point is a DVC experiment of the committed pipeline (`dvc exp run --queue --set-param alpha=… "
        "--set-param beta=… [--set-param distill.seed=…]`), which reuses the cached `prepare` and "
        "`train_teacher` stages; seeds are distillation seeds. Made with:", "",
        "```", "bench/sweep queue [--alphas …] [--ratios …] [--seeds …]", "bench/sweep start --jobs 1",
        "bench/sweep collect            # dvc exp show --json --all-commits -> this page and the heatmap", "```", "",
        *_reference_lines(found or {"teacher": [], "real": []}, metric),
        rows, "",
        f"Against the data-free point (α = β = 1, same seeds; a difference counts only beyond the seed spread): "
        f"{summary}.", "",
        f"![sweep]({heatmap_name})", ""])


def heatmap(values: dict, path: Path, metric: str) -> None:
    """Metric over (alpha, beta/alpha) as a coloured grid with the numbers written in (PNG)."""
    from .figures import _pyplot, _save

    plt = _pyplot()
    alphas = sorted({a for a, _ in values})
    ratios = sorted({round(b / a, 4) for a, b in values})
    means = {point: sum(by_seed.values()) / len(by_seed) for point, by_seed in values.items()}
    table = [[means.get((a, round(a * r, 4)), float("nan")) for r in ratios] for a in alphas]
    fig, ax = plt.subplots(figsize=(1.2 * len(ratios) + 2, 0.8 * len(alphas) + 1.5))
    image = ax.imshow(table, cmap="viridis_r", aspect="auto")
    for i, row in enumerate(table):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("beta / alpha")
    ax.set_ylabel("alpha")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{metric}, mean over seeds (lower is better)", fontsize=10)
    _save(fig, path)


def _dvc(cmd: list[str]) -> list[str]:
    """``dvc ...`` through the PATH, or through this interpreter when only the package is installed."""
    return cmd if shutil.which("dvc") else [sys.executable, "-m", *cmd]


def _run(cmd: list[str], dry_run: bool) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return 0 if dry_run else subprocess.run(_dvc(cmd)).returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/sweep", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("queue", "start", "collect"))
    p.add_argument("--jobs", type=int, default=1, help="start: parallel queue workers (default 1)")
    p.add_argument("--alphas", type=float, nargs="+", default=ALPHAS, help=f"queue: alpha values (default {ALPHAS})")
    p.add_argument("--ratios", type=float, nargs="+", default=RATIOS,
                   help=f"queue: beta/alpha ratios (default {RATIOS})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="queue: distill.seed values (default 0)")
    p.add_argument("--metric", default=None, help=f"collect: dotted key in {METRICS_FILE} (default: "
                   f"the first of {', '.join(DEFAULT_METRICS)} the experiments report)")
    p.add_argument("--from-json", help="collect: read a saved `dvc exp show --json` instead of running it")
    p.add_argument("--out", default=str(RESULTS / "figures" / "sweep_heatmap.png"))
    p.add_argument("--results", default=str(RESULTS / "RESULTS-sweep.md"),
                   help="collect: the Markdown page written next to the heatmap ('' for none)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc commands without running them")
    args = p.parse_args(argv)
    if args.action == "queue":
        return max(_run(cmd, args.dry_run) for cmd in queue_commands(grid(args.alphas, args.ratios), args.seeds))
    if args.action == "start":
        return _run(["dvc", "queue", "start", "-j", str(args.jobs)], args.dry_run)
    if args.from_json:
        shown = json.loads(Path(args.from_json).read_text())
    else:
        # --all-commits: experiments stay listed after new commits move HEAD past their baseline.
        done = subprocess.run(_dvc(["dvc", "exp", "show", "--json", "--all-commits"]), capture_output=True, text=True)
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        shown = json.loads(done.stdout)
    if args.metric is None:
        args.metric = next((m for m in DEFAULT_METRICS if collect(shown, m)), DEFAULT_METRICS[0])
    values = collect(shown, args.metric)
    if not values:
        print(f"no finished experiment reports {args.metric} yet (dvc queue status shows progress)", file=sys.stderr)
        return 1
    found = references(shown, args.metric)
    print("\n".join(_reference_lines(found, args.metric)))
    print(table(values, args.metric))
    heatmap(values, Path(args.out), args.metric)
    print(f"heatmap: {args.out}")
    if args.results:
        page = Path(args.results)
        figure = os.path.relpath(Path(args.out).resolve(), page.resolve().parent)
        page.write_text(results_page(values, args.metric, figure, found))
        print(f"results: {page}")
    return 0
