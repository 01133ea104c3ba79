"""The teacher loop: the universal matching regression on real data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import Checkpoint, ema_copy_name, family_record
from ..config import SpeedConfig
from ..devices import autocast
from ..distributed import SINGLE_PROCESS, Dist
from ..losses import matching_loss
from ..models import build_model, null_label
from ..speed import CompileTimer, prepare_backends, prepare_network
from .batches import BatchStream, TrainData, draw, local_batch, take
from .bookkeeping import CurveLog, Meter, after_step, config_record, progress_bar, resume_state
from .optimization import EMA, make_optimizer, optimizer_step
from .rng import keeps_global_rng, seed_dropout, seeded


@keeps_global_rng
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
    speed = getattr(cfg, "speed", SpeedConfig())
    prepare_backends(speed, device)
    prepare_network(model, speed)
    trained = dist.data_parallel(model)  # the forward whose backward averages gradients over processes
    ema = EMA(model, [cfg.ema_decay])
    opt, sched = make_optimizer(model.parameters(), cfg.optim, cfg.steps, fused=speed.fused_adam)
    log = CurveLog(state_dir / "curves.csv", ["loss", "grad_norm", "lr"])
    stream = BatchStream(data, cfg.batch_size, cfg.seed)
    labels = spec["args"].get("num_classes", 0) > 0
    null = null_label(spec)  # label dropout (classifier-free guidance) only for a spec that asks for it

    start = 0
    state = resume_state(ckpt_path, dist)
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
    bar = progress_bar(cfg.steps, start, "teacher", progress and dist.is_main)
    compile_timer = CompileTimer(speed, device, "teacher", dist.is_main)
    for step in range(start, cfg.steps):
        rng = seeded(cfg.seed, step, 0, device=device)
        seed_dropout(cfg.seed, step, dist.rank)
        # Draws for the whole global batch on every process, then this process's rows of everything.
        batch = stream(step)
        x0, t, noise = draw(family, batch, rng)
        if null is not None:  # drawn after every other draw, so runs without it keep their streams
            dropped = torch.rand(batch.y.shape[0], generator=rng, device=rng.device).to(batch.y.device)
            batch = TrainData(batch.x1, torch.where(dropped < spec["args"]["class_dropout"], null, batch.y), batch.x0)
        batch, (x0, t, noise) = local_batch(batch, rows), take(rows, x0, t, noise)
        path = family.path_sample(x0, batch.x1, t, noise)
        with autocast(device, cfg.precision):
            pred = trained(t, path.x_t, batch.y if labels else None)
        loss = matching_loss(pred.float(), path.target, path.weight).mean()
        norm = optimizer_step(loss, model.parameters(), opt, sched, cfg.optim.grad_clip)
        ema.update(model)
        compile_timer.done()
        meter.add(loss=loss, grad_norm=norm)
        if after_step(step + 1, cfg=cfg, stop_after=stop_after, meter=meter, dist=dist, log=log, bar=bar,
                       ckpt_path=ckpt_path, state=state, extra=lambda: {"lr": sched.get_last_lr()[0]}):
            break
    bar.close()
    return Checkpoint(kind="teacher", spec=spec, family=family_record(family), weights=model.state_dict(),
                      copies={ema_copy_name(cfg.ema_decay): ema.shadows[float(cfg.ema_decay)]},
                      meta={"step": min(cfg.steps, stop_after or cfg.steps)}, config=config_record(cfg))
