"""Convergence orders and marginals of the samplers on the exact mixtures (slow).

The methods (with their options), levels and tolerances are those of tests/method_table.py
(set-up "vp-mixture"; the stochastic samplers: ``names("sampler", sde=True)``).

Orders: each method's declared ``order`` (its deterministic limit, ``beta = 0`` for the stochastic
ones) is measured with :func:`flowsde.validation.convergence_order` (nested uniform grids of
``2^level`` steps, error = max over the coarse save times, slope of log error on log step with a
95% interval) on the VP probability-flow ODE of a 2-D Gaussian mixture (exact eps network),
against an RK45 reference at ``rtol = atol = 1e-11``. The span ``t: 0.4 -> 0.02`` starts where the
denoiser still varies, so lower-order start-up steps show their effect (a start at pure noise,
where ``D`` is nearly constant, hides it). As in diffrax's ``test_ode_order``, the measured slope must
not fall below the declared order by more than 0.25 and may exceed it (pre-asymptotic
super-convergence on a smooth problem) by at most 0.75.

Marginals: each stochastic method (``beta = 1``), started from exact samples of ``p_T`` (so the
only error is the sampler's) on a grid ending at zero noise, lands on the exact data mixture:
:func:`flowsde.validation.check_marginals` (projected KS + moments, Holm) at family-wise level
1e-3, on a 200-step grid log-uniform in t. Power: the same check rejects a 6-step run.
"""

import pytest
import torch

import flowsde
from flowsde.adapters import Diffusion, from_denoiser
from flowsde.adapters.schedules import EDM, VP
from flowsde.validation import check_marginals, convergence_order
from method_table import names, order_cases

from _samplers_peers import F64, gen, mixture

pytestmark = pytest.mark.slow

T0, T1 = 0.4, 0.02


def _vp():
    return Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")


@pytest.mark.parametrize("method, case", order_cases("vp-mixture"))
def test_declared_order(method, case):
    d = _vp()
    solver = case.solver(method)
    problem = d.pf_ode() if solver.solves_ode else d.reverse_sde(0.0)
    x0 = torch.randn(32, 2, dtype=F64, generator=gen(0)) * 1.2

    def exact(ts):
        ref = flowsde.solve(d.pf_ode(), x0, ts, method="rk45", rtol=1e-11, atol=1e-11, save_all=True)
        return ref.xs

    res = convergence_order(problem, x0, (T0, T1), method=solver, kind="ode", levels=case.levels, exact=exact)
    assert case.accepts(res.order, method), (res, case)


def _exact_start(gm, schedule, t, n, seed):
    g = gen(seed)
    a, s = float(schedule.alpha(torch.tensor(t, dtype=F64))), float(schedule.sigma(torch.tensor(t, dtype=F64)))
    return a * gm.sample(n, generator=g) + s * torch.randn(n, 2, dtype=F64, generator=g)


@pytest.mark.parametrize("method", names("sampler", sde=True))
def test_stochastic_samplers_land_on_the_marginals(method):
    gm, sched = mixture(), VP()
    d = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    n = 3000
    x_T = _exact_start(gm, sched, 1.0, n, seed=1)
    # log-uniform in t is close to uniform in log-SNR, the samplers' natural time (on a uniform-t VP grid
    # the last steps are long in log-SNR and dpmpp_3m_sde needs ~200 steps: docs/samplers.md)
    ts = torch.cat([flowsde.grids.log_uniform(1.0, 1e-3, 199), torch.zeros(1, dtype=F64)])
    sol = flowsde.solve(d.reverse_sde(1.0), x_T, ts, method=method, generator=gen(2))
    res = check_marginals(sol.x, gm, alpha=1e-3)
    assert res.passed, res.summary()
    coarse = torch.cat([flowsde.grids.log_uniform(1.0, 1e-3, 5), torch.zeros(1, dtype=F64)])
    bad = flowsde.solve(d.reverse_sde(1.0), x_T, coarse, method=method, generator=gen(2))
    assert not check_marginals(bad.x, gm, alpha=1e-3).passed


def test_edm_churn_lands_on_the_marginals():
    gm = mixture()
    d = from_denoiser(gm.oracle(EDM(), "x0"))
    n = 3000
    x_T = _exact_start(gm, EDM(), 80.0, n, seed=3)
    sig = flowsde.grids.edm(0.002, 80.0, steps=64)
    sol = flowsde.solve(d.pf_ode(), x_T, sig, method="edm", s_churn=10.0, generator=gen(4))
    res = check_marginals(sol.x, gm, alpha=1e-3)
    assert res.passed, res.summary()
