"""Training loops: the teacher's matching regression and RealUID distillation, both resumable.

Resuming: every random draw of step ``k`` comes from an RNG seeded by ``(seed, k, phase)`` and the
data order of epoch ``e`` from one seeded by ``(seed, e)``, so the loop's randomness is a pure function of
the step counter. A checkpoint therefore only needs weights, optimizer, scheduler and EMA state plus the
step; a run killed at any point and started again ends with bit-identical weights on CPU (tested).

Data parallelism (see :mod:`realuid.distributed`): under ``torchrun`` every process takes the same global
batch and makes the same random draws, then computes only its own rows; gradients are averaged across
processes before clipping, so weights, optimizer state and EMA stay identical everywhere and the run
equals the one-process run with the same global batch up to floating-point summation order. The
teacher's dropout masks are drawn per (step, rank), as different rows of one big batch would get
different masks; distillation runs without dropout. The state holds nothing per process, so a run may
resume with a different number of processes.

Host synchronisation: losses and gradient norms are accumulated on the device and read once per log
interval; the NaN/Inf check happens there too, and a checkpoint is written only after the check passed,
so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import Checkpoint, ema_copy_name, family_record, read_state, save_state
from .config import BEST_COPY
from .distributed import SINGLE_PROCESS, Dist
from .gan import DiscriminatorHead, discriminator_loss, encoder_features, feature_dim, gan_time_sample, generator_gan_loss
from .losses import fake_loss, generator_loss, matching_loss
from .models import OneStepGenerator, build_model


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------------
# Small utilities: devices, files, seeds
# --------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU. On CUDA, float32 matmuls may use TF32 tensor cores."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device, precision: str):
    """Mixed precision for forward passes: ``bf16`` autocasts, ``fp32`` is a no-op context.

    Losses are always reduced in float32 (outputs are cast back before the loss).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def state_key(*parts) -> str:
    """Short stable hash of JSON-serialisable parts, naming the state folder of a configuration."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _seed_value(seed: int, *counters: int) -> int:
    """A 63-bit seed that depends only on (seed, counters): the basis of exact resume."""
    mixed = hashlib.sha256(repr((seed, *counters)).encode()).digest()
    return int.from_bytes(mixed[:8], "little") & ((1 << 63) - 1)


def _seeded(seed: int, *counters: int, device: torch.device) -> torch.Generator:
    rng = torch.Generator(device=device)
    rng.manual_seed(_seed_value(seed, *counters))
    return rng


def _seed_dropout(seed: int, step: int, rank: int) -> None:
    """Seed the global RNG (dropout masks) for ``step`` on process ``rank``.

    Rank 0 keeps the one-process seed; other ranks get their own, as their rows would get other masks
    inside one big batch.
    """
    torch.manual_seed(_seed_value(seed, step, -1, *([rank] if rank else [])))


# --------------------------------------------------------------------------------------------------
# Data batches
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """A training split on the device: ``x1`` [N, ...] data, ``y`` [N] labels, ``x0`` [N, ...] pairs."""

    x1: torch.Tensor
    y: torch.Tensor | None = None
    x0: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x1.shape[0]


class BatchStream:
    """Batch ``k`` of a shuffled, epoch-based stream, computable from ``k`` alone.

    Under data parallelism this is the *global* batch, the same on every process; each process then
    computes its own rows of it (``Dist.rows``).
    """

    def __init__(self, data: TrainData, batch_size: int, seed: int):
        if batch_size > len(data):
            raise ValueError(f"batch_size {batch_size} is larger than the training set ({len(data)} samples)")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = len(data) // batch_size  # the ragged tail of an epoch is dropped
        self._epoch, self._perm = None, None

    def __call__(self, k: int) -> TrainData:
        epoch, pos = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            rng = _seeded(self.seed, epoch, device=torch.device("cpu"))
            self._perm = torch.randperm(len(self.data), generator=rng).to(self.data.x1.device)
            self._epoch = epoch
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return TrainData(self.data.x1[idx], pick(self.data.y), pick(self.data.x0))


# --------------------------------------------------------------------------------------------------
# Optimisation pieces
# --------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving averages of a module's parameters and buffers, at several decays at once.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run is not
    dominated by its starting weights.
    """

    def __init__(self, module: nn.Module, decays: Iterable[float]):
        self.decays = [float(d) for d in decays]
        self.updates = 0
        self.shadows = {d: copy.deepcopy(module.state_dict()) for d in self.decays}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        current = module.state_dict()
        floats = [name for name, value in current.items() if value.is_floating_point()]
        for decay, shadow in self.shadows.items():
            d = min(decay, (1 + self.updates) / (10 + self.updates))
            # One fused kernel per decay instead of one per tensor (hundreds for a UNet).
            torch._foreach_lerp_([shadow[n] for n in floats], [current[n] for n in floats], 1.0 - d)
            for name, value in current.items():
                if not value.is_floating_point():
                    shadow[name].copy_(value)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadows": {repr(d): s for d, s in self.shadows.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for d in self.decays:
            for name, value in state["shadows"][repr(d)].items():
                self.shadows[d][name].copy_(value)


