"""Per-seed inputs: sample ``i`` starts from the noise of seed ``seed + i`` (EDM's per-seed noise).

Each seed has its own CPU ``torch.Generator`` stream, so sample ``i`` is the same whatever the batch split,
the number of samples or the device; a k-step student's re-noising continues the same stream after the
first draw, so its one-step sample stays as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .few_step import renoise_inputs

_MAX_SEED = 2**63 - 1


def seeded_noise(
    seeds: Sequence[int] | Tensor,
    shape: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise ``[len(seeds), *shape]`` where row i depends only on ``seeds[i]``.

    Each row is drawn by its own CPU ``torch.Generator`` seeded with ``seeds[i]`` and the batch is then
    moved to ``device``, so sample i is the same whatever the batch split or the device (EDM's
    per-seed noise). Seeds are integers in ``[0, 2**63)``.
    """
    return seeded_noise_draws(seeds, shape, 1, device=device, dtype=dtype)[0]


def seeded_noise_draws(
    seeds: Sequence[int] | Tensor,
    shape: tuple[int, ...],
    draws: int,
    *,
    skip: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """``draws`` successive standard normal tensors ``[len(seeds), *shape]`` of each seed's own stream,
    after its first ``skip`` draws: the first draw is :func:`seeded_noise`'s, so later ones (a k-step
    student's re-noising) leave it as it was, and row i still depends only on ``seeds[i]``.
    """
    if isinstance(seeds, Tensor):
        if seeds.dim() != 1 or seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.is_complex():
            raise ValueError(f"seeds must be a 1-D integer tensor, got dtype {seeds.dtype} shape {tuple(seeds.shape)}")
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ValueError(f"seeds must be a sequence of ints or a 1-D integer tensor, got {type(seeds).__name__}")
    shape = _check_shape(shape)
    rows = []  # [seed][draw]
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
            raise ValueError(f"every seed must be an int in [0, 2**63), got {seed!r}")
        rng = torch.Generator(device="cpu").manual_seed(seed)
        rows.append([torch.randn(shape, generator=rng, dtype=dtype) for _ in range(skip + draws)][skip:])
    noises = [torch.stack([row[i] for row in rows]) if rows else torch.empty((0, *shape), dtype=dtype)
              for i in range(draws)]
    return [noise.to(device) if device is not None else noise for noise in noises]


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int) or not isinstance(shape, (tuple, list, torch.Size)):
        raise ValueError(f"shape must be a tuple of ints, got {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"shape must hold positive ints, got {shape!r}")
    return tuple(shape)


def class_labels(idx, num_classes: int) -> Tensor | None:
    """Labels ``[n]`` of samples ``idx`` (``[n]`` ints) when none are given: balanced classes,
    ``idx % num_classes`` (None when unconditional)."""
    return torch.as_tensor(idx % num_classes, dtype=torch.long) if num_classes else None


def one_step_inputs(family, start: int, n: int, *, seed: int, shape: Sequence[int], num_classes: int,
                    x0: Tensor | None = None, labels: Tensor | Sequence[int] | None = None,
                    noise: Tensor | None = None):
    """Inputs of samples ``start .. start+n-1``: ``(z [n, ...], y [n] or None, noise [n, ...] or None)``.

    ``z`` is the noise of seeds ``seed + i`` (paired families: ``x0[i % len(x0)]``, the corrupted input);
    ``noise`` is the generator's own noise (seeds ``seed + i``) when ``family.generator_noise``; ``y`` is
    ``labels[i]``, or ``i % num_classes`` when no labels are given (None for an unconditional model).
    The teacher starts from the same ``z``. A given ``noise`` (``[N, ...]`` for all samples, checked by
    :func:`check_noise`) replaces the per-seed draws: its rows ``start .. start+n-1`` are used instead.
    """
    seeds = list(range(seed + start, seed + start + n))
    idx = torch.arange(start, start + n)
    draw = (lambda: seeded_noise(seeds, tuple(shape))) if noise is None else (lambda: noise[start:start + n])
    if family.paired:
        if x0 is None or len(x0) == 0:
            raise ValueError(f"the {family.name} family is paired: pass x0, the corrupted inputs [M, ...]")
        z = torch.as_tensor(x0)[idx % len(x0)]
    else:
        if x0 is not None:
            raise ValueError(f"the {family.name} family draws its own noise: x0 is only for paired families")
        z = draw()
    noise = draw() if family.generator_noise else None
    if not num_classes:
        if labels is not None:
            raise ValueError("this model is unconditional: pass labels=None")
        return z, None, noise
    y = class_labels(idx, num_classes) if labels is None else torch.as_tensor(labels, dtype=torch.long)[start:start + n]
    if len(y) != n:
        raise ValueError(f"labels must hold one class per sample: {n} needed from index {start}, got {len(y)}")
    return z, y, noise


def renoise_noise(family, z: Tensor, start: int, stages: int, *, seed: int, shape: Sequence[int]) -> list[tuple]:
    """Inputs ``(x0_j, noise_j)`` of ``stages`` re-noising stages of samples ``start .. start+len(z)-1``
    (:func:`realuid.sampling.renoise_inputs`): the draws after the first of seeds ``seed + i``,
    on z's device. z: ``[n, ...]``, the chain's source (a bridge's corrupted inputs are reused as they are).
    """
    if stages == 0:  # one step: no per-seed streams to open
        return []
    per_stage = (not family.paired) + family.needs_noise
    seeds = list(range(seed + start, seed + start + len(z)))
    draws = iter(seeded_noise_draws(seeds, tuple(shape), per_stage * stages, skip=1, dtype=z.dtype))
    return renoise_inputs(family, z, stages, lambda like: next(draws).to(like.device))


def check_noise(noise: Tensor | None, n: int, shape: Sequence[int], module: nn.Module) -> None:
    """One clear error unless ``noise`` is None or a floating-point ``[n, *shape]`` tensor of the module's
    dtype, on the CPU or on the module's device (batches are moved there as the per-seed noise is)."""
    if noise is None:
        return
    param = next(module.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    if not isinstance(noise, Tensor):
        raise ValueError(f"noise must be a tensor [{n}, {', '.join(map(str, shape))}], got {type(noise).__name__}")
    if tuple(noise.shape) != (n, *shape):
        raise ValueError(f"noise must have shape [{n}, {', '.join(map(str, shape))}] (n samples of the model's "
                         f"shape), got {list(noise.shape)}")
    if noise.dtype != dtype:
        raise ValueError(f"noise must have the model's dtype {dtype}, got {noise.dtype}")
    if noise.device.type != "cpu" and noise.device != device:
        raise ValueError(f"noise is on {noise.device}, the model on {device}: put it on either the CPU or {device}")
