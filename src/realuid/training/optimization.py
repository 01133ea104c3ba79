"""Optimisation pieces both loops share: Adam under a warm-up and decay schedule, one clipped step, EMA."""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn


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


def make_optimizer(params, optim_cfg, total_steps: int, *, fused: bool = False,
                   ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam under :func:`lr_factor`'s schedule for a run of ``total_steps`` optimizer steps; ``fused``: one
    kernel for all parameters (torch has it on both devices the configs allow, CPU and CUDA)."""
    opt = torch.optim.Adam(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim_cfg, total_steps))
    return opt, sched


def optimizer_step(loss, params, opt, sched, grad_clip: float) -> torch.Tensor:
    """Backward, global-norm clip (0 = no clipping), step.

    ``loss`` is this process's mean over its rows. Under several processes it comes from a network called
    through :meth:`realuid.distributed.Dist.data_parallel`, whose backward averages the gradients over
    processes; with equal rows per process that average is the gradient of the global batch mean, so the
    clip sees the global batch's gradient. Returns the pre-clip gradient norm (on device).
    """
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    sched.step()
    return norm.detach()
