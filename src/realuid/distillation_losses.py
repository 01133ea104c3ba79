"""Per-sample losses of RealUID distillation: the fake model's and the generator's (docs/method.md §4).

Reference: Kornilov, Li, Mavrin, Leonov, Gushchin, Burnaev, Koshelev, Korotin, "Universal Inverse
Distillation for Matching Models with Real-Data Supervision (No GANs)", ICLR 2026, arXiv 2509.22459.

Pure tensor functions, as :mod:`realuid.losses`: model outputs and targets already evaluated at ``x_t`` of
generated and of real samples in, an unreduced ``[B]`` loss out; the training loop takes the batch mean.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from torch import Tensor

from .losses import check_pair, inner, squared_norm, weight_or_ones

__all__ = ["fake_loss", "generator_loss"]


def _check_coefficient(value: Any, name: str) -> float:
    """alpha and beta must be real numbers in (0, 1]; bools, NaN and tensors are refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number in (0, 1], got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value



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
    check_pair(f_gen, g_gen, "f_gen", "g_gen")
    w = weight_or_ones(weight, f_gen)
    generated = a * squared_norm(f_gen) - 2.0 * b * inner(f_gen, g_gen)
    if f_data is None and g_data is None:
        if not (a == 1.0 and b == 1.0):
            raise ValueError(
                f"f_data and g_data are required unless alpha = beta = 1 (data-free); got alpha={a}, beta={b}"
            )
        return w * generated
    if f_data is None or g_data is None:
        raise ValueError("pass both f_data and g_data, or neither (data-free case alpha = beta = 1)")
    check_pair(f_data, g_data, "f_data", "g_data")
    if f_data.shape != f_gen.shape:
        raise ValueError(f"f_data has shape {tuple(f_data.shape)} but f_gen has shape {tuple(f_gen.shape)}")
    real = (1.0 - a) * squared_norm(f_data) - 2.0 * (1.0 - b) * inner(f_data, g_data)
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
    check_pair(f_gen, f_teacher, "f_gen", "f_teacher")
    check_pair(f_gen, g_gen, "f_gen", "g_gen")
    w = weight_or_ones(weight, f_gen)
    return w * (a * (squared_norm(f_teacher) - squared_norm(f_gen)) - 2.0 * b * inner(f_teacher - f_gen, g_gen))
