"""Matching families: coefficients of the path, the regression target and the conversions.

Convention (docs/method.md §1): time ``t`` runs from ``0`` (source end) to ``1`` (data end); ``x0`` is the
source endpoint (Gaussian noise, or the corrupted input of a bridge), ``x1`` the data endpoint.

Every family here has an *affine* path and target::

    x_t = path_x0(t) x0   + path_x1(t) x1   + path_noise(t) noise   (noise ~ N(0, I), only where ``needs_noise``)
    g   = target_x0(t) x0 + target_x1(t) x1 + target_noise(t) noise

The maths elsewhere (:mod:`realuid.analytic`, the tests) writes them ``A, B, C`` and ``P, Q, R``, as
docs/method.md writes the interpolant's ``A(t), B(t)``; the code spells them out so that no coefficient
reads like the batch size ``B`` of the shapes below.

A family only says what the six coefficients are (:meth:`Family.path_coefficients`); the single
function :func:`build_path` turns coefficients and endpoints into ``x_t`` and ``g``. Nothing else in
the package builds ``x_t`` inline. Families also own the conversions a trained model needs:
:meth:`Family.predict_x1` (model output -> data estimate, used by the one-step generator and by the
final denoising step of samplers), :meth:`Family.velocity` (probability-flow ODE drift) and, where
there is one, the SDE drift and diffusion coefficient.

``noise`` is always this extra path noise (docs/method.md's ``ξ``); ``z`` is only ever the one-step
generator's input (:meth:`Family.source_state` at ``t_src``).

Shapes: ``t`` is ``[B]``; ``x0``, ``x1``, ``noise``, ``x_t``, model outputs are ``[B, ...]`` with at least
one non-batch dimension; weights are ``[B]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .tensors import check_batch, check_same_shape, standard_normal_like

__all__ = [
    "FAMILIES",
    "PathCoefficients",
    "PathSample",
    "Family",
    "FlowMatching",
    "Diffusion",
    "StochasticInterpolant",
    "BridgeMatching",
    "build_path",
    "make_family",
]

FAMILIES = ("fm", "diffusion", "si", "bridge")

# VP schedule of Song et al. (score SDE, 2021): beta(tau) = beta_min + tau (beta_max - beta_min) in
# their time tau (tau = 1 is noise). Our t maps onto tau in [VP_TAU_EPS, 1]; stopping at tau_eps > 0
# keeps s(1) > 0 so the eps target and the score stay finite at the data end.
VP_BETA_MIN = 0.1
VP_BETA_MAX = 20.0
VP_TAU_EPS = 1e-3
# VE schedule in EDM units (Karras et al., 2022): noise level s/a (EDM's sigma, the unit of
# Diffusion.generator_sigma) from VE_SIGMA_MAX at t=0 to VE_SIGMA_MIN at t=1.
VE_SIGMA_MIN = 0.002
VE_SIGMA_MAX = 80.0


class PathSample(NamedTuple):
    """One training sample of a family.

    x_t:    [B, ...] point on the path at time t.
    target: [B, ...] regression target g of the universal matching loss.
    weight: [B]      time weight w(t).
    """

    x_t: Tensor
    target: Tensor
    weight: Tensor


class PathCoefficients(NamedTuple):
    """Coefficients of ``x_t = path_x0 x0 + path_x1 x1 + path_noise noise`` and
    ``g = target_x0 x0 + target_x1 x1 + target_noise noise``; each is ``[B]`` (one per sample)."""

    path_x0: Tensor
    path_x1: Tensor
    path_noise: Tensor
    target_x0: Tensor
    target_x1: Tensor
    target_noise: Tensor


# ----------------------------------------------------------------------------------------- helpers


def _coef_dtype(dtype: torch.dtype) -> torch.dtype:
    # Coefficients are computed in float64 for float64 inputs and in float32 otherwise, so half-precision
    # inputs do not lose the schedule's small values (s(1) of VP is ~1e-2, VE_SIGMA_MIN is 2e-3).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_column(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[B]`` coefficient to ``[B, 1, ..., 1]`` so it broadcasts against ``like``."""
    return coef.reshape(coef.shape[0], *([1] * (like.dim() - 1)))


