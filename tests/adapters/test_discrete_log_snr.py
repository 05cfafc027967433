"""``Discrete`` (DDPM / diffusers) schedules are integrated in log-SNR by every adaptive solve (issue 19, item 4).

The exact oracle network of a Gaussian mixture under diffusers' linear 1000-step table, with the exact prior,
so the only error is the solver's; the closed-form ``log p_{t_eps}`` is the answer. Bound: bpd_tol = 1e-5
bits/dim is the per-sample target of the likelihood (docs/likelihood.md, "Error control"); 10x it leaves room
for the estimate's slack on 4 samples, and is 40x below what integrating in t gave at the same request
(4.2e-4 bits/dim, issue 19).
"""

import math

import pytest
import torch

from flowsde import InputError, solve
from flowsde.adapters import VP, Diffusion
from flowsde.adapters._likelihood import adaptive_pf_ode, default_time
from flowsde.adapters.schedules import Discrete
from flowsde.validation import likelihood_mixture

DT = torch.float64


def _ddpm() -> Discrete:
    # diffusers.DDPMScheduler()'s table (linear betas 1e-4 .. 0.02, 1000 steps), without importing diffusers
    return Discrete(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=DT), 0))


def _problem(d=16, n=4):
    gm, g = likelihood_mixture(d)
    sched = _ddpm()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    prior = lambda z: gm.log_prob_t(sched, torch.tensor(1.0, dtype=DT), z)  # noqa: E731
    return gm, gm.sample(n, generator=g), sched, dif, prior


def test_default_is_log_snr_and_matches_the_exact_log_density():
    gm, x, sched, dif, prior = _problem()
    r = dif.log_likelihood(x, prior_logp=prior, bpd_tol=1e-5)
    exact = gm.log_prob_t(sched, torch.tensor(sched.t_min, dtype=DT), x)
    assert r.success and r.stats["time"] == "log_snr" and r.stats["time_warp"] == 1.0
    assert ((r.logp - exact).abs() / (16 * math.log(2))).max() < 1e-4
    assert default_time(sched) == "log_snr" and default_time(VP()) == "t"


def test_time_t_and_a_warp_are_refused_with_the_reason():
    _, x, _, dif, prior = _problem(d=2, n=2)
    with pytest.raises(InputError, match="jumps at every knot.*time='log_snr'"):
        dif.log_likelihood(x, time="t", prior_logp=prior)
    with pytest.raises(InputError, match="time_warp=1.5 with time='log_snr'.*Drop time_warp"):
        dif.log_likelihood(x, prior_logp=prior, time_warp=1.5)
    r = dif.log_likelihood(x, prior_logp=prior, time_warp=1, bpd_tol=1e-3)  # 1 is no warp: accepted
    assert r.success and r.stats["time_warp"] == 1.0
    with pytest.raises(InputError, match="time='t' on a Discrete"):
        adaptive_pf_ode(dif, (1.0, 1e-3), "t")


def test_adaptive_solve_in_log_snr_reaches_the_same_state_as_in_t_on_a_smooth_schedule():
    # the reparametrisation changes the path's speed, not its points: on VP (no knots) the log-SNR solve and the t
    # solve of the same PF-ODE from the same x_T end at the same state (both at rtol = atol = 1e-9)
    gm, g = likelihood_mixture(4)
    sched = VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    xT = torch.randn(5, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    ode, span, time = adaptive_pf_ode(dif, (1.0, 1e-3), "log_snr")
    assert time == "log_snr" and span[0] < span[1]
    a = solve(ode, xT, torch.tensor(span, dtype=DT), method="rk45", rtol=1e-9, atol=1e-9).x
    b = solve(dif.pf_ode(), xT, torch.tensor([1.0, 1e-3], dtype=DT), method="rk45", rtol=1e-9, atol=1e-9).x
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_dataset_nll_settings_resolve_the_variable():
    from flowsde.workloads._nll import _resolved_options

    _, _, _, dif, _ = _problem(d=2)
    kw = _resolved_options(dif, {}, DT, 2)
    assert kw["time"] == "log_snr" and kw["time_warp"] == 1.0
    gm, _ = likelihood_mixture(2)
    vp = Diffusion(gm.oracle(VP(), "eps"), VP(), prediction="eps")
    kw = _resolved_options(vp, {}, DT, 2)
    assert kw["time"] == "t" and kw["time_warp"] == 1.5
