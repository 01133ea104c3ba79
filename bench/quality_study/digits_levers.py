"""Which distillation settings make the one-step digits student match its teacher? One lever at a time.

Everything is chosen on a **validation split carved out of the pipeline's training digits** (prepare's
split, ``test_fraction 0.2``, seed 0; then 20% of the training digits per class, seed 1): the feature
extractor and the teacher train on the rest (``fit``), every score is FID against the validation digits.
The test split that the pipeline reports is never read.

A base setting comes from a params file (``--params``, default ``params.yaml``: its ``train_teacher`` and
``distill`` blocks, with ``--base key=value`` overrides). Each lever is the base with one group of keys
changed; every run scores the raw generator and each EMA copy every ``--eval-every`` updates on one fixed
noise set, and the teacher at NFE 99 on the same noise set is the yardstick (``ratio = FID / teacher FID``).
Runs execute in ``--workers`` processes with one torch thread each, so the seconds per update of two
runs are measured side by side under the same load.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from realuid import config as config_module
from realuid.data import build_splits, split_indices, take
from realuid.matching import make_family
from realuid.models import build_model, model_spec
from realuid.training.batches import TrainData
from realuid.yamlfile import parse_yaml, read_yaml

from . import cli

ROOT = Path(__file__).resolve().parents[2]
VALIDATION_FRACTION = 0.2
KID_SUBSET = 200  # <= the validation split's 287 images


def both_optimizers(**changes) -> dict:
    """The same change of the generator's and the fake model's optimizer."""
    return {"distill": {"generator_optim": changes, "fake_optim": changes}}


# name -> changes of a run's setting ({"alpha", "beta", "distill"}, in the form of
# realuid.config.with_changes), each lever alone against the base; a function of the base's distill
# section where the change is relative to it.
LEVERS: dict[str, dict | Callable[[dict], dict]] = {
    "base": {},
    "lr 2e-4": both_optimizers(lr=2e-4),
    "lr 1e-3": both_optimizers(lr=1e-3),
    "lr 2e-3": both_optimizers(lr=2e-3),
    "constant lr": both_optimizers(decay="constant"),
    "warm-up 200": both_optimizers(warmup_steps=200),
    "lr 1e-3, warm-up 200": both_optimizers(lr=1e-3, warmup_steps=200),
    "batch 128": {"distill": {"batch_size": 128}},
    "batch 32": {"distill": {"batch_size": 32}},
    "fake lr x2": lambda distill: {"distill": {"fake_optim": {"lr": 2 * distill["fake_optim"]["lr"]}}},
    "fake updates 2": {"distill": {"fake_updates_per_generator_update": 2}},
    "fake updates 5": {"distill": {"fake_updates_per_generator_update": 5}},
    "fake init random": {"distill": {"fake_init": "random"}},
    "generator betas (0.9, 0.999)": both_optimizers(betas=[0.9, 0.999]),
    "data-free": {"alpha": 1.0, "beta": 1.0},
    "beta 1 (alpha 0.94)": {"beta": 1.0},
    "alpha 0.2, beta 1": {"alpha": 0.2, "beta": 1.0},
}


def load_base(params_path: Path, overrides: list[str]) -> dict:
    """{"alpha", "beta", "train_teacher", "distill", "features", "prepare"} from a params file, with dotted
    ``key=value`` overrides (as ``dvc exp run --set-param`` takes them), checked as the pipeline checks params."""
    params = read_yaml(params_path)
    for item in overrides:
        key, _, value = item.partition("=")
        change = functools.reduce(lambda inner, name: {name: inner}, reversed(key.split(".")),
                                  parse_yaml(value, f"override {item!r}"))
        params = config_module.with_changes(params, change)
    config_module.build(config_module.Params, params)  # an unknown key or a bad value stops here, named
    return {key: params[key] for key in ("alpha", "beta", "train_teacher", "distill", "features", "prepare")}


def splits(prepare: dict):
    """(fit, validation) of the pipeline's training digits; the test split is dropped unread."""
    prepare = {**prepare, "source": "digits"}
    train, _ = build_splits(config_module.build(config_module.PrepareConfig, prepare, "prepare."))
    fit_rows, val_rows = split_indices(len(train), VALIDATION_FRACTION, np.random.default_rng(1), train.y)
    return take(train, fit_rows), take(train, val_rows)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def prepare_shared(base: dict, work: Path, *, teacher_images: np.ndarray | None = None,
                   teacher_tag: dict | None = None) -> dict:
    """Feature extractor and teacher on the fit split (cached in ``work`` by their settings).

    ``teacher_images`` (with ``teacher_tag``, what makes them differ from the fit split, for the cache name)
    trains the teacher on other images; the feature extractor always trains on the fit split."""
    if (teacher_images is None) != (teacher_tag is None):
        raise ValueError("teacher_images and teacher_tag go together")
    from realuid.api import load_teacher
    from realuid.checkpoints import save_checkpoint
    from realuid.features import save_feature_net, train_feature_net
    from realuid.training.teacher import train_teacher

    fit, val = splits(base["prepare"])
    feat_cfg = base["features"]
    feat_path = work / f"features-{_digest(feat_cfg)}.pt"
    out = {"n_fit": len(fit), "n_val": len(val)}
    if not feat_path.exists():
        start = time.perf_counter()
        net = train_feature_net(torch.as_tensor(fit.x1), torch.as_tensor(fit.y), steps=feat_cfg["steps"],
                                batch_size=feat_cfg["batch_size"], lr=feat_cfg["lr"], seed=feat_cfg["seed"],
                                progress=False)
        save_feature_net(feat_path, net, {"source": "digits", "split": "fit"})
        out["features_seconds"] = time.perf_counter() - start
    teacher_cfg = config_module.build(config_module.TrainTeacherConfig, base["train_teacher"], "train_teacher.")
    spec = model_spec(teacher_cfg.model, fit.sample_shape, fit.num_classes)  # unconditional unless class_cond
    if teacher_images is not None and conditional(spec):
        raise ValueError("teacher_images have no labels: a class-conditional teacher trains on the fit split")
    key = [base["train_teacher"], spec] + ([] if teacher_tag is None else [teacher_tag])
    teacher_path = work / f"teacher-{_digest(key)}.pt"
    if not teacher_path.exists():
        start = time.perf_counter()
        data = fit_data(fit, spec) if teacher_images is None else TrainData(torch.as_tensor(teacher_images))
        result = train_teacher(make_family("fm"), data, spec, teacher_cfg,
                               work / f"teacher-state-{teacher_path.stem}", progress=False)
        save_checkpoint(result, teacher_path)
        out["teacher_seconds"] = time.perf_counter() - start
    load_teacher(teacher_path)  # fails here, once, if the file is unreadable
    out.update(features=str(feat_path), teacher=str(teacher_path), spec=spec,
               teacher_parameters=sum(p.numel() for p in build_model(spec).parameters()))
    return out


