"""Fokker–Planck residuals on problems with closed-form marginals (float64).

Tolerances: exact problems give round-off residuals (~1e-13 measured); the
library's documented threshold 1e-6 is used. Wrong problems must give
>= 1e-3 (their residuals are O(0.1-1) by construction: a wrong term of the
same size as the correct ones).
"""

import math

import pytest
import torch

from _vhelpers import ExpSchedule, mixture_2d
from flowsde import ODE, SDE, InputError
from flowsde.validation import (
    OU,
    assert_fokker_planck,
    fokker_planck_residual,
    reverse_time_sde,
)

SCHED = ExpSchedule()
F64 = torch.float64


def _ou_gauss(b, s, m0, v0):
    """OU from N(m0, v0) (1-D): N(m0 e^{-bt}, v0 e^{-2bt} + s^2 (1 - e^{-2bt})/(2b))."""

    def log_prob(t, x):
        m = m0 * torch.exp(-b * t)
        v = v0 * torch.exp(-2 * b * t) + s * s * (-torch.expm1(-2 * b * t)) / (2 * b)
        return (-0.5 * (x[:, 0] - m) ** 2 / v - 0.5 * torch.log(2 * math.pi * v))

    return log_prob


def test_ou_gaussian_marginal_has_zero_residual():
    sde = OU(0.8, 1.3).sde()
    lp = _ou_gauss(0.8, 1.3, 0.5, 0.2)
    t = torch.linspace(0.01, 3.0, 40, dtype=F64)
    x = torch.randn(40, 1, dtype=F64) * 2
    assert fokker_planck_residual(sde, lp, t, x).max() < 1e-10
    bad = SDE(lambda t, x: -0.8 * x, lambda t, x: torch.tensor(1.3 * 1.1, dtype=F64))
    r = fokker_planck_residual(bad, lp, t, x)
    assert r.max() > 1e-3
    with pytest.raises(AssertionError, match=r"Worst point: index \d+, t="):
        assert_fokker_planck(bad, lp, t, x)


def _gbm_log_prob(mu, s, x0):
    """Independent GBMs dX_i = mu_i X_i dt + s_i X_i dW_i: log X_i ~ N(log x0 + (mu - s^2/2) t, s^2 t)."""

    def log_prob(t, x):
        m = math.log(x0) + (mu - s * s / 2) * t[:, None]
        v = s * s * t[:, None]
        lx = torch.log(x)
        return (-lx - 0.5 * (lx - m) ** 2 / v - 0.5 * torch.log(2 * math.pi * v)).sum(1)

    return log_prob


@pytest.mark.parametrize("noise", ["scalar", "diagonal"])
def test_x_dependent_diffusion_gbm(noise):
    mu = torch.tensor([0.3, -0.2], dtype=F64)
    s = torch.tensor([0.5, 0.5] if noise == "scalar" else [0.4, 0.9], dtype=F64)
    if noise == "scalar":
        # scalar noise = one g per sample broadcast over coordinates; with x-dependent g = s x that is a
        # GBM only in D = 1, where a (B,) scalar g and a (B, 1) diagonal g must agree.
        mu, s = mu[:1], s[:1]
        sde = SDE(lambda t, x: mu * x, lambda t, x: s * x, noise_type="diagonal")
        sde_s = SDE(lambda t, x: mu * x, lambda t, x: 0.5 * x[:, 0], noise_type="scalar")
        problems = [sde, sde_s]
    else:
        problems = [SDE(lambda t, x: mu * x, lambda t, x: s * x, noise_type="diagonal")]
    lp = _gbm_log_prob(mu, s, 1.0)
    t = torch.linspace(0.1, 2.0, 30, dtype=F64)
    x = torch.exp(torch.randn(30, mu.numel(), dtype=F64) * 0.6)
    for p in problems:
        assert_fokker_planck(p, lp, t, x, tol=1e-6)
    wrong = SDE(lambda t, x: mu * x, lambda t, x: s * x.detach(), noise_type="diagonal")  # drops d(g^2)/dx terms
    assert fokker_planck_residual(wrong, lp, t, x).max() > 1e-3