def lr_factor(step: int, optim_cfg, total_steps: int) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based) in a run of ``total_steps``.

    Linear warm-up over ``warmup_steps``; then 1 (``decay: constant``) or a half cosine that reaches 0
    after step ``total_steps`` (``decay: cosine``), which removes the step noise a constant rate keeps.
    """
    warmup = optim_cfg.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if getattr(optim_cfg, "decay", "constant") == "constant":
        return 1.0
    done = min(1.0, (step + 1 - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * done))


def make_optimizer(params, optim_cfg, total_steps: int) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam under :func:`lr_factor`'s schedule for a run of ``total_steps`` optimizer steps."""
    opt = torch.optim.Adam(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim_cfg, total_steps))
    return opt, sched


def optimizer_step(loss, params, opt, sched, grad_clip: float, dist: Dist = SINGLE_PROCESS) -> torch.Tensor:
    """Backward, average gradients over processes, global-norm clip (0 = no clipping), step.

    ``loss`` is this process's mean over its rows; with equal rows per process the average of the
    gradients is the gradient of the global batch mean. Returns the pre-clip gradient norm (on device).
    """
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients_(params)  # before clipping: the clip sees the global batch's gradient
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    sched.step()
    return norm.detach()


class CurveLog:
    """Training curves as CSV (one row per log interval), trimmed to the checkpoint step on resume.

    Floats are written with ``float_format`` (6 significant digits by default; ``repr`` keeps every digit,
    for tables that later choose by the value).
    """

    def __init__(self, path: Path, fields: list[str], float_format: Callable[[float], str] = "{:.6g}".format):
        self.path, self.fields, self.float_format = path, ["step", *fields], float_format

    def trim(self, last_step: int) -> None:
        """Drop rows logged after ``last_step`` (the run was killed before its next checkpoint)."""
        rows = self.rows()
        kept = [r for r in rows if int(r["step"]) <= last_step]
        self._write(kept)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def _write(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: (self.float_format(v) if isinstance(v, float) else v) for k, v in row.items()})


