"""GPU check of RealUID distillation: speed, memory and finiteness of the hot path on synthetic data.

Prints one table: distillation iterations/s (one iteration = ``fake_updates`` fake-model updates and one
generator update, the authors' schedule) of the authors' CIFAR-10 UNet at batch 256 in fp32 (TF32
matmuls) and bf16 autocast, peak GPU memory, one-step and teacher (NFE 99, Euler) sampling images/s,
host synchronisations per iteration (CUDA only), and whether every loss and sample was finite. Exit
status 1 when something was not finite.

A second table times the iteration in bf16 under each speed option of ``distill.speed`` (one at a time,
then all together; ``--speed``), with the first iteration's seconds (torch.compile compiles then), and
holds the paper size's iteration against its floor: ~134 TFLOP, 0.135 s at an H100's dense bf16 peak.
A third line times the evaluate stage's metric work at ``--evaluate-samples`` (10k) samples.

Run it through ``bench/gpu_check.sh`` (it sets ``PYTHONPATH=src``); ``--tiny`` is a CPU-sized run of the
same code (8x8 images, a 32-channel UNet, batch 8).

Weights are random, so the numbers say nothing about sample quality; they measure the cost of the code
path a real run takes. Settings other than the ones set here (optimiser betas, EMA decays, ...) are the
authors'; any further ``distill`` keys come from the params file (``--params``), so the check keeps
running the trainer as the pipeline configures it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ imports


class MissingDependency(SystemExit):
    """A package the check needs is not importable; the message says how to bring it."""


def _load_torchcfm_models_only(folder: Path) -> None:
    """Import ``torchcfm.models.unet.unet`` from ``folder`` without running ``torchcfm/__init__.py``.

    That ``__init__`` imports torchcfm's flow-matching losses and OT samplers, which need POT (``ot``);
    the UNet needs only torch and numpy. The parent package is registered empty (it re-exports nothing
    the check uses) and every module below it is torchcfm's own code.
    """
    for name in [m for m in sys.modules if m == "torchcfm" or m.startswith("torchcfm.")]:
        del sys.modules[name]  # leftovers of the failed normal import
    spec = importlib.machinery.ModuleSpec("torchcfm", loader=None, is_package=True)
    package = importlib.util.module_from_spec(spec)
    package.__path__ = [str(folder)]
    sys.modules["torchcfm"] = package
    importlib.import_module("torchcfm.models.unet.unet")


def _installed_torchcfm_folder() -> Path | None:
    """Where an installed torchcfm lives (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("torchcfm")
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def ensure_torchcfm(carry_dir: Path) -> str:
    """Make ``torchcfm.models.unet.unet`` importable; returns how it was found (for the report).

    Order: a normal import; torchcfm installed but its package import failing (POT missing): its
    models only; not installed: the copy ``bench/gpu_check.sh --prepare-carry`` put in ``carry_dir``.
    """
    try:
        importlib.import_module("torchcfm.models.unet.unet")
        return "installed"
    except ImportError as err:
        first_error = f"{type(err).__name__}: {err}"
    for folder, how in ((_installed_torchcfm_folder(), "installed"), (carry_dir / "torchcfm", str(carry_dir))):
        if folder is not None and (folder / "models" / "unet" / "unet.py").is_file():
            try:
                _load_torchcfm_models_only(folder)
            except ImportError as err:
                raise MissingDependency(f"torchcfm's UNet from {folder} does not import: {err}") from None
            return f"{how}, models only (package import failed: {first_error})"
    raise MissingDependency(
        f"torchcfm is not importable here ({first_error}) and no copy is in {carry_dir}/torchcfm.\n"
        "Its UNet is the backbone of every image model. On a machine with the project's environment run\n"
        "    bench/gpu_check.sh --prepare-carry\n"
        "which copies torchcfm's pure-Python package into .carry/, then bring .carry along with the\n"
        "working tree (keep it ignored by git). POT, which torchcfm's package import needs, is not\n"
        "required: the check imports torchcfm's models only."
    )


def ensure_libraries(carry_dir: Path) -> None:
    """The realuid modules the check imports need tqdm, ruamel.yaml and numpy besides torch.

    ruamel.yaml (pure Python; realuid reads params.yaml with it, as DVC does) may come from the copy
    ``bench/gpu_check.sh --prepare-carry`` put in ``carry_dir/python``.
    """
    carried = carry_dir / "python"
    if not _importable("ruamel.yaml") and (carried / "ruamel" / "yaml").is_dir():
        sys.path.append(str(carried))  # last: an installed copy wins
    missing = [name for name in ("tqdm", "ruamel.yaml", "numpy") if not _importable(name)]
    if missing:
        raise MissingDependency(f"missing Python packages: {', '.join(missing)} (pip install {' '.join(missing)}; "
                                "or bring ruamel.yaml in .carry: bench/gpu_check.sh --prepare-carry)")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False


# ------------------------------------------------------------------------------------------- set-up


@dataclasses.dataclass(frozen=True)
class Size:
    """How big the check runs."""

    name: str
    spec: dict
    batch_size: int
    warmup_iterations: int
    timed_iterations: int
    sample_batch_size: int
    sample_repeats: int


def paper_size() -> Size:
    from realuid.authors import authors_model_spec

    # The authors distil with dropout 0 (their teachers train with 0.1); the layout is the same.
    return Size("authors' CIFAR-10 UNet, 3x32x32", authors_model_spec(0, dropout=0.0), batch_size=256,
                warmup_iterations=3, timed_iterations=20, sample_batch_size=256, sample_repeats=10)


def tiny_size() -> Size:
    spec = {"arch": "unet", "args": dict(shape=[3, 8, 8], channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                         attention_resolutions="4", num_heads=2, num_head_channels=-1,
                                         dropout=0.0, num_classes=0)}
    return Size("tiny UNet, 3x8x8", spec, batch_size=8, warmup_iterations=1, timed_iterations=1,
                sample_batch_size=8, sample_repeats=2)


def distill_config(params_path: Path, batch_size: int, device: str, fake_updates: int):
    """The authors' CIFAR-10 distillation settings on top of the params file's ``distill`` section."""
    from realuid.config import OptimConfig, load_params

    base = load_params(params_path).distill
    optim = OptimConfig(lr=3e-5, betas=[0.0, 0.999], warmup_steps=500, grad_clip=1.0)
    cfg = dataclasses.replace(
        base, batch_size=batch_size, fake_updates_per_generator_update=fake_updates, generator_optim=optim,
        fake_optim=optim, fake_init="teacher", ema_decays=[0.999, 0.9996, 0.9999], device=device,
    )
    if hasattr(cfg, "gan"):  # the default "No GANs" path is what is measured
        cfg = dataclasses.replace(cfg, gan=dataclasses.replace(cfg.gan, enabled=False))
    return cfg


def random_teacher(spec: dict, device: torch.device) -> torch.nn.Module:
    """The teacher network with every weight random: torchcfm zero-initialises its output convolution,
    and a zero teacher would leave the generator's and fake model's gradients zero as well."""
    from realuid.models import build_model

    torch.manual_seed(0)
    net = build_model(spec)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return net.to(device).eval()


# ------------------------------------------------------------------------------------ speed options


# One row per option of ``distill.speed`` (realuid.speed), then all of them together.
SPEED_OPTIONS = {
    "fused_adam": {"fused_adam": True},
    "channels_last": {"channels_last": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "attention=sdpa": {"attention": "sdpa"},
    "groupnorm=autocast": {"groupnorm": "autocast"},
    "compile": {"compile": True},  # last of the single options: its first iteration compiles (minutes)
}
# The paper-size iteration (5 fake + 1 generator update at batch 256) is ~134 TFLOP (DESIGN.md, section 6):
# 0.135 s at an H100's dense bf16 peak, the floor a measured iteration is held against.
FLOOR_S = 0.135


def speed_rows(names: list[str]) -> dict[str, dict]:
    """``{row name: distill.speed changes}``: ``none`` (the baseline) and the named options; ``all``: every
    named option at once."""
    if not names:
        return {}
    rows = {"none": {}, **{name: SPEED_OPTIONS[name] for name in names if name != "all"}}
    if "all" in names:
        rows["all"] = {k: v for name in names if name != "all" for k, v in SPEED_OPTIONS[name].items()}
    return rows


def with_speed(cfg, changes: dict):
    from realuid.config import SpeedConfig

    return dataclasses.replace(cfg, speed=dataclasses.replace(SpeedConfig(), **changes))


# ---------------------------------------------------------------------------------------- precision


def trainer_has_precision(cfg) -> bool:
    """True once ``DistillConfig`` has a ``precision`` field: then the trainer autocasts by itself."""
    return any(f.name == "precision" for f in dataclasses.fields(cfg))


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ measurements


def run_iteration(uid, batch, step: int) -> list[torch.Tensor]:
    """Distillation update ``step`` as the loop runs it (its fake phases, then the generator phase), every
    phase on the one synthetic ``batch``; the losses stay on the device."""
    from realuid.training.distillation import distillation_update

    return [loss for loss, _grad_norm in distillation_update(uid, lambda _index: batch, step, seed=0)]


def count_host_syncs(uid, batch, device: torch.device, precision_ctx) -> int | None:
    """Synchronising CUDA calls in one iteration, by torch's sync debug mode (None off CUDA)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with precision_ctx():
                run_iteration(uid, batch, step=10**6)
            synchronize(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure_distillation(size: Size, cfg, precision: str, device: torch.device, teacher, alpha: float,
                         beta: float) -> tuple[dict, object]:
    """Iterations/s, peak memory, host syncs and finiteness of the losses for one precision."""
    from realuid.matching import make_family
    from realuid.training.batches import TrainData
    from realuid.training.distillation import RealUID

    family = make_family("fm")
    if trainer_has_precision(cfg):
        cfg = dataclasses.replace(cfg, precision=precision)
        precision_ctx = contextlib.nullcontext
    else:
        precision_ctx = lambda: autocast(precision, device)  # noqa: E731
    torch.manual_seed(1)
    shape = size.spec["args"]["shape"]
    batch = TrainData(x1=(torch.rand(size.batch_size, *shape, device=device) * 2 - 1))
    uid = RealUID(family, teacher, size.spec, cfg, alpha=alpha, beta=beta, device=device)
    fake_updates = cfg.fake_updates_per_generator_update
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    start = time.perf_counter()
    with precision_ctx():
        for i in range(size.warmup_iterations):
            losses += run_iteration(uid, batch, step=i)
            if i == 0:
                synchronize(device)
                first_seconds = time.perf_counter() - start
    synchronize(device)
    start = time.perf_counter()
    with precision_ctx():
        for i in range(size.timed_iterations):
            losses += run_iteration(uid, batch, step=size.warmup_iterations + i)
    synchronize(device)
    seconds = time.perf_counter() - start
    syncs = count_host_syncs(uid, batch, device, precision_ctx)
    stacked = torch.stack([loss.float() for loss in losses])
    row = {
        "iterations_per_s": size.timed_iterations / seconds,
        "first_iteration_s": first_seconds,
        "optimizer_steps_per_s": size.timed_iterations * (fake_updates + 1) / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "host_syncs_per_iteration": syncs,
        "losses_finite": bool(torch.isfinite(stacked).all()),
        "autocast_by": "trainer" if trainer_has_precision(cfg) else "benchmark",
    }
    return row, uid


def _images_per_s(fn, warm_up, n_images: int, repeats: int, device: torch.device) -> tuple[float, bool]:
    warm_up()  # kernel selection and allocator growth stay out of the timing
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    return n_images * repeats / seconds, bool(torch.isfinite(out).all())


@torch.no_grad()
def measure_sampling(size: Size, uid, teacher, precision: str, device: torch.device, teacher_nfe: int) -> dict:
    """One-step generator vs teacher ODE (Euler, ``teacher_nfe`` calls) images/s, and finiteness."""
    from realuid.sampling import generate_one_step, sample_ode

    family, shape = uid.family, size.spec["args"]["shape"]
    z = torch.randn(size.sample_batch_size, *shape, device=device)
    generator_net = uid.generator.net.eval()
    one_step = lambda: generate_one_step(family, generator_net, z)  # noqa: E731
    with autocast(precision, device):
        one_rate, one_ok = _images_per_s(one_step, one_step, size.sample_batch_size, size.sample_repeats, device)
        teacher_rate, teacher_ok = _images_per_s(
            lambda: sample_ode(family, teacher, z, nfe=teacher_nfe),
            lambda: sample_ode(family, teacher, z, nfe=2),  # the same kernels, a fraction of the time
            size.sample_batch_size, 1, device,
        )
    generator_net.train()
    return {"one_step_images_per_s": one_rate, "teacher_images_per_s": teacher_rate,
            "samples_finite": one_ok and teacher_ok}


def measure_evaluate(n_samples: int, feature_dim: int, device: torch.device) -> dict:
    """Seconds of the evaluate stage's metric work for ``n_samples`` generated against as many reference
    rows of ``feature_dim`` random features on ``device`` (Inception's pool features are 2048-d): FID
    statistics and k-NN precision/recall (torch), and KID and the FID itself when torch-fidelity imports.
    Feature extraction is left out: Inception's weights are a file the user supplies."""
    from realuid import metrics

    gen = torch.Generator(device=device).manual_seed(0)
    generated, reference = (torch.randn(n_samples, feature_dim, generator=gen, device=device) for _ in range(2))
    synchronize(device)
    start = time.perf_counter()
    stats = [metrics.fid_statistics(features) for features in (generated, reference)]
    prc = metrics.precision_recall_sharded(generated, reference)
    synchronize(device)
    row = {"samples": n_samples, "feature_dim": feature_dim, "fid_stats_and_prc_s": time.perf_counter() - start}
    if not _importable("torch_fidelity"):
        return {**row, "kid_and_fid_s": None, "finite": math.isfinite(prc["f_score"])}
    start = time.perf_counter()
    fid = metrics.fid_from_statistics(*stats)
    kid = metrics.kid_sharded(generated, reference, subsets=100, subset_size=min(1000, n_samples), seed=0)
    return {**row, "kid_and_fid_s": time.perf_counter() - start,
            "finite": all(math.isfinite(v) for v in (fid, kid["kid_mean"], prc["f_score"]))}


# ------------------------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def table(rows: list[dict], teacher_nfe: int) -> str:
    head = ["precision", "distill it/s", "opt steps/s", "peak GiB", "host syncs/it", "one-step img/s",
            f"teacher NFE {teacher_nfe} img/s", "speed-up", "finite"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['precision']} | skipped: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        speedup = r["one_step_images_per_s"] / r["teacher_images_per_s"]
        cells = [r["precision"], _fmt(r["iterations_per_s"], 2), _fmt(r["optimizer_steps_per_s"], 1),
                 _fmt(r["peak_memory_gib"], 2), _fmt(r["host_syncs_per_iteration"]),
                 _fmt(r["one_step_images_per_s"], 0), _fmt(r["teacher_images_per_s"], 1), f"{speedup:.0f}x",
                 _fmt(r["losses_finite"] and r["samples_finite"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(rows: list[dict], at_paper_size: bool) -> str:
    head = ["bf16 +", "distill it/s", "s/iteration", f"x floor {FLOOR_S} s", "first iteration s", "peak GiB", "finite"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['option']} | skipped: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        seconds = 1 / r["iterations_per_s"]
        cells = [r["option"], _fmt(r["iterations_per_s"], 2), _fmt(seconds, 3),
                 _fmt(seconds / FLOOR_S, 1) if at_paper_size else "n/a", _fmt(r["first_iteration_s"], 1),
                 _fmt(r["peak_memory_gib"], 2), _fmt(r["losses_finite"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    from realuid.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(payload, indent=2))


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU-sized run (8x8 images, batch 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda when present)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    p.add_argument("--batch-size", type=int, help="distillation batch (default 256; tiny 8)")
    p.add_argument("--iterations", type=int, help="timed distillation iterations per precision")
    p.add_argument("--teacher-nfe", type=int, default=99, help="teacher Euler steps (the authors': 99)")
    p.add_argument("--fake-updates", type=int, default=5, help="fake updates per generator update")
    p.add_argument("--alpha", type=float, default=0.92, help="RealUID alpha (authors' CIFAR-10 uncond)")
    p.add_argument("--beta", type=float, default=0.94, help="RealUID beta (authors' CIFAR-10 uncond)")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file for other distill keys")
    p.add_argument("--speed", default=None,
                   help=f"comma-separated distill.speed rows timed in bf16: {', '.join(SPEED_OPTIONS)}, all (every "
                        "listed one at once), or none (default: every option and all; --tiny: without compile, "
                        "which takes minutes on a CPU)")
    p.add_argument("--evaluate-samples", type=int, help="samples the evaluate timing scores (default 10000; tiny 500)")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip phases that would start after this")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--carry-dir", type=Path, default=ROOT / ".carry", help="where --prepare-carry put torchcfm and ruamel.yaml")
    args = p.parse_args(argv)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    if not args.precisions or any(s not in ("fp32", "bf16") for s in args.precisions):
        p.error(f"--precisions must list fp32 and/or bf16, got {args.precisions}")
    if args.speed is None:
        args.speed = [name for name in SPEED_OPTIONS if not (args.tiny and name == "compile")] + ["all"]
    else:
        args.speed = [] if args.speed == "none" else [s.strip() for s in args.speed.split(",") if s.strip()]
    unknown = [name for name in args.speed if name not in SPEED_OPTIONS and name != "all"]
    if unknown:
        p.error(f"--speed: unknown {unknown}; choose from {', '.join(SPEED_OPTIONS)}, all, none")
    if args.evaluate_samples is not None and args.evaluate_samples < 4:
        p.error(f"--evaluate-samples must be at least 4 (a covariance and 3 nearest neighbours), got {args.evaluate_samples}")
    for name in ("batch_size", "iterations", "teacher_nfe", "fake_updates"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    ensure_libraries(args.carry_dir)
    torchcfm_source = ensure_torchcfm(args.carry_dir)
    from realuid.devices import resolve_device

    device = resolve_device("cpu" if args.tiny and args.device == "auto" else args.device)
    if device.type == "cpu" and not args.tiny and args.device == "auto":
        # The full size is ~1 TFLOP per distillation iteration: hours on a CPU, by accident.
        print("no CUDA device: run with --tiny on a CPU (or --device cpu to insist on the full size)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows use TF32 tensor cores, as training should
    torch.backends.cudnn.allow_tf32 = True
    size = tiny_size() if args.tiny else paper_size()
    size = dataclasses.replace(
        size,
        batch_size=args.batch_size or size.batch_size,
        sample_batch_size=args.batch_size or size.sample_batch_size,
        timed_iterations=args.iterations or size.timed_iterations,
    )
    cfg = distill_config(args.params, size.batch_size, str(device), args.fake_updates)
    teacher = random_teacher(size.spec, device)
    params_m = sum(p.numel() for p in teacher.parameters()) / 1e6
    print(f"device: {device_name(device)}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"model: {size.name}, {params_m:.1f}M parameters; batch {size.batch_size}; "
          f"{args.fake_updates} fake updates per generator update; alpha={args.alpha} beta={args.beta}")
    print(f"torchcfm: {torchcfm_source}; TF32 matmul: on; "
          f"autocast: {'trainer (distill.precision)' if trainer_has_precision(cfg) else 'around the trainer steps (no precision option in DistillConfig)'}")
    rows = []
    for precision in args.precisions:
        if time.perf_counter() - started > args.budget_s:
            rows.append({"precision": precision, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
            continue
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            rows.append({"precision": precision, "skipped": "this GPU has no bf16"})
            continue
        row, uid = measure_distillation(size, cfg, precision, device, teacher, args.alpha, args.beta)
        row.update(measure_sampling(size, uid, teacher, precision, device, args.teacher_nfe))
        rows.append({"precision": precision, **row})
        del uid
        print(f"  {precision}: done at {time.perf_counter() - started:.0f} s", flush=True)
    print(table(rows, args.teacher_nfe))
    speed = measure_speed_rows(args, size, cfg, device, started)
    at_paper_size = not args.tiny and size.batch_size == 256 and args.fake_updates == 5
    if speed:
        print(speed_table(speed, at_paper_size))
        timed = [r for r in speed if "skipped" not in r]
        if timed and at_paper_size:
            best = max(timed, key=lambda r: r["iterations_per_s"])
            print(f"fastest iteration: {1 / best['iterations_per_s']:.3f} s ({best['option']}), "
                  f"{1 / best['iterations_per_s'] / FLOOR_S:.1f}x the {FLOOR_S} s floor (134 TFLOP at an H100's "
                  "dense bf16 peak)")
    evaluate = None
    if time.perf_counter() - started > args.budget_s:
        print("evaluate timing: skipped (time budget spent)")
    else:
        evaluate = measure_evaluate(args.evaluate_samples or (500 if args.tiny else 10_000),
                                    64 if args.tiny else 2048, device)
        print(f"evaluate metrics at {evaluate['samples']} samples x {evaluate['feature_dim']} features: FID "
              f"statistics + precision/recall {evaluate['fid_stats_and_prc_s']:.1f} s; KID + FID "
              f"{_fmt(evaluate['kid_and_fid_s'])} s" + ("" if evaluate["kid_and_fid_s"] is not None
                                                        else " (torch-fidelity not importable)"))
    measured = [r for r in rows if "skipped" not in r]
    finite = (all(r["losses_finite"] and r["samples_finite"] for r in measured)
              and all(r["losses_finite"] for r in speed if "skipped" not in r)
              and (evaluate is None or evaluate["finite"]))
    print(f"losses and samples finite: {'yes' if finite else 'NO'}; total {time.perf_counter() - started:.0f} s")
    if args.json:
        write_json(args.json, {"device": device_name(device), "torch": torch.__version__, "model": size.name,
                               "parameters_millions": params_m, "batch_size": size.batch_size,
                               "fake_updates_per_generator_update": args.fake_updates,
                               "teacher_nfe": args.teacher_nfe, "torchcfm": torchcfm_source, "rows": rows,
                               "speed_rows": speed, "floor_s": FLOOR_S if at_paper_size else None,
                               "evaluate": evaluate})
    return 0 if finite and measured else 1


def measure_speed_rows(args, size: Size, cfg, device: torch.device, started: float) -> list[dict]:
    """The bf16 iteration under each ``--speed`` row, each with a fresh teacher (options change networks in
    place) and cuDNN's autotuner restored after its row (it is a process-wide switch)."""
    out = []
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return [{"option": name, "skipped": "this GPU has no bf16"} for name in speed_rows(args.speed)]
    for name, changes in speed_rows(args.speed).items():
        if time.perf_counter() - started > args.budget_s:
            out.append({"option": name, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
            continue
        benchmark = torch.backends.cudnn.benchmark
        try:
            teacher = random_teacher(size.spec, device)
            row, uid = measure_distillation(size, with_speed(cfg, changes), "bf16", device, teacher, args.alpha,
                                            args.beta)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        out.append({"option": name, **row})
        del uid, teacher
        print(f"  bf16 + {name}: done at {time.perf_counter() - started:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
