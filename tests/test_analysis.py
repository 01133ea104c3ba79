"""RealUID's fixed point for Gaussian mixtures (realuid.fixed_point) and the exact fields it rests on."""

import math

import pytest
import torch
from scipy.integrate import quad

from realuid.fixed_point import FixedPointProblem, Quadrature, alpha_equals_beta_weights, fixed_point, objective
from realuid.analytic import ExactTeacher, GaussianMixture, exact_field
from realuid.matching import make_family

FAMILIES = {
    "fm": {},
    "diffusion-vp-eps": {"schedule": "vp", "prediction": "eps"},
    "diffusion-vp-x1": {"schedule": "vp", "prediction": "x1"},
    "si-linear": {"interpolant": "linear", "sigma": 0.5},
    "si-trig": {"interpolant": "trig", "sigma": 0.3},
}
FAST = Quadrature(n_times=24, points_per_std=2.5, cutoff=7.0)


def family(key):
    return make_family(key.split("-")[0], **FAMILIES[key])


def two_modes(weights):
    """The issue's case: modes at (±1, 0), std 0.2."""
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    return GaussianMixture(means, 0.2, torch.tensor(weights, dtype=torch.float64))


def three_anisotropic(weights):
    """2-D, three modes of different shapes (full covariances): the code path with eigenbases."""
    means = torch.tensor([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]], dtype=torch.float64)
    rot = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=torch.float64)
    covs = torch.stack([torch.diag(torch.tensor([0.09, 0.01], dtype=torch.float64)),
                        rot @ torch.diag(torch.tensor([0.06, 0.02], dtype=torch.float64)) @ rot.T,
                        0.04 * torch.eye(2, dtype=torch.float64)])
    return GaussianMixture(means, weights=torch.tensor(weights, dtype=torch.float64), covariances=covs)


def one_d_three(weights):
    return GaussianMixture(torch.tensor([[-1.5], [0.0], [1.2]], dtype=torch.float64), 0.25,
                           torch.tensor(weights, dtype=torch.float64))


# --------------------------------------------------------------------------- the exact fields


@pytest.mark.parametrize("key", FAMILIES)
def test_exact_field_of_one_gaussian_gives_the_posterior_data_mean(key):
    """The family's own predict_x1 turns E[g | x_t] into E[x1 | x_t] = mu + B Sigma S^-1 (x - B mu), S =
    B^2 Sigma + (A^2 + C^2) I: here with a full covariance, solved as a matrix (not in its eigenbasis)."""
    fam = family(key)
    mu = torch.tensor([[0.4, -0.3]], dtype=torch.float64)
    cov = torch.tensor([[[0.2, 0.07], [0.07, 0.05]]], dtype=torch.float64)
    mixture = GaussianMixture(mu, covariances=cov)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
    t = fam.t_min + (fam.t_max - fam.t_min) * t
    A, B, C = fam.path_coefficients(t)[:3]
    for i in range(5):
        S = B[i] ** 2 * cov[0] + (A[i] ** 2 + C[i] ** 2) * torch.eye(2, dtype=torch.float64)
        expected = mu[0] + B[i] * cov[0] @ torch.linalg.solve(S, x[i] - B[i] * mu[0])
        got = fam.predict_x1(t[i : i + 1], x[i : i + 1], exact_field(fam, mixture, t[i : i + 1], x[i : i + 1]))
        torch.testing.assert_close(got[0], expected)


