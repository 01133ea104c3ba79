"""Closed-form data and teachers: Gaussian mixtures and the exact fields of every unpaired family.

These serve as exact teachers (no training error) in tests and benchmarks: with ``x0 ~ N(0, I)``, the
path noise ``noise ~ N(0, I)`` and ``x1`` drawn from a Gaussian mixture, every affine path of
:mod:`realuid.matching` (``x_t = A x0 + B x1 + C noise``) is itself a Gaussian mixture at every t and the
target ``g = P x0 + Q x1 + R noise`` is jointly Gaussian with ``x_t`` given the component, so ``E[g | x_t]``
is available in closed form (:func:`exact_field`; :func:`exact_fm_velocity` is its flow-matching case).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from .matching import FlowMatching

__all__ = ["GaussianMixture", "component_fields", "exact_field", "exact_fm_velocity", "ExactTeacher",
           "ExactFMTeacher", "gmm8"]


class GaussianMixture:
    """Mixture of K Gaussians ``sum_k w_k N(means[k], cov_k)`` in D dimensions.

    means: ``[K, D]``.  Either std: one standard deviation > 0 shared by all components (``cov_k =
    std^2 I``), or covariances: ``[K, D, D]`` symmetric positive definite, one per component (then
    ``self.std`` is None).  weights: ``[K]`` non-negative with a positive sum (normalised here), or None
    for equal weights.
    """

    def __init__(self, means: Tensor, std: float | None = None, weights: Tensor | None = None, *,
                 covariances: Tensor | None = None):
        if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must be a [K, D] tensor with K, D >= 1, got {means!r}")
        if not means.is_floating_point() or not torch.isfinite(means).all():
            raise ValueError("means must be a finite floating-point tensor")
        if (std is None) == (covariances is None):
            raise ValueError("give exactly one of std (shared, isotropic) and covariances ([K, D, D])")
        if covariances is not None:
            self.covariances = _checked_covariances(covariances, means)
        elif isinstance(std, bool) or not isinstance(std, Real) or not math.isfinite(std) or std <= 0:
            raise ValueError(f"std must be a finite real number > 0, got {std!r}")
        else:
            self.covariances = None
        if weights is None:
            weights = torch.full((means.shape[0],), 1.0 / means.shape[0], dtype=means.dtype)
        if not isinstance(weights, Tensor) or weights.shape != (means.shape[0],):
            raise ValueError(f"weights must be a [{means.shape[0]}] tensor, got {weights!r}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and sum to a positive number")
        self.means = means
        self.std = None if std is None else float(std)
        self.weights = (weights / weights.sum()).to(device=means.device, dtype=means.dtype)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Tensor:
        """Mixture mean ``[D]``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Mixture covariance ``[D, D]``: ``sum_k w_k cov_k + sum_k w_k (m_k - m)(m_k - m)^T``."""
        centred = self.means - self.mean()
        between = (self.weights[:, None] * centred).T @ centred
        return between + torch.einsum("k,kde->de", self.weights, self.component_covariances())

    def component_covariances(self) -> Tensor:
        """``[K, D, D]``: each component's covariance (``std^2 I`` for an isotropic mixture)."""
        if self.covariances is not None:
            return self.covariances
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        return (self.std**2 * eye).expand(self.num_components, self.dim, self.dim)

    def eigen(self) -> tuple[Tensor, Tensor]:
        """Each component's covariance as ``U diag(lam) U^T``: ``(lam [K, D], U [K, D, D])``, U's columns
        the eigenvectors. Every affine path keeps these axes (its noise is isotropic), so the fields of
        :func:`component_fields` are diagonal in them."""
        if self.covariances is None:
            lam = torch.full((self.num_components, self.dim), self.std**2, dtype=self.means.dtype,
                             device=self.means.device)
            eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
            return lam, eye.expand(self.num_components, self.dim, self.dim)
        return torch.linalg.eigh(self.covariances)

    def sample(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``[n, D]``, drawn on the device of ``rng`` (CPU by default), then moved to the means'."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        draw_device = rng.device if rng is not None else torch.device("cpu")
        weights = self.weights.to(draw_device)
        components = torch.multinomial(weights, n, replacement=True, generator=rng) if n else weights.new_zeros(0).long()
        noise = torch.randn(n, self.dim, generator=rng, device=draw_device, dtype=self.means.dtype)
        centres = self.means.to(draw_device)[components].to(self.means.device)
        if self.covariances is None:
            return centres + self.std * noise.to(self.means.device)
        factors = torch.linalg.cholesky(self.covariances)[components.to(self.means.device)]  # [n, D, D]
        return centres + (factors @ noise.to(self.means.device)[:, :, None])[:, :, 0]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density ``[N]`` at points ``x`` (``[N, D]``)."""
        _check_points(x, self.dim)
        if self.covariances is None:
            sq_dist = torch.cdist(x, self.means.to(x.dtype)) ** 2  # [N, K]
            log_normal = -0.5 * sq_dist / self.std**2 - self.dim * (math.log(self.std) + 0.5 * math.log(2 * math.pi))
        else:
            lam, axes = (a.to(x.dtype) for a in self.eigen())
            coords = torch.einsum("nkd,kde->nke", x[:, None, :] - self.means.to(x.dtype)[None], axes)
            log_normal = (-0.5 * (coords**2 / lam).sum(-1) - 0.5 * torch.log(lam).sum(-1)
                          - 0.5 * self.dim * math.log(2 * math.pi))
        return torch.logsumexp(torch.log(self.weights.to(x.dtype)) + log_normal, dim=1)


def _checked_covariances(covariances: Tensor, means: Tensor) -> Tensor:
    k, d = means.shape
    if not isinstance(covariances, Tensor) or covariances.shape != (k, d, d):
        raise ValueError(f"covariances must be a [{k}, {d}, {d}] tensor, got {getattr(covariances, 'shape', covariances)!r}")
    if not covariances.is_floating_point() or not torch.isfinite(covariances).all():
        raise ValueError("covariances must be a finite floating-point tensor")
    covariances = covariances.to(device=means.device, dtype=means.dtype)
    if not torch.allclose(covariances, covariances.transpose(1, 2)):
        raise ValueError("covariances must be symmetric")
    if (torch.linalg.eigvalsh(covariances) <= 0).any():
        raise ValueError("covariances must be positive definite")
    return covariances


def _check_points(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"x must be a [N, {dim}] tensor, got {getattr(x, 'shape', x)!r}")


def _time_vector(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as an ``[N]`` tensor in x's dtype, checked to lie in [0, 1]."""
    if not isinstance(t, Tensor):
        t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError("t must lie in [0, 1]")
    return t.to(x.dtype)


def component_fields(family, means: Tensor, eigen: tuple[Tensor, Tensor], t: Tensor | float,
                     x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-component marginal log density and field of ``family``'s path for ``x1 ~ N(means[k], cov_k)``.

    Given component k, ``x_t ~ N(B mu_k, S_k)`` with ``S_k = B^2 cov_k + (A^2 + C^2) I`` and
    ``Cov(g, x_t) = (P A + R C) I + Q B cov_k``, so ``E[g | x_t, k] = Q mu_k + Cov(g, x_t) S_k^-1 (x_t -
    B mu_k)``; both matrices are diagonal in the eigenbasis of ``cov_k``, where this is evaluated.
    ``R C = gamma' gamma`` is finite where ``C = 0`` although ``R`` alone may not be (the interpolant's
    ends), so it is set to 0 there.

    family: an unpaired :mod:`realuid.matching` family.  means: ``[K, D]``.  eigen: ``(lam [K, D],
    U [K, D, D])`` as :meth:`GaussianMixture.eigen`.  t: ``[N]`` or a float in [0, 1].  x: ``[N, D]``.
    Returns ``(log_density [N, K], field [N, K, D])``; ``log_density`` is normalised (a Gaussian's).
    Differentiable in ``means``.
    """
    if getattr(family, "paired", False):
        raise ValueError(f"family {family.name!r} is paired: its x0 is not N(0, I), so no closed form here")
    _check_points(x, means.shape[1])
    t = _time_vector(t, x)
    coef_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    A, B, C, P, Q, R = (c.to(x.dtype)[:, None, None] for c in family.path_coefficients(t.to(coef_dtype)))
    RC = torch.where(C == 0, torch.zeros_like(C), R * C)
    lam, axes = (a.to(device=x.device, dtype=x.dtype) for a in eigen)
    means = means.to(device=x.device, dtype=x.dtype)
    var = B**2 * lam[None] + A**2 + C**2  # [N, K, D]: S_k along cov_k's axes
    cross = P * A + RC + Q * B * lam[None]  # [N, K, D]: Cov(g, x_t | k) along the same axes
    coords = torch.einsum("nkd,kde->nke", x[:, None, :] - B * means[None], axes)  # [N, K, D]
    log_density = (-0.5 * (coords**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1)
                   - 0.5 * x.shape[1] * math.log(2 * math.pi))
    field = Q * means[None] + torch.einsum("nke,kde->nkd", cross / var * coords, axes)
    return log_density, field


def exact_field(family, mixture: GaussianMixture, t: Tensor | float, x: Tensor) -> Tensor:
    """Exact optimum ``E[g | x_t = x]`` of the matching loss of ``family`` for ``x1 ~ mixture``.

    ``x0 ~ N(0, I)`` and the path noise ``noise ~ N(0, I)`` independent of ``x1``; the field of the mixture
    is the posterior-weighted field of its components (:func:`component_fields`), the posterior a
    softmax of log-likelihoods (the numerically stable form of the ratio of mixture densities).

    mixture: K components in D dims.  t: ``[N]`` or a float in [0, 1].  x: ``[N, D]``.  Returns ``[N, D]``.
    """
    log_density, field = component_fields(family, mixture.means, mixture.eigen(), t, x)
    log_weights = torch.log(mixture.weights.to(device=x.device, dtype=x.dtype))[None]
    posterior = torch.softmax(log_weights + log_density, dim=1)  # [N, K]
    return (posterior[:, :, None] * field).sum(dim=1)


def exact_fm_velocity(mixture: GaussianMixture, t: Tensor | float, x: Tensor) -> Tensor:
    """Exact flow-matching velocity ``E[x1 - x0 | x_t = x]`` for ``x0 ~ N(0, I)``, ``x1 ~ mixture``.

    For an isotropic component k, ``x_t ~ N(t m_k, v_t I)`` with ``v_t = t^2 std^2 + (1-t)^2`` (> 0 on
    all of [0, 1] because std > 0, so t = 1 is fine), and ``E[x1 - x0 | x_t, k] = m_k + (t std^2 -
    (1-t))/v_t (x_t - t m_k)``: :func:`exact_field` for flow matching.

    mixture: K components in D dims.  t: ``[N]`` or a float in [0, 1].  x: ``[N, D]``.  Returns ``[N, D]``.
    """
    return exact_field(FlowMatching(), mixture, t, x)


class ExactTeacher(nn.Module):
    """The exact field of ``family`` for a Gaussian mixture (:func:`exact_field`) as a teacher model.

    forward(t: ``[N]``, x: ``[N, D]``, y=None) -> ``[N, D]``. The mixture lives in buffers (``means``,
    ``weights``, and ``covariances`` unless it is isotropic), so ``.to(device)`` moves it. Labels are
    ignored (the teacher is unconditional). family: default flow matching.
    """

    def __init__(self, mixture: GaussianMixture, family=None):
        super().__init__()
        self.family = FlowMatching() if family is None else family
        if self.family.paired:
            raise ValueError(f"family {self.family.name!r} is paired: no exact teacher of a mixture alone")
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("weights", mixture.weights.clone())
        if mixture.covariances is not None:
            self.register_buffer("covariances", mixture.covariances.clone())
        self.std = mixture.std

    def mixture(self) -> GaussianMixture:
        if self.std is None:
            return GaussianMixture(self.means, weights=self.weights, covariances=self.covariances)
        return GaussianMixture(self.means, self.std, self.weights)

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        return exact_field(self.family, self.mixture(), t, x)


class ExactFMTeacher(ExactTeacher):
    """The exact flow-matching velocity of a Gaussian mixture as a teacher model (see :class:`ExactTeacher`)."""

    def __init__(self, mixture: GaussianMixture):
        super().__init__(mixture, FlowMatching())


def gmm8(radius: float = 0.8, std: float = 0.05) -> GaussianMixture:
    """The standard 2-D toy: 8 equally weighted modes on a circle of ``radius`` (data within [-1, 1])."""
    if isinstance(radius, bool) or not isinstance(radius, Real) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a finite real number > 0, got {radius!r}")
    angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, std)
