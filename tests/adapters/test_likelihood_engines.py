"""torchdiffeq as an engine of solve and log_likelihood, against RK45 and the exact mixtures.

Both engines control the same quantities (the state's RMS error per sample, the log-density's
absolute error per step, max over the batch) with the same Dormand-Prince pair, so at the default
``bpd_tol = 1e-5`` (log-density held to ``1e-5 D ln 2`` nats per step) both must land within
1e-3 nats of the closed form (the small-problem bound of docs/likelihood.md) and of each other.
"""


import math
import pytest
import torch

import flowsde
from flowsde import InputError, SolveError, Status
from flowsde.adapters import Diffusion
from flowsde.validation import likelihood_mixture, schedule_predictions

DT = torch.float64


CASES = schedule_predictions()


@pytest.mark.parametrize("d", [2, 8])
@pytest.mark.parametrize("sched,pred", CASES, ids=lambda c: type(c).__name__ if not isinstance(c, str) else c)
def test_torchdiffeq_dopri5_agrees_with_rk45(sched, pred, d):
    gm, g = likelihood_mixture(d)
    x = gm.sample(5, generator=g)
    dif = Diffusion(gm.oracle(sched, pred), sched, prediction=pred)
    T = torch.tensor(float(sched.t_max), dtype=DT)
    prior = lambda z: gm.log_prob_t(sched, T, z)  # noqa: E731
    exact = gm.log_prob_t(sched, torch.tensor(0.0 if pred == "velocity" else float(sched.t_min), dtype=DT), x)
    a = dif.log_likelihood(x, prior_logp=prior)
    b = dif.log_likelihood(x, prior_logp=prior, method="torchdiffeq:dopri5")
    assert a.stats["engine"] == "rk45" and b.stats["engine"] == "torchdiffeq:dopri5"
    assert (a.logp - exact).abs().max() < 1e-3
    assert (b.logp - exact).abs().max() < 1e-3
    assert (a.logp - b.logp).abs().max() < 1e-3
    # the global error estimate needs no embedded estimates: it is there for torchdiffeq too, and bounds both
    # true errors above 1% of the tolerance (below it, the promise is only that the error is that small)
    floor = a.stats["bpd_tol"] * a.dims * math.log(2) / 100
    for r in (a, b):
        assert ((r.logp - exact).abs() <= r.solver_error.clamp(min=floor)).all()


@pytest.mark.parametrize("method", ["torchdiffeq:dopri5", "torchdiffeq:dopri8", "torchdiffeq:bosh3"])
def test_solve_with_torchdiffeq_methods(method):
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=DT)
    x0 = torch.randn(4, 2, dtype=DT)
    seen = []

    def f(t, x):
        seen.append(t)
        return x @ A.T

    sol = flowsde.solve(flowsde.ODE(f), x0, torch.tensor([0.0, 2.0], dtype=DT), method=method, rtol=1e-8,
                        atol=1e-8, max_steps=100_000)
    exact = x0 @ torch.linalg.matrix_exp(2.0 * A).T
    assert sol.success and sol.method == method
    assert (sol.x - exact).abs().max() < 1e-5  # the global error of a few hundred steps at 1e-8
    assert all(t.dim() == 0 for t in seen)  # torchdiffeq's f(t, y): one time for the batch
    assert max(float(t) for t in seen) <= 2.0  # no stage past the end of the span


def test_torchdiffeq_failures_as_status():
    def f(t, x):
        out = -x.clone()
        out[1] = out[1] + torch.where(t > 0.5, float("nan"), 0.0)
        return out

    x0 = torch.ones(3, 2, dtype=DT)
    with pytest.raises(SolveError, match=r"NaN/Inf from the function in samples \[1\]"):
        flowsde.solve(flowsde.ODE(f), x0, torch.tensor([0.0, 1.0], dtype=DT), method="torchdiffeq:dopri5")
    sol = flowsde.solve(flowsde.ODE(f), x0, torch.tensor([0.0, 1.0], dtype=DT), method="torchdiffeq:dopri5",
                        throw=False)
    assert int(sol.status[1]) == int(Status.NON_FINITE)
    with pytest.raises(InputError, match="adaptive methods"):
        flowsde.solvers.TorchDiffEq("rk4")
    with pytest.raises(InputError, match="no option"):
        flowsde.solve(flowsde.ODE(f), x0, torch.tensor([0.0, 1.0], dtype=DT), method="torchdiffeq:dopri5",
                      safety=0.5)
