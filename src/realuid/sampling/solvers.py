"""Teacher samplers: the probability-flow ODE (Euler, Heun) and the SDE (Euler–Maruyama), guided or not.

Every model here has the signature ``model(t: Tensor[B], x: Tensor[B, ...], y: Tensor[B] | None)``
and returns a tensor shaped like ``x``; what the output means (velocity, noise, denoiser, drift) is
the family's business, so samplers only go through ``family.velocity``, ``family.sde_drift`` and
``family.predict_x1``.

NFE (number of function evaluations) is the exact number of model calls. Samplers integrate from
``t_start`` to ``family.t_end``. When the path at ``t_end`` is not exactly the data
(``family.needs_final_denoise``: diffusion, stochastic interpolants, bridges), the last of the NFE
calls is a final denoising step ``x1 = predict_x1(t_end, x, model(t_end, x))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from ..matching import Family
from ..models import guided
from ..tensors import check_batch, standard_normal_like

SAMPLER_METHODS = ("euler", "heun", "sde")

Model = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


# ------------------------------------------------------------------------------------------ helpers


def _check_nfe(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ConfigError(f"nfe must be a positive int, got {nfe!r}")
    return nfe


def _check_start(family: Family, x0: Tensor, t_start) -> float:
    check_batch(x0, "x0")
    if isinstance(t_start, bool) or not isinstance(t_start, (int, float)) or not 0.0 <= t_start < family.t_end:
        raise ConfigError(f"t_start must be a float in [0, {family.t_end}), got {t_start!r}")
    return float(t_start)


def _times(x: Tensor, t: float) -> Tensor:
    """A ``[B]`` tensor filled with time ``t`` on x's device and dtype."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _grid(t_start: float, t_end: float, steps: int) -> list[float]:
    """``steps + 1`` equally spaced times from t_start to t_end (as Python floats, exact endpoints)."""
    return [t_start + (t_end - t_start) * i / steps for i in range(steps)] + [t_end] if steps else [t_start]


def _split_nfe(family: Family, nfe: int) -> int:
    """Model calls left for integration after reserving one for the final denoise where needed."""
    integration_calls = nfe - 1 if family.needs_final_denoise else nfe
    return integration_calls


def _final_state(family: Family, model: Model, x: Tensor, t: float, y: Tensor | None) -> Tensor:
    """Finish a trajectory at time t: one denoising call where the path at t is not yet x1."""
    if not family.needs_final_denoise:
        return x
    t_batch = _times(x, t)
    return family.predict_x1(t_batch, x, model(t_batch, x, y))


# -------------------------------------------------------------------------------------------- ODE


@torch.no_grad()
def sample_ode(
    family: Family,
    model: Model,
    x0: Tensor,
    *,
    nfe: int,
    method: str = "euler",
    y: Tensor | None = None,
    t_start: float = 0.0,
) -> Tensor:
    """Integrate the probability-flow ODE ``dx/dt = family.velocity(t, x, model(t, x, y))``.

    x0: ``[B, ...]`` source endpoint; the start state is ``family.source_state(x0, t_start)``.
    Returns the ``[B, ...]`` data estimate at the end of the trajectory.

    How the ``nfe`` model calls are spent (K = nfe, minus one for the final denoise where the family
    needs it; the grid is ``t_start .. t_end`` equally spaced):
      - 'euler': K Euler steps, one call each. With fm and ``nfe=99`` this is the authors' teacher
        sampler: 99 steps on ``linspace(0, 1, 100)``.
      - 'heun':  ceil(K/2) steps of Heun's second-order method (two calls each); when K is odd the last
        step is a plain Euler step (as in EDM's sampler), so the count stays exactly K.
    """
    nfe = _check_nfe(nfe)
    t_start = _check_start(family, x0, t_start)
    if method not in ("euler", "heun"):
        raise ConfigError(f"ODE method must be 'euler' or 'heun', got {method!r}")
    integration_calls = _split_nfe(family, nfe)
    x = family.source_state(x0, t_start)

    def drift(t: float, state: Tensor) -> Tensor:
        t_batch = _times(state, t)
        return family.velocity(t_batch, state, model(t_batch, state, y))

    if method == "euler":
        grid = _grid(t_start, family.t_end, integration_calls)
        for t_now, t_next in zip(grid[:-1], grid[1:]):
            x = x + (t_next - t_now) * drift(t_now, x)
    else:
        steps = math.ceil(integration_calls / 2)
        grid = _grid(t_start, family.t_end, steps)
        for i, (t_now, t_next) in enumerate(zip(grid[:-1], grid[1:])):
            h = t_next - t_now
            d_now = drift(t_now, x)
            euler_only = integration_calls % 2 == 1 and i == steps - 1
            if euler_only:
                x = x + h * d_now
            else:
                # Heun: average the slope at the start with the slope at the Euler predictor.
                d_next = drift(t_next, x + h * d_now)
                x = x + 0.5 * h * (d_now + d_next)
    # With no integration calls left the trajectory has not moved; denoise where it is.
    t_final = family.t_end if integration_calls else t_start
    return _final_state(family, model, x, t_final, y)


