"""Schedules: closed forms against autograd, round trips of every time map, and anchors' formulas.

Tolerances (float64 throughout): each check compares two float64 evaluations of
the same smooth function by different routes (closed-form derivative vs autograd,
forward map vs inverse map); they agree to a few hundred ulps (~1e-13 relative),
so RTOL = 1e-9 leaves a >1000x margin while any formula error is O(1e-3) or larger.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsde import InputError
from flowsde.adapters.schedules import EDM, VE, VP, Cosine, Discrete, Linear, Schedule, SubVP

RTOL, ATOL = 1e-9, 1e-12
f64 = torch.float64


def _discrete(seed: int, n: int, label="index") -> Discrete:
    g = torch.Generator().manual_seed(seed)
    betas = 1e-4 + 0.2 * torch.rand(n, generator=g, dtype=f64)
    return Discrete.from_betas(betas, label=label)


@st.composite
def schedules(draw):
    kind = draw(st.sampled_from(["VP", "SubVP", "Cosine", "VE", "EDM", "Linear", "Discrete"]))
    if kind in ("VP", "SubVP"):
        b0 = draw(st.floats(0.01, 2.0))
        b1 = b0 + draw(st.sampled_from([0.0, 1.0, 19.9, 35.0]))  # 0.0: constant beta (linear term absent)
        return (VP if kind == "VP" else SubVP)(beta_min=b0, beta_max=b1)
    if kind == "Cosine":
        return Cosine(s=draw(st.floats(1e-4, 0.1)))
    if kind == "VE":
        smin = draw(st.floats(1e-3, 1.0))
        return VE(sigma_min=smin, sigma_max=smin * draw(st.floats(2.0, 1e4)))
    if kind == "EDM":
        return EDM(sigma_min=draw(st.floats(1e-3, 0.1)), sigma_max=draw(st.floats(1.0, 200.0)))
    if kind == "Linear":
        return Linear()
    return _discrete(draw(st.integers(0, 10**6)), draw(st.integers(2, 60)))


def _times(sch: Schedule, us) -> torch.Tensor:
    u = torch.tensor(us, dtype=f64)
    return sch.t_min + u * (sch.t_max - sch.t_min)


UNITS = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6)


def _close(a, b, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@settings(max_examples=60)
@given(sch=schedules(), us=UNITS)
def test_derivatives_equal_autograd(sch, us):
    t = _times(sch, us).requires_grad_(True)
    a, s = sch.alpha(t), sch.sigma(t)
    da = torch.autograd.grad(a.sum(), t)[0]
    ds = torch.autograd.grad(s.sum(), t)[0]
    _close(sch.d_alpha(t).detach(), da)
    _close(sch.d_sigma(t).detach(), ds)
    # f = alpha'/alpha and g^2 = d sigma^2/dt - 2 f sigma^2 (docs/design.md), by autograd of log alpha and sigma^2
    dla = torch.autograd.grad(torch.log(sch.alpha(t)).sum(), t)[0]
    ds2 = torch.autograd.grad((sch.sigma(t) ** 2).sum(), t)[0]
    _close(sch.f(t).detach(), dla)
    _close(sch.g2(t).detach(), ds2 - 2 * dla * s.detach() ** 2, rtol=RTOL, atol=1e-10)
    td = t.detach()
    _close(sch.log_snr(td), 2 * torch.log(sch.alpha(td) / sch.sigma(td)))
    _close(sch.sigma_ratio(td), sch.sigma(td) / sch.alpha(td))
    assert bool((sch.g2(td) > 0).all()) and bool((sch.sigma(td) > 0).all())


@settings(max_examples=40)
@given(sch=schedules(), us=UNITS)
def test_coefficients_equal_the_four_methods(sch, us):
    """``coefficients(t)`` (one call, shared subexpressions) returns alpha, sigma and their derivatives
    as the four methods compute them (same formulas regrouped: agreement to round-off)."""
    t = _times(sch, us)
    for got, ref in zip(sch.coefficients(t), (sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t))):
        _close(got, ref)


@settings(max_examples=60)
@given(sch=schedules(), us=UNITS)
def test_round_trips(sch, us):
    t = _times(sch, us)
    _close(sch.t_from_log_snr(sch.log_snr(t)), t)
    _close(sch.t_from_sigma_ratio(sch.sigma_ratio(t)), t)
    lam = sch.log_snr(t)
    _close(sch.log_snr(sch.t_from_log_snr(lam)), lam, rtol=1e-9, atol=1e-9)
    # log-SNR is strictly decreasing in t (the maps are bijections)
    ts = torch.sort(t).values
    lams = sch.log_snr(ts)
    assert bool((lams[1:] <= lams[:-1]).all())


@pytest.mark.parametrize("sch", [VP(), SubVP(), Cosine(), _discrete(1, 30)], ids=lambda s: type(s).__name__)
def test_variance_preserving_flag(sch):
    t = torch.linspace(sch.t_min, sch.t_max, 11, dtype=f64)
    vp = bool(torch.allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14))
    assert vp == sch.variance_preserving
    for other in (VE(), EDM(), Linear()):
        assert not other.variance_preserving


def test_anchor_formulas():
    t = torch.linspace(1e-3, 1, 9, dtype=f64)
    # score_sde VPSDE.marginal_prob: log_mean_coeff = -t^2 (b1-b0)/4 - t b0/2, std = sqrt(1 - exp(2 lmc))
    lmc = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    _close(VP().alpha(t), torch.exp(lmc))
    _close(VP().sigma(t), torch.sqrt(1 - torch.exp(2 * lmc)))
    _close(SubVP().sigma(t), 1 - torch.exp(2 * lmc))
    # subVPSDE.sde: g = sqrt(beta (1 - exp(-2 b0 t - (b1 - b0) t^2)))
    _close(SubVP().g2(t), (0.1 + 19.9 * t) * (1 - torch.exp(-0.2 * t - 19.9 * t**2)))
    # VESDE: sigma = smin (smax/smin)^t, g = sigma sqrt(2 ln(smax/smin))
    _close(VE().sigma(t), 0.01 * (50 / 0.01) ** t)
    _close(VE().g2(t), (0.01 * (50 / 0.01) ** t) ** 2 * 2 * math.log(5000))
    # Nichol & Dhariwal: abar = f(t)/f(0), f(t) = cos^2(pi/2 (t+s)/(1+s))
    tc = torch.linspace(0, 0.99, 9, dtype=f64)
    fn = lambda u: torch.cos(0.5 * math.pi * (u + 0.008) / 1.008) ** 2  # noqa: E731
    _close(Cosine().alpha(tc) ** 2, fn(tc) / fn(torch.zeros(1, dtype=f64)))
    _close(EDM().g2(t), 2 * t)
    _close(Linear().alpha(t), 1 - t)
    _close(Linear().g2(t[:-1]), 2 * t[:-1] / (1 - t[:-1]))  # 2 sigma^2 (1/t + 1/(1-t))


def test_dtype_follows_t_and_python_numbers():
    for sch in (VP(), SubVP(), Cosine(), VE(), EDM(), Linear(), _discrete(2, 20)):
        t32 = torch.tensor([0.3, 0.5], dtype=torch.float32) * sch.t_max
        for m in ("alpha", "sigma", "d_alpha", "d_sigma", "f", "g2", "log_snr", "sigma_ratio"):
            out = getattr(sch, m)(t32)
            assert out.dtype == torch.float32 and out.shape == (2,), (sch, m)
            ref = getattr(sch, m)(t32.to(f64))
            torch.testing.assert_close(out, ref.to(torch.float32), rtol=1e-5, atol=1e-6)  # float32 round-off
        assert sch.alpha(0.5 * sch.t_max).dtype == f64  # a Python number is read as float64
        assert sch.alpha(torch.full((2, 3), 0.5, dtype=f64)).shape == (2, 3)


# ----------------------------------------------------------------------------------------------
# Discrete


def test_discrete_knots_and_index_maps():
    d = _discrete(3, 40)
    N = 40
    n = torch.arange(N, dtype=f64)
    tn = d.t_from_index(n)
    _close(tn, (n + 1) / N)
    _close(d.index_from_t(tn), n)
    # at the knots the interpolant reproduces alphas_cumprod exactly (alpha^2 = abar, sigma^2 = 1 - abar)
    _close(d.alpha(tn) ** 2, d.alphas_cumprod)
    _close(d.sigma(tn) ** 2, 1 - d.alphas_cumprod)
    assert (d.t_min, d.t_max) == (1 / N, 1.0)
    # data end: sigma(0) = 0, alpha(0) = 1 (log alpha linear on [0, 1/N])
    assert float(d.sigma(torch.tensor(0.0, dtype=f64))) == 0.0
    assert float(d.alpha(torch.tensor(0.0, dtype=f64))) == 1.0
    # log-SNR is linear between knots: the midpoint value is the mean of the knot values
    lam = torch.log(d.alphas_cumprod / (1 - d.alphas_cumprod))
    _close(d.log_snr((tn[:-1] + tn[1:]) / 2), (lam[:-1] + lam[1:]) / 2)
    # t <-> log-SNR round trip below t_min too (first segment)
    t0 = torch.tensor([0.1 / N, 0.5 / N, 0.9 / N], dtype=f64)
    _close(d.t_from_log_snr(d.log_snr(t0)), t0)


def test_discrete_labels():
    N = 1000
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, N, dtype=f64), 0)
    t = torch.tensor([1 / N, 0.5, 1.0], dtype=f64)
    n = torch.tensor([0.0, 499.0, 999.0], dtype=f64)
    _close(Discrete(ac).net_time(t), n)  # integer index n at step n
    _close(Discrete(ac, label="score_sde").net_time(t), 999 * t)  # score_sde: 999 t
    _close(Discrete(ac, label="dpm_solver").net_time(t), 1000 * (t - 1 / N))  # DPM-Solver
    _close(Discrete(ac, label=lambda u: 2 * u).net_time(t), 2 * t)
    # with N = 1000 DPM-Solver's label is the index (dpm-solver#60 concerns other N)
    _close(Discrete(ac, label="dpm_solver").net_time(t), n)


def test_discrete_converges_to_vp():
    """DDPM's betas = linspace(b0/N, b1/N, N) against VP(b0, b1): the discrete log abar is a Riemann
    sum of -int beta with O(1/N) error (plus sum beta_i^2/2 = O(1/N)), so the gap must shrink ~N-fold."""

    def gap(N):
        d = Discrete.from_betas(torch.linspace(0.1 / N, 20.0 / N, N, dtype=f64))
        t = torch.linspace(1 / N, 1, 3001, dtype=f64)
        return max(float((d.alpha(t) - VP().alpha(t)).abs().max()), float((d.sigma(t) - VP().sigma(t)).abs().max()))

    g1, g4 = gap(1000), gap(4000)
    assert g1 < 2e-3  # measured 1.3e-3: O(1/N) with constant ~ max_t alpha sigma^2 (b1 + b0)/4 ~ 1.3
    assert g4 < 0.35 * g1  # first order: ratio -> 1/4 (+ slack for the O(1/N^2) remainder)


def test_discrete_from_continuous_knots_interpolates_vp():
    """A Discrete schedule sampled from VP at t_n = (n+1)/N matches VP at the knots to round-off and in
    between to the O(h^2) error of linear interpolation of the smooth log-SNR (h = 1/N)."""
    N = 200
    tn = torch.arange(1, N + 1, dtype=f64) / N
    d = Discrete(VP().alpha(tn) ** 2)
    _close(d.alpha(tn), VP().alpha(tn))
    t = torch.linspace(2 / N, 1, 777, dtype=f64)
    # |lam''| <= ~ 2/t^2 near the data end: the h^2/8 |lam''| interpolation bound, in log-SNR
    err = (d.log_snr(t) - VP().log_snr(t)).abs()
    assert bool((err <= (1 / N) ** 2 / 8 * (2.5 / t**2 + 25)).all())


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "build",
    [
        lambda: VP(beta_min=-1.0),
        lambda: VP(beta_min=5.0, beta_max=1.0),
        lambda: VP(t_min=0.0),
        lambda: VP(t_min=0.5, t_max=0.1),
        lambda: SubVP(beta_max=float("nan")),
        lambda: Cosine(s=0.0),
        lambda: Cosine(t_max=1.0),
        lambda: VE(sigma_min=1.0, sigma_max=0.5),
        lambda: VE(sigma_min=0.0),
        lambda: EDM(sigma_min=80.0, sigma_max=1.0),
        lambda: Linear(t_min=-1e-3),
        lambda: Linear(t_max=1.5),
        lambda: Discrete(torch.tensor([0.9, 0.95])),
        lambda: Discrete(torch.tensor([1.0, 0.5])),
        lambda: Discrete(torch.tensor([0.5])),
        lambda: Discrete(torch.tensor([0.9, 0.5]), label="seconds"),
        lambda: Discrete.from_betas(torch.tensor([0.1, 1.5])),
    ],
)
def test_bad_parameters(build):
    with pytest.raises(InputError):
        build()


def test_discrete_does_not_keep_user_tensor():
    ac = torch.tensor([0.9, 0.5, 0.1], dtype=f64)
    d = Discrete(ac)
    ac[0] = 0.99
    assert float(d.alphas_cumprod[0]) == 0.9
