"""Does real data move an image-scale RealUID student towards the data? A teacher wrong in a measurable way.

The teacher is trained on a class-imbalanced copy of the fit split (every image of the ``--heavy-classes``
repeated ``--heavy-weight`` times: with the defaults digits 0-4 carry 3/4 of the mass), while distillation
gets the balanced fit split as its real data. The pipeline's classifier (the feature net of digits_levers,
trained on the fit split) reads the class histogram of the teacher and of every student; the question is
whether a student's heavy-class mass falls below the teacher's, towards the data's (about 0.5), or not.

Splits, feature net, evaluator and run folders are digits_levers' (validation split of the training digits,
FID against it; the test split is never read). Every image set is scored on the same ``--samples`` inputs:
per-seed noise of seeds ``HISTOGRAM_SEED + i`` for the teacher (Euler, NFE ``--nfe``) and every student
(its ``--copy`` at the end of the run).

Beside the measurements, a **2-D analogue** of RealUID's fixed point (realuid.fixed_point, fm family): two
Gaussian modes at (±1, 0), std 0.2, with teacher weights (h, 1-h), h the measured teacher heavy mass, and
data weights (d, 1-d), d the validation digits' heavy mass. It is the theory's answer for two modes in the
plane, not a prediction for images.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import cli, stats
from .digits_levers import (add_study_arguments, distil_setting, distill_config, fid_evaluator, finish_study,
                            prepare_shared, splits, start_study, summarize)

HISTOGRAM_SEED = 3_000_000  # sample i starts from the noise of seed HISTOGRAM_SEED + i (far from EVAL_SEED's)
GRID_IMAGES = 50  # the first scored images of every row that --grid shows
NUM_CLASSES = 10
PROB_FLOOR = 1e-4  # the 2-D analogue needs both modes' weights > 0: measured masses are clipped into [f, 1-f]
DEFAULT_SETTINGS = ["1,1", "0.94,0.96", "0.5,1", "0.2,1"]
TOWARDS = {"better": "closer to the data", "worse": "farther from the data", "no difference": "no difference",
           "undetermined (a run diverged)": "undetermined (a run diverged)"}


def imbalanced(split, heavy_classes: list[int], weight: int):
    """The split with every image of ``heavy_classes`` present ``weight`` times (rows kept in source order)."""
    from realuid.data import take

    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ValueError(f"heavy weight must be an int >= 1, got {weight!r}")
    repeats = np.where(np.isin(split.y, heavy_classes), weight, 1)
    return take(split, np.repeat(np.arange(len(split.y)), repeats))


def label_masses(labels: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(labels), minlength=NUM_CLASSES) / len(labels)


def parse_settings(items: list[str]) -> list[tuple[float, float]]:
    out = []
    for item in items:
        try:
            alpha, beta = (float(v) for v in item.split(","))
        except ValueError:
            raise SystemExit(f"error: --settings takes alpha,beta pairs, got {item!r}") from None
        if not (0 < alpha <= 1 and 0 < beta <= 1):
            raise SystemExit(f"error: alpha and beta must be in (0, 1], got {item!r}")
        out.append((alpha, beta))
    return out


def key(alpha: float, beta: float) -> str:
    return f"{alpha:g},{beta:g}"


def score_images(x: torch.Tensor, shared: dict, base: dict, heavy: list[int], reference: np.ndarray) -> dict:
    """Class masses (the fit split's classifier), heavy mass, class TV to ``reference`` and FID vs validation."""
    from realuid.features import class_masses, load_feature_net

    _, val = splits(base["prepare"])
    finite = bool(torch.isfinite(x).all())
    x = torch.nan_to_num(x.float()).clamp(-1, 1)  # what the evaluator scores too
    masses = class_masses(load_feature_net(shared["features"]), x)
    evaluator = fid_evaluator(shared, distill_config(base["distill"], eval_every=1, eval_samples=len(x)), val)
    scores = evaluator.score(x)
    return {"images": len(x), "finite": finite, "class_masses": masses.tolist(),
            "heavy_mass": float(masses[heavy].sum()), "class_tv": float(0.5 * np.abs(masses - reference).sum()),
            "fid": float(scores["fid"]), "kid_mean": float(scores["kid_mean"])}


def score_teacher_and_real(shared: dict, base: dict, heavy: list[int], samples: int,
                           nfe: int) -> tuple[dict, dict[str, np.ndarray]]:
    """The imbalanced teacher's histogram (NFE ``nfe`` Euler) and the real digits' (the classifier's floor),
    with the first ``GRID_IMAGES`` images of each ({"real", "teacher"}) for the grid."""
    from realuid.api import load_teacher

    torch.set_num_threads(1)
    fit, val = splits(base["prepare"])
    reference = label_masses(val.y)
    start = time.perf_counter()
    x = load_teacher(shared["teacher"]).sample(samples, nfe=nfe, method="euler", seed=HISTOGRAM_SEED, batch_size=500)
    teacher = {**score_images(x, shared, base, heavy, reference), "sample_seconds": time.perf_counter() - start}
    # The real validation digits through the classifier: their TV to their own labels is the classifier's
    # error. Their FID is that of as many real fit digits as samples (at most the fit split) vs validation.
    real = score_images(torch.as_tensor(val.x1), shared, base, heavy, reference)
    pick = np.sort(np.random.default_rng(7).choice(len(fit), size=min(samples, len(fit)), replace=False))
    floor = score_images(torch.as_tensor(fit.x1[pick]), shared, base, heavy, reference)
    real.update(fid=floor["fid"], kid_mean=floor["kid_mean"], fid_images=len(pick), fid_of="real fit digits")
    measured = {"teacher": teacher, "real": real, "labels": {"class_masses": reference.tolist(),
                                                              "heavy_mass": float(reference[heavy].sum())}}
    return measured, {"real": val.x1[:GRID_IMAGES], "teacher": x[:GRID_IMAGES].numpy()}


def run_setting(alpha: float, beta: float, seed: int, shared: dict, base: dict, args: dict, work: Path, *,
                heavy: list[int], samples: int, copy: str) -> tuple[dict, np.ndarray]:
    """Distil (or find) one student, then score its ``copy`` on the histogram inputs; with the first
    ``GRID_IMAGES`` scored images for the grid."""
    from realuid.api import load_generator

    setting = {"alpha": alpha, "beta": beta, "distill": base["distill"]}
    checkpoint, run = distil_setting(setting, seed, shared, base, args, work)
    x = load_generator(checkpoint, ema=copy).sample(samples, seed=HISTOGRAM_SEED, batch_size=500)
    _, val = splits(base["prepare"])
    return ({"seed": seed, **run, "copy": copy, "step": checkpoint.meta["step"],
             **score_images(x, shared, base, heavy, label_masses(val.y))}, x[:GRID_IMAGES].numpy())


def theory(teacher_heavy: float, data_heavy: float, settings: list[tuple[float, float]], work: Path) -> dict:
    """The 2-D analogue's fixed-point heavy weight for every (alpha, beta) (fm family)."""
    from .fixed_points import Case, theory_map

    h, d = (float(np.clip(p, PROB_FLOOR, 1 - PROB_FLOOR)) for p in (teacher_heavy, data_heavy))
    case = Case("digits-heavy-light", [[-1.0, 0.0], [1.0, 0.0]], [0.2, 0.2], [h, 1 - h], [d, 1 - d])
    solved = theory_map(case, "fm", [], settings, work)
    return {"teacher_weight": h, "data_weight": d, "means": case.means, "std": 0.2, "family": "fm",
            "heavy_weight": {k: v["weights"][0] for k, v in solved.items()},
            "converged": {k: v["converged"] for k, v in solved.items()}}


def summarize_setting(runs: list[dict], teacher_heavy: float, data_heavy: float, copy: str) -> dict:
    """Seed statistics ({"mean", "std", "min", "max", "n"}) of heavy mass, class TV, FID and the gap closed."""
    seeds = lambda values: dataclasses.asdict(stats.summarize(values))  # noqa: E731
    out = {name: seeds([r[name] for r in runs]) for name in ("heavy_mass", "class_tv", "fid")}
    gap = teacher_heavy - data_heavy
    if gap:
        out["gap_closed"] = seeds([(teacher_heavy - r["heavy_mass"]) / gap for r in runs])
    out["class_masses"] = np.mean([r["class_masses"] for r in runs], axis=0).tolist()
    out["class_masses_std"] = (np.std([r["class_masses"] for r in runs], axis=0, ddof=1) if len(runs) > 1
                               else np.zeros(NUM_CLASSES)).tolist()
    out["curve"] = [{k: v for k, v in summarize(r, float("inf"), copy).items() if k != "final_ratio"} for r in runs]
    return out


def row_name(k: str) -> str:
    """A setting's row in the table and its panel in the grid."""
    return "data-free (1, 1)" if k == key(1.0, 1.0) else f"RealUID ({k.replace(',', ', ')})"


def _text(summary: dict | None, digits: int = 3) -> str:
    if summary is None:
        return "–"
    return stats.Summary(**summary).text(digits) if summary["n"] > 1 else f"{summary['mean']:.{digits}g}"


def write_markdown(result: dict, path: Path) -> None:
    t, real, labels = result["teacher"], result["real"], result["labels"]
    th, d = t["heavy_mass"], labels["heavy_mass"]
    lines = [f"## Imbalanced teacher, balanced data (`{result['command']}`)", "",
             f"Code {result['code']}; teacher trained on the {result['n_fit']} fit digits with classes "
             f"{result['heavy_classes']} repeated {result['heavy_weight']}x ({result['n_teacher_train']} images, "
             f"heavy mass {result['teacher_train_heavy']:.3f}); distillation data: the balanced fit split (heavy mass "
             f"{result['fit_heavy']:.3f}); {result['steps']} generator updates; seeds {result['seeds']}; scores on "
             f"{result['samples']} samples (fixed noise, the same for every row) against the {result['n_val']} "
             f"validation digits; student copy `{result['copy']}`; one torch thread per run, {result['workers']} "
             f"runs at a time; wall {result['wall_seconds'] / 60:.1f} min.", "",
             "Heavy mass: the classifier's fraction of samples in the heavy classes. Class TV: total variation "
             "between the classifier's class masses and the validation digits' labels. Gap closed: "
             "(teacher heavy − student heavy) / (teacher heavy − data heavy): 0 at the teacher, 1 at the data, "
             "< 0 away from the data. Heavy mass vs data-free's: whether the students' distance to the data's heavy "
             "mass differs from the data-free students' by more than the spread over seeds. 2-D analogue: the "
             "fixed point's heavy weight for two 2-D modes with the measured teacher and data weights (not a "
             "prediction for images).", ""]
    if result.get("grid"):  # the pictures come before any student row
        lines += [f"![samples]({result['grid']})", ""]
    lines += ["| row | heavy mass | gap closed | class TV | FID | heavy mass vs data-free's | 2-D analogue |",
              "|---|---|---|---|---|---|---|",
              f"| validation labels | {d:.3f} | 1 | 0 | – | – | – |",
              f"| real validation digits (classifier) | {real['heavy_mass']:.3f} | – | {real['class_tv']:.3f} | "
              f"{real['fid']:.3f} ({real['fid_images']} fit digits) | – | – |",
              f"| teacher, NFE {result['nfe']} | {th:.3f} | 0 | {t['class_tv']:.3f} | {t['fid']:.3f} | – | – |"]
    runs = {}
    for r in result["runs"]:
        runs.setdefault(key(r["alpha"], r["beta"]), []).append(r)
    free = runs.get(key(1.0, 1.0))
    for k, s in result["summary"].items():
        name = row_name(k)
        versus = "–"
        if free is not None and k != key(1.0, 1.0):  # |heavy mass - data's| per seed, under the spread rule
            distance = lambda rows: [abs(r["heavy_mass"] - d) for r in rows]  # noqa: E731
            versus = TOWARDS.get(stats.verdict(distance(runs[k]), distance(free)), "–")
        predicted = result["theory"]["heavy_weight"][k]
        lines.append(f"| {name} | {_text(s['heavy_mass'])} | {_text(s.get('gap_closed'), 2)} | "
                     f"{_text(s['class_tv'])} | {_text(s['fid'])} | {versus} | {predicted:.3f} |")
    lines += ["", f"Per-seed numbers, class masses and the in-training FID curves ({result['eval_samples']} samples) "
                  f"are in the JSON. Thread setting: OMP_NUM_THREADS={result['omp_num_threads']}, "
                  "torch.set_num_threads(1) in every run."]
    if result.get("figure"):
        lines += ["", f"![class masses]({result['figure']})"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def class_mass_figure(result: dict, path: Path) -> None:
    from .figures import _pyplot, _save

    plt = _pyplot()
    groups = [("validation labels", result["labels"]["class_masses"], None, "0.6"),
              (f"teacher (NFE {result['nfe']})", result["teacher"]["class_masses"], None, "tab:green")]
    colors = iter(["tab:blue", "tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:cyan"])
    for k, s in result["summary"].items():
        groups.append((f"student ({k})", s["class_masses"], s["class_masses_std"], next(colors, "0.3")))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    classes = np.arange(NUM_CLASSES)
    for i, (label, masses, spread, color) in enumerate(groups):
        ax.bar(classes + (i - (len(groups) - 1) / 2) * width, masses, width, yerr=spread, label=label, color=color,
               capsize=1.5)
    ax.set_xticks(classes)
    ax.set_xlabel("class (the fit split's classifier)")
    ax.set_ylabel("mass")
    ax.set_title(f"class masses; heavy classes {result['heavy_classes']}; students: mean ± std over seeds "
                 f"{result['seeds']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def sample_grid(result: dict, images: dict[str, np.ndarray], path: Path) -> None:
    """The first scored images of the real digits, the teacher and each setting's first seed, side by side,
    each titled with its row and that image set's heavy mass."""
    from .figures import image_panels

    seed = result["seeds"][0]
    first = {key(r["alpha"], r["beta"]): r for r in result["runs"] if r["seed"] == seed}
    # One-line titles: image_panels' figure is 1.6 in high, a second line would run into its title.
    panels = {f"validation digits: heavy {result['real']['heavy_mass']:.3f}": images["real"],
              f"teacher, NFE {result['nfe']}: heavy {result['teacher']['heavy_mass']:.3f}": images["teacher"]}
    for k in result["summary"]:
        panels[f"{row_name(k)}: heavy {first[k]['heavy_mass']:.3f}"] = images[k]
    image_panels(panels, path, title=f"first {len(images['real'])} of the {result['samples']} scored images per row "
                                     f"(same noise for every model; students: seed {seed}, {result['copy']}); heavy "
                                     f"mass: classes {result['heavy_classes']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/digits_imbalance", description=__doc__.split("\n\n")[0])
    add_study_arguments(parser, "digits_imbalance")
    parser.add_argument("--heavy-classes", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--heavy-weight", type=int, default=3, help="times each heavy-class image is repeated")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="ALPHA,BETA")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=2000, help="samples of each class histogram and its FID")
    parser.add_argument("--copy", default="ema_0.999", help="the generator copy the histograms read")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the class masses (optional)")
    parser.add_argument("--grid", type=Path, default=None,
                        help=f"PNG of the first {GRID_IMAGES} scored images of every row (optional)")
    args = parser.parse_args(argv)
    heavy = sorted(set(args.heavy_classes))
    if not heavy or len(heavy) == NUM_CLASSES or not all(0 <= c < NUM_CLASSES for c in heavy):
        parser.error(f"--heavy-classes must be some, not all, of 0..{NUM_CLASSES - 1}")
    if args.heavy_weight < 1:
        parser.error("--heavy-weight must be >= 1")
    settings = parse_settings(args.settings)

    start, base, steps = start_study(args)
    fit, _ = splits(base["prepare"])
    teacher_set = imbalanced(fit, heavy, args.heavy_weight)
    shared = prepare_shared(base, args.work, teacher_images=teacher_set.x1,
                            teacher_tag={"heavy_classes": heavy, "heavy_weight": args.heavy_weight})
    run_args = {"steps": steps, "eval_every": args.eval_every, "eval_samples": args.eval_samples}
    jobs = [(a, b, seed) for a, b in settings for seed in args.seeds]
    with futures.ProcessPoolExecutor(args.workers) as pool:
        measured = pool.submit(score_teacher_and_real, shared, base, heavy, args.samples, args.nfe)
        pending = {job: pool.submit(run_setting, *job, shared, base, run_args, args.work, heavy=heavy,
                                    samples=args.samples, copy=args.copy) for job in jobs}
        measured, images = measured.result()
        print(f"teacher: heavy mass {measured['teacher']['heavy_mass']:.3f}, FID {measured['teacher']['fid']:.3f}",
              flush=True)
        runs = {}
        for job, fut in pending.items():
            runs[job], grid_images = fut.result()
            if job[2] == args.seeds[0]:
                images[key(*job[:2])] = grid_images
            print(f"alpha {job[0]:g} beta {job[1]:g} seed {job[2]}: heavy mass {runs[job]['heavy_mass']:.3f}, "
                  f"class TV {runs[job]['class_tv']:.3f}, FID {runs[job]['fid']:.3f}", flush=True)
    teacher_heavy, data_heavy = measured["teacher"]["heavy_mass"], measured["labels"]["heavy_mass"]
    summary = {key(a, b): summarize_setting([runs[(a, b, seed)] for seed in args.seeds], teacher_heavy, data_heavy,
                                            args.copy) for a, b in settings}
    result = {
        "command": "bench/digits_imbalance " + " ".join(sys.argv[1:] if argv is None else argv),
        "code": cli.code_version(), "base": base, "heavy_classes": heavy, "heavy_weight": args.heavy_weight,
        "settings": [list(s) for s in settings], "steps": steps, "seeds": args.seeds, "copy": args.copy,
        "nfe": args.nfe, "samples": args.samples, "eval_samples": args.eval_samples, "workers": args.workers,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "n_fit": shared["n_fit"], "n_val": shared["n_val"],
        "n_teacher_train": len(teacher_set.y), "teacher_train_heavy": float(label_masses(teacher_set.y)[heavy].sum()),
        "teacher_train_counts": np.bincount(teacher_set.y, minlength=NUM_CLASSES).tolist(),
        "fit_heavy": float(label_masses(fit.y)[heavy].sum()), "teacher_file": Path(shared["teacher"]).name,
        "trained_now_seconds": {k: v for k, v in shared.items() if k.endswith("_seconds")},
        **measured, "theory": theory(teacher_heavy, data_heavy, settings, args.work), "summary": summary,
        "runs": list(runs.values()), "wall_seconds": time.perf_counter() - start,
        "figure": None if args.figure is None else os.path.relpath(args.figure, args.out.parent),
        "grid": None if args.grid is None else os.path.relpath(args.grid, args.out.parent),
    }
    finish_study(args, result, write_markdown, [(args.figure, lambda path: class_mass_figure(result, path)),
                                                (args.grid, lambda path: sample_grid(result, images, path))])
