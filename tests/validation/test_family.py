"""The beta(t) family built by flowsde.adapters has the exact mixture marginals.

Property tests (hypothesis) over schedules x mixtures x beta(t) x prediction
types: the forward-time member, the reverse-time member (checked in reverse
time) and the PF-ODE have Fokker–Planck residual <= 1e-6 against the exact
marginals (float64; the measured max over these examples is 5e-14, so the
threshold is round-off x 1e7); the seeds' negative controls give >= 1e-3
(measured: the smallest worst-point residual over the examples is 0.19)
and fail the assertion.
Slow tests simulate members with fine EM steps from exact samples and run
check_marginals on the result.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import flowsde
from flowsde.adapters import Diffusion
from flowsde.adapters import schedules as S
from flowsde.validation import (
    GaussianMixture,
    assert_fokker_planck,
    check_marginals,
    fokker_planck_residual,
    strategies,
)

F64 = torch.float64
TOL = 1e-6  # library threshold for exact float64 problems
CONTROL = 1e-3  # a wrong SDE must exceed this somewhere


def _points(gm, sched, seed, B=12, margin=0.02):
    """B per-sample times inside [t_min, t_max] and exact samples of p_t at them."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(sched.t_min), float(sched.t_max)
    u = torch.rand(B, generator=g, dtype=F64)
    t = lo + (hi - lo) * (margin + (1 - 2 * margin) * u)
    x = sched.alpha(t)[:, None] * gm.sample(B, generator=g) + sched.sigma(t)[:, None] * torch.randn(
        B, gm.dim, generator=g, dtype=F64)
    return t, x


def _lp(gm, sched):
    return lambda t, x: gm.log_prob_t(sched, t, x)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), sched=strategies.schedules(),
       gm=strategies.gaussian_mixtures(dim=st.integers(1, 2), components=st.integers(1, 3)),
       pred=st.sampled_from(["eps", "score", "x0", "v", "velocity"]), seed=st.integers(0, 10_000))
def test_family_members_have_the_mixture_marginals(data, sched, gm, pred, seed):
    assume(pred != "v" or sched.variance_preserving)
    beta = data.draw(strategies.beta_functions(t_max=float(sched.t_max)), label="beta")
    dif = Diffusion(gm.oracle(sched, pred), sched, prediction=pred)
    t, x = _points(gm, sched, seed)
    lp = _lp(gm, sched)
    assert_fokker_planck(dif.forward_sde(beta), lp, t, x, tol=TOL)
    assert_fokker_planck(dif.reverse_sde(beta), lp, t, x, tol=TOL, direction="reverse")
    assert_fokker_planck(dif.pf_ode(), lp, t, x, tol=TOL)
    assert_fokker_planck(dif.pf_ode(), lp, t, x, tol=TOL, direction="reverse")


def _controls(sched, gm):
    """The seeds' negative controls for beta = 1 (reverse-time unless stated)."""
    dif = Diffusion(gm.oracle(sched, "score"), sched, prediction="score")
    beta = 1.0

    def f(t):
        return sched.f(t).reshape(-1, 1)  # 0-dim (solver) or (B,) (residual) -> broadcast over x

    def g2(t):
        return sched.g2(t).reshape(-1, 1)

    def sc(t, x):
        return dif.score(t, x)

    def sc_no_alpha(t, x):  # the score of x0 + sigma eps: alpha dropped
        return gm.score_t(_NoAlpha(sched), t, x)

    def g(t, x, k=1.0):
        return torch.sqrt(k * beta * sched.g2(t))

    out = {
        # reverse-time drift with the beta term's sign flipped (= the forward-time member run backward)
        "wrong_sign": flowsde.SDE(lambda t, x: f(t) * x - (1 - beta) / 2 * g2(t) * sc(t, x), g),
        "sqrt2_noise": flowsde.SDE(lambda t, x: f(t) * x - (1 + beta) / 2 * g2(t) * sc(t, x),
                                   lambda t, x: g(t, x, 2.0)),
    }
    if not isinstance(sched, (S.VE, S.EDM)):  # alpha = 1 and f = 0 there: these controls are no-ops
        out["alpha_dropped"] = flowsde.SDE(lambda t, x: f(t) * x - (1 + beta) / 2 * g2(t) * sc_no_alpha(t, x), g)
        out["f_dropped"] = flowsde.SDE(lambda t, x: -(1 + beta) / 2 * g2(t) * sc(t, x), g)
    return out


class _NoAlpha:
    def __init__(self, sched):
        self.sched = sched

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sched.sigma(t)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(sched=strategies.schedules(),
       gm=strategies.gaussian_mixtures(dim=st.integers(1, 2), components=st.integers(1, 3)),
       seed=st.integers(0, 10_000))