def conditional(spec: dict) -> bool:
    """Whether a model spec takes class labels."""
    return spec["args"].get("num_classes", 0) > 0


def fit_data(fit, spec: dict) -> TrainData:
    """The fit digits as training data, with their labels where the model ``spec`` takes them."""
    return TrainData(torch.as_tensor(fit.x1), torch.as_tensor(fit.y) if conditional(spec) else None)


def fid_evaluator(shared: dict, distill_cfg, val):
    """In-training FID (and KID) against the validation digits ``val``, with the study's feature extractor
    (a class-conditional generator is asked for the balanced labels ``i % num_classes``)."""
    from realuid import in_training_eval

    evaluate_cfg = argparse.Namespace(feature_extractor="realuid-features", kid_subset_size=KID_SUBSET)
    return in_training_eval.image_evaluator(make_family("fm"), val, distill_cfg, evaluate_cfg,
                                            weights_path=shared["features"], cache_root=None,
                                            num_classes=shared["spec"]["args"].get("num_classes", 0),
                                            device=torch.device("cpu"))


def score_teacher(shared: dict, base: dict, eval_samples: int, nfe: int) -> dict:
    """The teacher's FID at ``nfe`` Euler steps (and at 1) on the noise set every student is scored on."""
    from realuid.api import load_teacher
    from realuid.sampling import OneStepGenerator, sample_teacher

    torch.set_num_threads(1)
    fit, val = splits(base["prepare"])
    cfg = distill_config(base["distill"], eval_every=1, eval_samples=eval_samples)
    evaluator = fid_evaluator(shared, cfg, val)
    net, family = load_teacher(shared["teacher"]).net, make_family("fm")
    start = time.perf_counter()
    with torch.no_grad():
        x = torch.cat([sample_teacher(family, net, z, nfe=nfe, method="euler")
                       for z in evaluator.inputs.x0.split(500)])
        one = OneStepGenerator(family, net)(evaluator.inputs.x0)
    # The floor: as many real training digits (fit split, which no score's reference holds) as samples.
    pick = np.sort(np.random.default_rng(7).choice(len(fit), size=min(eval_samples, len(fit)), replace=False))
    return {f"nfe{nfe}": evaluator.score(x), "nfe1": evaluator.score(one),
            "floor": evaluator.score(torch.as_tensor(fit.x1[pick])), "floor_images": len(pick),
            "sample_seconds": time.perf_counter() - start}