def _check_time(t: Tensor, batch: int, lo: float, hi: float, what: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"t must be a torch.Tensor of shape [{batch}], got {type(t).__name__}")
    if t.shape != (batch,):
        raise ValueError(f"t must have shape [{batch}] (one time per sample), got {tuple(t.shape)}")
    if t.device.type != "cpu":
        return  # value checks would cost a host sync per call on an accelerator; shapes are checked above
    if not torch.isfinite(t).all():
        raise ValueError("t contains NaN or inf")
    # Compare in t's own dtype: float32(t_max) may exceed the float64 t_max, and such a t is valid.
    lo_t, hi_t = torch.tensor(lo, dtype=t.dtype), torch.tensor(hi, dtype=t.dtype)
    if batch and (t.min().cpu() < lo_t or t.max().cpu() > hi_t):
        raise ValueError(
            f"t must lie in [{lo}, {hi}] for {what}; got values in [{t.min().item()}, {t.max().item()}]"
        )


def _check_real(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_table(values: Any, schedule: str) -> tuple[float, ...]:
    """The ``alphas_cumprod`` of a 'table' schedule as a tuple (empty for the analytic schedules)."""
    if schedule != "table":
        if len(values):
            raise ConfigError(f"alphas_cumprod is only for schedule 'table', not {schedule!r}")
        return ()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) < 2:
        raise ConfigError("schedule 'table' needs alphas_cumprod: at least 2 values")
    table = tuple(_check_real(v, "alphas_cumprod[k]") for v in values)
    if not all(0 < a < 1 for a in table) or any(b >= a for a, b in zip(table, table[1:])):
        raise ConfigError("alphas_cumprod must be strictly decreasing values in (0, 1) (data at k = 0)")
    return table


@functools.lru_cache(maxsize=8)  # built once per table, not at every evaluation of the schedule
def _table_log_snr_values(alphas_cumprod: tuple[float, ...]) -> Tensor:
    """``log(ᾱ_k / (1 - ᾱ_k))`` of each table entry, float64 ``[T]`` (do not modify it in place)."""
    table = torch.tensor(alphas_cumprod, dtype=torch.float64)
    return torch.log(table) - torch.log1p(-table)


def _check_t_eps(value: Any) -> float:
    value = _check_real(value, "t_eps", positive=True)
    if value >= 0.5:
        raise ConfigError(f"t_eps must be in (0, 0.5), got {value}")
    return value


