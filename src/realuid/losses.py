"""Per-sample losses of universal matching and of RealUID distillation.

Reference: Kornilov, Li, Mavrin, Leonov, Gushchin, Burnaev, Koshelev, Korotin, "Universal Inverse
Distillation for Matching Models with Real-Data Supervision (No GANs)", ICLR 2026, arXiv 2509.22459.

All functions are pure tensor functions: they take model outputs and targets already evaluated at the
right points (``x_t`` of generated and of real samples, built by :mod:`realuid.matching`) and return
an *unreduced* ``[B]`` loss. Squared norms and inner products sum over every non-batch dimension; the
training loop takes the batch mean (learning rates and gradient clipping are tuned for that).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from .tensors import check_batch, check_same_shape

__all__ = ["matching_loss", "fake_loss", "generator_loss"]


# ----------------------------------------------------------------------------------------- helpers


def _sum_non_batch(x: Tensor) -> Tensor:
    """Sum a ``[B, ...]`` tensor over every non-batch dimension -> ``[B]``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def _sq_norm(a: Tensor) -> Tensor:
    return _sum_non_batch(a * a)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    return _sum_non_batch(a * b)


def _check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    check_batch(a, name_a)
    check_batch(b, name_b)
    check_same_shape(a, b, name_a, name_b)


def _check_coefficient(value: Any, name: str) -> float:
    """alpha and beta must be real numbers in (0, 1]; bools, NaN and tensors are refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number in (0, 1], got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def _weight_or_ones(weight: Tensor | None, like: Tensor) -> Tensor:
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
    _check_pair(f, g, "f", "g")
    w = _weight_or_ones(weight, f)
    return w * _sq_norm(f - g)


def fake_loss(
    f_gen: Tensor,
    g_gen: Tensor,
    f_data: Tensor | None,
    g_data: Tensor | None,
    *,
    alpha: float,
    beta: float,
    weight: Tensor | None = None,
) -> Tensor:
    """RealUID fake-model loss per sample (minimised over the fake model f).

    Kornilov et al., ICLR 2026 (arXiv 2509.22459), the RealUID fake objective::

        w * [ a ||f_gen||^2 - 2 b <f_gen, g_gen> + (1 - a) ||f_data||^2 - 2 (1 - b) <f_data, g_data> ]

    with ``a = alpha``, ``b = beta`` in (0, 1]. It is returned in exactly this *expanded* form. The
    completed-square form ``a||f - (b/a) g||^2 + (1-a)||f - ((1-b)/(1-a)) g||^2`` has the same
    gradients only for a < 1: at ``a = 1`` it divides by zero, and dropping its real-data square there
    (as one public implementation does) silently loses ``-2 (1 - b) <f_data, g_data>``, whose gradient
    ``-2 (1 - b) g_data`` still pulls f towards the real targets whenever ``b < 1``. The expanded form is
    smooth in (a, b) on the whole square, including a = 1.

    f_gen, g_gen:   ``[B, ...]`` fake-model output and target at ``x_t`` of generated samples
                    (the generated ``x1`` is expected to be detached by the caller).
    f_data, g_data: ``[B, ...]`` the same at ``x_t`` of real samples (same t and x0 noise), or both None,
                    which is allowed only in the data-free case ``a = b = 1``.
    weight:         ``[B]`` time weight or None (ones).
    Returns ``[B]``; gradients flow to all four tensors.
    """
    a = _check_coefficient(alpha, "alpha")
    b = _check_coefficient(beta, "beta")
    _check_pair(f_gen, g_gen, "f_gen", "g_gen")
    w = _weight_or_ones(weight, f_gen)
    generated = a * _sq_norm(f_gen) - 2.0 * b * _inner(f_gen, g_gen)
    if f_data is None and g_data is None:
        if not (a == 1.0 and b == 1.0):
            raise ValueError(
                f"f_data and g_data are required unless alpha = beta = 1 (data-free); got alpha={a}, beta={b}"
            )
        return w * generated
    if f_data is None or g_data is None:
        raise ValueError("pass both f_data and g_data, or neither (data-free case alpha = beta = 1)")
    _check_pair(f_data, g_data, "f_data", "g_data")
    if f_data.shape != f_gen.shape:
        raise ValueError(f"f_data has shape {tuple(f_data.shape)} but f_gen has shape {tuple(f_gen.shape)}")
    real = (1.0 - a) * _sq_norm(f_data) - 2.0 * (1.0 - b) * _inner(f_data, g_data)
    return w * (generated + real)


def generator_loss(
    f_gen: Tensor,
    f_teacher: Tensor,
    g_gen: Tensor,
    *,
    alpha: float,
    beta: float,
    weight: Tensor | None = None,
) -> Tensor:
    """RealUID generator loss per sample (minimised over the generator, through ``x1_gen`` only).

    Kornilov et al., ICLR 2026 (arXiv 2509.22459), the RealUID generator objective::

        w * [ a (||f_teacher||^2 - ||f_gen||^2) - 2 b <f_teacher - f_gen, g_gen> ]

    with ``a = alpha``, ``b = beta`` in (0, 1]. It is the fake objective on generated samples evaluated
    at the teacher minus the same at the fake model, so it is exactly 0 when ``f_gen == f_teacher``.
    The real-data terms do not appear: they only shape the fake model.

    f_gen:     ``[B, ...]`` fake-model output at ``x_t`` of generated samples.
    f_teacher: ``[B, ...]`` teacher output at the same points.
    g_gen:     ``[B, ...]`` target of the generated samples.
    weight:    ``[B]`` time weight or None (ones).
    Returns ``[B]``; gradients flow to all three tensors (the caller decides which parameters step).
    """
    a = _check_coefficient(alpha, "alpha")
    b = _check_coefficient(beta, "beta")
    _check_pair(f_gen, f_teacher, "f_gen", "f_teacher")
    _check_pair(f_gen, g_gen, "f_gen", "g_gen")
    w = _weight_or_ones(weight, f_gen)
    return w * (a * (_sq_norm(f_teacher) - _sq_norm(f_gen)) - 2.0 * b * _inner(f_teacher - f_gen, g_gen))
