"""The teacher adapter is an identity on closed forms: a Gaussian mixture's exact field, written in a
foreign convention (prediction type and time direction), comes back as the native family's field."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from realuid.analytic import exact_field, gmm8
from realuid.matching import make_family
from realuid.models.adapter import TeacherAdapter

T = 1000
# DDPM's linear betas (Ho et al.), written out here rather than taken from the library's code.
TABLE = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).tolist()


def table_family(prediction: str):
    return make_family("diffusion", schedule="table", prediction=prediction, alphas_cumprod=TABLE)


class ForeignMixtureTeacher(nn.Module):
    """The exact field of a mixture as a foreign network would give it: ``kind`` at its own ``time``."""

    def __init__(self, family, kind: str, time: str, time_scale: float = 1.0):
        super().__init__()
        self.family, self.kind, self.time, self.time_scale = family, kind, time, time_scale
        self.mixture = gmm8()

    def our_time(self, tau):
        if self.time == "ours":
            return tau
        return 1 - tau / (self.time_scale if self.time == "sigma" else T - 1)

    def forward(self, tau, x, y=None):
        t = self.our_time(tau)
        if self.family.name == "fm":
            v = exact_field(self.family, self.mixture, t, x)
            return -v if self.time == "sigma" else v  # velocity along sigma = 1 - t
        eps = exact_field(dataclasses.replace(self.family, prediction="eps"), self.mixture, t, x)
        x1 = exact_field(dataclasses.replace(self.family, prediction="x1"), self.mixture, t, x)
        a, s = (c[:, None] for c in self.family.signal_noise(t))
        if self.kind == "eps":
            return eps
        if self.kind == "x0":
            return x1
        if self.kind == "v_prediction":
            return a * eps - s * x1
        # The velocity a' x1 + s' eps with a', s' by central differences (independent of log_derivatives).
        h = 1e-7
        (a_hi, s_hi), (a_lo, s_lo) = self.family.signal_noise(t + h), self.family.signal_noise(t - h)
        return ((a_hi - a_lo) / (2 * h))[:, None] * x1 + ((s_hi - s_lo) / (2 * h))[:, None] * eps


CASES = [
    (make_family("fm"), "velocity", "ours"),
    (make_family("fm"), "velocity", "sigma"),
    *[(table_family(p), kind, "discrete") for p in ("eps", "x1") for kind in ("eps", "x0", "v_prediction")],
    (table_family("eps"), "velocity", "ours"),
    (table_family("x1"), "velocity", "ours"),
    *[(make_family("diffusion", schedule="vp", prediction="eps"), kind, "ours") for kind in ("x0", "v_prediction", "velocity")],
    *[(make_family("diffusion", schedule="ve", prediction="x1"), kind, "ours") for kind in ("eps", "v_prediction")],
]


@pytest.mark.parametrize("family,kind,time", CASES,
                         ids=[f"{f.name}-{getattr(f, 'schedule', '')}-{getattr(f, 'prediction', '')}-{k}-{c}" for f, k, c in CASES])
def test_adapter_returns_the_native_field(family, kind, time):
    scale = 1000.0 if time == "sigma" else 1.0
    adapted = TeacherAdapter(ForeignMixtureTeacher(family, kind, time, scale), family, output=kind, time=time,
                             time_scale=scale)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(64, generator=gen, dtype=torch.float64)
    expected = exact_field(family, gmm8(), t, x)
    # Central differences of the velocity case are good to ~1e-7; every other conversion to rounding.
    tol = 1e-6 if kind == "velocity" and family.name != "fm" else 1e-10
    torch.testing.assert_close(adapted(t, x), expected, rtol=tol, atol=tol)


def test_adapter_keeps_the_wrapped_state_dict_under_a_prefix():
    net = nn.Linear(2, 2)
    adapted = TeacherAdapter(net, make_family("fm"), output="velocity")
    assert {f"net.{k}" for k in net.state_dict()} == set(adapted.state_dict())


@pytest.mark.parametrize("kwargs,message", [
    (dict(output="score"), "output must be one of"),
    (dict(output="eps", time="edm"), "time must be one of"),
    (dict(output="eps", time="discrete"), "schedule 'table'"),
])
def test_adapter_rejects_a_convention_it_cannot_convert(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TeacherAdapter(nn.Identity(), make_family("diffusion"), **kwargs)


# ------------------------------------------------------------------------- the tabulated schedule


def test_table_schedule_is_exact_at_integer_timesteps_and_monotone():
    family = table_family("eps")
    k = torch.arange(T, dtype=torch.float64)
    a, s = family.signal_noise(1 - k / (T - 1))
    torch.testing.assert_close(a**2, torch.tensor(TABLE, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))
    fine = torch.linspace(0, 1, 20 * T + 1, dtype=torch.float64)
    assert (torch.diff(family.signal_noise(fine)[0]) > 0).all()  # the signal rises towards the data end


def test_table_log_derivatives_are_the_interpolant_slopes():
    family = table_family("eps")
    t = 0.01 + 0.98 * torch.rand(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-7
    (a_hi, s_hi), (a_lo, s_lo), (a, s) = (family.signal_noise(u) for u in (t + h, t - h, t))
    dlog_a, dlog_s = family.log_derivatives(t)
    torch.testing.assert_close(dlog_a, (a_hi - a_lo) / (2 * h) / a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dlog_s, (s_hi - s_lo) / (2 * h) / s, rtol=1e-5, atol=1e-7)


def test_table_generator_start_and_record():
    family = make_family("diffusion", schedule="table", alphas_cumprod=TABLE, generator_sigma=2.5)
    a, s = family.signal_noise(torch.tensor([family.t_src], dtype=torch.float64))
    assert float(s / a) == pytest.approx(2.5, rel=1e-9)
    record = json.loads(json.dumps(family.to_dict()))
    assert make_family(record.pop("name"), **record) == family
    assert "alphas_cumprod" not in make_family("diffusion").options()  # native records are unchanged


@pytest.mark.parametrize("options,message", [
    (dict(schedule="table"), "needs alphas_cumprod"),
    (dict(schedule="table", alphas_cumprod=[0.5, 0.6]), "strictly decreasing"),
    (dict(schedule="vp", alphas_cumprod=[0.9, 0.5]), "only for schedule 'table'"),
])
def test_table_schedule_rejects_a_bad_table(options, message):
    with pytest.raises(ValueError, match=message):
        make_family("diffusion", **options)
