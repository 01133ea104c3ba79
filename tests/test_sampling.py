"""Teacher samplers, one-step generation and per-seed noise."""


import pytest
import torch
from torch import nn

from realuid.analytic import ExactFMTeacher, GaussianMixture, gmm8
from realuid.matching import make_family
from realuid.sampling import generate_one_step, sample_ode, sample_sde, sample_teacher, seeded_noise

UNPAIRED = [
    ("fm", {}),
    ("diffusion", {"schedule": "vp", "prediction": "eps"}),
    ("diffusion", {"schedule": "ve", "prediction": "x1"}),
    ("si", {"interpolant": "linear", "sigma": 0.5}),
    ("si", {"interpolant": "trig", "sigma": 0.7}),
]
UNPAIRED_IDS = [name + "-" + "-".join(str(v) for v in opts.values()) for name, opts in UNPAIRED]


class CallCounter(nn.Module):
    """Wraps a model and records every call: proves how many evaluations a sampler makes."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.times = []
        self.labels = []

    @property
    def calls(self):
        return len(self.times)

    def forward(self, t, x, y=None):
        assert t.shape == (x.shape[0],)
        self.times.append(t[0].item())
        self.labels.append(y)
        return self.model(t, x, y)


def scaled_identity(t, x, y=None):
    return 0.1 * x


class GaussianTeacher(nn.Module):
    """Exact UM optimum E[g | x_t] of an unpaired family for x0 ~ N(0, I), x1 ~ N(mu, v) per coordinate.

    x_t = A x0 + B x1 + C noise has mean B mu and variance V = A^2 + B^2 v + C^2; g = P x0 + Q x1 + R noise has
    Cov(g, x_t) = A P + B Q v + C R (for si, C R = gamma gamma' is evaluated in closed form, finite at t=0).
    """

    def __init__(self, family, mu, v):
        super().__init__()
        self.family, self.mu, self.v = family, mu, v

    def moments(self, t):
        A, B, C, P, Q, R = self.family.path_coefficients(t)
        CR = C * R
        if self.family.name == "si":
            CR = self.family.sigma**2 * (1 - 2 * t) / 2
        return B * self.mu, A**2 + B**2 * self.v + C**2, A * P + B * Q * self.v + CR, Q * self.mu

    def forward(self, t, x, y=None):
        m, V, cov, mean_g = (c.to(x.dtype).view(-1, *[1] * (x.dim() - 1)) for c in self.moments(t.double()))
        return mean_g + cov / V * (x - m)


def exact_ode_result(family, mu, v, x0):
    """Where the exact probability-flow ODE takes start = source_state(x0, 0) for Gaussian data, plus
    the final denoise: Gaussian marginals have an affine flow map x -> m_T + sqrt(V_T / V_0)(x - m_0)."""
    teacher = GaussianTeacher(family, mu, v)
    t0 = torch.zeros(1, dtype=torch.float64)
    t_end = torch.full((1,), family.t_end, dtype=torch.float64)
    m0, V0, *_ = teacher.moments(t0)
    mT, VT, *_ = teacher.moments(t_end)
    start = family.source_state(x0, 0.0)
    x_end = mT + torch.sqrt(VT / V0) * (start - m0)
    if not family.needs_final_denoise:
        return x_end
    B_end = family.path_coefficients(t_end).path_x1
    return mu + B_end * v / VT * (x_end - mT)


# ------------------------------------------------------------------------------------ per-seed noise


def test_seeded_noise_rows_do_not_depend_on_the_batch_split():
    seeds = [11, 3, 2024, 0, 7, 7]
    full = seeded_noise(seeds, (2, 4, 4))
    assert full.shape == (6, 2, 4, 4) and full.dtype == torch.float32
    parts = torch.cat([seeded_noise(seeds[:2], (2, 4, 4)), seeded_noise(seeds[2:5], (2, 4, 4)), seeded_noise(seeds[5:], (2, 4, 4))])
    assert torch.equal(full, parts)
    assert torch.equal(full[4], full[5])  # same seed, same noise
    assert not torch.equal(full[0], full[1])
    assert torch.equal(seeded_noise(torch.tensor(seeds[::-1]), (2, 4, 4)), full.flip(0))
    # The sample is that of a fresh CPU generator with the seed, whatever the device asked for.
    assert torch.equal(full[0], torch.randn((2, 4, 4), generator=torch.Generator().manual_seed(11)))
    assert torch.equal(seeded_noise(seeds, (2, 4, 4), device="cpu"), full)
    assert seeded_noise(seeds, (3,), dtype=torch.float64).dtype == torch.float64
    assert seeded_noise([], (3,)).shape == (0, 3)


@pytest.mark.parametrize(
    "seeds,shape,match",
    [
        ([-1], (2,), "seed"),
        ([True], (2,), "seed"),
        ([1.5], (2,), "seed"),
        ([2**63], (2,), "seed"),
        (torch.tensor([1.0]), (2,), "integer tensor"),
        ("12", (2,), "sequence"),
        ([1], 2, "shape"),
        ([1], (0,), "shape"),
    ],
)
def test_seeded_noise_rejects_bad_input(seeds, shape, match):
    with pytest.raises(ValueError, match=match):
        seeded_noise(seeds, shape)


def test_ode_samples_do_not_depend_on_the_batch_split():
    teacher = ExactFMTeacher(gmm8())
    family = make_family("fm")
    x0 = seeded_noise(range(10), (2,))
    full = sample_ode(family, teacher, x0, nfe=20)
    halves = torch.cat([sample_ode(family, teacher, x0[:3], nfe=20), sample_ode(family, teacher, x0[3:], nfe=20)])
    torch.testing.assert_close(full, halves, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- NFE counts

NFE_CASES = [(name, opts, method) for name, opts in UNPAIRED for method in ("euler", "heun")] + [
    ("diffusion", {"schedule": "vp"}, "sde"),
    ("diffusion", {"schedule": "ve"}, "sde"),
    ("bridge", {"sigma": 0.5}, "sde"),
    ("bridge", {"sigma": 0.0}, "euler"),
    ("bridge", {"sigma": 0.0}, "heun"),
]


@pytest.mark.parametrize("name,opts,method", NFE_CASES)
@pytest.mark.parametrize("nfe", [1, 2, 5, 6])
def test_samplers_call_the_model_exactly_nfe_times(name, opts, method, nfe):
    family = make_family(name, **opts)
    model = CallCounter(scaled_identity)
    x0 = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4)
    out = sample_teacher(family, model, x0, nfe=nfe, method=method, y=labels, rng=torch.Generator().manual_seed(1))
    assert model.calls == nfe
    assert out.shape == x0.shape and torch.isfinite(out).all()
    assert all(y is labels for y in model.labels)
    assert all(0.0 <= t <= family.t_end + 1e-6 for t in model.times)
    if family.needs_final_denoise and nfe > 1:
        assert model.times[-1] == pytest.approx(family.t_end)


def test_fm_euler_with_99_calls_is_the_authors_teacher_grid():
    model = CallCounter(scaled_identity)
    sample_ode(make_family("fm"), model, torch.randn(2, 3), nfe=99, method="euler")
    grid = torch.linspace(0, 1, 100, dtype=torch.float64)[:-1]
    torch.testing.assert_close(torch.tensor(model.times, dtype=torch.float64), grid, atol=1e-7, rtol=0)


def test_heun_spends_two_calls_per_step_and_ends_with_euler_when_odd():
    model = CallCounter(scaled_identity)
    sample_ode(make_family("fm"), model, torch.randn(2, 3), nfe=5, method="heun")
    # Three steps on linspace(0, 1, 4): Heun (0, 1/3), Heun (1/3, 2/3), Euler (2/3).
    assert model.times == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])


def test_euler_update_by_hand():
    """Two Euler steps of dx/dt = 0.1 x on fm: x * (1 + 0.1/2)^2."""
    x0 = torch.randn(3, 2, dtype=torch.float64)
    out = sample_ode(make_family("fm"), scaled_identity, x0, nfe=2)
    torch.testing.assert_close(out, x0 * 1.05**2)


def test_ode_runs_without_gradients():
    model = nn.Linear(3, 3)
    out = sample_ode(make_family("fm"), lambda t, x, y: model(x), torch.randn(4, 3), nfe=3)
    assert not out.requires_grad


# ------------------------------------------------------------------------------- accuracy of the ODE


def test_heun_is_more_accurate_than_euler_at_equal_nfe():
    """1-D N(0,1) -> N(mu, s^2) with the exact fm velocity: the flow map is x0 -> mu + s x0."""
    mu, std = 2.0, 0.5
    teacher = ExactFMTeacher(GaussianMixture(torch.tensor([[mu]], dtype=torch.float64), std))
    x0 = torch.linspace(-3, 3, 41, dtype=torch.float64)[:, None]
    exact = mu + std * x0
    family = make_family("fm")
    for nfe in (4, 8, 16):
        euler_error = (sample_ode(family, teacher, x0, nfe=nfe, method="euler") - exact).abs().max()
        heun_error = (sample_ode(family, teacher, x0, nfe=nfe, method="heun") - exact).abs().max()
        assert heun_error < 0.25 * euler_error, (nfe, euler_error, heun_error)
    assert (sample_ode(family, teacher, x0, nfe=200, method="heun") - exact).abs().max() < 2e-4


@pytest.mark.parametrize("name,opts", UNPAIRED, ids=UNPAIRED_IDS)
def test_ode_with_the_exact_teacher_reaches_the_exact_flow_map(name, opts):
    family = make_family(name, **opts)
    mu, v = 0.7, 0.3**2
    teacher = GaussianTeacher(family, mu, v)
    x0 = torch.linspace(-2.5, 2.5, 21, dtype=torch.float64)[:, None]
    expected = exact_ode_result(family, mu, v, x0)

    def error(nfe, method):
        return (sample_ode(family, teacher, x0, nfe=nfe, method=method) - expected).abs().max().item()

    # Doubling the steps divides the error by 4 for Heun (second order) and by 2 for Euler: the
    # samplers converge, at their order, to the exact flow map (final denoise included).
    heun_coarse, heun_fine = error(201, "heun"), error(401, "heun")
    euler_coarse, euler_fine = error(201, "euler"), error(401, "euler")
    assert 3.3 < heun_coarse / heun_fine < 4.7, (heun_coarse, heun_fine)
    assert 1.7 < euler_coarse / euler_fine < 2.3, (euler_coarse, euler_fine)
    assert heun_fine < 2e-3
    # and the exact map carries the source to the data's mean (up to the start-state approximation)
    assert abs(expected.mean().item() - mu) < 0.02


def test_euler_with_the_exact_gmm_velocity_reproduces_the_mixture():
    mixture = gmm8()
    teacher = ExactFMTeacher(mixture)
    x0 = seeded_noise(range(3000), (2,))
    samples = sample_ode(make_family("fm"), teacher, x0, nfe=200, method="euler")
    torch.testing.assert_close(samples.mean(0), mixture.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), mixture.covariance(), atol=0.02, rtol=0)
    # almost every sample lands within 4 std of a mode, and every mode gets its share
    distances = torch.cdist(samples, mixture.means)
    assert (distances.min(1).values < 4 * mixture.std).float().mean() > 0.98
    shares = torch.bincount(distances.argmin(1), minlength=8).float() / len(samples)
    assert (shares - 1 / 8).abs().max() < 0.03
    reference = mixture.sample(4000, torch.Generator().manual_seed(0))
    assert abs(mixture.log_prob(samples).mean() - mixture.log_prob(reference).mean()) < 0.15


# -------------------------------------------------------------------------------------------- SDE


@pytest.mark.parametrize("schedule,prediction", [("vp", "eps"), ("ve", "eps"), ("vp", "x1")])
def test_diffusion_sde_with_the_exact_teacher_reproduces_gaussian_data(schedule, prediction):
    """g^2 = 2 s^2 (a'/a - s'/s) with drift v + g^2/2 score keeps the marginals: the end law is N(mu, v)."""
    family = make_family("diffusion", schedule=schedule, prediction=prediction)
    mu, v = 0.7, 0.3**2
    x0 = seeded_noise(range(8000), (1,), dtype=torch.float64)
    out = sample_sde(family, GaussianTeacher(family, mu, v), x0, nfe=200, rng=torch.Generator().manual_seed(0))
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.var().item() / v - 1) < 0.08


def test_bridge_sde_with_the_exact_drift_reproduces_the_data():
    """Paired bridge from the fixed point x0 = c to x1 ~ N(mu, v): the Markovian drift is
    (E[x1 | x_t] - x_t)/(1-t) with E[x1 | x_t] = mu + t v/V (x - m), m = (1-t)c + t mu, V = t^2 v + sigma^2 t(1-t)."""
    family = make_family("bridge", sigma=0.5)
    c, mu, v = -1.0, 0.7, 0.3**2

    def drift(t, x, y=None):
        tc = t.view(-1, 1)
        m, V = (1 - tc) * c + tc * mu, tc**2 * v + 0.25 * tc * (1 - tc)
        # at t = 0 every path sits at c: the posterior mean is the prior mean mu
        x1_hat = torch.where(tc > 0, mu + tc * v / V.clamp_min(1e-300) * (x - m), torch.full_like(x, mu))
        return (x1_hat - x) / (1 - tc)

    x0 = torch.full((8000, 1), c, dtype=torch.float64)
    out = sample_sde(family, drift, x0, nfe=200, rng=torch.Generator().manual_seed(0))
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.var().item() / v - 1) < 0.08


def test_sde_noise_comes_from_the_generator():
    family = make_family("bridge", sigma=0.5)
    x0 = torch.randn(5, 2)
    first = sample_sde(family, scaled_identity, x0, nfe=10, rng=torch.Generator().manual_seed(4))
    second = sample_sde(family, scaled_identity, x0, nfe=10, rng=torch.Generator().manual_seed(4))
    third = sample_sde(family, scaled_identity, x0, nfe=10, rng=torch.Generator().manual_seed(5))
    assert torch.equal(first, second) and not torch.equal(first, third)


# --------------------------------------------------------------------------------------- validation


def test_samplers_reject_bad_arguments():
    fm, x0 = make_family("fm"), torch.randn(3, 2)
    for bad_nfe in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="nfe"):
            sample_ode(fm, scaled_identity, x0, nfe=bad_nfe)
    with pytest.raises(ValueError, match="method"):
        sample_ode(fm, scaled_identity, x0, nfe=2, method="rk4")
    with pytest.raises(ValueError, match="method"):
        sample_teacher(fm, scaled_identity, x0, nfe=2, method="dpm")
    with pytest.raises(ValueError, match="no SDE"):
        sample_teacher(fm, scaled_identity, x0, nfe=2, method="sde")
    with pytest.raises(ValueError, match="t_start"):
        sample_ode(fm, scaled_identity, x0, nfe=2, t_start=1.0)
    with pytest.raises(ValueError, match="non-batch"):
        sample_ode(fm, scaled_identity, torch.randn(3), nfe=2)
    with pytest.raises(ValueError, match="sample_sde"):
        sample_teacher(make_family("bridge", sigma=0.5), scaled_identity, x0, nfe=2, method="euler")


def test_ode_from_a_later_start_time():
    """t_start = 0.5 on fm starts at 0.5 x0 and calls the model only at t >= 0.5."""
    model = CallCounter(lambda t, x, y: torch.zeros_like(x))
    x0 = torch.randn(3, 2)
    out = sample_ode(make_family("fm"), model, x0, nfe=4, t_start=0.5)
    torch.testing.assert_close(out, 0.5 * x0)
    assert model.times == pytest.approx([0.5, 0.625, 0.75, 0.875])


# ----------------------------------------------------------------------------------- one-step generation


def test_one_step_generation_for_flow_matching_is_z_plus_g():
    net = nn.Linear(2, 2)
    model = CallCounter(lambda t, x, y: net(x))
    z = torch.randn(5, 2)
    out = generate_one_step(make_family("fm"), model, z)
    torch.testing.assert_close(out, z + net(z))
    assert model.times == [0.0]
    out.sum().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_one_step_generation_for_ve_diffusion_reads_generator_sigma_2_5():
    family = make_family("diffusion", schedule="ve", prediction="x1")
    seen = {}

    def denoiser(t, x, y):
        seen["t"], seen["x"], seen["y"] = t, x, y
        return torch.tanh(x)

    z, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    out = generate_one_step(family, denoiser, z, labels)
    torch.testing.assert_close(seen["x"], 2.5 * z)
    torch.testing.assert_close(seen["t"], torch.full((4,), family.t_src))
    assert seen["y"] is labels
    torch.testing.assert_close(out, torch.tanh(2.5 * z))


def test_one_step_generation_for_a_bridge_starts_at_the_corrupted_input():
    x0 = torch.randn(4, 3)
    out = generate_one_step(make_family("bridge"), lambda t, x, y: -x, x0)
    torch.testing.assert_close(out, torch.zeros_like(x0))


def test_one_step_generation_for_a_bridge_with_noise_reads_the_bridge_at_generator_t():
    # x_s = (1 - s) x0 + sigma sqrt(s (1 - s)) n, then x1 = x_s + (1 - s) G(s, x_s).
    family, s = make_family("bridge", sigma=0.5, generator_t=0.2), 0.2
    x0, noise = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    seen = {}

    def net(t, x, y):
        seen["t"] = t
        return torch.sin(x)

    out = generate_one_step(family, net, x0, None, noise)
    x_s = (1 - s) * x0 + 0.5 * (s * (1 - s)) ** 0.5 * noise
    torch.testing.assert_close(out, x_s + (1 - s) * torch.sin(x_s))
    torch.testing.assert_close(seen["t"], torch.full((4,), s, dtype=torch.float64))
    # Other noise, other output: the generator is no longer one map of x0.
    assert not torch.allclose(generate_one_step(family, net, x0, None, -noise), out)


def test_generator_noise_is_required_exactly_where_the_family_takes_it():
    x0 = torch.randn(4, 3)
    with pytest.raises(ValueError, match="takes noise: pass noise"):
        generate_one_step(make_family("bridge", generator_t=0.1), lambda t, x, y: x, x0)
    with pytest.raises(ValueError, match="takes no noise besides x0"):
        generate_one_step(make_family("bridge"), lambda t, x, y: x, x0, None, torch.randn(4, 3))
