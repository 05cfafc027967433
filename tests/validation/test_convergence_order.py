"""convergence_order: flowsde's solvers show their textbook orders (slow), and bad input.

Pass criterion: fitted slope within +-0.3 of theory (diffrax's test_sde1
criterion); the regression's 95% interval is also checked to contain the
theoretical order or be within 0.3 of it, which guards against a lucky fit
through noisy errors.
"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError
from flowsde.validation import OU, convergence_order

F64 = torch.float64


def _assert_order(res, theory):
    assert abs(res.order - theory) < 0.3, res
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
@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.0)])
def test_ode_order_against_expm(method, t0, t1):
    order = flowsde.solvers.get_solver(method).order  # the declared order
    ode, x0, exact_from = _linear_ode()
    res = convergence_order(ode, x0, (t0, t1), method=method, kind="ode", levels=range(3, 8), exact=exact_from(t0))
    _assert_order(res, order)
    # and with a fine reference of the same method instead of expm
    _assert_order(convergence_order(ode, x0, (t0, t1), method=method, kind="ode", levels=range(3, 8)), order)


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


@pytest.mark.slow
@pytest.mark.parametrize("method, levels, ref, n", [("euler_maruyama", range(3, 8), 10, 64),
                                                   ("torchsde_euler", range(3, 8), 10, 64),
                                                   ("milstein", range(3, 8), 10, 64),
                                                   ("srk", range(2, 7), 9, 32)])
def test_strong_order_on_gbm(method, levels, ref, n):
    """Geometric Brownian motion (x-dependent diagonal noise), against each solver's declared strong
    order on diagonal noise: EM 0.5, Milstein 1, SRK 1.5 (Roessler 2010, torchsde's srk; space-time
    Levy area from the shared path)."""
    order = flowsde.solvers.get_solver(method).strong_order_for("diagonal")
    x0 = torch.ones(n, 2, dtype=F64)
    res = convergence_order(_gbm(), x0, (0.0, 1.0), method=method, kind="strong", levels=levels, ref_level=ref)
    _assert_order(res, order)


@pytest.mark.slow
def test_strong_order_against_exact_gbm_solution():
    """With the exact solution x0 exp((mu - s^2/2) t + s W_t) on the same path: EM strong order 0.5."""
    mu, s = 0.5, 0.8
    x0 = torch.ones(64, 2, dtype=F64)
    path = flowsde.BrownianPath(0.0, 1.0, x0.shape, generator=5, tol=2.0 ** -14)

    def exact(ts):
        return torch.stack([x0 * torch.exp((mu - s * s / 2) * t + s * path(float(t))) for t in ts])

    res = convergence_order(_gbm(mu, s), x0, 0.0, 1.0, method="euler_maruyama", kind="strong",
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