def distill_config(distill: dict, *, eval_every: int, eval_samples: int, steps: int | None = None,
                   seed: int | None = None):
    """The :class:`realuid.config.DistillConfig` of a study run: ``distill`` with what the study sets itself."""
    changes = {"eval_every_steps": eval_every, "eval_samples": eval_samples, "keep_best": False, "device": "cpu",
               "nproc": 1, "checkpoint_every_steps": eval_every}  # a killed study resumes its runs where they stopped
    if steps is not None:
        changes["steps"] = steps
    if seed is not None:
        changes["seed"] = seed
    return config_module.build(config_module.DistillConfig, config_module.with_changes(distill, changes), "distill.")


# Keys the study sets itself (per run or for all runs), whatever the params file says.
_SET_BY_STUDY = ("steps", "seed", "eval_every_steps", "eval_samples", "keep_best", "device", "nproc",
                 "checkpoint_every_steps", "log_every_steps")


def run_digest(setting: dict, teacher: str, args: dict, seed: int) -> str:
    """The name of a run's folder: what shapes the run, so the same run is found again from any command."""
    distill = {k: v for k, v in setting["distill"].items() if k not in _SET_BY_STUDY}
    if not (distill.get("guide_fake") and distill.get("guidance_scale", 1) != 1):
        distill.pop("guide_fake", None)  # it acts only with guidance: without, runs keep their folders
    return _digest([{**setting, "distill": distill}, Path(teacher).name, args, seed])


def run_student(lever: str, seed: int, shared: dict, base: dict, args: dict, work: Path) -> dict:
    """Distil one student under ``LEVERS[lever]`` applied to the base and return its curve."""
    changes = LEVERS[lever](base["distill"]) if callable(LEVERS[lever]) else LEVERS[lever]
    setting = config_module.with_changes({"alpha": base["alpha"], "beta": base["beta"], "distill": base["distill"]},
                                         changes)
    _, run = distil_setting(setting, seed, shared, base, args, work)
    return {"lever": lever, "seed": seed, "overrides": changes, **run}


def distil_setting(setting: dict, seed: int, shared: dict, base: dict, args: dict, work: Path):
    """Distil ``shared``'s teacher on the fit split under ``setting`` ({"alpha", "beta", "distill"}), resuming
    its run folder; returns (the generator checkpoint ``distill`` returns, {"alpha", "beta", "curve",
    "seconds", "seconds_per_update"})."""
    from realuid.api import load_teacher
    from realuid.training.distillation import distill

    torch.set_num_threads(1)
    fit, val = splits(base["prepare"])
    cfg = distill_config(setting["distill"], eval_every=args["eval_every"], eval_samples=args["eval_samples"],
                         steps=args["steps"], seed=seed)
    state = work / f"run-{run_digest(setting, shared['teacher'], args, seed)}"
    # A resumed run adds this session's seconds and updates to those of the sessions before it.
    timing_path = state / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"seconds": 0.0, "updates": 0}
    done_before = _last_step(state / "eval.csv")
    start = time.perf_counter()
    generator = distill(make_family("fm"), fit_data(fit, shared["spec"]), load_teacher(shared["teacher"]).net,
                        shared["spec"], cfg, state, alpha=setting["alpha"], beta=setting["beta"], progress=False,
                        evaluator=fid_evaluator(shared, cfg, val))
    if cfg.steps > done_before:
        timing = {"seconds": timing["seconds"] + time.perf_counter() - start,
                  "updates": timing["updates"] + cfg.steps - done_before}
        timing_path.write_text(json.dumps(timing))
    with open(state / "eval.csv") as f:
        rows = [line.strip().split(",") for line in f]
    header, rows = rows[0], rows[1:]
    curve = [dict(zip(header, r)) for r in rows]
    for row in curve:
        for k in row:
            row[k] = row[k] if k == "copy" else float(row[k])
    return generator, {"alpha": setting["alpha"], "beta": setting["beta"], "curve": curve, "seconds": timing["seconds"],
                       "seconds_per_update": timing["seconds"] / max(1, timing["updates"])}


def _last_step(eval_csv: Path) -> int:
    """The last evaluated (and checkpointed) update of a run folder, 0 for a new run."""
    if not eval_csv.exists():
        return 0
    lines = eval_csv.read_text().split("\n")[1:]
    return max((int(float(line.split(",")[0])) for line in lines if line.strip()), default=0)


def summarize(run: dict, teacher_fid: float, copy: str) -> dict:
    rows = [r for r in run["curve"] if r["copy"] == copy]
    last = rows[-1]
    best = min(rows, key=lambda r: r["fid"])
    return {"final_fid": last["fid"], "final_ratio": last["fid"] / teacher_fid, "best_fid": best["fid"],
            "best_step": int(best["step"]), "seconds_per_update": run["seconds_per_update"]}