@pytest.mark.parametrize("key", ["fm", "diffusion-vp-eps", "si-linear"])
def test_exact_field_is_the_regression_optimum_of_the_path_monte_carlo(key):
    """E[(g - f(x_t)) h(x_t)] = 0 for functions h of x_t: the residual of the conditional mean is
    orthogonal to them. A mixture of modes with different full covariances, so the posterior weights
    need the log-determinant terms; tolerance 5 standard errors."""
    fam = family(key)
    mixture = three_anisotropic([0.5, 0.3, 0.2])
    rng = torch.Generator().manual_seed(1)
    n = 200_000
    x1 = mixture.sample(n, rng)
    x0 = torch.randn(n, 2, generator=rng, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=rng, dtype=torch.float64) if fam.needs_noise else None
    t = fam.t_min + (fam.t_max - fam.t_min) * torch.rand(n, generator=rng, dtype=torch.float64)
    path = fam.path_sample(x0, x1, t, noise)
    residual = path.target - exact_field(fam, mixture, t, path.x_t)
    for h in (torch.ones(n, dtype=torch.float64), torch.tanh(2 * path.x_t[:, 0]), torch.tanh(2 * path.x_t[:, 1]),
              torch.exp(-(path.x_t**2).sum(1))):
        moment = residual * h[:, None]
        err = moment.std(0) / math.sqrt(n)
        assert (moment.mean(0).abs() < 5 * err).all(), (moment.mean(0), err)
    # ... while a wrong field (the teacher of other weights) is caught by the same test
    wrong = three_anisotropic([0.2, 0.3, 0.5])
    moment = (path.target - exact_field(fam, wrong, t, path.x_t)) * torch.tanh(2 * path.x_t[:, 1])[:, None]
    assert (moment.mean(0).abs() > 5 * moment.std(0) / math.sqrt(n)).any()


