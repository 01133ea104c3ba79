"""Few-step students and classifier-free guidance on the 8x8 digits: what k steps and a guidance scale w buy.

The teacher is the params file's ``train_teacher`` block made class-conditional with label dropout
(``class_cond: true``, ``class_dropout: 0.1``; ``--base`` may change either), trained once on the fit split.
Splits, feature extractor, teacher cache and student run folders are digits_levers' (fit / validation carved
from the pipeline's training digits); the test digits score a second image set of every model (its own seeds),
for the report only: nothing here is chosen by a score.

Students: the params file's ``distill`` block and (alpha, beta), the same number of updates for every one,
in two sweeps: k in ``--ks`` at w = 1 (re-noising times evenly spaced, t_j = (j - 1) / k), and w in ``--ws``
at k = 1 (the teacher field of the generator loss is f_uncond + w (f_cond - f_uncond)). Each hands over its
``ema_0.999`` copy at the last update (no selection on any score) and is sampled with its k steps.
Teacher baselines: Euler at NFE 1, 2, 4 (the students' budgets) and ``--nfe``, each at every w; NFE counts
solver steps, and a guided step (w != 1) evaluates the network twice (conditional and null label).

Every image set of a split starts from the same per-seed noise (seeds ``VAL_SEED + i`` or ``TEST_SEED + i``)
and asks for the balanced labels ``i % 10``. Scores: FID, precision, recall (``--samples`` images against the
whole split), class TV (the classifier's class masses against the split's labels) and label accuracy (the
classifier agrees with the label asked for). Every finished job is cached in ``--work``, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from realuid.atomic import atomic_write

from . import cli, stats
from .diffusers_digits import GRID_IMAGES, TEST_SEED, VAL_SEED, cached, score, three_splits
from .digits_levers import (add_study_arguments, distil_setting, finish_study, load_base, prepare_shared, run_digest,
                            start_study)

COPY = "ema_0.999"
METHOD = "euler"
METRICS = ("fid", "precision", "recall", "class_tv", "label_accuracy")
SPLIT_SEEDS = {"validation": VAL_SEED, "test": TEST_SEED}
# What makes the params file's teacher the study's: conditional, with the null label guidance needs.
STUDY_TEACHER = ["train_teacher.model.class_cond=true", "train_teacher.model.class_dropout=0.1"]
# The tiny preset: the whole study in seconds (a test runs it); options a command line may still override.
PRESETS = {
    "full": {"base": [], "options": []},
    "tiny": {"base": ["train_teacher.steps=4", "train_teacher.batch_size=16", "train_teacher.optim.warmup_steps=1",
                      "features.steps=5", "distill.batch_size=16", "distill.generator_optim.warmup_steps=1",
                      "distill.fake_optim.warmup_steps=1"],
             "options": ["--steps", "2", "--eval-every", "2", "--eval-samples", "200", "--samples", "50",
                         "--nfe", "3", "--ks", "1", "2", "--ws", "2", "--guide-fake", "--seeds", "0", "1",
                         "--workers", "1"]},
}


def generator_times(k: int) -> list[float]:
    """The re-noising times of a k-step student, evenly spaced in [0, 1): k = 4 -> [0.25, 0.5, 0.75]."""
    return [j / k for j in range(1, k)]


def study_settings(ks: list[int], ws: list[float], guide_fake: bool = False) -> list[tuple[int, float, bool]]:
    """The students' (k, w, fake model guided): every k at w = 1, then every other w at k = 1; with
    ``guide_fake`` every w != 1 at k = 1 once more, the fake model guided too."""
    guided = [w for w in ws if w != 1]
    return ([(k, 1.0, False) for k in ks] + [(1, w, False) for w in guided]
            + [(1, w, True) for w in guided if guide_fake])


def name(k: int, w: float, fake_guided: bool = False) -> str:
    return f"k={k}, w={w:g}" + (", fake guided" if fake_guided else "")


def student_setting(base: dict, k: int, w: float, fake_guided: bool = False) -> dict:
    """{"alpha", "beta", "distill"} of the (k, w) student: the base with its steps, times and guidance (of the
    fake model too with ``fake_guided``)."""
    from realuid import config as config_module

    change = {"generator_steps": k, "generator_times": generator_times(k), "guidance_scale": w,
              "guide_fake": fake_guided}
    return {"alpha": base["alpha"], "beta": base["beta"],
            "distill": config_module.with_changes(base["distill"], change)}


def score_set(images: torch.Tensor, split, features: str) -> dict:
    """:func:`diffusers_digits.score` of images [n, 1, 8, 8] asked for labels ``i % 10``, with the fraction the
    classifier reads as the label asked for."""
    from realuid.features import classifier_accuracy, load_feature_net
    from realuid.sampling import class_labels

    out = score(images, split, features)
    if out["finite"]:
        classifier = load_feature_net(features)
        labels = class_labels(np.arange(len(images)), classifier.num_classes)
        out["label_accuracy"] = classifier_accuracy(classifier, images.float().clamp(-1, 1), labels)["accuracy"]
    return out


def score_both(sample, prepare: dict, features: str) -> tuple[dict, list]:
    """Scores of ``sample(seed)`` on the validation and test splits, each from its own seeds; with the first
    ``GRID_IMAGES`` test images for the grid."""
    _, val, test = three_splits(prepare)
    scores = {}
    for split_name, split in (("validation", val), ("test", test)):
        images = sample(SPLIT_SEEDS[split_name])
        scores[split_name] = score_set(images, split, features)
    return scores, images[:GRID_IMAGES].tolist()


def teacher_job(nfe: int, w: float, shared: dict, base: dict, samples: int) -> dict:
    """The teacher by Euler at ``nfe`` steps and guidance ``w``, scored on both splits."""
    from realuid.api import load_teacher

    torch.set_num_threads(1)
    start = time.perf_counter()
    teacher = load_teacher(shared["teacher"])
    scores, grid = score_both(lambda seed: teacher.sample(samples, nfe=nfe, method=METHOD, seed=seed, batch_size=500,
                                                          guidance_scale=w), base["prepare"], shared["features"])
    return {"nfe": nfe, "w": w, **scores, "grid": grid, "seconds": time.perf_counter() - start}


def floor_job(base: dict, features: str, samples: int) -> dict:
    """Real fit digits (as many as samples, at most the fit split) scored like a model, with their true labels."""
    from realuid.features import classifier_accuracy, load_feature_net

    torch.set_num_threads(1)
    fit, val, test = three_splits(base["prepare"])
    pick = np.sort(np.random.default_rng(7).choice(len(fit), size=min(samples, len(fit)), replace=False))
    images, labels = torch.as_tensor(fit.x1[pick]), torch.as_tensor(fit.y[pick])
    accuracy = classifier_accuracy(load_feature_net(features), images, labels)["accuracy"]
    return {"images": len(pick), **{split_name: {**score(images, split, features), "label_accuracy": accuracy}
                                    for split_name, split in (("validation", val), ("test", test))}}


def student_job(k: int, w: float, fake_guided: bool, seed: int, shared: dict, base: dict, run_args: dict, work: Path,
                samples: int) -> dict:
    """Distil (or resume) the (k, w, fake guided) student of ``seed``; its ``COPY`` with k steps, scored on both
    splits."""
    from realuid.api import load_generator

    torch.set_num_threads(1)
    start = time.perf_counter()
    checkpoint, run = distil_setting(student_setting(base, k, w, fake_guided), seed, shared, base, run_args, work)
    generator = load_generator(checkpoint, ema=COPY)
    scores, grid = score_both(lambda s: generator.sample(samples, seed=s, batch_size=500), base["prepare"],
                              shared["features"])
    # What the run recorded (the checkpoint leaves out k = 1, w = 1 and an unguided fake model: they change nothing).
    trained = {"generator_steps": checkpoint.config.get("generator_steps", 1),
               "generator_times": checkpoint.config.get("generator_times", []),
               "guidance_scale": checkpoint.config.get("guidance_scale", 1.0),
               "guide_fake": checkpoint.config.get("guide_fake", False)}
    return {"k": k, "w": w, "fake_guided": fake_guided, "seed": seed, "trained_with": trained, "copy": COPY,
            "step": checkpoint.meta["step"], **run, **scores, "grid": grid, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------- the tables


def summarize_students(runs: dict, teacher: dict, settings: list, seeds: list[int], nfe: int) -> dict:
    """Per setting and split: seed statistics of every metric, the FID ratio to the teacher at ``nfe`` (same
    w), and the spread rule's verdicts: FID against the k=1, w=1 student and the teacher at the same NFE
    and w, label accuracy against the k=1, w=1 student."""
    out = {}
    for k, w, g in settings:
        rows, reference = [runs[(k, w, g, s)] for s in seeds], [runs[(1, 1.0, False, s)] for s in seeds]
        summary = {"k": k, "w": w, "fake_guided": g}
        for split in SPLIT_SEEDS:
            per_seed = lambda runs_, metric: [r[split].get(metric, float("nan")) for r in runs_]  # noqa: E731
            fid, first = per_seed(rows, "fid"), (k, w, g) == (1, 1.0, False)
            summary[split] = {m: stats.summarize(per_seed(rows, m)).__dict__ for m in METRICS}
            summary[split].update(
                ratio=stats.ratio(fid, [teacher[(nfe, w)][split]["fid"]] * len(fid)).__dict__,
                vs_base=None if first else stats.verdict(fid, per_seed(reference, "fid")),
                vs_teacher=stats.verdict(fid, [teacher[(k, w)][split]["fid"]]),
                # Guidance is meant to make the label asked for readable: higher label accuracy is better.
                label_vs_base=None if first else stats.verdict(per_seed(rows, "label_accuracy"),
                                                               per_seed(reference, "label_accuracy"),
                                                               lower_is_better=False))
        summary["seconds"] = float(np.mean([r["seconds"] for r in rows]))
        summary["seconds_per_update"] = float(np.mean([r["seconds_per_update"] for r in rows]))
        out[name(k, w, g)] = summary
    return out


def _num(value: float, digits: int = 3) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"


def write_markdown(result: dict, path: Path) -> None:
    nfe, teacher = result["nfe"], {(r["nfe"], r["w"]): r for r in result["teacher"]}
    distill = result["base"]["distill"]
    model = result["base"]["train_teacher"]["model"]
    lines = [f"## Few-step students and guidance on the digits (`{result['command']}`)", "",
             f"Code {result['code']}; {result['n_fit']} fit / {result['n_val']} validation / {result['n_test']} test "
             f"digits; teacher: the params file's UNet (channels {model['channels']}, {result['teacher_parameters']} "
             f"parameters), class-conditional with label dropout {model['class_dropout']}, "
             f"{result['base']['train_teacher']['steps']} updates (seed 0); students: RealUID (alpha, beta) = "
             f"({result['base']['alpha']:g}, {result['base']['beta']:g}), {result['steps']} generator updates each at "
             f"batch {distill['batch_size']}, copy `{COPY}` at the last update, seeds {result['seeds']}; k-step "
             f"re-noising times (j - 1) / k; {result['samples']} images per score (labels i % 10, the same noise "
             f"for every model of a split); teacher sampler Euler (NFE = solver steps; at w != 1 each step evaluates "
             f"the network twice); one torch thread per job, {result['workers']} jobs at a time; wall "
             f"{result['wall_seconds'] / 60:.1f} min.", "",
             "Verdicts follow the spread rule (bench/quality_study/stats.py): a difference of seed means counts "
             "only when it exceeds the larger standard deviation over seeds (the teacher has one value, std 0). "
             "Label acc.: the fraction of images the classifier reads as the label asked for.", ""]
    if result.get("figure"):
        lines += [f"![test FID against NFE]({result['figure']})", ""]
    if result.get("grid"):
        lines += [f"![samples]({result['grid']})", ""]
    for split in SPLIT_SEEDS:
        lines += [f"### Students, {split} digits", "",
                  f"| student | NFE | FID | / teacher NFE {nfe} (same w) | precision | recall | class TV | label acc. "
                  "| FID vs k=1, w=1 | FID vs teacher, same NFE and w | label acc. vs k=1, w=1 | s / student |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for setting, s in result["summary"].items():
            row = s[split]
            text = lambda m: stats.Summary(**row[m]).text(3)  # noqa: E731
            cells = [setting, str(s["k"]), *(text(m) for m in ("fid", "ratio", *METRICS[1:])), row["vs_base"] or "–",
                     row["vs_teacher"], row["label_vs_base"] or "–", f"{s['seconds']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Teacher (Euler) and real digits", "",
              "| model | validation FID | test FID | test precision | test recall | test class TV | test label acc. |",
              "|---|---|---|---|---|---|---|"]
    floor = result["floor"]
    rows = [(f"teacher, NFE {n}, w={w:g}", r) for (n, w), r in sorted(teacher.items())]
    rows.append((f"real fit digits ({floor['images']}), the floor", floor))
    for label, r in rows:  # a diverged set has a FID only (nan)
        cells = [_num(r["validation"]["fid"]), *(_num(r["test"].get(m, np.nan)) for m in METRICS)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    trained = ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in result["trained_now_seconds"].items())
    seconds = {kind: sum(jobs.values()) for kind, jobs in result["seconds"].items()}
    lines += ["", f"Job seconds: teacher sample sets {seconds['teacher']:.0f} s in all; students "
                  f"{seconds['students']:.0f} s in all" + (f"; trained in this run: {trained}" if trained else "")
              + ". Seconds of every job, per-seed scores and the students' in-training validation curves "
                f"({result['eval_samples']} images, every {result['eval_every']} updates) are in the JSON."]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines) + "\n")


def fid_against_nfe(result: dict, path: Path) -> None:
    """Test FID against NFE (log axis): the teacher at every w as lines, students as mean ± std over seeds."""
    from .figures import _pyplot, _save

    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ws = sorted({r["w"] for r in result["teacher"]})
    colors = dict(zip(ws, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for w in ws:
        points = sorted((r["nfe"], r["test"]["fid"]) for r in result["teacher"] if r["w"] == w)
        ax.plot(*zip(*points), "--", marker=".", color=colors[w], alpha=0.7, label=f"teacher (Euler), w={w:g}")
    for setting, s in result["summary"].items():
        k, w, fid, g = s["k"], s["w"], s["test"]["fid"], s.get("fake_guided", False)
        ax.errorbar([k * (1 + 0.04 * ws.index(w) + 0.02 * g)], [fid["mean"]], yerr=[fid["std"]], fmt="s" if g else "o",
                    color=colors[w], capsize=3, label=f"student, {setting.removeprefix('k=1, ')}" if k == 1 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(result["nfes"], [str(n) for n in result["nfes"]])
    ax.xaxis.set_minor_locator(NullLocator())
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))
    ax.set_xlabel("NFE (solver steps; student: its k)")
    ax.set_ylabel("FID (test digits)")
    ax.set_title(f"students: mean ± std over seeds {result['seeds']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def by_label(split) -> np.ndarray:
    """The split's first ``GRID_IMAGES`` images rearranged as the models are asked for them: image i of label
    i % 10 (so that a grid's column is a class)."""
    per_class = [split.x1[split.y == c] for c in range(10)]
    return np.stack([per_class[i % 10][i // 10] for i in range(GRID_IMAGES)])


def sample_grid(result: dict, images: dict[str, list], path: Path) -> None:
    from .figures import image_panels

    image_panels({k: np.asarray(v) for k, v in images.items()}, path,
                 title=f"first {GRID_IMAGES} test-score images (column = label asked for; the same noise in every "
                       f"panel; students: seed {result['seeds'][0]}, {COPY})")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/few_step_digits", description=__doc__.split("\n\n")[0])
    add_study_arguments(parser, "few_step_digits")
    parser.set_defaults(eval_every=200)  # the params file's: three copies scored each time
    parser.add_argument("--preset", choices=list(PRESETS), default="full",
                        help="tiny: the whole study in seconds (options after it still apply)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="student steps at w = 1 (must hold 1)")
    parser.add_argument("--ws", type=float, nargs="+", default=[1.5, 2, 3], help="guidance scales at k = 1")
    parser.add_argument("--guide-fake", action="store_true",
                        help="also every w != 1 with the fake model guided at the same w (distill.guide_fake)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=1000, help="images per score")
    parser.add_argument("--grid", type=Path, default=None, help="PNG of sample grids per k and per w (optional)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of test FID against NFE (optional)")
    argv = sys.argv[1:] if argv is None else list(argv)
    preset = parser.parse_args(argv).preset
    args = parser.parse_args(PRESETS[preset]["options"] + argv)
    args.base = PRESETS[preset]["base"] + args.base
    args.argv = argv
    if 1 not in args.ks or min(args.ks) < 1:
        parser.error("--ks must hold 1 (the students' reference) and no k below 1")
    if min(args.ws) <= 0:
        parser.error("--ws must be > 0")
    if args.samples < 10 or args.workers < 1 or args.nfe < 1:
        parser.error("--samples must be >= 10, --workers and --nfe >= 1")
    return args


def check_base(args: argparse.Namespace) -> None:
    """One error line, before any work, for a params file or ``--base`` the study cannot run."""
    from realuid.errors import ConfigError

    try:
        base = load_base(args.params, args.base)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if any(w != 1 for w in args.ws) and not base["train_teacher"]["model"]["class_dropout"] > 0:
        raise SystemExit("error: guidance (--ws other than 1) needs train_teacher.model.class_dropout > 0, the "
                         "teacher's null label")


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    args.base = STUDY_TEACHER + args.base
    check_base(args)
    settings = study_settings(sorted(set(args.ks)), sorted(set(args.ws)), args.guide_fake)
    start, base, steps = start_study(args)
    fit, val, test = three_splits(base["prepare"])
    shared = prepare_shared(base, args.work)
    run_args = {"steps": steps, "eval_every": args.eval_every, "eval_samples": args.eval_samples}
    features, teacher_file = Path(shared["features"]).name, Path(shared["teacher"]).name
    teacher_ws = sorted({1.0, *args.ws})
    nfes = sorted({*args.ks, args.nfe})
    with futures.ProcessPoolExecutor(args.workers) as pool:
        def run(job_name, key, job, *job_args):
            return pool.submit(cached, args.work, job_name, [key, features, args.samples], job, *job_args)

        floor = run("floor", [base["prepare"]], floor_job, base, shared["features"], args.samples)
        students = {(k, w, g, seed): run("student", run_digest(student_setting(base, k, w, g), shared["teacher"],
                                                               run_args, seed), student_job, k, w, g, seed, shared,
                                         base, run_args, args.work, args.samples)
                    for k, w, g in settings for seed in args.seeds}
        teacher = {(n, w): run("teacher", [teacher_file, n, w, METHOD], teacher_job, n, w, shared, base, args.samples)
                   for n in nfes for w in teacher_ws}
        teacher = {job: fut.result() for job, fut in teacher.items()}
        runs = {}
        for job, fut in students.items():
            runs[job] = fut.result()
            print(f"{name(*job[:3])} seed {job[3]}: test FID {runs[job]['test']['fid']:.3f}, validation FID "
                  f"{runs[job]['validation']['fid']:.3f}", flush=True)
        floor = floor.result()

    grid = {"test digits": by_label(test), f"teacher, NFE {args.nfe}, w=1": teacher[(args.nfe, 1.0)]["grid"]}
    grid.update({f"student {name(*setting)}": runs[(*setting, args.seeds[0])]["grid"] for setting in settings})
    strip = lambda r: {k: v for k, v in r.items() if k != "grid"}  # noqa: E731
    result = {
        "command": "bench/few_step_digits " + " ".join(args.argv), "code": cli.code_version(), "base": base,
        "steps": steps, "seeds": args.seeds, "settings": [list(s) for s in settings], "nfe": args.nfe,
        "nfes": nfes, "samples": args.samples, "eval_every": args.eval_every, "eval_samples": args.eval_samples,
        "workers": args.workers, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "n_fit": len(fit),
        "n_val": len(val), "n_test": len(test), "teacher_file": teacher_file,
        "teacher_parameters": shared["teacher_parameters"],
        "trained_now_seconds": {k: v for k, v in shared.items() if k.endswith("_seconds")},
        "summary": summarize_students(runs, teacher, settings, args.seeds, args.nfe), "floor": floor,
        "teacher": [strip(r) for r in teacher.values()], "runs": [strip(r) for r in runs.values()],
        "seconds": {"teacher": {f"NFE {n}, w={w:g}": r["seconds"] for (n, w), r in teacher.items()},
                    "students": {f"{name(*job[:3])} seed {job[3]}": r["seconds"] for job, r in runs.items()}},
        "wall_seconds": time.perf_counter() - start,
        "figure": None if args.figure is None else os.path.relpath(args.figure, args.out.parent),
        "grid": None if args.grid is None else os.path.relpath(args.grid, args.out.parent),
    }
    finish_study(args, result, write_markdown, [(args.figure, lambda path: fid_against_nfe(result, path)),
                                                (args.grid, lambda path: sample_grid(result, grid, path))])
