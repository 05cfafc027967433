"""convergence_order and fit_order: flowsde's solvers show their textbook orders (slow), and bad input.

The methods and their levels are those of tests/method_table.py (set-ups "expm", "gbm",
"gbm-scalar"). Pass criterion: fitted slope within the case's tolerance (+-0.3, diffrax's
test_sde1 criterion); the regression's 95% interval is also checked to contain the
theoretical order or be within 0.3 of it, which guards against a lucky fit
through noisy errors.
"""

import math

import numpy as np
import pytest
import torch

import flowsde
from flowsde import InputError
from flowsde.validation import OU, OrderResult, convergence_order, fit_order
from method_table import order_cases

F64 = torch.float64


def _assert_order(res, theory, tol=(-0.3, 0.3)):
    assert tol[0] < res.order - theory < tol[1], res
    assert res.ci[0] - 0.3 < theory < res.ci[1] + 0.3, res


def _linear_ode():
    g = torch.Generator().manual_seed(0)
    A = 0.5 * torch.randn(4, 4, generator=g, dtype=F64)
    x0 = torch.randn(3, 4, generator=g, dtype=F64)

    def exact_from(t_start):
        def exact(ts):
            return torch.stack([x0 @ torch.linalg.matrix_exp((t - t_start) * A).T for t in ts])
        return exact

    return flowsde.ODE(lambda t, x: x @ A.T), x0, exact_from


@pytest.mark.slow
@pytest.mark.parametrize("method, case", order_cases("expm"))
@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.0)])
def test_ode_order_against_expm(method, case, t0, t1):
    order = case.declared(method)  # the declared order
    ode, x0, exact_from = _linear_ode()
    res = convergence_order(ode, x0, (t0, t1), method=method, kind="ode", levels=case.levels, exact=exact_from(t0))
    _assert_order(res, order, case.tol)
    # and with a fine reference of the same method instead of expm
    _assert_order(convergence_order(ode, x0, (t0, t1), method=method, kind="ode", levels=case.levels), order,
                  case.tol)


@pytest.mark.slow
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_euler_maruyama_on_ou(t0, t1):
    """Strong: OU has additive noise, where EM *is* Milstein (the correction g g' vanishes), so its
    strong order is 1, not the generic 0.5 (Kloeden & Platen 1992, sec. 10.3); 0.5 is shown on GBM
    below. Weak: order 1 with phi = x^2, coupled to a fine reference on the same 4000 paths."""
    em = flowsde.solvers.get_solver("euler_maruyama")
    sde = OU(1.0, 0.8).sde()
    x0 = torch.full((100, 1), 1.5, dtype=F64)
    _assert_order(convergence_order(sde, x0, (t0, t1), method="euler_maruyama", kind="strong",
                                    levels=range(3, 8), ref_level=10), em.strong_order_for("additive"))
    xw = torch.full((4000, 1), 1.5, dtype=F64)
    _assert_order(convergence_order(sde, xw, (t0, t1), method="euler_maruyama", kind="weak", levels=range(2, 7),
                                    ref_level=9, generator=1), em.weak_order)


def _gbm(mu=0.5, s=0.8):
    return flowsde.SDE(lambda t, x: mu * x, lambda t, x: s * x, noise_type="diagonal")


def _gbm_scalar(mu=0.5, s=0.8):
    # d = 1: g given as one number per sample, (B,)
    return flowsde.SDE(lambda t, x: mu * x, lambda t, x: s * x[:, 0], noise_type="scalar")


@pytest.mark.slow
@pytest.mark.parametrize("method, case", order_cases("gbm") + order_cases("gbm-scalar"))
def test_strong_order_on_gbm(method, case):
    """Geometric Brownian motion (x-dependent noise, diagonal in d = 2 and scalar in d = 1), against each
    solver's declared strong order on that noise: EM 0.5, Milstein 1, SRK 1.5 (Roessler 2010, torchsde's
    srk; space-time Levy area from the shared path)."""
    order = case.declared(method)
    sde, d = (_gbm(), 2) if case.setup == "gbm" else (_gbm_scalar(), 1)
    x0 = torch.ones(case.samples, d, dtype=F64)
    res = convergence_order(sde, x0, (0.0, 1.0), method=method, kind="strong", levels=case.levels,
                            ref_level=case.ref_level)
    _assert_order(res, order, case.tol)


@pytest.mark.slow
def test_strong_order_against_exact_gbm_solution():
    """With the exact solution x0 exp((mu - s^2/2) t + s W_t) on the same path: EM strong order 0.5."""
    mu, s = 0.5, 0.8
    x0 = torch.ones(64, 2, dtype=F64)
    path = flowsde.BrownianPath(0.0, 1.0, x0.shape, generator=5, tol=2.0 ** -14)

    def exact(ts):
        return torch.stack([x0 * torch.exp((mu - s * s / 2) * t + s * path(float(t))) for t in ts])

    res = convergence_order(_gbm(mu, s), x0, (0.0, 1.0), method="euler_maruyama", kind="strong",
                            levels=range(3, 9), exact=exact, generator=path)
    assert abs(res.order - flowsde.solvers.EulerMaruyama().strong_order_for("diagonal")) < 0.3, res