def test_mixture_forward_pf_and_reverse():
    """OU-type schedule: forward SDE, PF-ODE and reverse SDE (checked in reverse time)."""
    gm = mixture_2d()

    def lp(t, x):
        return gm.log_prob_t(SCHED, t, x)

    def score(t, x):
        return gm.score_t(SCHED, t, x).reshape(x.shape)

    fwd = SDE(lambda t, x: -x, lambda t, x: torch.tensor(math.sqrt(2), dtype=x.dtype))
    pf = ODE(lambda t, x: -x - score(t, x))
    rev = SDE(lambda t, x: -x - 2 * score(t, x), lambda t, x: torch.tensor(math.sqrt(2), dtype=x.dtype))
    t = torch.linspace(0.02, 2.5, 50, dtype=F64)
    x = torch.randn(50, 2, dtype=F64) * 1.5
    for p, d in ((fwd, "forward"), (pf, "forward"), (pf, "reverse"), (rev, "reverse")):
        assert_fokker_planck(p, lp, t, x, direction=d)
    # the reverse SDE run forward in time, and the forward SDE run in reverse, are wrong
    assert fokker_planck_residual(rev, lp, t, x).max() > 1e-3
    assert fokker_planck_residual(fwd, lp, t, x, direction="reverse").max() > 1e-3
    # the explicit conversion agrees with direction="reverse"
    T = 3.0
    conv = reverse_time_sde(rev, T)
    r = fokker_planck_residual(conv, lambda s, y: lp(T - s, y), T - t, x)
    assert r.max() < 1e-6
    # event shapes are flattened internally
    assert_fokker_planck(fwd, lambda t, x: gm.log_prob_t(SCHED, t, x), t, x.reshape(50, 1, 2))


def test_residual_is_scale_free():
    """Rescaling time (t -> c t) scales every term by the same factor: the relative residual is unchanged."""
    lp = _ou_gauss(0.8, 1.3, 0.5, 0.2)
    c = 1000.0
    bad = SDE(lambda t, x: -0.8 * x, lambda t, x: torch.tensor(1.0, dtype=F64))
    bad_c = SDE(lambda t, x: -0.8 * c * x, lambda t, x: torch.tensor(math.sqrt(c), dtype=F64))
    t = torch.linspace(0.1, 2.0, 10, dtype=F64)
    x = torch.randn(10, 1, dtype=F64)
    r1 = fokker_planck_residual(bad, lp, t, x)
    r2 = fokker_planck_residual(bad_c, lambda s, y: lp(c * s, y), t / c, x)
    torch.testing.assert_close(r1, r2, rtol=1e-9, atol=1e-12)  # round-off only
    assert float(r1.max()) <= 1.0


def test_bad_log_prob():
    sde = OU(1.0, 1.0).sde()
    x = torch.randn(4, 1, dtype=F64)
    with pytest.raises(InputError, match=r"must return a \(B,\)"):
        fokker_planck_residual(sde, lambda t, x: -(x ** 2), 0.5, x)  # (B, 1)
    with pytest.raises(InputError, match="not differentiable"):
        fokker_planck_residual(sde, lambda t, x: torch.as_tensor(-(x ** 2).sum(1).detach().numpy()), 0.5, x)
    with pytest.raises(InputError, match="direction"):
        fokker_planck_residual(sde, lambda t, x: -(x ** 2).sum(1), 0.5, x, direction="backward")
    with pytest.raises(InputError, match="tol"):
        assert_fokker_planck(sde, lambda t, x: -(x ** 2).sum(1), 0.5, x, tol=0)
    with pytest.raises(InputError, match="flowsde.SDE"):
        fokker_planck_residual(lambda t, x: x, lambda t, x: -(x ** 2).sum(1), 0.5, x)
    with pytest.raises(InputError, match=r"t: expected"):
        fokker_planck_residual(sde, lambda t, x: -(x ** 2).sum(1), torch.zeros(3, dtype=F64), x)