class Meter:
    """Sums of per-step scalars kept on the device; read (one host sync) at log boundaries."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def read(self, dist: Dist = SINGLE_PROCESS) -> dict[str, float]:
        """Means since the last read, averaged over processes (one all-reduce and one host sync)."""
        names = list(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[k] for k in names])
        dist.average_([sums])
        values = [v / max(self.count, 1) for v in sums.tolist()]
        self.sums, self.count = {}, 0
        return dict(zip(names, values))


def _check_finite(means: dict[str, float], step: int, checkpoint: Path) -> None:
    bad = {k: v for k, v in means.items() if not math.isfinite(v)}
    if bad:
        where = f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists() else "no checkpoint yet"
        raise TrainingDiverged(
            f"training diverged before step {step}: {', '.join(f'{k}={v}' for k, v in bad.items())}; "
            f"{where}. Lower the learning rate or raise the warm-up, then run the same command again."
        )


def _after_step(done: int, *, cfg, stop_after, meter: Meter, dist: Dist, log: CurveLog, bar, ckpt_path: Path,
                state: Callable[[], dict], extra: Callable[[], dict] | None = None,
                on_row: Callable[[dict], None] | None = None,
                evaluate: Callable[[int], None] | None = None) -> bool:
    """Bookkeeping after step ``done`` of either loop: at log boundaries read the meter (one host sync),
    stop on a non-finite loss, append the curves row; then ``evaluate(done)`` on every process (the
    evaluation is shared among them; rank 0 writes its rows); at checkpoint
    boundaries save ``state()`` (rank 0). Evaluating before the checkpoint means a checkpoint at step s
    never precedes the rows of step s, so trimming to the checkpoint on resume loses no row.
    Returns True when the loop should stop here (``stop_after``)."""
    bar.update(1)
    at_log, at_ckpt = _boundaries(done, cfg, stop_after)
    if at_log or at_ckpt:
        means = meter.read(dist)
        _check_finite(means, done, ckpt_path)  # same means on every process: all stop together
        row = {"step": done, **means, **(extra() if extra else {})}
        if dist.is_main:
            log.append(row)
            if on_row is not None:
                on_row(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if not k.endswith("grad_norm")})
    if evaluate is not None:
        evaluate(done)
    if at_ckpt:
        if dist.is_main:
            save_state({"step": done, **state()}, ckpt_path)
        dist.barrier()  # nobody runs ahead of a checkpoint that is not on disk yet
    return done == stop_after


def _boundaries(done: int, cfg, stop_after: int | None) -> tuple[bool, bool]:
    """Whether step ``done`` ends a log interval and whether it is a checkpoint (the last step is both)."""
    last = done == cfg.steps
    return (done % cfg.log_every_steps == 0 or last,
            done % cfg.checkpoint_every_steps == 0 or last or done == stop_after)


def _draw(family, batch: TrainData, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Source endpoint, time and extra path noise for one batch: (x0, t, noise)."""
    x1 = batch.x1
    x0 = batch.x0 if family.paired else family.sample_source(x1, rng=rng)
    t = family.sample_time(x1.shape[0], rng=rng, device=x1.device)
    noise = family.sample_noise(x1, rng=rng)
    return x0, t, noise