def test_full_covariance_mixture_density_sampling_and_teacher():
    mixture = three_anisotropic([0.5, 0.3, 0.2])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    density = torch.zeros(6, dtype=torch.float64)
    for w, m, c in zip(mixture.weights, mixture.means, mixture.covariances):
        d = x - m
        density += w * torch.exp(-0.5 * (d @ torch.linalg.inv(c) * d).sum(1)) / (2 * math.pi * torch.det(c).sqrt())
    torch.testing.assert_close(mixture.log_prob(x), torch.log(density))
    samples = mixture.sample(100_000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.cov(samples.T), mixture.covariance(), atol=0.01, rtol=0)
    teacher = ExactTeacher(mixture, make_family("si"))
    t = torch.full((6,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(teacher(t, x), exact_field(make_family("si"), mixture, t, x))
    assert {name for name, _ in teacher.named_buffers()} == {"means", "weights", "covariances"}


@pytest.mark.parametrize("bad,match", [
    ({"std": 0.1, "covariances": torch.eye(2).expand(2, 2, 2).double()}, "exactly one"),
    ({}, "exactly one"),
    ({"covariances": torch.eye(2).expand(3, 2, 2).double()}, r"\[2, 2, 2\]"),
    ({"covariances": torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 2, dtype=torch.float64)}, "symmetric"),
    ({"covariances": torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 2, dtype=torch.float64)}, "positive definite"),
])
def test_mixture_rejects_bad_covariances(bad, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(torch.zeros(2, 2, dtype=torch.float64), **bad)


def test_paired_family_has_no_exact_field():
    with pytest.raises(ValueError, match="paired"):
        exact_field(make_family("bridge"), two_modes([0.5, 0.5]), 0.5, torch.zeros(3, 2, dtype=torch.float64))


# ------------------------------------------------------------------------------- V by hand


def _one_gaussian(mu):
    return GaussianMixture(torch.tensor([[mu]], dtype=torch.float64), 1.0)


def _slope_gap(fam, t):
    """For x1 ~ N(mu, 1) in 1-D, f*_t - m_t is the constant (mu_T - mu_g)(Q - B k_t), k_t = (PA + RC + QB)/
    (B^2 + A^2 + C^2): the x-integral of V done by hand. This writes Q - B k_t out per family."""
    if fam.name == "fm":  # (1-t) / (t^2 + (1-t)^2)
        return (1 - t) / (t**2 + (1 - t) ** 2)
    if fam.name == "si":  # linear interpolant: ((1-t) + sigma^2 t / 2) / (t^2 + (1-t)^2 + sigma^2 t (1-t))
        s2 = fam.sigma**2
        return ((1 - t) + s2 * t / 2) / (t**2 + (1 - t) ** 2 + s2 * t * (1 - t))
    # VP eps: Q = 0, k_t = s / (a^2 + s^2) = s, so the gap is -a s
    a, s = (float(v) for v in fam.signal_noise(torch.tensor([t], dtype=torch.float64)))
    return -a * s


@pytest.mark.parametrize("key", ["fm", "diffusion-vp-eps", "si-linear"])
def test_data_free_value_of_a_shifted_gaussian_matches_the_hand_integral(key):
    """Data-free (or data equal to the generator, for any alpha, beta: then f-hat = m_g), teacher N(0.3, 1),
    generator N(-0.2, 1): V = 0.25 E_t (Q - B k_t)^2; for flow matching that is 0.25 pi/4 exactly."""
    fam = family(key)
    teacher, gen = _one_gaussian(0.3), _one_gaussian(-0.2)
    q = Quadrature(n_times=96, points_per_std=3.0, cutoff=9.0)
    lo, hi = fam.t_min, fam.t_max
    by_hand = 0.25 * quad(lambda t: _slope_gap(fam, t) ** 2, lo, hi, limit=200, epsabs=1e-13)[0] / (hi - lo)
    if fam.name == "fm":
        assert by_hand == pytest.approx(0.25 * math.pi / 4, rel=1e-10)
    assert objective(fam, gen, teacher, _one_gaussian(2.0), alpha=1, beta=1, quadrature=q) == pytest.approx(by_hand, rel=1e-6)
    assert objective(fam, gen, teacher, gen, alpha=0.6, beta=0.9, quadrature=q) == pytest.approx(by_hand, rel=1e-6)
    # a perfect teacher (data = teacher = generator): V = 0 for any alpha, beta
    assert objective(fam, teacher, teacher, teacher, alpha=0.3, beta=0.8, quadrature=q) < 1e-20


# ------------------------------------------------------------------------------ the minimiser


CASES = {
    "two-modes-2d": (two_modes, [0.5, 0.5], [0.75, 0.25]),
    "three-anisotropic-2d": (three_anisotropic, [1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2]),
    "three-modes-1d": (one_d_three, [0.3, 0.4, 0.3], [0.2, 0.5, 0.3]),
}


@pytest.mark.parametrize("key", ["fm", "diffusion-vp-eps", "si-linear"])
@pytest.mark.parametrize("case", CASES)
def test_alpha_equals_beta_reproduces_the_closed_form(key, case):
    """alpha = beta: the minimiser is w_T + ((1-alpha)/alpha)(w_T - w_d) where that is a distribution."""
    make, w_teacher, w_data = CASES[case]
    problem = FixedPointProblem(family(key), make(w_teacher), make(w_data), quadrature=FAST)
    for alpha in (0.6, 0.8, 0.94):
        expected = alpha_equals_beta_weights(torch.tensor(w_teacher, dtype=torch.float64),
                                             torch.tensor(w_data, dtype=torch.float64), alpha)
        assert (expected > 0).all()
        found = problem.solve(alpha=alpha, beta=alpha)
        torch.testing.assert_close(found.weights, expected, atol=2e-5, rtol=0)
        assert found.value < 1e-8 * found.start_value


def test_alpha_equals_beta_outside_the_simplex_stops_on_its_boundary():
    """alpha = beta = 0.2: the formula gives w_1 = 0.5 + 4 (0.5 - 0.75) = -0.5, not a distribution; the
    minimiser puts no mass on the first mode and V stays positive."""
    problem = FixedPointProblem(make_family("fm"), two_modes([0.5, 0.5]), two_modes([0.75, 0.25]), quadrature=FAST)
    found = problem.solve(alpha=0.2, beta=0.2)
    assert found.weights[0] < 1e-6 and found.value > 0.01 * found.start_value


@pytest.mark.parametrize("key", ["fm", "diffusion-vp-eps", "si-linear"])
def test_data_free_returns_the_teachers_weights_from_another_start(key):
    teacher, data = three_anisotropic([0.5, 0.3, 0.2]), three_anisotropic([0.1, 0.1, 0.8])
    start = three_anisotropic([0.2, 0.2, 0.6])
    found = fixed_point(family(key), teacher, data, alpha=1.0, beta=1.0, start=start, quadrature=FAST)
    torch.testing.assert_close(found.weights, teacher.weights, atol=2e-5, rtol=0)
    assert found.converged and found.value < 1e-8 * found.start_value


def test_data_free_with_free_means_returns_the_teachers_means():
    teacher = two_modes([0.6, 0.4])
    start = GaussianMixture(torch.tensor([[-0.8, 0.1], [1.1, -0.1]], dtype=torch.float64), 0.2,
                            torch.tensor([0.5, 0.5], dtype=torch.float64))
    found = fixed_point(make_family("fm"), teacher, two_modes([0.5, 0.5]), alpha=1, beta=1, start=start,
                        fit_means=True, quadrature=FAST)
    torch.testing.assert_close(found.weights, teacher.weights, atol=1e-4, rtol=0)
    torch.testing.assert_close(found.means, teacher.means, atol=1e-4, rtol=0)


def test_the_issues_theory_column_for_flow_matching():
    """The numbers of issue 14 (computed there independently): alpha, beta < 1 near the authors' move the
    first mode's weight away from the data's 0.75; beta = 1 with alpha < 1 moves it towards."""
    problem = FixedPointProblem(make_family("fm"), two_modes([0.5, 0.5]), two_modes([0.75, 0.25]), quadrature=FAST)
    table = {(0.94, 0.96): 0.490, (0.9, 0.92): 0.479, (0.8, 0.84): 0.453, (0.5, 0.6): 0.344, (0.5, 0.5): 0.250,
             (0.8, 1.0): 0.51, (0.5, 1.0): 0.55, (0.2, 1.0): 0.60}
    for (alpha, beta), weight in table.items():
        got = float(problem.solve(alpha=alpha, beta=beta).weights[0])
        # the issue quotes 3 digits (2 for beta = 1) from its own minimisation
        assert got == pytest.approx(weight, abs=1e-3 if beta < 1 else 6e-3), (alpha, beta, got)


def test_quadrature_is_converged_at_the_fast_setting():
    fam = make_family("si", sigma=0.5)
    args = dict(generated=two_modes([0.4, 0.6]), teacher=two_modes([0.5, 0.5]), data=two_modes([0.75, 0.25]),
                alpha=0.7, beta=0.9)
    fine = objective(fam, quadrature=Quadrature(n_times=96, points_per_std=4.0, cutoff=9.0), **args)
    assert objective(fam, quadrature=FAST, **args) == pytest.approx(fine, rel=1e-5)


def test_alpha_one_with_missing_generated_mass_is_a_barrier():
    """alpha = 1, beta < 1: the real term -2(1-beta)<f, g_data> acts where generated mass is missing, so
    V grows like the integral of p_d^2 / p_g: enormous for a generator without the data's second mode,
    and the minimiser stays inside the simplex."""
    fam, teacher, data = make_family("fm"), two_modes([0.5, 0.5]), two_modes([0.75, 0.25])
    missing = objective(fam, two_modes([1.0, 0.0]), teacher, data, alpha=1.0, beta=0.9, quadrature=FAST)
    balanced = objective(fam, teacher, teacher, data, alpha=1.0, beta=0.9, quadrature=FAST)
    assert missing > 1e20 * balanced
    found = fixed_point(fam, teacher, data, alpha=1.0, beta=0.9, quadrature=FAST)
    assert 0.3 < found.weights[0] < 0.7 and found.converged


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0.0, "beta": 1.0}, "alpha"),
    ({"alpha": 0.5, "beta": 1.5}, "beta"),
    ({"alpha": True, "beta": 1.0}, "alpha"),
])
def test_bad_coefficients_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fixed_point(make_family("fm"), two_modes([0.5, 0.5]), two_modes([0.75, 0.25]), quadrature=FAST, **kwargs)


def test_bad_mixtures_and_families_are_refused():
    three_d = GaussianMixture(torch.zeros(2, 3, dtype=torch.float64), 0.2)
    with pytest.raises(ValueError, match="1-D and 2-D"):
        fixed_point(make_family("fm"), three_d, three_d, alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match="dimension"):
        fixed_point(make_family("fm"), two_modes([0.5, 0.5]), one_d_three([0.3, 0.3, 0.4]), alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match="paired"):
        fixed_point(make_family("bridge"), two_modes([0.5, 0.5]), two_modes([0.5, 0.5]), alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match="n_times"):
        Quadrature(n_times=0)
