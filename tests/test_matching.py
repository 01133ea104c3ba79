"""Families: closed forms of x_t and g, conversions (predict_x1, velocity), time ranges, validation."""

import math

import pytest
import torch

from realuid.matching import (
    FAMILIES,
    BridgeMatching,
    Diffusion,
    FlowMatching,
    PathSample,
    StochasticInterpolant,
    make_family,
)

SHAPES = [(5, 2), (3, 1, 8, 8)]
CASES = [
    ("fm", {}),
    ("diffusion", {"schedule": "vp", "prediction": "eps"}),
    ("diffusion", {"schedule": "vp", "prediction": "x1"}),
    ("diffusion", {"schedule": "ve", "prediction": "eps"}),
    ("diffusion", {"schedule": "ve", "prediction": "x1"}),
    ("si", {"interpolant": "linear", "sigma": 0.5}),
    ("si", {"interpolant": "trig", "sigma": 0.7}),
    ("bridge", {"sigma": 0.5}),
]
CASE_IDS = [name + "-" + "-".join(str(v) for v in opts.values()) for name, opts in CASES]


def endpoints(shape, seed=0, dtype=torch.float64):
    rng = torch.Generator().manual_seed(seed)
    x0, x1, noise = (torch.randn(shape, generator=rng, dtype=dtype) for _ in range(3))
    return x0, x1, noise


def random_times(family, batch, seed=1, dtype=torch.float64):
    rng = torch.Generator().manual_seed(seed)
    return family.t_min + (family.t_max - family.t_min) * torch.rand(batch, generator=rng, dtype=dtype)


def col(t, like):
    return t.reshape(-1, *([1] * (like.dim() - 1)))


# ---- hand-written schedules, written independently of the library's code ----------------------


def vp_signal_noise(t):
    tau = 1.0 - 0.999 * t
    a = torch.exp(-0.25 * tau**2 * 19.9 - 0.05 * tau)
    return a, torch.sqrt(1 - a**2)


def ve_signal_noise(t):
    return torch.ones_like(t), 80.0 * (0.002 / 80.0) ** t


def expected_path(name, opts, x0, x1, noise, t):
    """(x_t, g) from the formulas of docs/method.md §2."""
    tc = col(t, x0)
    if name == "fm":
        return tc * x1 + (1 - tc) * x0, x1 - x0
    if name == "diffusion":
        a, s = (vp_signal_noise if opts["schedule"] == "vp" else ve_signal_noise)(t)
        x_t = col(a, x0) * x1 + col(s, x0) * x0
        return x_t, (x0 if opts["prediction"] == "eps" else x1)
    if name == "si":
        sig = opts["sigma"]
        gamma = sig * torch.sqrt(tc * (1 - tc))
        dgamma = sig * (1 - 2 * tc) / (2 * torch.sqrt(tc * (1 - tc)))
        if opts["interpolant"] == "linear":
            A, B, dA, dB = 1 - tc, tc, -1.0, 1.0
        else:
            A, B = torch.cos(math.pi * tc / 2), torch.sin(math.pi * tc / 2)
            dA, dB = -math.pi / 2 * torch.sin(math.pi * tc / 2), math.pi / 2 * torch.cos(math.pi * tc / 2)
        return A * x0 + B * x1 + gamma * noise, dA * x0 + dB * x1 + dgamma * noise
    if name == "bridge":
        sig = opts["sigma"]
        x_t = tc * x1 + (1 - tc) * x0 + sig * torch.sqrt(tc * (1 - tc)) * noise
        return x_t, (x1 - x_t) / (1 - tc)
    raise AssertionError(name)


def noise_for(family, noise):
    return noise if family.needs_noise else None