def build_path(coefficients: PathCoefficients, x0: Tensor, x1: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """The one place where ``x_t`` and the target ``g`` are built from endpoints and coefficients.

    coefficients: each ``[B]``.  x0, x1, noise: ``[B, ...]`` (noise may be None when path_noise = target_noise = 0).
    Returns ``(x_t, g)``, both ``[B, ...]``.
    """
    c = PathCoefficients(*(_as_column(coef, x0) for coef in coefficients))
    x_t = c.path_x0 * x0 + c.path_x1 * x1
    g = c.target_x0 * x0 + c.target_x1 * x1
    if noise is not None:
        x_t = x_t + c.path_noise * noise
        g = g + c.target_noise * noise
    return x_t.to(x0.dtype), g.to(x0.dtype)


# -------------------------------------------------------------------------------------- base class


@dataclass(frozen=True)
class Family:
    """A matching family: how ``x0`` is drawn, the path, the target, the weight and the conversions.

    A family object also fixes where the one-step generator starts (``t_src``, ``generator_noise``,
    :meth:`source_state`; options ``generator_sigma``, ``generator_t``), because that start is a point on
    the path. The params keep the two apart: ``family.*`` is the path alone, ``generator.*`` the start
    (:class:`realuid.config.GeneratorConfig` turns it into these options).

    Class attributes every family defines:
      name:        registry name ('fm', 'diffusion', 'si', 'bridge').
      paired:      True when x0 comes with the data (bridge); then :meth:`sample_source` refuses.
      t_min/t_max: training time range; endpoints are clipped where the target diverges.
      t_src:       time at which the one-step generator reads its input ``source_state(z, t_src)``.
      generator_noise: the one-step generator takes fresh Gaussian noise besides its source ``z`` (a
                   bridge started inside the path, so it can match ``p(x1 | x0)``, not one map of x0).
      t_end:       last time of the teacher samplers; when the path at ``t_end`` is not exactly x1
                   (``needs_final_denoise``) samplers finish with one ``predict_x1`` evaluation.
      needs_noise: the path has an extra Gaussian ``noise`` besides x0 and x1.
      has_sde:     the family defines an SDE sampler (``sde_drift``/``sde_diffusion``).
    """

    name: ClassVar[str] = ""
    paired: ClassVar[bool] = False
    has_sde: ClassVar[bool] = False

    # -- time ranges (subclasses override as properties when they depend on options)
    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return 1.0

    @property
    def t_src(self) -> float:
        return 0.0

    @property
    def t_end(self) -> float:
        return self.t_max

    @property
    def needs_noise(self) -> bool:
        return False

    @property
    def generator_noise(self) -> bool:
        return False

    @property
    def needs_final_denoise(self) -> bool:
        return True

    def options(self) -> dict[str, Any]:
        """Constructor options; ``make_family(family.name, **family.options())`` rebuilds the family."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """``{'name': ..., **options}``, e.g. for a checkpoint."""
        return {"name": self.name, **self.options()}

    # -- sampling of t, x0 and the path noise
    def sample_time(
        self, n: int, *, rng: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """``n`` training times ``~ U[t_min, t_max)``; returns a float32 ``[n]`` tensor on ``device``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        draw_device = rng.device if rng is not None else device
        u = torch.rand(n, generator=rng, device=draw_device)
        t = self.t_min + (self.t_max - self.t_min) * u
        # Rounding of t_min + span*u can land exactly on t_max; keep the documented half-open range.
        t_max = torch.tensor(self.t_max, dtype=t.dtype)
        t = t.clamp(max=torch.nextafter(t_max, torch.tensor(-math.inf, dtype=t.dtype)).item())
        return t.to(device) if device is not None else t

    def sample_source(self, like: Tensor, *, rng: torch.Generator | None = None) -> Tensor:
        """``x0 ~ N(0, I)`` shaped like ``like`` (``[B, ...]``). Paired families raise ValueError."""
        if self.paired:
            raise ValueError(f"family {self.name!r} is paired: x0 comes with the data and cannot be sampled")
        check_batch(like, "like", floating=True)
        return standard_normal_like(like, rng)

    def sample_noise(self, like: Tensor, *, rng: torch.Generator | None = None) -> Tensor | None:
        """The extra path noise ``noise ~ N(0, I)`` shaped like ``like``, or None when the path has none."""
        check_batch(like, "like", floating=True)
        return standard_normal_like(like, rng) if self.needs_noise else None

    # -- the path
    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        """The six :class:`PathCoefficients` (each ``[B]``) at times ``t`` (``[B]``)."""
        raise NotImplementedError

    def time_weight(self, t: Tensor) -> Tensor:
        """Weight ``w(t)`` of the matching loss, ``[B]``."""
        return torch.ones_like(t)

    def path_sample(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        *,
        rng: torch.Generator | None = None,
    ) -> PathSample:
        """Point ``x_t`` on the path, target ``g`` and weight ``w(t)``.

        x0, x1: ``[B, ...]`` source and data endpoints.  t: ``[B]`` in ``[t_min, t_max]``.
        noise: ``[B, ...]`` the extra path noise, only for families with ``needs_noise``; when it is
        None there, it is drawn from ``rng`` (pass it explicitly to share it between samples).
        """
        check_batch(x0, "x0", floating=True)
        check_batch(x1, "x1", floating=True)
        check_same_shape(x0, x1, "x0", "x1")
        _check_time(t, x0.shape[0], self.t_min, self.t_max, f"the {self.name!r} path (training range)")
        if noise is not None:
            if not self.needs_noise:
                raise ValueError(f"family {self.name!r} has no extra path noise; pass noise=None")
            check_batch(noise, "noise", floating=True)
            check_same_shape(noise, x0, "noise", "x0")
        elif self.needs_noise:
            noise = standard_normal_like(x0, rng)
        coefficients = self._coefficients_for(t, x0)
        x_t, g = build_path(coefficients, x0, x1, noise)
        weight = self.time_weight(t.to(device=x0.device, dtype=coefficients.path_x0.dtype)).to(x0.dtype)
        return PathSample(x_t=x_t, target=g, weight=weight)

    def source_state(self, x0: Tensor, t: float | Tensor, noise: Tensor | None = None) -> Tensor:
        """The path at time ``t`` with the data part set to zero: ``path_x0(t) x0 (+ path_noise(t) noise)``.

        It is the start state of the teacher samplers and the input of the one-step generator
        (at ``t_src``). x0: ``[B, ...]``; t: a float or a ``[B]`` tensor in ``[0, t_end]``; noise: the
        path's extra noise ``[B, ...]``, given only to a generator that takes noise (``generator_noise``).
        """
        check_batch(x0, "x0", floating=True)
        t = self._time_tensor(t, x0)
        _check_time(t, x0.shape[0], 0.0, self.t_end, f"the {self.name!r} source state")
        t = t.to(device=x0.device, dtype=_coef_dtype(x0.dtype))
        state = _as_column(self._source_coefficient(t), x0) * x0
        if noise is not None:
            if not self.needs_noise:
                raise ValueError(f"family {self.name!r} has no extra path noise; pass noise=None")
            check_same_shape(noise, x0, "noise", "x0")
            state = state + _as_column(self.path_coefficients(t).path_noise, x0) * noise
        return state.to(x0.dtype)

    # -- conversions of a model output
    def predict_x1(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        """Data estimate ``E[x1 | x_t]`` from a model output at ``(t, x_t)``; shapes as ``x_t``."""
        t = self._check_conversion(t, x_t, output)
        return self._predict_x1(t, x_t, output).to(x_t.dtype)

    def velocity(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        """Probability-flow ODE drift ``dx/dt`` from a model output at ``(t, x_t)``; shapes as ``x_t``."""
        t = self._check_conversion(t, x_t, output)
        return self._velocity(t, x_t, output).to(x_t.dtype)

    def sde_drift(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        """Drift of the family's sampling SDE ``dx = drift dt + sde_diffusion(t) dW``; shapes as ``x_t``."""
        if not self.has_sde:
            raise ValueError(f"family {self.name!r} has no SDE sampler; use the ODE")
        t = self._check_conversion(t, x_t, output)
        return self._sde_drift(t, x_t, output).to(x_t.dtype)

    def sde_diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient (``[B]``) of the family's sampling SDE at times ``t`` (``[B]``)."""
        if not self.has_sde:
            raise ValueError(f"family {self.name!r} has no SDE sampler; use the ODE")
        if not isinstance(t, Tensor) or t.dim() != 1:
            raise ValueError(f"t must be a [B] tensor, got {t!r}")
        _check_time(t, t.shape[0], 0.0, self.t_end, "the SDE")
        return self._sde_diffusion(t.to(_coef_dtype(t.dtype))).to(t.dtype)

    # -- internals shared by the subclasses
    def _coefficients_for(self, t: Tensor, like: Tensor) -> PathCoefficients:
        return self.path_coefficients(t.to(device=like.device, dtype=_coef_dtype(like.dtype)))

    def _source_coefficient(self, t: Tensor) -> Tensor:
        return self.path_coefficients(t).path_x0

    @staticmethod
    def _time_tensor(t: float | Tensor, like: Tensor) -> Tensor:
        if isinstance(t, Tensor):
            return t
        if isinstance(t, bool) or not isinstance(t, Real):
            raise ValueError(f"t must be a real number or a [B] tensor, got {t!r}")
        return torch.full((like.shape[0],), float(t), dtype=_coef_dtype(like.dtype), device=like.device)

    def _check_conversion(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        check_batch(x_t, "x_t", floating=True)
        check_batch(output, "output", floating=True)
        check_same_shape(output, x_t, "output", "x_t")
        _check_time(t, x_t.shape[0], 0.0, self.t_end, f"{self.name!r} conversions")
        return t.to(device=x_t.device, dtype=_coef_dtype(x_t.dtype))

    def _predict_x1(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        raise NotImplementedError

    def _velocity(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        raise NotImplementedError

    def _sde_drift(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        raise NotImplementedError

    def _sde_diffusion(self, t: Tensor) -> Tensor:
        raise NotImplementedError


# ----------------------------------------------------------------------------------- flow matching


@dataclass(frozen=True)
class FlowMatching(Family):
    """Linear flow matching: ``x_t = t x1 + (1-t) x0``, ``g = x1 - x0``, ``x0 ~ N(0, I)``, ``w = 1``.

    The model output is the velocity; ``E[x1 | x_t] = x_t + (1-t) v``. The generator reads ``z`` at t=0.
    """

    name: ClassVar[str] = "fm"

    @property
    def needs_final_denoise(self) -> bool:
        # x_1 of the ODE is already the data sample.
        return False

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        return PathCoefficients(path_x0=1 - t, path_x1=t, path_noise=zero,
                                target_x0=-one, target_x1=one, target_noise=zero)

    def _predict_x1(self, t, x_t, output):
        return x_t + _as_column(1 - t, x_t) * output

    def _velocity(self, t, x_t, output):
        return output


# --------------------------------------------------------------------------------------- diffusion


@dataclass(frozen=True)
class Diffusion(Family):
    """Gaussian diffusion ``x_t = a(t) x1 + s(t) x0`` with ``x0 = eps ~ N(0, I)`` (no extra noise).

    schedule: 'vp' (variance preserving, a^2 + s^2 = 1, Song's linear beta in [0.1, 20] on
              tau in [1e-3, 1]), 've' (EDM: a = 1, s geometric from 80 at t=0 to 0.002 at t=1) or
              'table': a discrete VP schedule given by ``alphas_cumprod`` (diffusers' ``ᾱ_k``, data at
              k = 0), read at the fractional timestep ``k = (1 - t)(T - 1)``; see :meth:`_table_log_snr`.
    alphas_cumprod: ``[T]`` strictly decreasing values in (0, 1), only with schedule 'table'.
    prediction: 'eps' (target x0 = eps) or 'x1' (denoiser target x1). Weight w = 1.
    generator_sigma: noise-to-signal ratio s/a at which the one-step generator reads its input
              (SiD uses 2.5 in EDM units); ``t_src`` is the time where s(t)/a(t) equals it, so the
              generator never divides by the vanishing a(0) of VP.
    """

    name: ClassVar[str] = "diffusion"
    has_sde: ClassVar[bool] = True

    schedule: str = "vp"
    prediction: str = "eps"
    generator_sigma: float = 2.5
    alphas_cumprod: tuple[float, ...] = ()

    def __post_init__(self):
        _check_choice(self.schedule, "schedule", ("vp", "ve", "table"))
        object.__setattr__(self, "alphas_cumprod", _check_table(self.alphas_cumprod, self.schedule))
        _check_choice(self.prediction, "prediction", ("eps", "x1"))
        generator_sigma = _check_real(self.generator_sigma, "generator_sigma", positive=True)
        lo, hi = self._ratio_at(1.0), self._ratio_at(0.0)
        if not lo < generator_sigma < hi:
            raise ConfigError(
                f"generator_sigma must lie strictly between s/a at t=1 ({lo:.4g}) and at t=0 ({hi:.4g}) "
                f"for the {self.schedule!r} schedule, got {generator_sigma}"
            )
        object.__setattr__(self, "generator_sigma", generator_sigma)

    def options(self) -> dict[str, Any]:
        options = super().options()
        if self.schedule != "table":
            del options["alphas_cumprod"]  # records of the analytic schedules stay as they always were
        else:
            options["alphas_cumprod"] = list(self.alphas_cumprod)  # JSON has no tuples
        return options

    # -- schedule
    def _table_log_snr(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(lambda(t), dlambda/dt)`` of the tabulated schedule, each shaped like ``t``.

        ``lambda = log(ᾱ / (1 - ᾱ)) = log(a^2 / s^2)`` is linear in the timestep ``k = (1 - t)(T - 1)``
        between table entries. Why log-SNR: it is exact at integer ``k``, strictly monotone when ``ᾱ``
        is (so ``t_src`` has one solution), keeps ``a^2 + s^2 = 1`` everywhere, and it is the
        coordinate in which the VP schedules are smooth (linear betas make log ``ᾱ`` quadratic in k,
        the cosine schedule makes lambda nearly linear), so the chords are close to the curve. The
        derivative is the chord's slope, consistent with the interpolant (one-sided at the knots).
        """
        log_snr = _table_log_snr_values(self.alphas_cumprod).to(device=t.device, dtype=t.dtype)
        last = len(self.alphas_cumprod) - 1
        k = (1 - t) * last
        j = k.floor().clamp(0, last - 1).long()
        slope = log_snr[j + 1] - log_snr[j]  # per unit k
        return log_snr[j] + (k - j) * slope, -last * slope

    def _vp_log_a(self, tau: Tensor) -> Tensor:
        return -0.25 * tau**2 * (VP_BETA_MAX - VP_BETA_MIN) - 0.5 * tau * VP_BETA_MIN

    def _vp_tau(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - VP_TAU_EPS) * t

    def signal_noise(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t))``, each shaped like ``t``."""
        if self.schedule == "ve":
            log_s = (1 - t) * math.log(VE_SIGMA_MAX) + t * math.log(VE_SIGMA_MIN)
            return torch.ones_like(t), torch.exp(log_s)
        if self.schedule == "table":
            log_snr = self._table_log_snr(t)[0]  # a^2 = sigmoid(lambda), s^2 = sigmoid(-lambda)
            return torch.exp(0.5 * F.logsigmoid(log_snr)), torch.exp(0.5 * F.logsigmoid(-log_snr))
        two_log_a = 2 * self._vp_log_a(self._vp_tau(t))
        # s = sqrt(1 - a^2) via expm1: a -> 1 at the data end would cancel catastrophically.
        return torch.exp(0.5 * two_log_a), torch.sqrt(-torch.expm1(two_log_a))

    def log_derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a'/a, s'/s)`` (derivatives in t), each shaped like ``t``."""
        if self.schedule == "ve":
            return torch.zeros_like(t), torch.full_like(t, math.log(VE_SIGMA_MIN / VE_SIGMA_MAX))
        if self.schedule == "table":
            # d log sigmoid(l) / dl = sigmoid(-l): a'/a = s^2 lambda'/2, s'/s = -a^2 lambda'/2.
            log_snr, dlog_snr = self._table_log_snr(t)
            return 0.5 * torch.sigmoid(-log_snr) * dlog_snr, -0.5 * torch.sigmoid(log_snr) * dlog_snr
        tau = self._vp_tau(t)
        dlog_a = 0.5 * (1.0 - VP_TAU_EPS) * (tau * (VP_BETA_MAX - VP_BETA_MIN) + VP_BETA_MIN)
        two_log_a = 2 * self._vp_log_a(tau)
        snr = torch.exp(two_log_a) / (-torch.expm1(two_log_a))  # a^2 / s^2
        # a^2 + s^2 = 1  =>  s s' = -a a'  =>  s'/s = -(a^2/s^2) a'/a
        return dlog_a, -snr * dlog_a

    def _ratio_at(self, t: float) -> float:
        a, s = self.signal_noise(torch.tensor([t], dtype=torch.float64))
        return float(s / a)

    @property
    def t_src(self) -> float:
        if self.schedule == "ve":
            return math.log(VE_SIGMA_MAX / self.generator_sigma) / math.log(VE_SIGMA_MAX / VE_SIGMA_MIN)
        if self.schedule == "table":
            # s/a = r  <=>  lambda = -2 log r; invert the piecewise-linear lambda(k) (decreasing in k).
            log_snr = _table_log_snr_values(self.alphas_cumprod).tolist()
            wanted = -2 * math.log(self.generator_sigma)
            j = next(i for i in range(len(log_snr) - 1) if log_snr[i + 1] <= wanted)
            k = j + (log_snr[j] - wanted) / (log_snr[j] - log_snr[j + 1])
            return 1.0 - k / (len(log_snr) - 1)
        # s/a = r with a^2 + s^2 = 1  =>  log a = -log(1 + r^2)/2; solve the quadratic log a(tau) = c.
        c = -0.5 * math.log1p(self.generator_sigma**2)
        d = VP_BETA_MAX - VP_BETA_MIN
        tau = (-0.5 * VP_BETA_MIN + math.sqrt(0.25 * VP_BETA_MIN**2 - d * c)) / (0.5 * d)
        return (1.0 - tau) / (1.0 - VP_TAU_EPS)

    # -- path
    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        a, s = self.signal_noise(t)
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        if self.prediction == "eps":
            return PathCoefficients(path_x0=s, path_x1=a, path_noise=zero,
                                    target_x0=one, target_x1=zero, target_noise=zero)
        return PathCoefficients(path_x0=s, path_x1=a, path_noise=zero,
                                target_x0=zero, target_x1=one, target_noise=zero)

    def _source_coefficient(self, t):
        return self.signal_noise(t)[1]

    # -- conversions
    def predict_noise(self, t: Tensor, x_t: Tensor, output: Tensor) -> Tensor:
        """Noise estimate ``E[eps | x_t]`` from a model output; shapes as ``x_t``."""
        t = self._check_conversion(t, x_t, output)
        return self._predict_noise(t, x_t, output).to(x_t.dtype)

    def _predict_noise(self, t, x_t, output):
        if self.prediction == "eps":
            return output
        a, s = (_as_column(c, x_t) for c in self.signal_noise(t))
        return (x_t - a * output) / s

    def _predict_x1(self, t, x_t, output):
        if self.prediction == "x1":
            return output
        a, s = (_as_column(c, x_t) for c in self.signal_noise(t))
        return (x_t - s * output) / a

    def _velocity(self, t, x_t, output):
        # dx/dt = a' x1_hat + s' eps_hat, written with log-derivatives so that neither a(0) ~ 0 (VP)
        # nor s(1) ~ 0 is divided by for the prediction the model makes.
        a, s = (_as_column(c, x_t) for c in self.signal_noise(t))
        dlog_a, dlog_s = (_as_column(c, x_t) for c in self.log_derivatives(t))
        if self.prediction == "eps":
            return dlog_a * x_t + s * (dlog_s - dlog_a) * output
        return dlog_s * x_t + a * (dlog_a - dlog_s) * output

    def _sde_diffusion(self, t):
        # g^2 = 2 s^2 (a'/a - s'/s): the reverse of the forward noising SDE (beta for VP, d(s^2)/d(-t)
        # for VE). Any g keeps the marginals when the drift is v + g^2/2 * score.
        s = self.signal_noise(t)[1]
        dlog_a, dlog_s = self.log_derivatives(t)
        return s * torch.sqrt(2 * (dlog_a - dlog_s))

    def _sde_drift(self, t, x_t, output):
        # v + g^2/2 * score with score = -eps_hat/s and g^2/2 = s^2 (a'/a - s'/s); s cancels.
        s = _as_column(self.signal_noise(t)[1], x_t)
        dlog_a, dlog_s = (_as_column(c, x_t) for c in self.log_derivatives(t))
        eps_hat = self._predict_noise(t, x_t, output)
        return self._velocity(t, x_t, output) - s * (dlog_a - dlog_s) * eps_hat


# ---------------------------------------------------------------------------- stochastic interpolant


@dataclass(frozen=True)
class StochasticInterpolant(Family):
    """Stochastic interpolant ``x_t = coef_x0 x0 + coef_x1 x1 + gamma noise``, ``gamma = sigma sqrt(t(1-t))``.

    ``coef_x0``, ``coef_x1`` are docs/method.md's ``A(t)``, ``B(t)``. interpolant: 'linear' (coef_x0 = 1-t,
    coef_x1 = t) or 'trig' (coef_x0 = cos(pi t/2), coef_x1 = sin(pi t/2)).
    Target ``g = coef_x0' x0 + coef_x1' x1 + gamma' noise`` (the time derivative of the path); ``gamma'``
    diverges at both ends, so training times are clipped to ``[t_eps, 1 - t_eps]``. The model output is the
    velocity; :meth:`predict_x1` inverts it exactly for ``x0 ~ N(0, I)`` independent of ``noise``.
    """

    name: ClassVar[str] = "si"

    interpolant: str = "linear"
    sigma: float = 0.5
    t_eps: float = 1e-3

    def __post_init__(self):
        _check_choice(self.interpolant, "interpolant", ("linear", "trig"))
        object.__setattr__(self, "sigma", _check_real(self.sigma, "sigma"))
        object.__setattr__(self, "t_eps", _check_t_eps(self.t_eps))

    @property
    def t_min(self) -> float:
        return self.t_eps

    @property
    def t_max(self) -> float:
        return 1.0 - self.t_eps

    @property
    def needs_noise(self) -> bool:
        return self.sigma > 0

    def _endpoint_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(coef_x0, coef_x1, coef_x0', coef_x1')`` shaped like ``t``."""
        if self.interpolant == "linear":
            return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
        half_pi = 0.5 * math.pi
        c, s = torch.cos(half_pi * t), torch.sin(half_pi * t)
        return c, s, -half_pi * s, half_pi * c

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        coef_x0, coef_x1, dcoef_x0, dcoef_x1 = self._endpoint_coefficients(t)
        root = torch.sqrt(t * (1 - t))
        gamma = self.sigma * root
        dgamma = self.sigma * (1 - 2 * t) / (2 * root)
        return PathCoefficients(path_x0=coef_x0, path_x1=coef_x1, path_noise=gamma,
                                target_x0=dcoef_x0, target_x1=dcoef_x1, target_noise=dgamma)

    def _predict_x1(self, t, x_t, output):
        # With n = coef_x0 x0 + gamma noise ~ N(0, (coef_x0^2 + gamma^2) I) independent of x1 and
        # x_t = coef_x1 x1 + n, E[coef_x0' x0 + gamma' noise | n] = c n with
        # c = (coef_x0' coef_x0 + gamma' gamma)/(coef_x0^2 + gamma^2), so the exact velocity is
        # b = c x + (coef_x1' - c coef_x1) E[x1 | x]. gamma' gamma = sigma^2 (1 - 2t)/2 is finite at t = 0.
        coef_x0, coef_x1, dcoef_x0, dcoef_x1 = self._endpoint_coefficients(t)
        gamma_sq = self.sigma**2 * t * (1 - t)
        gamma_dgamma = 0.5 * self.sigma**2 * (1 - 2 * t)
        c = (dcoef_x0 * coef_x0 + gamma_dgamma) / (coef_x0**2 + gamma_sq)
        c_col, denom = _as_column(c, x_t), _as_column(dcoef_x1 - c * coef_x1, x_t)
        return (output - c_col * x_t) / denom

    def _velocity(self, t, x_t, output):
        return output


# ---------------------------------------------------------------------------------- bridge matching


@dataclass(frozen=True)
class BridgeMatching(Family):
    """Brownian bridge matching of paired ``(x0, x1)``: ``x_t = t x1 + (1-t) x0 + sigma sqrt(t(1-t)) noise``.

    Target ``g = (x1 - x_t)/(1-t) = x1 - x0 - sigma sqrt(t/(1-t)) noise``, so training times are clipped
    to ``[0, 1 - t_eps]``. The model output is the drift of the teacher SDE ``dx = f dt + sigma dW``
    started at the corrupted ``x0``; ``E[x1 | x_t] = x_t + (1-t) f``.

    generator_t: where the one-step generator reads its input. At 0 (default) the input is ``x0`` alone,
    so the generator is one deterministic map of ``x0``: it can match the marginal of ``x1`` but not a
    spread ``p(x1 | x0)``. At ``generator_t = s > 0`` (needs ``sigma > 0``) the input is the bridge state
    at ``s`` without its data part, ``(1-s) x0 + sigma sqrt(s(1-s)) noise`` with fresh ``noise``: what the
    teacher SDE would have injected by time ``s``, which the generator turns into the spread.
    """

    name: ClassVar[str] = "bridge"
    paired: ClassVar[bool] = True
    has_sde: ClassVar[bool] = True

    sigma: float = 0.5
    t_eps: float = 1e-3
    generator_t: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "sigma", _check_real(self.sigma, "sigma"))
        object.__setattr__(self, "t_eps", _check_t_eps(self.t_eps))
        generator_t = _check_real(self.generator_t, "generator_t")
        if generator_t > 0 and self.sigma == 0:
            raise ConfigError("generator_t > 0 needs sigma > 0: a bridge without noise has none to give the generator")
        if generator_t >= 0.5:
            raise ConfigError(f"generator_t must be in [0, 0.5), got {generator_t}")
        object.__setattr__(self, "generator_t", generator_t)

    @property
    def t_max(self) -> float:
        return 1.0 - self.t_eps

    @property
    def t_src(self) -> float:
        return self.generator_t

    @property
    def needs_noise(self) -> bool:
        return self.sigma > 0

    @property
    def generator_noise(self) -> bool:
        return self.generator_t > 0

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        one = torch.ones_like(t)
        return PathCoefficients(
            path_x0=1 - t,
            path_x1=t,
            path_noise=self.sigma * torch.sqrt(t * (1 - t)),
            target_x0=-one,
            target_x1=one,
            target_noise=-self.sigma * torch.sqrt(t / (1 - t)),
        )

    def _predict_x1(self, t, x_t, output):
        return x_t + _as_column(1 - t, x_t) * output

    def _velocity(self, t, x_t, output):
        # The drift f transports the marginals only together with the noise sigma dW; without it (the
        # probability-flow ODE) one would also need the score, which a Markovian drift does not give.
        if self.sigma > 0:
            raise ConfigError(
                "a bridge with sigma > 0 has no probability-flow velocity from its drift alone; "
                "sample it with the SDE (sample_sde) or use sigma = 0"
            )
        return output

    def _sde_drift(self, t, x_t, output):
        return output

    def _sde_diffusion(self, t):
        return torch.full_like(t, self.sigma)


# ----------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Family]] = {
    "fm": FlowMatching,
    "diffusion": Diffusion,
    "si": StochasticInterpolant,
    "bridge": BridgeMatching,
}


def make_family(name: str, **options: Any) -> Family:
    """Build a family by name ('fm' | 'diffusion' | 'si' | 'bridge') with its keyword options.

    Options: diffusion(schedule='vp'|'ve'|'table', prediction='eps'|'x1', generator_sigma=2.5,
    alphas_cumprod=() or the table's ᾱ_k);
    si(interpolant='linear'|'trig', sigma=0.5, t_eps=1e-3); bridge(sigma=0.5, t_eps=1e-3); fm has none.
    Unknown names or options raise ValueError.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown family {name!r}; expected one of {FAMILIES}")
    cls = _REGISTRY[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for family {name!r}; allowed: {sorted(allowed) or 'none'}")
    return cls(**options)
