"""Gaussian mixtures and the exact flow-matching velocity."""

import math

import pytest
import torch

from realuid.analytic import ExactFMTeacher, GaussianMixture, exact_fm_velocity, gmm8
from realuid.matching import make_family


def mixture_3d(dtype=torch.float64):
    means = torch.tensor([[0.5, -0.2, 0.1], [-0.7, 0.4, 0.0], [0.1, 0.9, -0.5]], dtype=dtype)
    return GaussianMixture(means, 0.2, torch.tensor([0.5, 0.3, 0.2], dtype=dtype))


# ------------------------------------------------------------------------------------ the mixture


def test_log_prob_matches_the_hand_written_density():
    mixture = mixture_3d()
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    density = torch.zeros(7, dtype=torch.float64)
    for weight, mean in zip(mixture.weights, mixture.means):
        sq = ((x - mean) ** 2).sum(1)
        density += weight * torch.exp(-sq / (2 * 0.2**2)) / (2 * math.pi * 0.2**2) ** 1.5
    torch.testing.assert_close(mixture.log_prob(x), torch.log(density))


def test_log_prob_integrates_to_one_in_one_dimension():
    mixture = GaussianMixture(torch.tensor([[-1.0], [2.0]], dtype=torch.float64), 0.3, torch.tensor([1.0, 3.0]))
    grid = torch.linspace(-6, 8, 20001, dtype=torch.float64)[:, None]
    mass = torch.trapezoid(mixture.log_prob(grid).exp(), grid[:, 0])
    torch.testing.assert_close(mass, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(mixture.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_log_prob_is_finite_far_from_every_mode():
    mixture = gmm8()
    assert torch.isfinite(mixture.log_prob(torch.tensor([[1e3, -1e3]]))).all()


def test_sample_moments_and_reproducibility():
    mixture = mixture_3d()
    samples = mixture.sample(20_000, torch.Generator().manual_seed(1))
    assert samples.shape == (20_000, 3) and samples.dtype == torch.float64
    torch.testing.assert_close(samples.mean(0), mixture.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), mixture.covariance(), atol=0.02, rtol=0)
    again = mixture.sample(20_000, torch.Generator().manual_seed(1))
    assert torch.equal(samples, again)
    assert mixture.sample(0).shape == (0, 3)


def test_mean_and_covariance_closed_forms():
    means = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
    mixture = GaussianMixture(means, 0.5)
    torch.testing.assert_close(mixture.mean(), torch.tensor([0.0, 1.0], dtype=torch.float64))
    # between-component covariance of two equal-weight points +-(1, -1), plus std^2 I
    expected = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64) + 0.25 * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(mixture.covariance(), expected)


def test_gmm8_has_eight_modes_on_the_circle_inside_the_unit_square():
    mixture = gmm8()
    assert mixture.num_components == 8 and mixture.dim == 2 and mixture.std == 0.05
    torch.testing.assert_close(mixture.means.norm(dim=1), torch.full((8,), 0.8))
    angles = torch.atan2(mixture.means[:, 1], mixture.means[:, 0]).remainder(2 * math.pi).sort().values
    torch.testing.assert_close(angles, torch.arange(8) * (math.pi / 4), atol=1e-6, rtol=0)
    samples = mixture.sample(5000, torch.Generator().manual_seed(0))
    assert (samples.abs() <= 1.0).float().mean() > 0.999
    torch.testing.assert_close(gmm8(radius=0.5, std=0.1).means.norm(dim=1), torch.full((8,), 0.5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"means": torch.zeros(3), "std": 0.1}, "means"),
        ({"means": torch.zeros(2, 2), "std": 0.0}, "std"),
        ({"means": torch.zeros(2, 2), "std": float("nan")}, "std"),
        ({"means": torch.zeros(2, 2), "std": True}, "std"),
        ({"means": torch.zeros(2, 2), "std": 0.1, "weights": torch.ones(3)}, "weights"),
        ({"means": torch.zeros(2, 2), "std": 0.1, "weights": torch.tensor([1.0, -1.0])}, "weights"),
        ({"means": torch.zeros(2, 2), "std": 0.1, "weights": torch.zeros(2)}, "weights"),
        ({"means": torch.zeros(2, 2, dtype=torch.long), "std": 0.1}, "floating"),
    ],
)
def test_mixture_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_mixture_rejects_bad_points_and_counts():
    mixture = gmm8()
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        mixture.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-negative int"):
        mixture.sample(-1)
    with pytest.raises(ValueError, match="radius"):
        gmm8(radius=0.0)


# -------------------------------------------------------------------------------- exact velocity


