"""Sampling in batches: ``n`` samples of one module (``Generator.sample``, ``Teacher.sample``), and the
teacher beside any number of generators over the processes of a run (the ``sample`` stage).

Each batch takes its inputs from :mod:`realuid.sampling.seeds`, so sample ``i`` is the same whatever the
batch split; only the teacher's SDE noise is drawn per batch (from the seed and the batch's first index).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from ..devices import autocast
from ..distributed import SINGLE_PROCESS, Dist
from .seeds import check_noise, one_step_inputs
from .solvers import sample_teacher_batch


def _batches(n: int, batch_size: int | None):
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    size = n if batch_size is None else batch_size
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [(start, min(size, n - start)) for start in range(0, n, max(size, 1))]


def _to(device, *tensors):
    return tuple(None if a is None else a.to(device) for a in tensors)


def sample_in_batches(module, n: int, batch_size: int | None, *, seed: int, labels, x0: Tensor | None,
                      noise: Tensor | None, refusal: str | None, sample) -> Tensor:
    """``n`` samples ``[n, *shape]`` of a :class:`realuid.api.Generator` or :class:`realuid.api.Teacher`
    (``family``, ``net``, ``shape``, ``num_classes``) on its device, batch by batch:
    ``sample(start, z, y, noise)`` from each batch's :func:`one_step_inputs`. ``refusal``: the error for
    a given ``noise`` the module does not take (None: it takes it)."""
    device = next(module.net.parameters()).device
    _batches(n, batch_size)  # n and batch_size are checked before noise's shape, which uses n
    check_noise(noise, n, module.shape, module.net)
    if noise is not None and refusal is not None:
        raise ValueError(refusal)
    out = []
    for start, m in _batches(n, batch_size):
        z, y, z_noise = _to(device, *one_step_inputs(module.family, start, m, seed=seed, shape=module.shape,
                                                     num_classes=module.num_classes, x0=x0, labels=labels,
                                                     noise=noise))
        out.append(sample(start, z, y, z_noise))
    return torch.cat(out) if out else torch.empty((0, *module.shape), device=device)


def _timed(fn, device: torch.device):
    """Run ``fn`` and return (result, seconds), synchronising CUDA so the time is the real one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def stream_samples(family, teacher, generators: dict, inputs: Callable[[int, int], tuple], n_samples: int, cfg,
                   dist: Dist = SINGLE_PROCESS, sink: Callable[[dict[str, torch.Tensor]], None] | None = None,
                   *, guidance_scale: float = 1.0, null_label: int | None = None) -> dict[str, float]:
    """Samples ``0 .. n_samples-1`` of the teacher and of each named generator, batch by batch.

    ``inputs(start, n)`` gives the generator inputs, labels and generator noise of samples
    ``start .. start+n-1`` (``x0`` [n, ...], ``y`` [n] or None, ``noise`` [n, ...] or None): each process
    makes only those of its own batches. ``generators[name](start, x0, y, noise)`` samples them [n, ...];
    the teacher samples with ``guidance_scale`` and ``null_label`` (:func:`sample_teacher_batch`). Rank 0
    calls ``sink({who: samples [b, ...] on CPU})`` for every batch in order (batches of a round of processes
    are gathered together, so at most ``world_size`` batches are held). Returns ``{who: seconds}``, the
    slowest process's (the wall time of a parallel run).
    """
    device = dist.device
    seconds = {"teacher": 0.0, **{name: 0.0 for name in generators}}
    batches = -(-n_samples // cfg.batch_size)
    # bf16 (sample.precision): forward passes autocast; samples are stored in float32 either way.
    with torch.no_grad(), autocast(device, getattr(cfg, "precision", "fp32")):
        for first in range(0, batches, dist.world_size):  # one round: batch first + rank on each process
            mine = {}
            start = (first + dist.rank) * cfg.batch_size
            if start < n_samples:
                xb, yb, nb = (None if a is None else a.to(device)
                              for a in inputs(start, min(cfg.batch_size, n_samples - start)))
                # SDE noise is drawn per batch from (seed, batch start): reproducible for a fixed batch size.
                out, sec = _timed(lambda: sample_teacher_batch(family, teacher, xb, yb, nfe=cfg.teacher_nfe,
                                                               method=cfg.teacher_method, seed=cfg.seed, start=start,
                                                               guidance_scale=guidance_scale, null_label=null_label),
                                  device)
                mine[start] = {"teacher": out.float().cpu()}
                seconds["teacher"] += sec
                for name, generator in generators.items():
                    out, sec = _timed(lambda: generator(start, xb, yb, nb), device)
                    mine[start][name] = out.float().cpu()
                    seconds[name] += sec
            ordered = dist.gather_batches(mine)
            if ordered is not None and sink is not None:
                for batch in ordered:
                    sink(batch)
    return {who: max(s[who] for s in dist.all_gather(seconds)) for who in seconds}


def draw_samples(family, teacher, generators: dict, inputs: Callable[[int, int], tuple], n_samples: int, cfg,
                 dist: Dist = SINGLE_PROCESS, **guidance) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    """:func:`stream_samples` collected: ``({who: samples [N, ...] on CPU} on rank 0 (None elsewhere),
    {who: seconds})``."""
    batches: list[dict[str, torch.Tensor]] = []
    seconds = stream_samples(family, teacher, generators, inputs, n_samples, cfg, dist, sink=batches.append,
                             **guidance)
    if not dist.is_main:
        return None, seconds
    return {who: torch.cat([b[who] for b in batches]) for who in seconds}, seconds
