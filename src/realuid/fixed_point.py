"""Where RealUID's generator settles: the fixed point for a Gaussian-mixture teacher and data.

At the fake model's optimum the RealUID generator minimises (docs/method.md §5)::

    V(p_g) = E_t w(t) ∫ (α p_g,t + (1−α) p_d,t) ‖f*_t − f̂_t‖² dx,
    f̂_t    = [β p_g,t m_g,t + (1−β) p_d,t m_d,t] / [α p_g,t + (1−α) p_d,t],

where ``f*`` is the teacher's field, ``m_g``, ``m_d`` the exact fields of the generated and the real
distribution, and ``p_·,t`` their marginals on the family's path. This holds because the fake loss is
``∫ D ‖f − f̂‖² + const`` with ``D = α p_g,t + (1−α) p_d,t``, so ``max_f [L(f*) − L(f)] = V`` and, by
the envelope theorem, the generator loss (with ``f`` frozen at ``f̂``) has V's gradient.

When the teacher ``p_T``, the data ``p_d`` and the generator ``p_g`` are Gaussian mixtures, every
marginal is a Gaussian mixture and every field is closed-form (:func:`realuid.analytic.component_fields`),
so V is an integral of known functions, computed here by quadrature: Gauss-Legendre in t over the
family's training range, and at each t a trapezoid grid in x (1-D or 2-D) fitted to the mixtures at that
t (the trapezoid rule converges geometrically for smooth, rapidly decaying integrands). V is convex in
the generator's weights (``‖N‖²/D`` is the perspective of a square, N and D linear in the weights), so
its minimum over the simplex is unique and found by SLSQP from the exact gradient.

For ``α = β``, ``f̂`` is the field of the mixture ``α p_g + (1−α) p_d``, so V = 0 exactly at
``p_g = p_T + ((1−α)/α)(p_T − p_d)`` when that is a distribution (:func:`alpha_equals_beta_weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from .analytic import GaussianMixture, component_fields, exact_field

__all__ = ["Quadrature", "FixedPoint", "FixedPointProblem", "objective", "fixed_point", "alpha_equals_beta_weights"]


@dataclass(frozen=True)
class Quadrature:
    """How V is integrated.

    n_times: Gauss-Legendre nodes in t on the family's training range ``[t_min, t_max]``.
    points_per_std: grid points per standard deviation of the narrowest component at each t.
    cutoff: the grid reaches this many standard deviations (of the widest component) beyond every
        component mean; the Gaussian mass left outside is ~exp(-cutoff²/2).
    max_points_per_axis: a cap on the grid (a mixture of very different scales would ask for more;
        the cap then lowers points_per_std for that t).
    """

    n_times: int = 64
    points_per_std: float = 4.0
    cutoff: float = 8.0
    max_points_per_axis: int = 600

    def __post_init__(self):
        if isinstance(self.n_times, bool) or not isinstance(self.n_times, int) or self.n_times < 1:
            raise ValueError(f"n_times must be an int >= 1, got {self.n_times!r}")
        for name in ("points_per_std", "cutoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(self.max_points_per_axis, bool) or not isinstance(self.max_points_per_axis, int) \
                or self.max_points_per_axis < 8:
            raise ValueError(f"max_points_per_axis must be an int >= 8, got {self.max_points_per_axis!r}")


@dataclass(frozen=True)
class FixedPoint:
    """The minimiser of V: the generator's ``weights`` [K] and ``means`` [K, D] (its covariances are the
    start's), ``value`` = V there, ``start_value`` = V at the start, and whether SLSQP reported success."""

    weights: Tensor
    means: Tensor
    value: float
    start_value: float
    converged: bool
    message: str


