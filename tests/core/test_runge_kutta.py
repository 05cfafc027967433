"""The embedded Runge-Kutta pairs (Butcher tableaux), their orders, and the PI controller.

Orders are measured as diffrax's order tests do: fixed step sizes ``h = span / 2^level`` on an
ODE with a closed-form solution, the slope of ``log error`` on ``log h`` fitted by
:func:`flowsde.validation.fit_order`. Fixed steps through the adaptive loop: a uniform output
grid (every step is clipped onto the next output time), tolerances that accept every step and a
first step as long as the span; the test checks that the solve took exactly the grid's steps.
The embedded solution's order is measured the same way, by propagating it (``b`` and ``b_hat``
swapped): its order drives the controller's exponent and the initial step.
"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError, grids
from flowsde.solvers import RK45, Bosh3, ButcherTableau, EmbeddedRK, Tsit5
from flowsde.validation import fit_order
from method_table import TABLE

DOPRI5, TSIT5, BOSH3 = RK45.tableau, Tsit5.tableau, Bosh3.tableau
PIController = type(RK45().controller)

F64 = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)  # damped rotation
X0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=F64)

# Heun-Euler 2(1) (torchdiffeq's adaptive_heun): a pair without FSAL, to run the loop's other branch
HEUN_EULER = ButcherTableau(name="Heun-Euler 2(1)", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), b_hat=(1.0, 0.0),
                            order=2, error_order=1, fsal=False)


class HeunEuler(EmbeddedRK):
    tableau = HEUN_EULER
    name = "heun_euler"
    order = 2


# every flowsde embedded pair of the method table (tests/method_table.py), and a pair without FSAL
SOLVERS = [type(flowsde.solvers.get_solver(m)) for m, e in TABLE.items()
           if e.family == "adaptive" and e.alias_of is None and not m.startswith("torchdiffeq:")
           and isinstance(flowsde.solvers.get_solver(m), flowsde.solvers.EmbeddedRK)] + [HeunEuler]


def _embedded(tableau: ButcherTableau) -> type:
    """A solver that propagates the pair's embedded solution (b and b_hat swapped)."""
    swapped = ButcherTableau(name=tableau.name + " (embedded)", c=tableau.c, a=tableau.a, b=tableau.b_hat,
                             b_hat=tableau.b, order=tableau.error_order, error_order=tableau.order, fsal=False)
    return type("Embedded", (EmbeddedRK,), dict(tableau=swapped, name="embedded", order=swapped.order))


def _exact(ts: torch.Tensor) -> torch.Tensor:
    # expm(t A) = e^{-t/2} [[cos t, sin t], [-sin t, cos t]] (torch.linalg.matrix_exp is off by ~3e-11 at small t)
    out = []
    for t in ts.tolist():
        c, s = math.cos(t), math.sin(t)
        out.append(X0 @ (math.exp(-0.5 * t) * torch.tensor([[c, s], [-s, c]], dtype=F64)).T)
    return torch.stack(out)


def _fixed_step_errors(solver_cls, t0, t1, levels):
    """``(step sizes, max errors over the output times)`` of fixed-step solves on ``y' = A y``."""
    hs, errs = [], []
    ode = flowsde.ODE(lambda t, y: y @ A.T)
    for lvl in levels:
        n = 2 ** lvl
        grid = grids.uniform(t0, t1, n)
        # exp(t A) X0 from t0: the solution through X0 at t0
        exact = _exact(grid - t0)
        sol = flowsde.solve(ode, X0, grid, method=solver_cls(1e6, 1e6, first_step=abs(t1 - t0)), save_all=True)
        assert sol.accepted == n and sol.rejected == 0  # exactly the grid's steps
        assert sol.nfe == solver_cls.tableau.evals_per_step * n + 1  # k1 (no probe: first_step given)
        hs.append(abs(t1 - t0) / n)
        errs.append(float((sol.xs - exact).abs().max()))
    return hs, errs


#: 8 .. 128 steps: past the pre-asymptotic range, above round-off at the finest (~6e-14 for order 5)
LEVELS = range(3, 8)


def _assert_order(fit, order):
    # a pre-asymptotic slope runs high (Tsit5's leading error terms are small), never low
    assert -0.3 < fit.order - order < 0.5, (order, fit)


@pytest.mark.parametrize("t0,t1", [(0.0, 2.0), (2.0, 0.0)])
@pytest.mark.parametrize("solver_cls", SOLVERS, ids=lambda c: c.name)
def test_fixed_step_order_of_each_pair(solver_cls, t0, t1):
    _assert_order(fit_order(*_fixed_step_errors(solver_cls, t0, t1, LEVELS)), solver_cls.order)


