"""A teacher trained by someone else's code, distilled: a diffusers DDPM of the 8x8 digits through RealUID.

The teacher is a ``diffusers.UNet2DModel`` trained by a loop written here with diffusers' own pieces
(``DDPMScheduler.add_noise``, ε-prediction, the MSE on the noise, AdamW, ``EMAModel``; the recipe of
diffusers' ``train_unconditional`` example, with a constant learning rate after warm-up so that the
snapshots at each ``--teacher-steps`` budget are that budget's teacher), saved by
``DDPMPipeline.save_pretrained``. None of realuid's training code touches it.

The folder is then read by the library's importer (``realuid.teachers.diffusers``, what
``train_teacher.import_format: diffusers`` runs) into a ``realuid.api.Teacher``, sampled by diffusers' DDIM
loop (``DDIMScheduler.from_config`` of the saved scheduler, η = 0, from given latents) and by our sampler from
the same latents, and distilled by ``realuid.distill`` (the pipeline's RealUID loop) on the fit digits.

Splits as digits_levers: prepare's split of the digits, a validation split carved from the training digits
(20% per class, seed 1), the rest (``fit``) trains the feature extractor, the teacher and the students.
Choices read the validation split only: the teacher budget (diffusers' DDIM FID) and the (alpha, beta)
setting (FID of the ``ema_0.999`` copy at the last update, seed 0). The test digits are read once, for the
reported table. Every finished job is cached in ``--work`` under a digest of what it depends on, so a
killed run resumes (distillation runs resume inside ``realuid.distill``'s own folder).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from realuid.atomic import atomic_write, temporary_folder

from . import cli, stats
from .digits_imbalance import parse_settings
from .digits_levers import ROOT, splits

TRAIN_TIMESTEPS = 1000
WARMUP_STEPS = 100
TEST_SEED = 4_000_000  # the reported images start from seeds TEST_SEED + i (latents and student inputs)
VAL_SEED = 5_000_000  # the teacher-budget choice's latents
GRID_IMAGES = 50
DEFAULT_SETTINGS = ["0.2,1", "0.94,0.96"]  # the default first: it wins a tie
COPY = "ema_0.999"


def unet_config(channels: list[int]) -> dict:
    """A small UNet2DModel for [1, 8, 8] digits: one resolution per entry of ``channels``, no attention."""
    blocks = len(channels)
    return {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": list(channels),
            "layers_per_block": 1, "down_block_types": ["DownBlock2D"] * blocks,
            "up_block_types": ["UpBlock2D"] * blocks, "norm_num_groups": 8}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def three_splits(prepare: dict):
    """(fit, validation, test) digits: digits_levers' two parts of the training split, and the test split."""
    from realuid import config as config_module
    from realuid.data import build_splits

    fit, val = splits(prepare)
    _, test = build_splits(config_module.build(config_module.PrepareConfig, {**prepare, "source": "digits"},
                                               "prepare."))
    return fit, val, test


def cached(work: Path, name: str, key, job, *args) -> dict:
    """``job(*args)``'s JSON result, computed once per ``key`` and kept in ``work/jobs``."""
    path = work / "jobs" / f"{name}-{_digest(key)}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = job(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(result))
    return result


# ------------------------------------------------------------------------------- diffusers' side