def _check_coefficient(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_mixtures(*mixtures: GaussianMixture) -> int:
    dims = {m.dim for m in mixtures}
    if len(dims) != 1:
        raise ValueError(f"the mixtures differ in dimension: {sorted(dims)}")
    dim = dims.pop()
    if dim not in (1, 2):
        raise ValueError(f"quadrature covers 1-D and 2-D mixtures only, got D = {dim}")
    return dim


class _Nodes:
    """Quadrature points ``x`` [P, D] at times ``t`` [P] with weights [P] (they include w(t), the time
    average and the grid cell), built once for a set of mixtures and a family."""

    def __init__(self, family, mixtures: list[GaussianMixture], quadrature: Quadrature):
        if getattr(family, "paired", False):
            raise ValueError(f"family {family.name!r} is paired: its fixed point needs the pairing, not mixtures")
        dim = _check_mixtures(*mixtures)
        t_min, t_max = family.t_min, family.t_max
        nodes, node_weights = np.polynomial.legendre.leggauss(quadrature.n_times)
        times = t_min + (t_max - t_min) * (nodes + 1) / 2
        # E_t over U[t_min, t_max): (1/(t_max - t_min)) ∫ dt, and dt = (t_max - t_min)/2 du.
        time_weights = node_weights / 2
        means = torch.cat([m.means.detach().double() for m in mixtures])  # [J, D]
        lam = torch.cat([m.eigen()[0].detach().double() for m in mixtures])  # [J, D]
        ts, xs, ws = [], [], []
        for t, wt in zip(times, time_weights):
            coef = family.path_coefficients(torch.tensor([t], dtype=torch.float64))
            A, B, C = (float(c[0]) for c in coef[:3])
            std = torch.sqrt(B**2 * lam + A**2 + C**2)  # [J, D] per-axis stds of the components at t
            centres = B * means
            grid, cell = self._grid(centres, float(std.max()), float(std.min()), dim, quadrature)
            ts.append(torch.full((grid.shape[0],), float(t), dtype=torch.float64))
            xs.append(grid)
            weight_t = float(family.time_weight(torch.tensor([t], dtype=torch.float64))[0])
            ws.append(torch.full((grid.shape[0],), wt * weight_t * cell, dtype=torch.float64))
        self.t, self.x, self.weight = torch.cat(ts), torch.cat(xs), torch.cat(ws)

    @staticmethod
    def _grid(centres: Tensor, widest: float, narrowest: float, dim: int, q: Quadrature) -> tuple[Tensor, float]:
        lo = centres.min(0).values - q.cutoff * widest
        hi = centres.max(0).values + q.cutoff * widest
        spacing = max(narrowest / q.points_per_std, float((hi - lo).max()) / (q.max_points_per_axis - 1))
        axes = [torch.arange(float(lo[d]), float(hi[d]) + spacing, spacing, dtype=torch.float64) for d in range(dim)]
        grid = torch.cartesian_prod(*axes) if dim > 1 else axes[0][:, None]
        return grid.reshape(-1, dim), spacing**dim


def _float64(mixture: GaussianMixture) -> GaussianMixture:
    return GaussianMixture(mixture.means.detach().double(), mixture.std, mixture.weights.detach().double(),
                           covariances=None if mixture.covariances is None else mixture.covariances.detach().double())


class FixedPointProblem:
    """V for one family, teacher, data and set of generator components, for any (α, β) and weights.

    Everything that depends on neither (α, β) nor the generator's weights (the quadrature nodes, the
    teacher's field, the data's and the generator's component densities and fields) is computed once
    here, so a map over many (α, β) costs one small matrix product per evaluation of V.

    start: the generator's components and initial weights (default: the teacher's). With ``fit_means``
    the generator's means are free too (their fields are then recomputed at every evaluation; the
    grid stays the one fitted to the start, so means should not leave its range).
    """

    def __init__(self, family, teacher: GaussianMixture, data: GaussianMixture, *,
                 start: GaussianMixture | None = None, quadrature: Quadrature = Quadrature()):
        start = teacher if start is None else start
        _check_mixtures(start, teacher, data)
        self.family = family
        self.start = _float64(start)
        self.nodes = _Nodes(family, [self.start, teacher, data], quadrature)
        t, x = self.nodes.t, self.nodes.x
        teacher = _float64(teacher)
        self.teacher_field = exact_field(family, teacher, t, x)  # [P, D]
        log_density, _ = component_fields(family, teacher.means, teacher.eigen(), t, x)
        teacher_density = torch.exp(torch.logsumexp(torch.log(teacher.weights) + log_density, dim=1))
        # E_t w ∫ p_T,t ‖f*_t‖²: the scale against which a V counts as zero up to rounding.
        self.teacher_energy = float((self.nodes.weight * teacher_density * (self.teacher_field**2).sum(1)).sum())
        data = _float64(data)
        self.data_weights = data.weights
        self.data_log_density, self.data_field = component_fields(family, data.means, data.eigen(), t, x)
        self.eigen = self.start.eigen()
        self._start_fields = component_fields(family, self.start.means, self.eigen, t, x)

    def value(self, weights: Tensor, *, alpha: float, beta: float, means: Tensor | None = None) -> Tensor:
        """V (a float64 scalar, differentiable) for the generator ``sum_k weights[k] N(means[k], cov_k)``;
        means default to the start's. ``inf`` where the generated density underflows to 0 under real mass
        with alpha = 1 (the fake model's optimum is unbounded there)."""
        alpha, beta = _check_coefficient(alpha, "alpha"), _check_coefficient(beta, "beta")
        if means is None:
            gen_log_density, gen_field = self._start_fields
        else:
            gen_log_density, gen_field = component_fields(self.family, means, self.eigen, self.nodes.t, self.nodes.x)
        log_density = torch.cat([gen_log_density, self.data_log_density], dim=1)  # [P, J]
        field = torch.cat([gen_field, self.data_field], dim=1)  # [P, J, D]
        weights = weights.to(torch.float64)
        a = torch.cat([alpha * weights, (1 - alpha) * self.data_weights])  # D's coefficients
        b = torch.cat([beta * weights, (1 - beta) * self.data_weights])  # the numerator's
        # Densities relative to the largest component at each point: D and N scale together, and
        # D ‖f* − N/D‖² is homogeneous of degree one in (D, N), so the scale comes back as exp(top).
        top = log_density.max(dim=1, keepdim=True).values.detach()
        relative = torch.exp(log_density - top)  # [P, J]
        denominator = relative @ a  # [P]
        numerator = torch.einsum("pj,pjd->pd", relative * b, field)  # [P, D]
        empty = denominator <= 0
        safe = torch.where(empty, torch.ones_like(denominator), denominator)
        f_hat = numerator / safe[:, None]
        integrand = denominator * ((self.teacher_field - f_hat) ** 2).sum(1)
        # Where D = 0 the point is weightless unless N is not: alpha = 1 with a generated density that
        # underflowed where the real data has mass. There V's integrand ~ p_d^2 / p_g is beyond float64.
        lost = empty & (numerator.abs().sum(1) > 0)
        integrand = torch.where(empty, torch.where(lost, torch.full_like(integrand, math.inf),
                                                   torch.zeros_like(integrand)), integrand)
        return (self.nodes.weight * torch.exp(top[:, 0]) * integrand).sum()

    def solve(self, *, alpha: float, beta: float, fit_means: bool = False, tol: float = 1e-12,
              max_iter: int = 200) -> FixedPoint:
        """Minimise V over the generator's weights on the simplex (and its means with ``fit_means``) by
        SLSQP from the start, with V's exact gradient. V is convex in the weights, so with fixed means
        the minimum found is the global one."""
        from scipy.optimize import minimize

        alpha, beta = _check_coefficient(alpha, "alpha"), _check_coefficient(beta, "beta")
        k, dim = self.start.means.shape
        w0, m0 = self.start.weights, self.start.means

        def unpack(theta: Tensor) -> tuple[Tensor, Tensor | None]:
            return theta[:k], theta[k:].reshape(k, dim) if fit_means else None

        start_value = float(self.value(w0, alpha=alpha, beta=beta))
        if start_value <= 1e-24 * self.teacher_energy:  # already a zero of V up to rounding (data-free)
            return FixedPoint(weights=w0.clone(), means=m0.clone(), value=0.0, start_value=0.0, converged=True,
                              message="V = 0 at the start")
        # SLSQP's tolerance is absolute; V's scale depends on the case, so it works on V / V(start).
        scale = start_value if math.isfinite(start_value) else 1.0

        def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            params = torch.as_tensor(theta, dtype=torch.float64).requires_grad_(True)
            weights, means = unpack(params)
            value = self.value(weights, alpha=alpha, beta=beta, means=means) / scale
            if not torch.isfinite(value):
                return 1e30, np.zeros_like(theta)  # a step onto an unbounded point: SLSQP backs off
            (grad,) = torch.autograd.grad(value, params)
            return value.item(), grad.numpy()

        theta0 = np.concatenate([w0.numpy(), m0.reshape(-1).numpy() if fit_means else np.zeros(0)])
        bounds = [(0.0, 1.0)] * k + [(None, None)] * (k * dim if fit_means else 0)
        simplex = {"type": "eq", "fun": lambda th: th[:k].sum() - 1.0,
                   "jac": lambda th: np.r_[np.ones(k), np.zeros(len(th) - k)]}
        result = minimize(value_and_grad, theta0, jac=True, method="SLSQP", bounds=bounds, constraints=[simplex],
                          options={"ftol": tol, "maxiter": max_iter})
        weights, means = unpack(torch.as_tensor(result.x, dtype=torch.float64))
        weights = weights.clamp(min=0)
        weights = weights / weights.sum()
        value = float(self.value(weights, alpha=alpha, beta=beta, means=means))
        return FixedPoint(weights=weights, means=(m0 if means is None else means).clone(), value=value,
                          start_value=start_value, converged=bool(result.success), message=str(result.message))


def objective(family, generated: GaussianMixture, teacher: GaussianMixture, data: GaussianMixture, *,
              alpha: float, beta: float, quadrature: Quadrature = Quadrature()) -> float:
    """V(p_g) of the module docstring for generator, teacher and data mixtures (same dimension, 1 or 2).

    family: an unpaired :mod:`realuid.matching` family (its path, target, time range and weight).
    alpha, beta in (0, 1]. Returns V as a float (see :meth:`FixedPointProblem.value` for ``inf``).
    """
    problem = FixedPointProblem(family, teacher, data, start=generated, quadrature=quadrature)
    return float(problem.value(problem.start.weights, alpha=alpha, beta=beta))


def fixed_point(family, teacher: GaussianMixture, data: GaussianMixture, *, alpha: float, beta: float,
                start: GaussianMixture | None = None, fit_means: bool = False,
                quadrature: Quadrature = Quadrature(), tol: float = 1e-12, max_iter: int = 200) -> FixedPoint:
    """The generator mixture that minimises V: its weights on the simplex (and, with ``fit_means``,
    its means), the components' covariances held at the start's (default start: the teacher).

    Returns a :class:`FixedPoint`; its ``weights`` are in the order of the start's components. For
    many (α, β) on the same mixtures, build one :class:`FixedPointProblem` and call ``solve``.
    """
    problem = FixedPointProblem(family, teacher, data, start=start, quadrature=quadrature)
    return problem.solve(alpha=alpha, beta=beta, fit_means=fit_means, tol=tol, max_iter=max_iter)


def alpha_equals_beta_weights(teacher_weights: Tensor, data_weights: Tensor, alpha: float) -> Tensor:
    """The zero of V for ``α = β`` and mixtures with the same components: ``w_T + ((1−α)/α)(w_T − w_d)``.

    It is a distribution only where every entry is >= 0; elsewhere V has no zero and the minimiser lies
    on the simplex's boundary. teacher_weights, data_weights: ``[K]``, each summing to 1.
    """
    alpha = _check_coefficient(alpha, "alpha")
    return teacher_weights + (1 - alpha) / alpha * (teacher_weights - data_weights)
