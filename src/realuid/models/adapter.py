"""Wrap a network trained in another library's convention so that it answers in ours.

A foreign network ``net(time, x, y)`` predicts one of

  ``velocity``      ``dx/dtime`` along its own time (flow matching, interpolants),
  ``eps``           the noise of a Gaussian path ``x = a x_data + s eps``,
  ``x0``            the clean-data estimate (diffusers calls it ``sample``),
  ``v_prediction``  diffusers' ``a eps - s x_data``,

and reads its time in one of three conventions:

  ``ours``      ``t`` in [0, 1], data at ``t = 1`` (torchcfm's, realuid's own);
  ``sigma``     ``sigma = 1 - t`` scaled by ``time_scale``, data at 0 (diffusers' flow-matching
                schedulers feed ``timestep = sigma * num_train_timesteps``); its velocity is
                ``dx/dsigma = -dx/dt``;
  ``discrete``  the fractional timestep ``k = (1 - t)(T - 1)`` over the ``T``-entry ``ᾱ`` table of a
                ``Diffusion(schedule='table')`` family (DDPM/DDIM, data at k = 0).

:class:`TeacherAdapter` returns the native target of our family at ``(t, x_t, y)`` (fm: the
velocity; diffusion: eps or x1 as the family's ``prediction`` says), so every stage, loss and sampler
uses it unchanged. Every prediction of a Gaussian path ``x_t = a x1 + s x0`` is affine in ``x_t`` and
``E[x1 | x_t]``; the adapter solves the foreign one for ``E[x1 | x_t]`` and writes the native one. The
coefficients come from the family (nothing is a buffer), so the adapter's state dict is the foreign
network's own under the prefix ``net.``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

OUTPUTS = ("velocity", "eps", "x0", "v_prediction")
TIME_CONVENTIONS = ("ours", "sigma", "discrete")

__all__ = ["OUTPUTS", "TIME_CONVENTIONS", "TeacherAdapter"]


def _gaussian_path(family, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(a, s, a', s')`` of ``x_t = a x1 + s x0`` at times ``t`` ``[B]`` (derivatives in our t)."""
    if family.name == "fm":
        return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)
    a, s = family.signal_noise(t)
    dlog_a, dlog_s = family.log_derivatives(t)
    return a, s, a * dlog_a, s * dlog_s


def _affine(kind: str, a: Tensor, s: Tensor, da: Tensor, ds: Tensor) -> tuple[Tensor, Tensor]:
    """``(c_x, c_1)`` with ``prediction = c_x x_t + c_1 E[x1 | x_t]`` for a path ``x_t = a x1 + s eps``."""
    if kind == "x0":
        return torch.zeros_like(a), torch.ones_like(a)
    if kind == "eps":  # eps = (x_t - a x1) / s
        return 1 / s, -a / s
    if kind == "v_prediction":  # a eps - s x1
        return a / s, -(a * a + s * s) / s
    return ds / s, da - ds * a / s  # velocity a' x1 + s' eps


class TeacherAdapter(nn.Module):
    """``f(t, x_t, y)`` in our convention and our family's target from a foreign ``net(time, x, y)``.

    family: the native :class:`realuid.matching.Family` (``fm`` or ``diffusion``); output: one of
    :data:`OUTPUTS`; time: one of :data:`TIME_CONVENTIONS`; time_scale: the factor of ``sigma`` in the
    ``sigma`` convention. Shapes: ``t`` ``[B]``, ``x`` ``[B, ...]``, ``y`` ``[B]`` or None.
    """

    def __init__(self, net: nn.Module, family, *, output: str, time: str = "ours", time_scale: float = 1.0):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if time not in TIME_CONVENTIONS:
            raise ValueError(f"time must be one of {TIME_CONVENTIONS}, got {time!r}")
        if family.name not in ("fm", "diffusion"):
            raise ValueError(f"the adapter converts into the fm and diffusion families, not {family.name!r}")
        if time == "discrete" and getattr(family, "schedule", None) != "table":
            raise ValueError("discrete timesteps need a diffusion family with schedule 'table' (the ᾱ table)")
        if time == "discrete" and output == "velocity":
            raise ValueError("a velocity along discrete timesteps is not defined; use time 'ours' or 'sigma'")
        self.net, self.family = net, family
        self.output, self.time, self.time_scale = output, time, float(time_scale)
        self.native = "velocity" if family.name == "fm" else {"eps": "eps", "x1": "x0"}[family.prediction]

    def foreign_time(self, t: Tensor) -> Tensor:
        """The time the wrapped network reads at our ``t`` (``[B]``)."""
        if self.time == "ours":
            return t
        if self.time == "sigma":
            return (1 - t) * self.time_scale
        return (1 - t) * (len(self.family.alphas_cumprod) - 1)

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.net(self.foreign_time(t), x, y)
        if self.output == "velocity" and self.time == "sigma":
            out = -out  # their time runs the other way
        if self.output == self.native:
            return out
        # Coefficients in float64 (or float32 for lower precision), as the family computes them.
        coef_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        path = _gaussian_path(self.family, t.to(device=x.device, dtype=coef_dtype))
        (fx, f1), (nx, n1) = _affine(self.output, *path), _affine(self.native, *path)
        column = lambda c: c.reshape(-1, *[1] * (x.dim() - 1))  # noqa: E731
        x1_hat = (out - column(fx) * x) / column(f1)
        return (column(nx) * x + column(n1) * x1_hat).to(x.dtype)