def train_with_diffusers(images: np.ndarray, budgets: list[int], folders: list[str], recipe: dict) -> dict:
    """Train a UNet2DModel on ``images`` [N, 1, 8, 8] by diffusers' DDPM recipe (``recipe``: channels, lr,
    batch, ema, seed); at each budget (updates) save the EMA weights with the scheduler as a DDPMPipeline
    folder (``folders``, one per budget). Returns {"seconds", "parameters"}."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_constant_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    torch.set_num_threads(1)
    start = time.perf_counter()
    torch.manual_seed(recipe["seed"])
    unet = UNet2DModel(**unet_config(recipe["channels"]))
    scheduler = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", prediction_type="epsilon")
    # train_unconditional's optimizer (its betas and weight decay), its EMA warm-up (inv_gamma 1, power 3/4).
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe["lr"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=WARMUP_STEPS)
    ema = EMAModel(unet.parameters(), decay=recipe["ema"], use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    data, rng = torch.as_tensor(images), torch.Generator().manual_seed(recipe["seed"])
    save_at = dict(zip(budgets, folders))
    for step in range(1, max(budgets) + 1):
        batch_size = recipe["batch"]
        clean = data[torch.randint(len(data), (batch_size,), generator=rng)]
        noise = torch.randn(clean.shape, generator=rng)
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (batch_size,), generator=rng)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        if step in save_at:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
            folder = Path(save_at[step])
            tmp = temporary_folder(folder)  # the folder appears whole, with a plain mkdir's mode
            DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            ema.restore(unet.parameters())
    return {"seconds": time.perf_counter() - start, "parameters": sum(p.numel() for p in unet.parameters())}


def ddim_sample(folder: str, latents: torch.Tensor, steps: int, **overrides) -> torch.Tensor:
    """diffusers' DDIM (η = 0) from ``latents`` [N, 1, 8, 8]: the saved scheduler's config as a DDIMScheduler
    (``overrides`` change its config), its own ``step``, over its own timesteps."""
    from diffusers import DDIMScheduler, DDPMPipeline

    pipeline = DDPMPipeline.from_pretrained(folder, local_files_only=True)
    unet = pipeline.unet.eval()
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, **overrides)
    scheduler.set_timesteps(steps)
    x = latents
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x, eta=0.0).prev_sample
    return x


# ------------------------------------------------------------------------------- realuid's side


def import_teacher(folder: str):
    """The pipeline folder as a realuid Teacher, through the library's diffusers importer."""
    from realuid.api import Teacher
    from realuid.matching import make_family
    from realuid.models import build_model
    from realuid.teachers.diffusers import load_diffusers_teacher

    spec, state, record = load_diffusers_teacher(folder)
    net = build_model(spec)
    net.load_state_dict(state)
    return Teacher(make_family(record["name"], **record["options"]), net.eval(), spec)


def our_noise(teacher, latents: torch.Tensor) -> torch.Tensor:
    """The noise whose start state (``s(0) x0``) is diffusers' latents."""
    return latents / teacher.family.signal_noise(torch.zeros(1))[1]


