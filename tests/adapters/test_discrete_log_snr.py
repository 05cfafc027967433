"""``Discrete`` (DDPM / diffusers) schedules are integrated in a smooth function of log-SNR by every adaptive solve
(issue 19, item 4): VP time by default (``time="vp_time"``, the continuous VP schedule's time at the same log-SNR,
warped as ``t``), log-SNR on request.

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


@pytest.mark.parametrize("time", [None, "log_snr"])
def test_default_is_vp_time_and_both_variables_match_the_exact_log_density(time):
    gm, x, sched, dif, prior = _problem()
    r = dif.log_likelihood(x, prior_logp=prior, bpd_tol=1e-5, time=time)
    exact = gm.log_prob_t(sched, torch.tensor(sched.t_min, dtype=DT), x)
    want = ("vp_time", 1.5) if time is None else ("log_snr", 1.0)
    assert r.success and (r.stats["time"], r.stats["time_warp"]) == want
    assert ((r.logp - exact).abs() / (16 * math.log(2))).max() < 1e-4
    assert default_time(sched) == "vp_time" and default_time(VP()) == "t"


def test_vp_time_of_ddpms_table_costs_what_the_continuous_vp_schedule_costs():
    # item 4: on DDPM's linear table, whose continuous limit is VP(), the Discrete likelihood in VP time (warped as
    # t) takes the NFE of the VP one in t per sample (the exact oracle depends on t only through log-SNR; the two
    # spans' log-SNR ends differ by the table's discretisation), within 10 %; in log-SNR it took 1.2-1.3x
    gm, x, sched, dif, prior = _problem(n=8)
    vp = VP()
    dvp = Diffusion(gm.oracle(vp, "eps"), vp, prediction="eps")
    T = torch.tensor(1.0, dtype=DT)
    for tol in (1e-3, 1e-5):
        nd = dif.log_likelihood(x, prior_logp=prior, bpd_tol=tol).stats["nfe_per_sample"].double()
        nv = dvp.log_likelihood(x, t_eps=sched.t_min, prior_logp=lambda z: gm.log_prob_t(vp, T, z),
                                bpd_tol=tol).stats["nfe_per_sample"].double()
        assert float(nd.mean()) <= 1.1 * float(nv.mean()), (tol, nd.mean(), nv.mean())


def test_time_t_and_a_warp_are_refused_with_the_reason():
    _, x, _, dif, prior = _problem(d=2, n=2)
    with pytest.raises(InputError, match="jumps at every knot.*time='vp_time'"):
        dif.log_likelihood(x, time="t", prior_logp=prior)
    with pytest.raises(InputError, match="time_warp=1.5 with time='log_snr'.*Drop time_warp"):
        dif.log_likelihood(x, prior_logp=prior, time_warp=1.5, time="log_snr")
    r = dif.log_likelihood(x, prior_logp=prior, time_warp=1, bpd_tol=1e-3, time="log_snr")  # 1 is no warp
    assert r.success and r.stats["time_warp"] == 1.0
    r = dif.log_likelihood(x, prior_logp=prior, time_warp=2, bpd_tol=1e-3)  # VP time takes a warp, as t does
    assert r.success and (r.stats["time"], r.stats["time_warp"]) == ("vp_time", 2.0)
    with pytest.raises(InputError, match="time='t' on a Discrete"):
        adaptive_pf_ode(dif, (1.0, 1e-3), "t")


@pytest.mark.parametrize("time", ["log_snr", "vp_time"])
@pytest.mark.parametrize("sched", [VP(), _ddpm()], ids=["VP", "Discrete"])
def test_adaptive_solve_in_another_variable_reaches_the_same_state(time, sched):
    # the reparametrisation changes the path's speed, not its points: the solve in log-SNR or VP time (rtol = atol =
    # 1e-9) ends where the solve in t does (1e-12: Discrete in t, over 8 knots that the grid makes it land on, is
    # 9e-7 off at 1e-9, as its stages at a knot take the slope of the next segment)
    gm, g = likelihood_mixture(4)
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    xT = torch.randn(5, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    t0, t1 = 0.5, 0.5 - 8e-3
    ode, span, got = adaptive_pf_ode(dif, (t0, t1), time)
    assert got == time and (span[0] < span[1]) == (time == "log_snr")
    a = solve(ode, xT, torch.tensor(span, dtype=DT), method="rk45", rtol=1e-9, atol=1e-9).x
    knots = torch.linspace(t0, t1, 9, dtype=DT)  # Discrete: the knots (n + 1)/1000 are hit exactly
    b = solve(dif.pf_ode(), xT, knots, method="rk45", rtol=1e-12, atol=1e-12).x
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_dataset_nll_settings_resolve_the_variable():
    from flowsde.workloads._nll import _resolved_options

    _, _, _, dif, _ = _problem(d=2)
    kw = _resolved_options(dif, {}, DT, 2)
    assert kw["time"] == "vp_time" and kw["time_warp"] == 1.5
    kw = _resolved_options(dif, {"time": "log_snr"}, DT, 2)
    assert kw["time"] == "log_snr" and kw["time_warp"] == 1.0
    gm, _ = likelihood_mixture(2)
    vp = Diffusion(gm.oracle(VP(), "eps"), VP(), prediction="eps")
    kw = _resolved_options(vp, {}, DT, 2)
    assert kw["time"] == "t" and kw["time_warp"] == 1.5