# ------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_path_sample_matches_closed_form_at_random_times(name, opts, shape):
    family = make_family(name, **opts)
    x0, x1, noise = endpoints(shape)
    t = random_times(family, shape[0])
    sample = family.path_sample(x0, x1, t, noise_for(family, noise))
    x_t, g = expected_path(name, opts, x0, x1, noise, t)
    assert isinstance(sample, PathSample)
    torch.testing.assert_close(sample.x_t, x_t)
    torch.testing.assert_close(sample.target, g)
    torch.testing.assert_close(sample.weight, torch.ones(shape[0], dtype=x0.dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_path_sample_at_endpoints(name, opts, shape):
    family = make_family(name, **opts)
    x0, x1, noise = endpoints(shape)
    batch = shape[0]
    for t_value in (0.0, 1.0):
        t = torch.full((batch,), t_value, dtype=x0.dtype)
        if not family.t_min <= t_value <= family.t_max:
            with pytest.raises(ValueError, match="t must lie in"):
                family.path_sample(x0, x1, t, noise_for(family, noise))
            continue
        sample = family.path_sample(x0, x1, t, noise_for(family, noise))
        x_t, g = expected_path(name, opts, x0, x1, noise, t)
        torch.testing.assert_close(sample.x_t, x_t)
        torch.testing.assert_close(sample.target, g)
    # The endpoints that are allowed are the ones where the target stays finite.
    assert family.t_min == (1e-3 if name == "si" else 0.0)
    assert family.t_max == (1.0 - 1e-3 if name in ("si", "bridge") else 1.0)


def test_endpoint_values_by_family():
    x0, x1, noise = endpoints((4, 3))
    zero, one = torch.zeros(4, dtype=x0.dtype), torch.ones(4, dtype=x0.dtype)
    fm = make_family("fm")
    torch.testing.assert_close(fm.path_sample(x0, x1, zero).x_t, x0)
    torch.testing.assert_close(fm.path_sample(x0, x1, one).x_t, x1)
    bridge = make_family("bridge")
    torch.testing.assert_close(bridge.path_sample(x0, x1, zero, noise).x_t, x0)
    torch.testing.assert_close(bridge.path_sample(x0, x1, zero, noise).target, x1 - x0)
    # VE reaches x1 up to VE_SIGMA_MIN = 0.002 and starts at 80 x0 + x1; VP's a(1) is ~1, s(1) ~ 0.01.
    ve = make_family("diffusion", schedule="ve")
    torch.testing.assert_close(ve.path_sample(x0, x1, one).x_t, x1 + 0.002 * x0)
    torch.testing.assert_close(ve.path_sample(x0, x1, zero).x_t, x1 + 80.0 * x0)
    vp = make_family("diffusion")
    a, s = vp.signal_noise(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert a[1] > 0.9999 and 0.005 < s[1] < 0.02 and a[0] < 0.01 and s[0] > 0.9999


UNPAIRED = [(c, i) for c, i in zip(CASES, CASE_IDS) if c[0] != "bridge"]


@pytest.mark.parametrize("name,opts", [c for c, _ in UNPAIRED], ids=[i for _, i in UNPAIRED])
def test_target_is_the_conditional_expectation_for_gaussian_data(name, opts):
    """E[g | x_t] for x1 ~ N(mu, v) (1-D) fed to the conversions gives the exact marginal quantities.

    The marginal of x_t is N(m(t), V(t)); the probability-flow velocity of a Gaussian marginal is
    m' + V'/(2V) (x - m), and E[x1 | x_t] = mu + Cov(x1, x_t)/V (x - m). Both are written here from
    finite differences of m and V, independently of the families' conversion code.
    """
    family = make_family(name, **opts)
    mu, v = 0.7, 0.3**2
    t = torch.linspace(max(family.t_min, 0.02), min(family.t_max, 0.98), 9, dtype=torch.float64)
    x = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)[:, None]

    def moments(tt):
        """(m, V, Cov(x1, x_t), Cov(g, x_t), E g) with x_t = A x0 + B x1 + C noise, g = P x0 + Q x1 + R noise."""
        A, B, C, P, Q, R = family.path_coefficients(tt)
        return B * mu, A**2 + B**2 * v + C**2, B * v, A * P + B * Q * v + C * R, Q * mu

    m, V, cov_x1, cov_g, mean_g = moments(t)
    h = 1e-6
    m_plus, V_plus, *_ = moments(t + h)
    m_minus, V_minus, *_ = moments(t - h)
    dm, dV = (m_plus - m_minus) / (2 * h), (V_plus - V_minus) / (2 * h)
    output = (mean_g + cov_g / V * (x[:, 0] - m))[:, None]  # E[g | x_t = x], the UM optimum
    torch.testing.assert_close(family.velocity(t, x, output)[:, 0], dm + dV / (2 * V) * (x[:, 0] - m))
    torch.testing.assert_close(family.predict_x1(t, x, output)[:, 0], mu + cov_x1 / V * (x[:, 0] - m))


# ------------------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,opts", [c for c in CASES if c[0] != "si"], ids=[i for c, i in zip(CASES, CASE_IDS) if c[0] != "si"])
def test_predict_x1_recovers_x1_from_the_exact_target(name, opts, shape):
    family = make_family(name, **opts)
    x0, x1, noise = endpoints(shape)
    t = random_times(family, shape[0])
    sample = family.path_sample(x0, x1, t, noise_for(family, noise))
    torch.testing.assert_close(family.predict_x1(t, sample.x_t, sample.target), x1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.3])
def test_si_predict_x1_recovers_a_point_mass(interpolant, sigma, shape):
    """For x1 = mu fixed, E[g | x_t] = B' mu + A' E[x0|x_t] + gamma' E[noise|x_t] with the Gaussian
    posteriors E[x0|n] = A n/(A^2+gamma^2), E[noise|n] = gamma n/(A^2+gamma^2), n = x_t - B mu;
    predict_x1 of that velocity must give back mu (including at t = 0, where the generator reads)."""
    family = make_family("si", interpolant=interpolant, sigma=sigma)
    x0, mu, noise = endpoints(shape)
    t = random_times(family, shape[0])
    t[0] = 0.0  # the source end: gamma' diverges there but gamma' gamma does not
    tc = col(t, x0)
    if interpolant == "linear":
        A, B, dA, dB = 1 - tc, tc, -torch.ones_like(tc), torch.ones_like(tc)
    else:
        A, B = torch.cos(math.pi * tc / 2), torch.sin(math.pi * tc / 2)
        dA, dB = -math.pi / 2 * B, math.pi / 2 * A
    gamma_sq = sigma**2 * tc * (1 - tc)
    gamma_dgamma = sigma**2 * (1 - 2 * tc) / 2
    x_t = A * x0 + B * mu + torch.sqrt(gamma_sq) * noise
    n = x_t - B * mu
    velocity = dB * mu + (dA * A + gamma_dgamma) * n / (A**2 + gamma_sq)
    torch.testing.assert_close(family.predict_x1(t, x_t, velocity), mu)


def test_si_predict_x1_matches_regression_of_the_target():
    """Monte-Carlo check of the SI inversion: regress g on x_t for a point mass x1 = mu (1-D)."""
    family = make_family("si", interpolant="trig", sigma=0.8)
    rng = torch.Generator().manual_seed(3)
    n, mu = 200_000, 1.5
    for t_value in (0.1, 0.5, 0.9):
        x0 = torch.randn(n, 1, generator=rng, dtype=torch.float64)
        noise = torch.randn(n, 1, generator=rng, dtype=torch.float64)
        t = torch.full((n,), t_value, dtype=torch.float64)
        sample = family.path_sample(x0, torch.full_like(x0, mu), t, noise)
        design = torch.cat([sample.x_t, torch.ones_like(sample.x_t)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, sample.target).solution[:, 0]
        grid = torch.linspace(-1, 2, 5, dtype=torch.float64)[:, None]
        fitted_velocity = slope * grid + intercept
        x1_hat = family.predict_x1(torch.full((5,), t_value, dtype=torch.float64), grid, fitted_velocity)
        torch.testing.assert_close(x1_hat, torch.full_like(grid, mu), atol=0.03, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_velocity_is_the_time_derivative_of_the_path(name, opts, shape):
    """fm/si: target and velocity(target) equal d/dt x_t for fixed endpoints (central differences);
    diffusion: velocity of the true eps (or x1) is d/dt x_t; bridge (sigma=0 only) likewise."""
    if name == "bridge":
        opts = {"sigma": 0.0}
    family = make_family(name, **opts)
    x0, x1, noise = endpoints(shape)
    t = random_times(family, shape[0]).clamp(0.01, 0.98)
    h = 1e-6
    noise = noise_for(family, noise)
    derivative = (family.path_sample(x0, x1, t + h, noise).x_t - family.path_sample(x0, x1, t - h, noise).x_t) / (2 * h)
    sample = family.path_sample(x0, x1, t, noise)
    velocity = family.velocity(t, sample.x_t, sample.target)
    torch.testing.assert_close(velocity, derivative, rtol=1e-6, atol=1e-6)
    if name in ("fm", "si"):
        torch.testing.assert_close(velocity, sample.target)


def test_bridge_with_noise_has_no_ode_velocity():
    family = make_family("bridge", sigma=0.5)
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="sample_sde"):
        family.velocity(torch.zeros(3), x, x)


@pytest.mark.parametrize("schedule", ["vp", "ve"])
@pytest.mark.parametrize("prediction", ["eps", "x1"])
def test_diffusion_noise_and_data_predictions_agree(schedule, prediction):
    family = make_family("diffusion", schedule=schedule, prediction=prediction)
    x0, x1, _ = endpoints((6, 4))
    t = random_times(family, 6)
    sample = family.path_sample(x0, x1, t)
    torch.testing.assert_close(family.predict_noise(t, sample.x_t, sample.target), x0)
    torch.testing.assert_close(family.predict_x1(t, sample.x_t, sample.target), x1)


@pytest.mark.parametrize("schedule", ["vp", "ve"])
def test_diffusion_log_derivatives_and_sde_coefficient(schedule):
    family = make_family("diffusion", schedule=schedule)
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    h = 1e-6
    a, s = family.signal_noise(t)
    a_p, s_p = family.signal_noise(t + h)
    a_m, s_m = family.signal_noise(t - h)
    dlog_a, dlog_s = family.log_derivatives(t)
    torch.testing.assert_close(dlog_a, (torch.log(a_p) - torch.log(a_m)) / (2 * h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dlog_s, (torch.log(s_p) - torch.log(s_m)) / (2 * h), rtol=1e-5, atol=1e-6)
    g = family.sde_diffusion(t)
    if schedule == "vp":
        # g^2 is the VP beta(tau) times |dtau/dt| = 0.999.
        tau = 1 - 0.999 * t
        expected_sq = (0.1 + tau * 19.9) * 0.999
    else:
        # g^2 = -d(s^2)/dt for a = 1.
        expected_sq = 2 * s**2 * math.log(80 / 0.002)
    torch.testing.assert_close(g**2, expected_sq)


def test_diffusion_sde_drift_is_velocity_plus_half_g2_score():
    family = make_family("diffusion", schedule="vp", prediction="x1")
    x0, x1, _ = endpoints((5, 3))
    t = random_times(family, 5)
    x_t = family.path_sample(x0, x1, t).x_t
    _, s = family.signal_noise(t)
    score = -family.predict_noise(t, x_t, x1) / col(s, x_t)
    expected = family.velocity(t, x_t, x1) + 0.5 * col(family.sde_diffusion(t) ** 2, x_t) * score
    torch.testing.assert_close(family.sde_drift(t, x_t, x1), expected)
    bridge = make_family("bridge", sigma=0.3)
    torch.testing.assert_close(bridge.sde_drift(t, x_t, x1), x1)
    torch.testing.assert_close(bridge.sde_diffusion(t), torch.full_like(t, 0.3))
    with pytest.raises(ValueError, match="no SDE"):
        make_family("fm").sde_drift(t, x_t, x1)


# --------------------------------------------------------------------------- source state and t_src


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_source_state_is_the_path_without_data(name, opts, shape):
    family = make_family(name, **opts)
    x0, _, noise = endpoints(shape)
    t = random_times(family, shape[0])
    expected = family.path_sample(x0, torch.zeros_like(x0), t, torch.zeros_like(noise) if family.needs_noise else None).x_t
    torch.testing.assert_close(family.source_state(x0, t), expected)
    # At t = 0 it is x0 itself, except that a diffusion's source is s(0) x0 (80 x0 for VE).
    start = family.source_state(x0, 0.0)
    scale = {"fm": 1.0, "si": 1.0, "bridge": 1.0}.get(name)
    if scale is None:
        scale = 80.0 if opts["schedule"] == "ve" else float(family.signal_noise(torch.zeros(1, dtype=torch.float64))[1])
    torch.testing.assert_close(start, scale * x0)


@pytest.mark.parametrize("schedule", ["vp", "ve"])
@pytest.mark.parametrize("generator_sigma", [2.5, 0.5, 10.0])
def test_diffusion_generator_time_has_the_requested_noise_ratio(schedule, generator_sigma):
    family = make_family("diffusion", schedule=schedule, generator_sigma=generator_sigma)
    a, s = family.signal_noise(torch.tensor([family.t_src], dtype=torch.float64))
    torch.testing.assert_close(float(s / a), generator_sigma)
    assert 0 < family.t_src < 1
    if schedule == "ve" and generator_sigma == 2.5:
        # SiD's generator input is 2.5 z in EDM units.
        x0 = torch.randn(2, 3, dtype=torch.float64)
        torch.testing.assert_close(family.source_state(x0, family.t_src), 2.5 * x0)


def test_t_src_of_the_other_families_is_the_source_end():
    for name in ("fm", "si", "bridge"):
        assert make_family(name).t_src == 0.0
        assert not make_family(name).generator_noise


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("generator_t", [0.05, 0.3])
def test_bridge_generator_input_is_the_bridge_at_generator_t_without_its_data_part(shape, generator_t):
    # (1 - s) x0 + sigma sqrt(s (1 - s)) noise: the path at s with x1 = 0 and the same noise.
    family = make_family("bridge", sigma=0.4, generator_t=generator_t)
    assert family.t_src == generator_t and family.generator_noise
    x0, _, noise = endpoints(shape)
    s = generator_t
    expected = (1 - s) * x0 + 0.4 * math.sqrt(s * (1 - s)) * noise
    torch.testing.assert_close(family.source_state(x0, s, noise), expected)
    t = torch.full((shape[0],), s, dtype=torch.float64)
    torch.testing.assert_close(family.source_state(x0, t, noise), family.path_sample(x0, torch.zeros_like(x0), t, noise).x_t)


def test_source_noise_only_where_the_path_has_noise():
    x0 = torch.randn(3, 2)
    with pytest.raises(ValueError, match="no extra path noise"):
        make_family("fm").source_state(x0, 0.0, torch.randn(3, 2))
    with pytest.raises(ValueError, match="noise has shape"):
        make_family("bridge", generator_t=0.1).source_state(x0, 0.1, torch.randn(3, 4))


# ------------------------------------------------------------------------------ sampling of t, x0, noise


@pytest.mark.parametrize("name,opts", CASES, ids=CASE_IDS)
def test_sample_time_range_and_reproducibility(name, opts):
    family = make_family(name, **opts)
    t = family.sample_time(10_000, rng=torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.dtype == torch.float32
    assert t.min() >= family.t_min and t.max() < torch.tensor(family.t_max, dtype=torch.float32)
    assert abs(t.mean().item() - 0.5 * (family.t_min + family.t_max)) < 0.02
    again = family.sample_time(10_000, rng=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, again)
    # Sampled times are always accepted by path_sample (float32 rounding included).
    x = torch.randn(10_000, 1)
    family.path_sample(x, x, t) if not family.needs_noise else family.path_sample(x, x, t, x)


def test_sample_time_is_half_open_even_when_rounding_hits_t_max():
    family = make_family("fm")
    rng = torch.Generator().manual_seed(0)
    assert (family.sample_time(100_000, rng=rng) < 1.0).all()
    with pytest.raises(ValueError, match="non-negative int"):
        family.sample_time(-1)


@pytest.mark.parametrize("shape", SHAPES)
def test_sample_source_and_noise(shape):
    like = torch.empty(shape, dtype=torch.float64)
    fm = make_family("fm")
    x0 = fm.sample_source(like, rng=torch.Generator().manual_seed(5))
    assert x0.shape == shape and x0.dtype == torch.float64
    torch.testing.assert_close(x0, fm.sample_source(like, rng=torch.Generator().manual_seed(5)))
    assert fm.sample_noise(like) is None
    assert make_family("si").sample_noise(like).shape == shape
    with pytest.raises(ValueError, match="paired"):
        make_family("bridge").sample_source(like)


def test_path_sample_draws_missing_noise_from_the_rng():
    family = make_family("si")
    x0, x1, _ = endpoints((4, 2))
    t = torch.full((4,), 0.5, dtype=x0.dtype)
    first = family.path_sample(x0, x1, t, rng=torch.Generator().manual_seed(9))
    second = family.path_sample(x0, x1, t, rng=torch.Generator().manual_seed(9))
    torch.testing.assert_close(first.x_t, second.x_t)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(9), dtype=x0.dtype)
    torch.testing.assert_close(first.x_t, family.path_sample(x0, x1, t, noise).x_t)


def test_float32_inputs_keep_their_dtype():
    for name, opts in CASES:
        family = make_family(name, **opts)
        x0, x1, noise = (v.float() for v in endpoints((3, 2)))
        t = family.sample_time(3)
        sample = family.path_sample(x0, x1, t, noise_for(family, noise))
        assert sample.x_t.dtype == sample.target.dtype == sample.weight.dtype == torch.float32
        assert family.predict_x1(t, sample.x_t, sample.target).dtype == torch.float32


# ------------------------------------------------------------------------------------- registry


def test_make_family_registry_and_round_trip():
    assert FAMILIES == ("fm", "diffusion", "si", "bridge")
    expected_types = {"fm": FlowMatching, "diffusion": Diffusion, "si": StochasticInterpolant, "bridge": BridgeMatching}
    for name, opts in CASES:
        family = make_family(name, **opts)
        assert isinstance(family, expected_types[name]) and family.name == name
        rebuilt = make_family(**family.to_dict())
        assert rebuilt == family
    assert make_family("bridge").paired and not make_family("fm").paired
    assert make_family("si").needs_noise and not make_family("si", sigma=0.0).needs_noise
    assert not make_family("fm").needs_final_denoise and make_family("diffusion").needs_final_denoise


@pytest.mark.parametrize(
    "name,opts,match",
    [
        ("gan", {}, "unknown family"),
        ("fm", {"sigma": 0.5}, "unknown option"),
        ("diffusion", {"schedule": "cosine"}, "schedule"),
        ("diffusion", {"prediction": "v"}, "prediction"),
        ("diffusion", {"generator_sigma": 0.0}, "generator_sigma"),
        ("diffusion", {"generator_sigma": 1e6}, "generator_sigma"),
        ("diffusion", {"generator_sigma": True}, "generator_sigma"),
        ("si", {"interpolant": "cubic"}, "interpolant"),
        ("si", {"sigma": -1.0}, "sigma"),
        ("si", {"sigma": float("nan")}, "sigma"),
        ("si", {"t_eps": 0.0}, "t_eps"),
        ("bridge", {"sigma": "0.5"}, "sigma"),
        ("bridge", {"t_eps": 0.7}, "t_eps"),
        ("bridge", {"generator_t": -0.1}, "generator_t"),
        ("bridge", {"generator_t": 0.5}, "generator_t"),
        ("bridge", {"sigma": 0.0, "generator_t": 0.1}, "needs sigma > 0"),
    ],
)
def test_make_family_rejects_bad_names_and_options(name, opts, match):
    with pytest.raises(ValueError, match=match):
        make_family(name, **opts)


def test_families_are_immutable():
    family = make_family("si")
    with pytest.raises(Exception):
        family.sigma = 1.0


# ------------------------------------------------------------------------------------- validation


def test_path_sample_rejects_bad_inputs():
    fm, si = make_family("fm"), make_family("si")
    x = torch.randn(4, 3)
    t = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="x1 has shape"):
        fm.path_sample(x, torch.randn(4, 2), t)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        fm.path_sample(x, x, torch.full((4, 1), 0.5))
    with pytest.raises(ValueError, match="t must lie in"):
        fm.path_sample(x, x, torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        fm.path_sample(x, x, torch.full((4,), float("nan")))
    with pytest.raises(ValueError, match="no extra path noise"):
        fm.path_sample(x, x, t, x)
    with pytest.raises(ValueError, match="noise has shape"):
        si.path_sample(x, x, t, torch.randn(4, 2))
    with pytest.raises(ValueError, match="non-batch"):
        fm.path_sample(torch.randn(4), torch.randn(4), t)
    with pytest.raises(ValueError, match="torch.Tensor"):
        fm.path_sample(x, x, 0.5)
    with pytest.raises(ValueError, match="output has shape"):
        fm.predict_x1(t, x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="t must lie in"):
        si.predict_x1(torch.ones(4), x, x)
    with pytest.raises(ValueError, match="t must lie in"):
        fm.source_state(x, -0.1)
