"""The universal matching (UM) loss, per sample, and the reductions every loss here and in
:mod:`realuid.distillation_losses` shares.

Reference: Kornilov, Li, Mavrin, Leonov, Gushchin, Burnaev, Koshelev, Korotin, "Universal Inverse
Distillation for Matching Models with Real-Data Supervision (No GANs)", ICLR 2026, arXiv 2509.22459.

All functions are pure tensor functions: they take model outputs and targets already evaluated at the
right points (``x_t`` of generated and of real samples, built by :mod:`realuid.matching`) and return
an *unreduced* ``[B]`` loss. Squared norms and inner products sum over every non-batch dimension; the
training loop takes the batch mean (learning rates and gradient clipping are tuned for that).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tensors import check_batch, check_same_shape

# The UM loss trains the teacher; RealUID's losses live in realuid.distillation_losses, so that an edit of the
# distillation never changes the code the teacher stage runs (docs/method.md §4).
__all__ = ["check_pair", "inner", "matching_loss", "squared_norm", "sum_non_batch", "weight_or_ones"]


# ----------------------------------------------------------------------------------------- helpers


def sum_non_batch(x: Tensor) -> Tensor:
    """Sum a ``[B, ...]`` tensor over every non-batch dimension -> ``[B]``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def squared_norm(a: Tensor) -> Tensor:
    return sum_non_batch(a * a)


def inner(a: Tensor, b: Tensor) -> Tensor:
    return sum_non_batch(a * b)


def check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    check_batch(a, name_a)
    check_batch(b, name_b)
    check_same_shape(a, b, name_a, name_b)


def weight_or_ones(weight: Tensor | None, like: Tensor) -> Tensor:
    """The ``[B]`` time weight, or ones when None; refuses a wrong shape or non-finite values."""
    batch = like.shape[0]
    if weight is None:
        return torch.ones(batch, dtype=like.dtype, device=like.device)
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor of shape [{batch}] or None, got {type(weight).__name__}")
    if weight.shape != (batch,):
        raise ValueError(f"weight must have shape [{batch}], got {tuple(weight.shape)}")
    # A value check reads the tensor back: free on CPU, a host sync per call on an accelerator, where the
    # training loops' periodic finite-loss check catches NaN weights instead.
    if weight.device.type == "cpu" and not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or inf")
    return weight


# -------------------------------------------------------------------------------------------- losses


def matching_loss(f: Tensor, g: Tensor, weight: Tensor | None = None) -> Tensor:
    """Universal matching (UM) loss per sample: ``w * ||f - g||^2``.

    Kornilov et al., ICLR 2026 (arXiv 2509.22459), the UM objective ``E_t w(t) E ||f(t, x_t) - g||^2``;
    its minimiser over f is ``E[g | x_t]``. Used to train the teacher.

    f: ``[B, ...]`` model output at ``(t, x_t)``.  g: ``[B, ...]`` regression target.
    weight: ``[B]`` time weight ``w(t)`` or None (ones).  Returns ``[B]``.
    """
    check_pair(f, g, "f", "g")
    w = weight_or_ones(weight, f)
    return w * squared_norm(f - g)
