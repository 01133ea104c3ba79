"""Closed-form data and teachers: isotropic Gaussian mixtures and their exact flow-matching velocity.

These serve as exact teachers (no training error) in tests and benchmarks: with ``x0 ~ N(0, I)`` and
``x1`` drawn from a Gaussian mixture, the flow-matching path ``x_t = t x1 + (1-t) x0`` is itself a
Gaussian mixture at every t, so ``E[x1 - x0 | x_t]`` is available in closed form.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

__all__ = ["GaussianMixture", "exact_fm_velocity", "ExactFMTeacher", "gmm8"]


class GaussianMixture:
    """Mixture of K isotropic Gaussians ``sum_k w_k N(means[k], std^2 I)`` in D dimensions.

    means: ``[K, D]``.  std: shared standard deviation > 0.  weights: ``[K]`` non-negative with a
    positive sum (normalised here), or None for equal weights.
    """

    def __init__(self, means: Tensor, std: float, weights: Tensor | None = None):
        if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must be a [K, D] tensor with K, D >= 1, got {means!r}")
        if not means.is_floating_point() or not torch.isfinite(means).all():
            raise ValueError("means must be a finite floating-point tensor")
        if isinstance(std, bool) or not isinstance(std, Real) or not math.isfinite(std) or std <= 0:
            raise ValueError(f"std must be a finite real number > 0, got {std!r}")
        if weights is None:
            weights = torch.full((means.shape[0],), 1.0 / means.shape[0], dtype=means.dtype)
        if not isinstance(weights, Tensor) or weights.shape != (means.shape[0],):
            raise ValueError(f"weights must be a [{means.shape[0]}] tensor, got {weights!r}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and sum to a positive number")
        self.means = means
        self.std = float(std)
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
        """Mixture covariance ``[D, D]``: ``std^2 I + sum_k w_k (m_k - m)(m_k - m)^T``."""
        centred = self.means - self.mean()
        between = (self.weights[:, None] * centred).T @ centred
        return between + self.std**2 * torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``[n, D]``, drawn on the generator's device (CPU by default), then moved to the means'."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        weights = self.weights.to(draw_device)
        components = torch.multinomial(weights, n, replacement=True, generator=generator) if n else weights.new_zeros(0).long()
        noise = torch.randn(n, self.dim, generator=generator, device=draw_device, dtype=self.means.dtype)
        return self.means.to(draw_device)[components].to(self.means.device) + self.std * noise.to(self.means.device)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density ``[N]`` at points ``x`` (``[N, D]``)."""
        _check_points(x, self.dim)
        sq_dist = torch.cdist(x, self.means.to(x.dtype)) ** 2  # [N, K]
        log_normal = -0.5 * sq_dist / self.std**2 - self.dim * (math.log(self.std) + 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(torch.log(self.weights.to(x.dtype)) + log_normal, dim=1)


def _check_points(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"x must be a [N, {dim}] tensor, got {getattr(x, 'shape', x)!r}")


def exact_fm_velocity(mixture: GaussianMixture, t: Tensor | float, x: Tensor) -> Tensor:
    """Exact flow-matching velocity ``E[x1 - x0 | x_t = x]`` for ``x0 ~ N(0, I)``, ``x1 ~ mixture``.

    Given component k, ``x_t ~ N(t m_k, v_t I)`` with ``v_t = t^2 std^2 + (1-t)^2`` (> 0 on all of
    [0, 1] because std > 0, so t = 1 is fine), and ``E[x1 - x0 | x_t, k] = m_k + (t std^2 - (1-t))/v_t
    (x_t - t m_k)``. The posterior component weights are a softmax of log-likelihoods, which is the
    numerically stable form of the ratio of mixture densities.

    mixture: K components in D dims.  t: ``[N]`` or a float in [0, 1].  x: ``[N, D]``.  Returns ``[N, D]``.
    """
    _check_points(x, mixture.dim)
    if not isinstance(t, Tensor):
        t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError("t must lie in [0, 1]")
    t = t.to(x.dtype)[:, None, None]  # [N, 1, 1]
    means = mixture.means.to(device=x.device, dtype=x.dtype)[None]  # [1, K, D]
    var_t = t**2 * mixture.std**2 + (1 - t) ** 2  # [N, 1, 1]
    offset = x[:, None, :] - t * means  # [N, K, D]
    log_lik = -0.5 * (offset**2).sum(-1, keepdim=True) / var_t  # [N, K, 1]; shared factors cancel
    log_weights = torch.log(mixture.weights.to(device=x.device, dtype=x.dtype))[None, :, None]
    posterior = torch.softmax(log_weights + log_lik, dim=1)  # [N, K, 1]
    per_component = means + (t * mixture.std**2 - (1 - t)) / var_t * offset  # [N, K, D]
    return (posterior * per_component).sum(dim=1)


class ExactFMTeacher(nn.Module):
    """The exact flow-matching velocity of a Gaussian mixture as a teacher model.

    forward(t: ``[N]``, x: ``[N, D]``, y=None) -> ``[N, D]``. The mixture lives in buffers, so
    ``.to(device)`` moves it. Labels are ignored (the teacher is unconditional).
    """

    def __init__(self, mixture: GaussianMixture):
        super().__init__()
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("weights", mixture.weights.clone())
        self.std = mixture.std

    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.means, self.std, self.weights)

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        return exact_fm_velocity(self.mixture(), t, x)


def gmm8(radius: float = 0.8, std: float = 0.05) -> GaussianMixture:
    """The standard 2-D toy: 8 equally weighted modes on a circle of ``radius`` (data within [-1, 1])."""
    if isinstance(radius, bool) or not isinstance(radius, Real) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a finite real number > 0, got {radius!r}")
    angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, std)