def write_markdown(result: dict, path: Path) -> None:
    t = result["teacher"]
    lines = [f"## Levers, one at a time ({result['command']})", "",
             f"Code {result['code']}; {result['n_fit']} fit / {result['n_val']} validation digits; "
             f"{result['eval_samples']} samples per score; {result['steps']} generator updates; seeds "
             f"{result['seeds']}; one torch thread per run, {result['workers']} runs at a time; wall "
             f"{result['wall_seconds'] / 60:.1f} min.", "",
             f"Teacher ({result['teacher_parameters']} parameters): NFE {result['nfe']} FID "
             f"{t['nfe' + str(result['nfe'])]['fid']:.3f}, NFE 1 FID {t['nfe1']['fid']:.3f}; "
             + (f"floor ({t['floor_images']} real fit digits) {t['floor']['fid']:.3f}." if "floor" in t else "") + "",
             "",
             f"| lever | FID of `{result['copy']}` at the end | / teacher | best FID (step) | s / update |",
             "|---|---|---|---|---|"]
    for lever, rows in result["summary"].items():
        fid = np.array([r["final_fid"] for r in rows])
        ratio = np.array([r["final_ratio"] for r in rows])
        spread = lambda a: f"{a.mean():.3f}" + (f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else "")  # noqa: E731
        best = min(rows, key=lambda r: r["best_fid"])
        lines.append(f"| {lever} | {spread(fid)} | {spread(ratio)} | {best['best_fid']:.3f} ({best['best_step']}) | "
                     f"{np.mean([r['seconds_per_update'] for r in rows]):.3f} |")
    path.write_text("\n".join(lines) + "\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of updates, got {value}")
    return value


def add_study_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options the digits studies share (their work folder: ``bench/.work/<name>``)."""
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override the params file (e.g. distill.steps=1500 train_teacher.steps=3000)")
    parser.add_argument("--steps", type=int, default=None, help="generator updates (default: the base's)")
    # The studies read the in-training scores (and resume from the checkpoints written with them): never 0.
    parser.add_argument("--eval-every", type=_positive, default=100, help="updates between in-training scores")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, default=99)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / name)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)


def start_study(args: argparse.Namespace) -> tuple[float, dict, int]:
    """One torch thread; (start time, the base settings, generator updates); the work folder exists."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    start = time.perf_counter()
    base = load_base(args.params, args.base)
    args.work.mkdir(parents=True, exist_ok=True)
    return start, base, args.steps or base["distill"]["steps"]


def finish_study(args: argparse.Namespace, result: dict, write_markdown: Callable[[dict, Path], None],
                 pictures: list[tuple[Path | None, Callable[[Path], None]]] = ()) -> None:
    """Draw each picture whose path was given (``draw(path)``), then write ``result`` to ``args.json`` and its
    report to ``args.out``, and print the report."""
    from realuid.atomic import atomic_write

    for path, draw in pictures:
        if path is not None:
            draw(path)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(result, indent=1))
    write_markdown(result, args.out)
    print(args.out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/digits_levers", description=__doc__.split("\n\n")[0])
    add_study_arguments(parser, "digits_levers")
    parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--copy", default="ema_0.999", help="the copy the table reports")
    args = parser.parse_args(argv)

    start, base, steps = start_study(args)
    shared = prepare_shared(base, args.work)
    run_args = {"steps": steps, "eval_every": args.eval_every, "eval_samples": args.eval_samples}
    jobs = [(lever, seed) for lever in args.levers for seed in args.seeds]
    with futures.ProcessPoolExecutor(args.workers) as pool:
        teacher_job = pool.submit(score_teacher, shared, base, args.eval_samples, args.nfe)
        runs = {job: pool.submit(run_student, *job, shared, base, run_args, args.work) for job in jobs}
        teacher = teacher_job.result()
        done = {}
        for job, fut in runs.items():
            done[job] = fut.result()
            s = summarize(done[job], teacher[f"nfe{args.nfe}"]["fid"], args.copy)
            print(f"{job[0]:>30} seed {job[1]}: FID {s['final_fid']:.3f} ({s['final_ratio']:.2f}x teacher), "
                  f"best {s['best_fid']:.3f} at {s['best_step']}, {s['seconds_per_update']:.3f} s/update", flush=True)
    teacher_fid = teacher[f"nfe{args.nfe}"]["fid"]
    result = {
        "command": "bench/digits_levers " + " ".join(os.sys.argv[1:] if argv is None else argv),
        "code": cli.code_version(), "base": base, "steps": steps, "seeds": args.seeds, "copy": args.copy,
        "nfe": args.nfe, "eval_samples": args.eval_samples, "workers": args.workers, "teacher": teacher,
        "n_fit": shared["n_fit"], "n_val": shared["n_val"], "teacher_parameters": shared["teacher_parameters"],
        "summary": {lever: [summarize(done[(lever, s)], teacher_fid, args.copy) for s in args.seeds]
                    for lever in args.levers},
        "runs": list(done.values()), "wall_seconds": time.perf_counter() - start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out)
    print(args.out.read_text())