# -------------------------------------------------------------------------------------------- SDE


@torch.no_grad()
def sample_sde(
    family: Family,
    model: Model,
    x0: Tensor,
    *,
    nfe: int,
    y: Tensor | None = None,
    rng: torch.Generator | None = None,
) -> Tensor:
    """Euler–Maruyama for the family's SDE ``dx = family.sde_drift dt + family.sde_diffusion dW``.

    Bridge: ``dx = f dt + sigma dW`` from the corrupted ``x0``. Diffusion: the reverse of the noising
    SDE, drift ``v + g^2/2 * score``. x0: ``[B, ...]``; start state ``family.source_state(x0, 0)``.
    The ``nfe`` calls are ``nfe - 1`` Euler–Maruyama steps on an equal grid from 0 to ``t_end`` and one
    final denoise. Brownian increments are drawn from ``rng`` (on its device, then moved).
    Returns the ``[B, ...]`` data estimate.
    """
    nfe = _check_nfe(nfe)
    _check_start(family, x0, 0.0)
    if not family.has_sde:
        raise ConfigError(f"family {family.name!r} has no SDE sampler; use method 'euler' or 'heun'")
    integration_calls = _split_nfe(family, nfe)
    x = family.source_state(x0, 0.0)
    grid = _grid(0.0, family.t_end, integration_calls)
    for t_now, t_next in zip(grid[:-1], grid[1:]):
        h = t_next - t_now
        t_batch = _times(x, t_now)
        drift = family.sde_drift(t_batch, x, model(t_batch, x, y))
        diffusion = family.sde_diffusion(t_batch).reshape(x.shape[0], *([1] * (x.dim() - 1)))
        x = x + h * drift + diffusion * math.sqrt(h) * standard_normal_like(x, rng)
    t_final = family.t_end if integration_calls else 0.0
    return _final_state(family, model, x, t_final, y)


# ---------------------------------------------------------------------------------------- dispatch


def sample_teacher(
    family: Family,
    model: Model,
    x0: Tensor,
    *,
    nfe: int,
    method: str,
    y: Tensor | None = None,
    rng: torch.Generator | None = None,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
) -> Tensor:
    """Multi-step teacher sampling: ``method`` 'euler' | 'heun' (ODE) or 'sde' (Euler–Maruyama).

    x0: ``[B, ...]`` source endpoint (noise, or the corrupted input of a bridge). Returns ``[B, ...]``.
    ``rng`` drives the SDE's Brownian increments and is unused by the ODE methods. ``guidance_scale`` w
    samples the classifier-free guided field ``f_uncond + w (f_cond - f_uncond)``, ``f_uncond`` at the
    model's ``null_label`` (:func:`realuid.models.check_guidance` finds it; w = 1: the model itself).
    """
    if method not in SAMPLER_METHODS:
        raise ConfigError(f"method must be one of {SAMPLER_METHODS}, got {method!r}")
    if guidance_scale != 1:
        if null_label is None or y is None:
            raise ConfigError(f"guidance scale {guidance_scale:g} needs labels y and the model's null label")
        model = guided(model, null_label, guidance_scale)
    if method == "sde":
        return sample_sde(family, model, x0, nfe=nfe, y=y, rng=rng)
    return sample_ode(family, model, x0, nfe=nfe, method=method, y=y)


def sample_teacher_batch(family: Family, net: Model, x0: Tensor, y: Tensor | None, *, nfe: int, method: str,
                         seed: int, start: int, guidance_scale: float = 1.0, null_label: int | None = None) -> Tensor:
    """The teacher's samples of one batch ``[B, ...]`` starting at sample ``start``.

    SDE noise is drawn per batch from ``seed + start`` (on the inputs' device): reproducible for a
    fixed batch size; the ODE methods depend on the inputs only. ``guidance_scale`` and ``null_label``
    as in :func:`sample_teacher`.
    """
    rng = torch.Generator(device=x0.device).manual_seed(seed + start)
    return sample_teacher(family, net, x0, nfe=nfe, method=method, y=y, rng=rng, guidance_scale=guidance_scale,
                          null_label=null_label)