def test_negative_controls_are_caught(sched, gm, seed):
    t, x = _points(gm, sched, seed, B=16)
    lp = _lp(gm, sched)
    for name, sde in _controls(sched, gm).items():
        r = fokker_planck_residual(sde, lp, t, x, direction="reverse")
        assert float(r.max()) >= CONTROL, (name, float(r.max()))
        with pytest.raises(AssertionError, match="Fokker-Planck residual"):
            assert_fokker_planck(sde, lp, t, x, tol=TOL, direction="reverse")


def test_discrete_oracle_is_called_with_step_labels():
    """Diffusion calls a Discrete schedule's net with net_time(t) labels; the oracle maps them back."""
    gm = GaussianMixture([0.4, 0.6], [[-1.0], [1.0]], [0.2, 0.3])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    for label in ("index", "score_sde", "dpm_solver"):
        sched = S.Discrete.from_betas(betas, label=label)
        dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
        t = torch.tensor([0.013, 0.4, 0.97], dtype=F64)
        x = torch.randn(3, 1, dtype=F64)
        torch.testing.assert_close(dif.score(t, x), gm.score_t(sched, t, x), rtol=1e-10, atol=1e-10)


MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]],
                      [[[0.3, 0.1], [0.1, 0.2]], [[0.15, -0.05], [-0.05, 0.25]]])


def _simulate(sde, gm, sched, t0, t1, n, steps, seed, method="euler_maruyama"):
    g = torch.Generator().manual_seed(seed)
    tt = torch.tensor(t0, dtype=F64)
    x0 = sched.alpha(tt) * gm.sample(n, generator=g) + sched.sigma(tt) * torch.randn(n, gm.dim, generator=g,
                                                                                       dtype=F64)
    ts = torch.linspace(t0, t1, steps + 1, dtype=F64)
    return flowsde.solve(sde, x0, ts, method=method, generator=g).x


# (schedule, member, t0, t1, beta): reverse members run t0 > t1. EM weak error at 300 steps is O(1e-3) in the
# moments, well below what n = 3000 samples resolve (~0.05 std), so the test's false-alarm rate stays ~alpha.
CASES = [
    (S.VP(), "reverse", 0.7, 0.2, 1.0),
    (S.Cosine(), "forward", 0.1, 0.6, 0.5),
    (S.VE(), "reverse", 0.5, 0.1, 2.0),
    (S.EDM(), "reverse", 2.0, 0.3, strategies.Beta("piecewise", breaks=(1.0,), values=(0.2, 1.5))),
    (S.Linear(), "forward", 0.2, 0.8, strategies.Beta("polynomial", coeffs=(0.1, 1.0))),
    (S.SubVP(), "ode", 0.8, 0.2, None),
]


@pytest.mark.slow
@pytest.mark.parametrize("sched, member, t0, t1, beta", CASES, ids=lambda v: type(v).__name__ if hasattr(v, "t_max")
                         else None)
def test_simulated_members_land_on_exact_marginals(sched, member, t0, t1, beta):
    """Fine EM (Heun for the ODE) between two times from exact samples: check_marginals at alpha = 0.01
    (false-alarm probability <= 1% per case for an exact sampler, plus the negligible EM bias)."""
    dif = Diffusion(MIX.oracle(sched, "eps"), sched, prediction="eps")
    sde = {"reverse": lambda: dif.reverse_sde(beta), "forward": lambda: dif.forward_sde(beta),
           "ode": dif.pf_ode}[member]()
    x = _simulate(sde, MIX, sched, t0, t1, 3000, 300, seed=11, method="heun" if member == "ode" else "euler_maruyama")
    res = check_marginals(x, MIX.marginal(sched, t1), alpha=0.01, generator=1)
    assert res.passed, res.summary()


@pytest.mark.slow
def test_simulated_wrong_member_is_rejected():
    """The wrong-sign control simulated the same way lands elsewhere and check_marginals rejects it
    (its mean/variance error is O(0.3) std at n = 3000: a miss has probability < 1e-6)."""
    sched = S.VP()
    sde = _controls(sched, MIX)["wrong_sign"]
    x = _simulate(sde, MIX, sched, 0.7, 0.2, 3000, 300, seed=11)
    assert not check_marginals(x, MIX.marginal(sched, 0.2), alpha=0.01, generator=1).passed


@settings(max_examples=15, deadline=None, derandomize=True)
@given(data=st.data(), sched=strategies.schedules(), dm=strategies.dirac_mixtures(dim=st.integers(1, 2)),
       seed=st.integers(0, 10_000))
def test_family_on_a_finite_data_set(data, sched, dm, seed):
    """The finite-data case (EDM's ideal denoiser as the x0 network): same residual bound at sigma > 0."""
    beta = data.draw(strategies.beta_functions(t_max=float(sched.t_max)), label="beta")
    dif = Diffusion(dm.denoiser(sched), sched, prediction="x0")
    t, x = _points(dm, sched, seed)
    lp = _lp(dm, sched)
    assert_fokker_planck(dif.forward_sde(beta), lp, t, x, tol=TOL)
    assert_fokker_planck(dif.reverse_sde(beta), lp, t, x, tol=TOL, direction="reverse")