def score(images: torch.Tensor, reference, features: str, seed: int = 0) -> dict:
    """FID, KID, precision, recall against ``reference`` (a split) and the class TV to its labels."""
    from realuid.features import class_masses, load_feature_net
    from realuid.metrics import image_metrics

    if not torch.isfinite(images).all():
        return {"fid": float("nan"), "finite": False}
    x = images.float().clamp(-1, 1)  # the data range, as the pipeline's evaluate scores
    out = image_metrics(x, torch.as_tensor(reference.x1), extractor_weights_path=features,
                        kid_subset_size=min(len(x), len(reference.x1)) // 2, seed=seed, device="cpu")
    masses = class_masses(load_feature_net(features), x)
    labels = np.bincount(reference.y, minlength=len(masses)) / len(reference.y)
    return {**{k: float(v) for k, v in out.items()}, "class_tv": float(0.5 * np.abs(masses - labels).sum()),
            "finite": True}


def _latents(n: int, seed: int) -> torch.Tensor:
    from realuid.sampling import seeded_noise

    return seeded_noise(list(range(seed, seed + n)), (1, 8, 8))


def train_features(prepare: dict, features: dict, path: str) -> dict:
    from realuid.features import save_feature_net, train_feature_net

    torch.set_num_threads(1)
    start = time.perf_counter()
    fit, _ = splits(prepare)
    net = train_feature_net(torch.as_tensor(fit.x1), torch.as_tensor(fit.y), steps=features["steps"],
                            batch_size=features["batch_size"], lr=features["lr"], seed=features["seed"],
                            progress=False)
    save_feature_net(path, net, {"source": "digits", "split": "fit"})
    return {"seconds": time.perf_counter() - start}


def score_teacher_on_validation(folder: str, prepare: dict, features: str, samples: int, ddim_steps: int) -> dict:
    torch.set_num_threads(1)
    _, val = splits(prepare)
    return score(ddim_sample(folder, _latents(samples, VAL_SEED), ddim_steps), val, features)


def score_teacher_on_test(folder: str, prepare: dict, features: str, samples: int, ddim_steps: int, nfe: int,
                          method: str) -> dict:
    """The teacher on the test digits: diffusers' DDIM as saved (clip_sample on), without the clipping, and our
    sampler, all from the same latents; with the real floor and the first images of each for the grid."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    fit, _, test = three_splits(prepare)
    latents = _latents(samples, TEST_SEED)
    teacher = import_teacher(folder)
    images = {"ddim": ddim_sample(folder, latents, ddim_steps),
              "ddim_unclipped": ddim_sample(folder, latents, ddim_steps, clip_sample=False),
              "ours": teacher.sample(samples, nfe=nfe, method=method, noise=our_noise(teacher, latents),
                                     batch_size=500)}
    pick = np.sort(np.random.default_rng(7).choice(len(fit), size=min(samples, len(fit)), replace=False))
    images["floor"] = torch.as_tensor(fit.x1[pick])
    out = {name: score(x, test, features) for name, x in images.items()}
    out["floor"]["images"] = len(pick)
    # How far our sampler lands from diffusers' deterministic loop from the same start (per image, then mean).
    gap = lambda a, b: float((a - b).flatten(1).abs().max(1).values.mean())  # noqa: E731
    out["mean_max_pixel_gap"] = {"ours_vs_ddim_unclipped": gap(images["ours"], images["ddim_unclipped"]),
                                 "ddim_vs_ddim_unclipped": gap(images["ddim"], images["ddim_unclipped"])}
    out["grid"] = {name: images[name][:GRID_IMAGES].tolist() for name in ("ddim", "ours")}
    out["grid"]["test"] = test.x1[:GRID_IMAGES].tolist()
    out["seconds"] = time.perf_counter() - start
    return out


def distil(folder: str, prepare: dict, features: str, alpha: float, beta: float, seed: int, settings: dict,
           out: str) -> dict:
    """One RealUID student of the imported teacher on the fit digits (``realuid.distill``, resumable in
    ``out``), its validation curve, and the copy it hands over scored on the test digits: ``COPY`` at the
    last update, or with ``keep_best`` the (copy, update) of lowest validation FID."""
    import realuid
    from realuid import in_training_eval
    from realuid.distill_api import distill_settings

    torch.set_num_threads(1)
    start = time.perf_counter()
    fit, val, test = three_splits(prepare)
    teacher = import_teacher(folder)
    cfg = distill_settings(**settings, seed=seed, device="cpu")
    evaluator = in_training_eval.image_evaluator(
        teacher.family, val, cfg, argparse.Namespace(feature_extractor="realuid-features",
                                        kid_subset_size=min(200, settings["eval_samples"])),
        weights_path=features, cache_root=None, num_classes=0, device=torch.device("cpu"))
    realuid.distill(teacher, torch.as_tensor(fit.x1), alpha=alpha, beta=beta, out=out, evaluator=evaluator,
                    progress=False, **settings, seed=seed, device="cpu")
    with open(Path(out) / "eval.csv") as f:
        header, *rows = [line.strip().split(",") for line in f if line.strip()]
    curve = [{k: (v if k == "copy" else float(v)) for k, v in zip(header, row)} for row in rows]
    if settings.get("keep_best"):
        generator = realuid.load_generator(Path(out) / "generator.pt", ema="best")
        handed = min(curve, key=lambda r: r["fid"])  # the first of equals, as the loop keeps it
    else:
        generator = realuid.load_generator(Path(out) / "generator.pt", ema=float(COPY.split("_")[1]))
        handed = [r for r in curve if r["copy"] == COPY][-1]
    images = generator.sample(settings["eval_samples"], seed=TEST_SEED, batch_size=500)
    return {"alpha": alpha, "beta": beta, "seed": seed, "validation_fid": handed["fid"],
            "handed": {"copy": handed["copy"], "step": int(handed["step"])}, "curve": curve,
            "test": score(images, test, features), "grid": images[:GRID_IMAGES].tolist(),
            "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------- the study


def write_markdown(result: dict, path: Path) -> None:
    t, s = result["teacher_test"], result["student_test"]
    ddim = t["ddim"]["fid"]
    teacher_rows = [("diffusers DDIM-%d (its scheduler's config: clip_sample on)" % result["ddim_steps"], t["ddim"]),
                    ("diffusers DDIM-%d, clip_sample off" % result["ddim_steps"], t["ddim_unclipped"]),
                    (f"our sampler after import ({result['method']}, NFE {result['nfe']})", t["ours"])]
    num = lambda r, k: f"{r[k]:.3f}"  # noqa: E731
    handed = ("the (copy, update) of lowest validation FID (`keep_best`)" if result["distill"].get("keep_best")
              else f"`{COPY}`, last update")
    lr = result["distill"].get("generator_optim", {}).get("lr")
    lines = [f"## A diffusers-trained teacher, distilled (`{result['command']}`)", "",
             f"Code {result['code']}; {result['n_fit']} fit / {result['n_val']} validation / {result['n_test']} test "
             f"digits; teacher: `UNet2DModel` {result['unet']['block_out_channels']} "
             f"({result['teacher_parameters']} parameters), DDPM ε-prediction, linear betas, "
             f"{TRAIN_TIMESTEPS} timesteps, batch {result['teacher_batch']}, AdamW lr {result['teacher_lr']}, "
             f"EMA {result['teacher_ema']}, trained by diffusers' pieces in a loop of this script (seed 0); "
             f"students: `realuid.distill`, {result['distill']['steps']} updates, batch "
             f"{result['distill']['batch_size']}{'' if lr is None else f', generator lr {lr:g}'}, validation "
             f"FID every {result['distill']['eval_every_steps']} updates, hands over {handed}, seeds "
             f"{result['seeds']}; "
             f"{result['samples']} images per score, one torch thread per job, {result['workers']} jobs at a "
             f"time; wall {result['wall_seconds'] / 60:.1f} min (CPU timings depend on the machine's load; the "
             "numbers do not: CPU runs are deterministic).", "",
             "### Chosen on the validation split", "",
             "| teacher budget (updates) | diffusers DDIM FID (validation) |", "|---|---|"]
    for steps, r in result["teacher_validation"].items():
        lines.append(f"| {steps}{' (chosen)' if int(steps) == result['teacher_steps'] else ''} | {r['fid']:.3f} |")
    lines += ["", f"| (alpha, beta), seed {result['seeds'][0]} | student FID (validation, {handed}) |",
              "|---|---|"]
    for k, fid in result["setting_validation"].items():
        lines.append(f"| ({k.replace(',', ', ')}){' (chosen)' if k == result['setting'] else ''} | {fid:.3f} |")
    lines += ["", "### Test digits", "",
              "| model | FID | / teacher DDIM FID | precision | recall | class TV |", "|---|---|---|---|---|---|"]
    for name, r in teacher_rows:
        lines.append(f"| teacher, {name} | {num(r, 'fid')} | {r['fid'] / ddim:.2f} | {num(r, 'precision')} | "
                     f"{num(r, 'recall')} | {num(r, 'class_tv')} |")
    text = lambda k: stats.Summary(**s[k]).text(3)  # noqa: E731
    lines.append(f"| student ({result['setting'].replace(',', ', ')}), one step, {len(result['seeds'])} seeds | "
                 f"{text('fid')} | {text('ratio')} | {text('precision')} | {text('recall')} | {text('class_tv')} |")
    f = t["floor"]
    lines += [f"| real fit digits ({f['images']}), the floor | {num(f, 'fid')} | – | {num(f, 'precision')} | "
              f"{num(f, 'recall')} | {num(f, 'class_tv')} |", "",
              f"Target (student ≤ 1.1× the teacher's diffusers DDIM FID): **{result['target']}** (mean ratio "
              f"{s['ratio']['mean']:.2f}; per seed {', '.join(f'{r:.2f}' for r in result['ratios'])}). "
              f"Mean over images of the largest pixel gap between two samplers from the same latents: ours vs "
              f"DDIM without clipping {t['mean_max_pixel_gap']['ours_vs_ddim_unclipped']:.3f}, DDIM with vs "
              f"without clipping {t['mean_max_pixel_gap']['ddim_vs_ddim_unclipped']:.3f} (pixels in [-1, 1]). "
              "The importer ignores `clip_sample` (a sampling heuristic, not the network's field).", ""]
    if result.get("grid"):
        lines += [f"![samples]({result['grid']})", ""]
    lines.append("Seconds of each job, per-seed scores and the students' validation curves are in the JSON.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    from realuid.yamlfile import read_yaml

    parser = argparse.ArgumentParser(prog="bench/diffusers_digits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="its prepare and features blocks")
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[1000, 2000],
                        help="teacher budgets (updates) to choose from, snapshots of one run")
    parser.add_argument("--teacher-batch", type=int, default=128)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--teacher-ema", type=float, default=0.999)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--features-steps", type=int, default=None, help="default: the params file's")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="ALPHA,BETA")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--distill-steps", type=int, default=800)
    parser.add_argument("--distill-batch", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--keep-best", action="store_true",
                        help="hand over the (copy, update) of lowest validation FID instead of the last ema_0.999")
    parser.add_argument("--generator-lr", type=float, default=None, help="default: realuid.distill's")
    parser.add_argument("--samples", type=int, default=1000, help="images per score")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--nfe", type=int, default=99, help="network calls of our sampler")
    parser.add_argument("--method", default="heun", choices=["euler", "heun"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "diffusers_digits")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=Path, default=None, help="PNG of sample grids (optional)")
    args = parser.parse_args(argv)
    settings = parse_settings(args.settings)
    if min(args.teacher_steps) < 1 or args.distill_steps < 1 or args.samples < 10:
        parser.error("--teacher-steps and --distill-steps must be >= 1, --samples >= 10")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    start = time.perf_counter()
    params = read_yaml(args.params)
    prepare, features_cfg = params["prepare"], dict(params["features"])
    if args.features_steps is not None:
        features_cfg["steps"] = args.features_steps
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    fit, val, test = three_splits(prepare)
    budgets = sorted(set(args.teacher_steps))
    teacher_key = {"channels": args.channels, "batch": args.teacher_batch, "lr": args.teacher_lr,
                   "ema": args.teacher_ema, "prepare": prepare, "seed": 0}
    folders = [str(work / f"teacher-{_digest(teacher_key)}-{steps}") for steps in budgets]
    features = str(work / f"features-{_digest([prepare, features_cfg])}.pt")
    distill_cfg = {"steps": args.distill_steps, "batch_size": args.distill_batch, "eval_every_steps": args.eval_every,
                   "eval_samples": args.samples, "checkpoint_every_steps": args.eval_every}
    if args.keep_best:
        distill_cfg["keep_best"] = True
    if args.generator_lr is not None:
        from realuid.distill_api import DEFAULT_SETTINGS as LIBRARY_SETTINGS

        distill_cfg["generator_optim"] = {**LIBRARY_SETTINGS["generator_optim"], "lr": args.generator_lr}
    seconds = {}

    with futures.ProcessPoolExecutor(args.workers) as pool:
        def run(name, key, job, *job_args):
            return pool.submit(cached, work, name, key, job, *job_args)

        jobs = {"features": run("features", [prepare, features_cfg], train_features, prepare, features_cfg, features),
                "teacher": run("teacher", [teacher_key, budgets], train_with_diffusers, fit.x1, budgets, folders,
                               teacher_key)}
        seconds["features"] = jobs["features"].result()["seconds"]
        trained = jobs["teacher"].result()
        seconds["teacher_training"] = trained["seconds"]
        print(f"teacher trained ({trained['parameters']} parameters)", flush=True)
        pending = {steps: run("teacher-val", [folder, features, args.samples, args.ddim_steps],
                              score_teacher_on_validation, folder, prepare, features, args.samples, args.ddim_steps)
                   for steps, folder in zip(budgets, folders)}
        teacher_val = {steps: f.result() for steps, f in pending.items()}
        chosen_steps = min(budgets, key=lambda s: (teacher_val[s]["fid"], s))  # a tie goes to the cheaper one
        folder = folders[budgets.index(chosen_steps)]
        print(f"teacher budget {chosen_steps}: validation FID {teacher_val[chosen_steps]['fid']:.3f}", flush=True)

        def student(alpha, beta, seed):
            key = [Path(folder).name, features, alpha, beta, seed, distill_cfg]
            out = str(work / f"run-{_digest(key)}")
            return run("student", key, distil, folder, prepare, features, alpha, beta, seed, distill_cfg, out)

        first = {f"{a:g},{b:g}": student(a, b, args.seeds[0]) for a, b in settings}
        teacher_test = run("teacher-test", [folder, features, args.samples, args.ddim_steps, args.nfe, args.method],
                           score_teacher_on_test, folder, prepare, features, args.samples, args.ddim_steps,
                           args.nfe, args.method)
        first = {k: f.result() for k, f in first.items()}
        chosen = min(first, key=lambda k: first[k]["validation_fid"])  # the default (first) wins a tie
        print(f"setting ({chosen}): validation FID {first[chosen]['validation_fid']:.3f}", flush=True)
        alpha, beta = first[chosen]["alpha"], first[chosen]["beta"]
        rest = {seed: student(alpha, beta, seed) for seed in args.seeds[1:]}
        runs = [first[chosen]] + [f.result() for f in rest.values()]
        teacher_test = teacher_test.result()

    ddim_fid = teacher_test["ddim"]["fid"]
    ratios = [r["test"]["fid"] / ddim_fid for r in runs]
    summary = {k: stats.summarize([r["test"][k] for r in runs]).__dict__
               for k in ("fid", "kid_mean", "precision", "recall", "class_tv")}
    summary["ratio"] = stats.summarize(ratios).__dict__
    grid_images = {"teacher_ddim": teacher_test["grid"]["ddim"], "teacher_ours": teacher_test["grid"]["ours"],
                   "student": runs[0]["grid"], "test": teacher_test["grid"]["test"]}
    result = {
        "command": "bench/diffusers_digits " + " ".join(sys.argv[1:] if argv is None else argv),
        "code": cli.code_version(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "workers": args.workers,
        "n_fit": len(fit), "n_val": len(val), "n_test": len(test), "unet": unet_config(args.channels),
        "teacher_parameters": trained["parameters"], "teacher_batch": args.teacher_batch,
        "teacher_lr": args.teacher_lr, "teacher_ema": args.teacher_ema, "teacher_budgets": budgets,
        "teacher_validation": {str(k): v for k, v in teacher_val.items()}, "teacher_steps": chosen_steps,
        "teacher_folder": Path(folder).name, "settings": [list(s) for s in settings],
        "setting_validation": {k: r["validation_fid"] for k, r in first.items()}, "setting": chosen,
        "distill": distill_cfg, "seeds": args.seeds, "samples": args.samples, "ddim_steps": args.ddim_steps,
        "nfe": args.nfe, "method": args.method,
        "teacher_test": {k: v for k, v in teacher_test.items() if k != "grid"},
        "student_test": summary, "ratios": ratios,
        "target": "reached" if summary["ratio"]["mean"] <= 1.1 else "not reached",
        "runs": [{k: v for k, v in r.items() if k != "grid"} for r in first.values()]
                + [{k: v for k, v in r.items() if k != "grid"} for r in runs[1:]],
        "seconds": {**seconds, "teacher_test": teacher_test["seconds"],
                    "students": {f"{r['alpha']:g},{r['beta']:g} seed {r['seed']}": r["seconds"]
                                 for r in list(first.values()) + runs[1:]}},
        "wall_seconds": time.perf_counter() - start,
        "grid": None if args.grid is None else os.path.relpath(args.grid, args.out.parent),
    }
    if args.grid is not None:
        from .figures import image_panels

        panels = {"test digits": grid_images["test"],
                  f"teacher: diffusers DDIM-{args.ddim_steps}": grid_images["teacher_ddim"],
                  f"teacher: ours, {args.method} NFE {args.nfe}": grid_images["teacher_ours"],
                  f"student ({chosen}), seed {args.seeds[0]}": grid_images["student"]}
        image_panels({k: np.asarray(v) for k, v in panels.items()}, args.grid,
                     title=f"first {GRID_IMAGES} test-score images (teacher rows: the same latents)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(result, indent=1))
    write_markdown(result, args.out)
    print(args.out.read_text())