def _take(rows: slice, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Rows ``rows`` of each [B, ...] tensor (None stays None)."""
    return tuple(None if a is None else a[rows] for a in tensors)


def _local_batch(batch: TrainData, rows: slice) -> TrainData:
    return TrainData(*_take(rows, batch.x1, batch.y, batch.x0))


def _resume(ckpt_path: Path, dist: Dist) -> dict | None:
    """The checkpoint every process resumes from (None: start afresh), on the CPU: loading it into the
    modules and optimizers puts each tensor where its parameter lives.

    Every process reads the same file; processes that see different states (a state folder that is
    not on a filesystem shared by every node) stop with an error instead of silently diverging.
    """
    state = read_state(ckpt_path, needed_by=f"resuming from {ckpt_path.parent}") if ckpt_path.exists() else None
    dist.same_everywhere(None if state is None else state["step"], f"the step to resume from in {ckpt_path.parent} "
                         "(the state folder must be on a filesystem that every node shares)")
    return state


def _progress(total: int, start: int, desc: str, enabled: bool):
    return tqdm(total=total, initial=start, desc=desc, disable=not enabled, mininterval=1.0, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------------


def _keeps_global_rng(loop):
    """Run ``loop`` on a fork of the global RNG: the loops seed it every step, and a caller's own random
    stream (a benchmark, a notebook) must not change because it trained something."""

    @functools.wraps(loop)
    def wrapper(*args, **kwargs):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return loop(*args, **kwargs)

    return wrapper


@_keeps_global_rng
def train_teacher(
    family,
    data: TrainData,
    spec: dict,
    cfg,
    state_dir: str | Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    dist: Dist = SINGLE_PROCESS,
) -> dict:
    """Train ``f(t, x_t, y)`` by the universal matching loss on real data; resumes from ``state_dir``.

    ``cfg`` is a :class:`realuid.config.TrainTeacherConfig`; ``cfg.batch_size`` is the global batch,
    split evenly over the processes of ``dist`` (only rank 0 writes to ``state_dir``). ``stop_after``
    ends the call early at that step (after checkpointing), which is how tests simulate a killed run.
    Returns the teacher :class:`realuid.checkpoints.Checkpoint` (on every process): raw weights, the
    EMA copy ``ema_<cfg.ema_decay>``, ``meta["step"]`` and ``cfg`` as its config.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = state_dir / "checkpoint.pt"
    device = data.x1.device
    rows = dist.rows(cfg.batch_size)
    torch.manual_seed(cfg.seed)  # initial weights
    model = build_model(spec).to(device)
    dist.broadcast_module_(model)  # seeded construction already agrees; this makes sure of it
    ema = EMA(model, [cfg.ema_decay])
    opt, sched = make_optimizer(model.parameters(), cfg.optim, cfg.steps)
    log = CurveLog(state_dir / "curves.csv", ["loss", "grad_norm", "lr"])
    stream = BatchStream(data, cfg.batch_size, cfg.seed)
    labels = spec["args"].get("num_classes", 0) > 0

    start = 0
    state = _resume(ckpt_path, dist)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
    if dist.is_main:
        log.trim(start)

    def state() -> dict:
        return {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "ema": ema.state_dict()}

    meter = Meter()
    model.train()
    bar = _progress(cfg.steps, start, "teacher", progress and dist.is_main)
    for step in range(start, cfg.steps):
        rng = _seeded(cfg.seed, step, 0, device=device)
        _seed_dropout(cfg.seed, step, dist.rank)
        # Draws for the whole global batch on every process, then this process's rows of everything.
        batch = stream(step)
        x0, t, noise = _draw(family, batch, rng)
        batch, (x0, t, noise) = _local_batch(batch, rows), _take(rows, x0, t, noise)
        path = family.path_sample(x0, batch.x1, t, noise)
        with autocast(device, cfg.precision):
            pred = model(t, path.x_t, batch.y if labels else None)
        loss = matching_loss(pred.float(), path.target, path.weight).mean()
        norm = optimizer_step(loss, model.parameters(), opt, sched, cfg.optim.grad_clip, dist)
        ema.update(model)
        meter.add(loss=loss, grad_norm=norm)
        if _after_step(step + 1, cfg=cfg, stop_after=stop_after, meter=meter, dist=dist, log=log, bar=bar,
                       ckpt_path=ckpt_path, state=state, extra=lambda: {"lr": sched.get_last_lr()[0]}):
            break
    bar.close()
    return Checkpoint(kind="teacher", spec=spec, family=family_record(family), weights=model.state_dict(),
                      copies={ema_copy_name(cfg.ema_decay): ema.shadows[float(cfg.ema_decay)]},
                      meta={"step": min(cfg.steps, stop_after or cfg.steps)}, config=_config_record(cfg))


# --------------------------------------------------------------------------------------------------
# RealUID distillation
# --------------------------------------------------------------------------------------------------


class QualityLog:
    """In-training evaluation of every generator copy (raw weights, then each EMA copy) with ``evaluator``
    (see :mod:`realuid.quality`; any callable ``evaluator(generator) -> {metric: value}`` with
    ``every_steps``, ``metrics`` and ``rank_by`` will do).

    Rows ``{step, copy, *metrics}`` go to ``path`` (full precision) every ``evaluator.every_steps`` generator
    updates and at the last step; like the curves, the table lives in the state folder and is trimmed to
    the checkpoint on resume. With ``keep_best`` the weights of the best (copy, step) by
    ``evaluator.rank_by`` (lower is better, the first of equals kept) travel in the checkpoint. Every
    process evaluates (the evaluator shares the work and returns the same values everywhere); only ``write``
    (rank 0) appends the rows.
    Each call runs on a fork of the global RNG, so training draws the same numbers with or without it.
    """

    def __init__(self, evaluator, path: Path, *, keep_best: bool, write: bool = True):
        self.evaluator, self.keep_best, self.write = evaluator, keep_best, write
        self.log = CurveLog(path, ["copy", *evaluator.metrics], float_format=repr)
        self.best: dict | None = None  # {"copy", "step", <rank_by>, "state_dict"}
        self._scratch: nn.Module | None = None  # a generator to load EMA copies into

    def due(self, done: int, last_step: int) -> bool:
        return done % self.evaluator.every_steps == 0 or done == last_step

    def evaluate(self, step: int, uid: "RealUID") -> None:
        if self._scratch is None:
            self._scratch = copy.deepcopy(uid.generator).requires_grad_(False)
        copies = [("raw", None), *((ema_copy_name(d), shadow) for d, shadow in uid.ema.shadows.items())]
        rank_by = self.evaluator.rank_by
        for name, weights in copies:
            generator = uid.generator
            if weights is not None:
                self._scratch.net.load_state_dict(weights)
                generator = self._scratch
            devices = [uid.device] if uid.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                values = self.evaluator(generator)
            if self.write:
                self.log.append({"step": step, "copy": name, **values})
            if self.keep_best and (self.best is None or values[rank_by] < self.best[rank_by]):
                state = (weights if weights is not None else uid.generator.net.state_dict())
                self.best = {"copy": name, "step": step, rank_by: values[rank_by],
                             "state_dict": {k: v.detach().clone() for k, v in state.items()}}

    def state_dict(self) -> dict:
        return {"best": self.best} if self.keep_best and self.best is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


@dataclass
class StepDraws:
    """Every random input of one phase, for this process's rows: ``x1``, ``y``, ``x0``, ``t``, ``noise``
    as in :func:`_draw`, the generator input ``z`` and its noise ``z_noise`` (None unless the family's
    generator takes noise), and the GAN head's times ``gan_t`` [b] and path noise ``gan_noise`` [b, ...],
    one per (generated, real) pair (None without the GAN)."""

    x1: torch.Tensor
    y: torch.Tensor | None
    z: torch.Tensor
    z_noise: torch.Tensor | None
    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor | None
    gan_t: torch.Tensor | None = None
    gan_noise: torch.Tensor | None = None


class RealUID:
    """The two phases of RealUID distillation over a frozen teacher ``f*``.

    ``generator`` starts as a copy of ``student_init`` (default: the teacher), the fake model from the
    teacher or from random weights (``cfg.fake_init``). Each phase has its own optimizer and touches only
    its own network: the fake step samples the generator without autograd, the generator step freezes the
    fake model so its gradients stay as the fake step left them.

    Both networks run without dropout, whatever the teacher trained with (as the authors distil): they
    stay in eval mode throughout, which for these backbones (GroupNorm, LayerNorm, no batch statistics)
    changes dropout only. With dropout on, the generator would train stochastic but be sampled
    deterministically, and the fake model would learn from dropout-perturbed samples. The weights'
    layout is the teacher's, so any teacher file loads as it is.

    A phase receives the *global* batch; under ``dist`` each process computes its own rows and the phase's
    gradients are averaged over processes before its clip and step.
    """

    def __init__(self, family, teacher: nn.Module, spec: dict, cfg, *, alpha: float, beta: float,
                 device: torch.device, student_init: nn.Module | None = None, dist: Dist = SINGLE_PROCESS):
        self.family, self.cfg, self.alpha, self.beta = family, cfg, alpha, beta
        self.device, self.dist = device, dist
        self.labels = spec["args"].get("num_classes", 0) > 0
        self.data_free = alpha == 1 and beta == 1
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        init = student_init if student_init is not None else teacher
        self.generator = OneStepGenerator(family, copy.deepcopy(init).requires_grad_(True)).to(device).eval()
        torch.manual_seed(cfg.seed)  # random fake-model weights, when asked for
        self.fake = build_model(spec).to(device).eval()
        if cfg.fake_init == "teacher":
            if set(teacher.state_dict()) != set(self.fake.state_dict()):
                raise ValueError("fake_init='teacher' needs a teacher built from the same spec as the fake model; "
                                 "use fake_init='random' for other teachers (e.g. a closed-form one)")
            self.fake.load_state_dict(teacher.state_dict())
        self.fake.requires_grad_(True)
        # RealUID + GAN: the head sits on the fake model's encoder and trains with it, under the same
        # optimizer settings and one joint gradient clip (the authors' head is part of the fake network).
        self.gan = cfg.gan if cfg.gan.enabled else None
        self.disc_head = DiscriminatorHead(feature_dim(self.fake)).to(device).train() if self.gan else None
        for net in (self.generator, self.fake, *([self.disc_head] if self.gan else [])):
            dist.broadcast_module_(net)  # identical starting weights on every process (before the EMA copies)
        self.fake_params = list(self.fake.parameters()) + (list(self.disc_head.parameters()) if self.gan else [])
        self.gen_opt, self.gen_sched = make_optimizer(self.generator.parameters(), cfg.generator_optim, cfg.steps)
        self.fake_opt, self.fake_sched = make_optimizer(self.fake_params, cfg.fake_optim,
                                                        cfg.steps * cfg.fake_updates_per_generator_update)
        self.ema = EMA(self.generator.net, cfg.ema_decays)

    def _draws(self, batch: TrainData, rng: torch.Generator) -> StepDraws:
        """All draws of a phase for the global ``batch`` [G, ...], in a fixed order, then this process's rows.

        Order: generator input ``z`` and its noise, then ``x0, t, noise`` (:func:`_draw`), then the GAN
        head's G times and path noises, last so that runs without the GAN keep their random streams.
        Drawing for all G rows on every process makes the union over processes exactly the one-process phase.
        """
        total = batch.x1.shape[0]
        rows = self.dist.rows(total)
        y = batch.y if self.labels else None
        z = batch.x0 if self.family.paired else self.family.sample_source(batch.x1, rng=rng)
        z_noise = self.family.sample_noise(z, rng=rng) if self.family.generator_noise else None
        x0, t, noise = _draw(self.family, batch, rng)
        gan_t = gan_noise = None
        if self.gan is not None:
            gan_t = gan_time_sample(total, rng, t_max=self.family.t_max, device=batch.x1.device)
            gan_noise = self.family.sample_noise(batch.x1, rng=rng)
        return StepDraws(*_take(rows, batch.x1, y, z, z_noise, x0, t, noise, gan_t, gan_noise))

    def _gan_logits(self, x1: torch.Tensor, y: torch.Tensor | None, draws: StepDraws) -> torch.Tensor:
        """Head logits ``[copies*B]`` of ``x1`` [copies*B, ...] on the path at the draws' discriminator
        times in (0.8, t_max].

        ``x1`` stacks ``copies`` blocks of B samples (generated, or generated then real); every block gets
        the same times, path noise, ``x0`` (the step's, as the authors reuse it) and labels, so a
        generated sample and its real partner are seen at one point of the path. One encoder pass covers
        all blocks (no batch-coupled layers).
        """
        copies = x1.shape[0] // draws.x0.shape[0]
        repeat = lambda a: None if a is None else a.repeat(copies, *[1] * (a.dim() - 1))  # noqa: E731
        t = repeat(draws.gan_t)
        x_t = self.family.path_sample(repeat(draws.x0), x1, t, repeat(draws.gan_noise)).x_t
        with autocast(self.device, self.cfg.precision):
            return self.disc_head(encoder_features(self.fake, t, x_t, repeat(y))).float()

    def fake_step(self, batch: TrainData, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of the fake model ``f`` on the global ``batch``; returns (loss, gradient norm) on the device."""
        d = self._draws(batch, rng)
        y, x0, t, noise = d.y, d.x0, d.t, d.noise
        with torch.no_grad(), autocast(self.device, self.cfg.precision):  # the generator is only a sampler here
            x1_gen = self.generator(d.z, y, d.z_noise).float()
        # Generated and real terms share t, x0 and the path noise within the step.
        gen_path = self.family.path_sample(x0, x1_gen, t, noise)
        with autocast(self.device, self.cfg.precision):
            if self.data_free:
                f_gen, f_data, data_target = self.fake(t, gen_path.x_t, y).float(), None, None
            else:
                data_path = self.family.path_sample(x0, d.x1, t, noise)
                # One forward over [generated; real] is cheaper than two half-size ones (no batch-coupled layers).
                both = self.fake(t.repeat(2), torch.cat([gen_path.x_t, data_path.x_t]),
                                 None if y is None else y.repeat(2))
                f_gen, f_data = both.float().chunk(2)
                data_target = data_path.target
        loss = fake_loss(f_gen, gen_path.target, f_data, data_target, alpha=self.alpha, beta=self.beta,
                         weight=gen_path.weight).mean()
        if self.gan is not None:
            logits_gen, logits_data = self._gan_logits(torch.cat([x1_gen, d.x1]), y, d).chunk(2)
            loss = loss + self.gan.disc_coef * discriminator_loss(logits_data, logits_gen).mean()
        norm = optimizer_step(loss, self.fake_params, self.fake_opt, self.fake_sched, self.cfg.fake_optim.grad_clip,
                              self.dist)
        return loss.detach(), norm

    def generator_step(self, batch: TrainData, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of the generator through ``x1_gen`` on the global ``batch``; returns (loss, gradient norm)."""
        d = self._draws(batch, rng)
        y, x0, t, noise = d.y, d.x0, d.t, d.noise
        self.fake.requires_grad_(False)  # gradients reach the generator only, through x_t and the target
        if self.gan is not None:
            self.disc_head.requires_grad_(False)
        try:
            with autocast(self.device, self.cfg.precision):
                x1_gen = self.generator(d.z, y, d.z_noise).float()
                gen_path = self.family.path_sample(x0, x1_gen, t, noise)
                f_fake, f_teacher = self.fake(t, gen_path.x_t, y), self.teacher(t, gen_path.x_t, y)
            loss = generator_loss(f_fake.float(), f_teacher.float(), gen_path.target,
                                  alpha=self.alpha, beta=self.beta, weight=gen_path.weight).mean()
            if self.gan is not None:
                loss = loss + self.gan.gen_coef * generator_gan_loss(self._gan_logits(x1_gen, y, d)).mean()
            norm = optimizer_step(loss, self.generator.parameters(), self.gen_opt, self.gen_sched,
                                  self.cfg.generator_optim.grad_clip, self.dist)
        finally:
            self.fake.requires_grad_(True)
            if self.gan is not None:
                self.disc_head.requires_grad_(True)
        self.ema.update(self.generator.net)
        return loss.detach(), norm

    def state_dict(self) -> dict:
        return {"generator": self.generator.net.state_dict(), "fake": self.fake.state_dict(),
                "gen_opt": self.gen_opt.state_dict(), "gen_sched": self.gen_sched.state_dict(),
                "fake_opt": self.fake_opt.state_dict(), "fake_sched": self.fake_sched.state_dict(),
                "ema": self.ema.state_dict(),
                **({"disc_head": self.disc_head.state_dict()} if self.gan else {})}

    def load_state_dict(self, state: dict) -> None:
        self.generator.net.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.gen_sched.load_state_dict(state["gen_sched"])
        self.fake_opt.load_state_dict(state["fake_opt"])
        self.fake_sched.load_state_dict(state["fake_sched"])
        self.ema.load_state_dict(state["ema"])
        if self.gan is not None:
            self.disc_head.load_state_dict(state["disc_head"])


@_keeps_global_rng
def distill(
    family,
    data: TrainData,
    teacher: nn.Module,
    spec: dict,
    cfg,
    state_dir: str | Path,
    *,
    alpha: float,
    beta: float,
    progress: bool = True,
    stop_after: int | None = None,
    student_init: nn.Module | None = None,
    on_log: Callable[[dict, nn.Module], None] | None = None,
    evaluator=None,
    dist: Dist = SINGLE_PROCESS,
) -> dict:
    """RealUID distillation: ``cfg.fake_updates_per_generator_update`` fake steps, then one generator step.

    ``teacher`` is the frozen multi-step model ``f*`` (see :class:`RealUID`); ``cfg`` is a
    :class:`realuid.config.DistillConfig` (``cfg.batch_size`` is the global batch, split evenly over the
    processes of ``dist``; only rank 0 writes to ``state_dir``); resumes from ``state_dir``.
    ``on_log(row, generator)`` is called on rank 0 at each log interval (benchmarks follow convergence
    with it). ``evaluator`` (a :class:`realuid.quality.QualityEvaluator`, or None) scores every copy of the
    generator every ``evaluator.every_steps`` updates (on every process, rank 0 writing) into ``state_dir/eval.csv``
    (:class:`QualityLog`). Returns the generator :class:`realuid.checkpoints.Checkpoint`: raw weights,
    one copy ``ema_<decay>`` per EMA decay, ``meta`` with ``alpha``, ``beta`` and ``step``, and ``cfg`` as
    its config; with ``cfg.keep_best`` (on rank 0) also the copy ``best``, the best copy's weights, and
    ``meta["best"] = {"copy", "step", <metric>}`` saying which it is.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = state_dir / "checkpoint.pt"
    device = data.x1.device
    dist.rows(cfg.batch_size)  # a batch that does not split evenly stops here, before any work
    uid = RealUID(family, teacher, spec, cfg, alpha=alpha, beta=beta, device=device, student_init=student_init,
                  dist=dist)
    log = CurveLog(state_dir / "curves.csv", ["fake_loss", "generator_loss", "fake_grad_norm", "generator_grad_norm"])
    stream = BatchStream(data, cfg.batch_size, cfg.seed)
    phases = cfg.fake_updates_per_generator_update + 1
    keep_best = getattr(cfg, "keep_best", False)
    if keep_best and evaluator is None:
        raise ValueError("keep_best needs an evaluator: the best copy is chosen by the in-training metric")
    quality = (None if evaluator is None
               else QualityLog(evaluator, state_dir / "eval.csv", keep_best=keep_best, write=dist.is_main))

    start = 0
    state = _resume(ckpt_path, dist)
    if state is not None:
        uid.load_state_dict(state)
        start = state["step"]
        if quality is not None:
            quality.load_state_dict(state)
    if dist.is_main:
        log.trim(start)
        if quality is not None:
            quality.log.trim(start)

    meter = Meter()
    bar = _progress(cfg.steps, start, f"distill a={alpha:g} b={beta:g}", progress and dist.is_main)
    for step in range(start, cfg.steps):
        # Batches and draws are indexed by (step, phase): the loop's randomness is a function of `step`.
        for k in range(phases - 1):
            f_loss, f_norm = uid.fake_step(stream(step * phases + k), _seeded(cfg.seed, step, k, device=device))
        last = phases - 1
        g_loss, g_norm = uid.generator_step(stream(step * phases + last), _seeded(cfg.seed, step, last, device=device))
        meter.add(fake_loss=f_loss, generator_loss=g_loss, fake_grad_norm=f_norm, generator_grad_norm=g_norm)
        if _after_step(step + 1, cfg=cfg, stop_after=stop_after, meter=meter, dist=dist, log=log, bar=bar,
                       ckpt_path=ckpt_path, state=lambda: {**uid.state_dict(), **(quality.state_dict() if quality else {})},
                       on_row=None if on_log is None else lambda row: on_log(row, uid.generator),
                       evaluate=None if quality is None else
                       lambda done: quality.evaluate(done, uid) if quality.due(done, cfg.steps) else None):
            break
    bar.close()
    result = Checkpoint(kind="generator", spec=spec, family=family_record(family),
                        weights=uid.generator.net.state_dict(),
                        copies={ema_copy_name(d): s for d, s in uid.ema.shadows.items()},
                        meta={"alpha": alpha, "beta": beta, "step": min(cfg.steps, stop_after or cfg.steps)},
                        config=_config_record(cfg))
    if quality is not None and quality.best is not None:
        # One more named copy beside the EMA ones, so every reader of copies loads it the same way.
        best = dict(quality.best)
        result.copies[BEST_COPY] = best.pop("state_dict")
        result.meta["best"] = best
    return result


def _config_record(cfg) -> dict:
    """The settings in effect of the training section a run used, as plain data for its checkpoint (empty
    for a non-dataclass): a key the run ignores does not change the file's bytes."""
    import dataclasses

    from .config import in_effect

    return in_effect(cfg) if dataclasses.is_dataclass(cfg) else {}