def test_velocity_of_a_single_gaussian_is_the_affine_closed_form():
    """x1 ~ N(m, s^2 I): E[x1 - x0 | x_t] = m + (t s^2 - (1-t))/(t^2 s^2 + (1-t)^2) (x - t m)."""
    m, s = torch.tensor([[0.3, -1.2]], dtype=torch.float64), 0.4
    mixture = GaussianMixture(m, s)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999, 1.0], dtype=torch.float64)
    tc = t[:, None]
    expected = m + (tc * s**2 - (1 - tc)) / (tc**2 * s**2 + (1 - tc) ** 2) * (x - tc * m)
    torch.testing.assert_close(exact_fm_velocity(mixture, t, x), expected)


def test_velocity_is_the_posterior_mean_computed_from_the_mixture_at_time_t():
    """At time t the path is the mixture with means t m_k and std sqrt(t^2 s^2 + (1-t)^2); the posterior
    component weights are w_k N_k(x)/p_t(x), written here with the mixture's own log_prob."""
    mixture = mixture_3d()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t_value in (0.0, 0.3, 0.8, 1.0):
        std_t = math.sqrt(t_value**2 * mixture.std**2 + (1 - t_value) ** 2)
        log_p = GaussianMixture(t_value * mixture.means, std_t, mixture.weights).log_prob(x)
        expected = torch.zeros_like(x)
        for weight, mean in zip(mixture.weights, mixture.means):
            component = GaussianMixture(t_value * mean[None], std_t).log_prob(x)
            posterior = (torch.log(weight) + component - log_p)[:, None].exp()
            conditional = mean + (t_value * mixture.std**2 - (1 - t_value)) / std_t**2 * (x - t_value * mean)
            expected += posterior * conditional
        torch.testing.assert_close(exact_fm_velocity(mixture, t_value, x), expected)


def test_velocity_solves_the_continuity_equation():
    """d/dt log p_t + div v + v . grad log p_t = 0 for the marginal p_t of the fm path."""
    mixture = mixture_3d()
    x = (0.7 * torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).requires_grad_()

    def log_p(t_value, points):
        std_t = math.sqrt(t_value**2 * mixture.std**2 + (1 - t_value) ** 2)
        return GaussianMixture(t_value * mixture.means, std_t, mixture.weights).log_prob(points)

    for t_value in (0.2, 0.5, 0.9):
        h = 1e-5
        dlogp_dt = (log_p(t_value + h, x) - log_p(t_value - h, x)) / (2 * h)
        (grad_log_p,) = torch.autograd.grad(log_p(t_value, x).sum(), x)
        v = exact_fm_velocity(mixture, t_value, x)
        divergence = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(3))
        residual = dlogp_dt + divergence + (v * grad_log_p).sum(1)
        torch.testing.assert_close(residual.detach(), torch.zeros(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_velocity_at_the_data_end_and_far_away_is_finite():
    mixture = gmm8()
    x = torch.tensor([[0.3, 0.2], [1e3, -1e3], [-50.0, 0.0]])
    # At t = 1 the path is x1 itself and x0 is independent of it: E[x1 - x0 | x1 = x] = x.
    torch.testing.assert_close(exact_fm_velocity(mixture, 1.0, x), x)
    for t_value in (0.0, 0.5, 1 - 1e-6):
        assert torch.isfinite(exact_fm_velocity(mixture, t_value, x)).all()


def test_predict_x1_of_the_exact_velocity_is_the_posterior_data_mean():
    """fm's predict_x1 = x + (1-t) v turns the exact velocity into E[x1 | x_t]; for one Gaussian that
    is m + t s^2/(t^2 s^2 + (1-t)^2) (x - t m)."""
    m, s = torch.tensor([[1.0, -0.5]], dtype=torch.float64), 0.3
    mixture = GaussianMixture(m, s)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.6, 0.95], dtype=torch.float64)
    tc = t[:, None]
    x1_hat = make_family("fm").predict_x1(t, x, exact_fm_velocity(mixture, t, x))
    torch.testing.assert_close(x1_hat, m + tc * s**2 / (tc**2 * s**2 + (1 - tc) ** 2) * (x - tc * m))


def test_velocity_rejects_bad_times_and_points():
    mixture = gmm8()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        exact_fm_velocity(mixture, 1.5, x)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        exact_fm_velocity(mixture, torch.zeros(2), x)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        exact_fm_velocity(mixture, 0.5, torch.zeros(3, 1, 2))


def test_exact_teacher_module_plugs_in_as_a_model():
    mixture = mixture_3d(dtype=torch.float32)
    teacher = ExactFMTeacher(mixture)
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(teacher(t, x), exact_fm_velocity(mixture, t, x))
    torch.testing.assert_close(teacher(t, x, torch.arange(4)), teacher(t, x))  # labels are ignored
    assert {name for name, _ in teacher.named_buffers()} == {"means", "weights"}
    assert not list(teacher.parameters())
    as_double = teacher.to(torch.float64)
    assert as_double.means.dtype == torch.float64
    assert as_double(t.double(), x.double()).dtype == torch.float64
