"""What the layers do to a batch tensor the same way: the ``[B, ...]`` input checks and Gaussian noise.

The bottom of the import chain (``... -> losses -> matching -> tensors``; torch only): matching,
losses and the samplers check their inputs here, so each check lives once and every caller refuses
bad input with the same words. :mod:`realuid.models` stays a leaf that imports nothing of the
package, so the one-step generator keeps its own check of ``x0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_batch", "check_same_shape", "standard_normal_like"]


def check_batch(x: Any, name: str, *, floating: bool = False) -> Tensor:
    """``x`` itself when it is a ``[B, ...]`` tensor (at least one non-batch dimension), else ValueError.

    floating: refuse integer and boolean tensors too (where ``x`` is a point, noise or a model output).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape [B, ...] with at least one non-batch dim, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """ValueError naming both tensors unless ``a`` and ``b`` have one shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def standard_normal_like(like: Tensor, rng: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like`` (its dtype), drawn on the device of ``rng``, then moved.

    Drawing where ``rng`` lives makes the noise depend only on its state, not on the device of the
    data. Without ``rng`` it comes from torch's global RNG on ``like``'s device.
    """
    if rng is None:
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=rng, device=rng.device, dtype=like.dtype).to(like.device)