@pytest.mark.parametrize("tableau", [DOPRI5, TSIT5, BOSH3, HEUN_EULER], ids=lambda t: t.name)
def test_embedded_solution_has_the_error_order(tableau):
    _assert_order(fit_order(*_fixed_step_errors(_embedded(tableau), 0.0, 2.0, LEVELS)), tableau.error_order)


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("solver_cls", SOLVERS, ids=lambda c: c.name)
def test_adaptive_error_follows_the_tolerance(solver_cls, per_sample):
    # logistic y' = y (1 - y): y(t) = 1 / (1 + (1/y0 - 1) e^{-t}); global error <= 100 x the local tolerance
    y0 = torch.rand(4, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    T = 4.0
    exact = 1 / (1 + (1 / y0 - 1) * math.exp(-T))
    tols = (1e-3, 1e-5, 1e-7) if solver_cls.order >= 3 else (1e-2, 1e-3, 1e-4)
    errs = []
    for tol in tols:
        sol = flowsde.solve(flowsde.ODE(lambda t, y: y * (1 - y)), y0, torch.tensor([0.0, T]),
                            method=solver_cls(tol, tol, per_sample=per_sample))
        assert sol.success
        errs.append(float((sol.x - exact).abs().max()))
        assert errs[-1] < 100 * tol, (tol, errs)
        per = sol.stats["nfe_per_sample"]
        steps = sol.stats["accepted_per_sample"] + sol.stats["rejected_per_sample"]
        assert per.tolist() == (2 + solver_cls.tableau.evals_per_step * steps).tolist()
    assert all(b < a / 5 for a, b in zip(errs, errs[1:])), errs


def test_solver_attributes_come_from_the_tableau():
    for cls, tableau, name in ((RK45, DOPRI5, "rk45"), (Tsit5, TSIT5, "tsit5"), (Bosh3, BOSH3, "bosh3")):
        s = cls()
        assert (s.name, s.order, s.tableau, s.adaptive) == (name, tableau.order, tableau, True)
        assert tableau.fsal and tableau.evals_per_step == tableau.stages - 1
    assert HEUN_EULER.evals_per_step == 2  # the stage at t + h, and f(t + h, y_1) after the step
    assert DOPRI5.b_error[-1] == -1 / 40 and BOSH3.b_error == tuple(b - bh for b, bh in zip(BOSH3.b, BOSH3.b_hat))


@pytest.mark.parametrize("kw,match", [
    (dict(a=((), (0.4,))), "sum to c"),
    (dict(b=(0.6, 0.5)), "sum to 1"),
    (dict(fsal=True), "fsal"),
    (dict(a=((), ())), "i coefficients"),
])
def test_inconsistent_tableau_refused(kw, match):
    base = dict(name="bad", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), b_hat=(1.0, 0.0), order=2, error_order=1,
                fsal=False)
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**{**base, **kw})


def test_controller_exponent_is_order_aware():
    pi = PIController()
    assert pi.alpha(DOPRI5.error_order) == 0.17  # dopri5.f's 0.2 - 0.75 beta, exactly
    assert pi.alpha(BOSH3.error_order) == pytest.approx(1 / 3 - 0.03)
    assert PIController(beta=0.0).alpha(4) == 0.2  # the I controller: r^(-1/(q+1))
    r = torch.tensor([0.01, 2.0, 1e-30, 4.0], dtype=F64)
    accept = torch.tensor([True, False, True, False])
    fac, r_prev = pi.factor(r, pi.init(4, "cpu"), accept, 4)
    assert fac[0] > 1 and fac[1] < 1 and fac[2] == pi.ifactor and fac[3] >= pi.dfactor
    assert r_prev.tolist() == [0.01, 1e-4, 1e-4, 1e-4]  # the last accepted ratio, floored at 1e-4
    with pytest.raises(InputError, match="safety"):
        PIController(safety=1.5)
    with pytest.raises(InputError, match="beta"):
        RK45(beta=0.5)  # alpha = 0.2 - 0.375 <= 0: no weight left on the current error


def test_i_controller_meets_the_tolerance():
    y0 = torch.full((3, 2), 0.3, dtype=F64)
    T, tol = 4.0, 1e-8
    exact = 1 / (1 + (1 / y0 - 1) * math.exp(-T))
    for beta in (0.0, 0.04, 0.08):
        sol = flowsde.solve(flowsde.ODE(lambda t, y: y * (1 - y)), y0, torch.tensor([0.0, T]),
                            method=RK45(tol, tol, beta=beta))
        assert (sol.x - exact).abs().max() < 100 * tol


@pytest.mark.parametrize("method", ["tsit5", "bosh3", Tsit5(per_sample=True)], ids=str)
def test_likelihood_with_other_pairs(method):
    # dx/dt = B x: log p_0(x) = log N(x_T; 0, I) + T tr B exactly
    Bm = torch.tensor([[-0.3, 0.4], [-0.2, 0.1]], dtype=F64)
    x = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=F64)
    T = 1.5
    xT = x @ torch.linalg.matrix_exp(T * Bm).T
    exact = -0.5 * xT.square().sum(1) - math.log(2 * math.pi) + T * float(torch.trace(Bm))
    std = lambda z: -0.5 * z.square().sum(1) - math.log(2 * math.pi)  # noqa: E731
    r = flowsde.log_likelihood(flowsde.ODE(lambda t, y: y @ Bm.T), x, (0.0, T), std, rtol=1e-8, atol=1e-8,
                               bpd_tol=1e-8, method=method)
    assert r.success and r.stats["engine"] == (method if isinstance(method, str) else method.name)
    assert (r.logp - exact).abs().max() < 1e-5