def test_bad_input():
    sde = OU(1.0, 1.0).sde()
    x0 = torch.ones(4, 1, dtype=F64)
    with pytest.raises(InputError, match="kind"):
        convergence_order(sde, x0, (0, 1), kind="mean")
    with pytest.raises(InputError, match="at least 3"):
        convergence_order(sde, x0, (0, 1), levels=(3, 4))
    with pytest.raises(InputError, match="needs a flowsde.SDE"):
        convergence_order(flowsde.ODE(lambda t, x: -x), x0, (0, 1), kind="strong")
    with pytest.raises(InputError, match="ref_level"):
        convergence_order(sde, x0, (0, 1), levels=(2, 3, 4), ref_level=4)
    with pytest.raises(InputError, match="exact"):
        convergence_order(sde, x0, (0, 1), kind="weak", exact=lambda ts: ts)
    # Euler on a linear drift with a constant solution is exact: nothing to regress
    with pytest.raises(InputError, match="zero or non-finite"):
        convergence_order(flowsde.ODE(lambda t, x: 0 * x), x0, (0, 1), kind="ode", levels=(1, 2, 3),
                          exact=lambda ts: x0.expand(len(ts), 4, 1))
    with pytest.raises(InputError, match="returned shape"):
        convergence_order(flowsde.ODE(lambda t, x: -x), x0, (0, 1), kind="ode", levels=(1, 2, 3),
                          exact=lambda ts: torch.zeros(2, 4, 1, dtype=F64))


def test_fit_recovers_known_slope_and_interval():
    """Errors err = C h^p exactly give slope p with a degenerate interval (round-off only)."""
    ode = flowsde.ODE(lambda t, x: -x)
    x0 = torch.ones(2, 1, dtype=F64)
    res = convergence_order(ode, x0, (0.0, 1.0), method="euler", kind="ode", levels=(4, 5, 6, 7),
                            exact=lambda ts: torch.exp(-ts)[:, None, None].expand(len(ts), 2, 1))
    assert abs(res.order - 1.0) < 0.05, res  # Euler's leading error term dominates at h <= 1/16
    assert res.ci[0] <= res.order <= res.ci[1]


def test_fit_order_is_the_fit_convergence_order_makes():
    hs = [0.5, 0.25, 0.125, 0.0625]
    exact = fit_order(hs, [3 * h ** 2 for h in hs])
    assert isinstance(exact, OrderResult) and exact.kind is None and exact.method is None
    assert abs(exact.order - 2) < 1e-12 and exact.ci[1] - exact.ci[0] < 1e-9  # err = C h^p: slope p, no spread
    noisy = [1.0, 0.3, 0.1, 0.02]
    res = fit_order(hs, noisy, confidence=0.9)
    slope, _ = np.polyfit(np.log(hs), np.log(noisy), 1)  # the same least-squares slope
    assert abs(res.order - slope) < 1e-12 and res.ci[0] < res.order < res.ci[1] and res.confidence == 0.9
    assert fit_order(hs, noisy, confidence=0.99).ci[0] < res.ci[0]  # a higher level, a wider interval
    assert "order: " in repr(res)
    # convergence_order's slope and interval are fit_order's on its step sizes and errors
    co = convergence_order(flowsde.ODE(lambda t, x: -x), torch.ones(2, 1, dtype=F64), (0.0, 1.0), method="euler",
                           kind="ode", levels=(2, 3, 4, 5))
    again = fit_order(co.step_sizes, co.errors)
    assert (co.order, co.ci) == (again.order, again.ci)


@pytest.mark.parametrize("hs, errs, match", [
    ([0.5, 0.25], [1.0, 0.5], "at least 3 distinct"),
    ([0.5, 0.5, 0.5], [1.0, 0.5, 0.2], "at least 3 distinct"),
    ([0.5, 0.25, 0.125], [1.0, 0.5], "3 step sizes but 2 errors"),
    ([0.5, 0.25, 0.125], [1.0, 0.0, 0.2], "errors .* must be positive and finite"),
    ([0.5, -0.25, 0.125], [1.0, 0.5, 0.2], "step_sizes .* must be positive and finite"),
    ([0.5, 0.25, 0.125], [1.0, float("nan"), 0.2], "positive and finite"),
    (["a", 0.25, 0.125], [1.0, 0.5, 0.2], "sequences of numbers"),
])
def test_fit_order_bad_input(hs, errs, match):
    with pytest.raises(InputError, match=match):
        fit_order(hs, errs)


def test_fit_order_bad_confidence():
    with pytest.raises(InputError, match="confidence"):
        fit_order([0.5, 0.25, 0.125], [1.0, 0.5, 0.2], confidence=1.0)
