"""Times at the ends of a schedule's range, peers' adaptive solvers through the bridges, and the
adapters' entry-point checks (swapped arguments, meta tensors, direction, time dtype).

Exact references: a Gaussian mixture (flowsde.validation.GaussianMixture) gives the exact
network of every prediction type and exact marginal log-densities.
"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError
from flowsde.adapters import Diffusion, EDMPrecond, from_diffusers, from_flow_matching, to_denoiser, to_flow_matching
from flowsde.adapters.schedules import EDM, VE, VP, Linear
from flowsde.validation import GaussianMixture

from _adapters_peers import kd_sampling


F64 = torch.float64


def mixture_1d():
    """Zero-mean 1-D mixture: the Hutchinson estimate is exact in one dimension (v^2 = 1), and a
    zero mean keeps k-diffusion's N(0, sigma_max^2) prior within O(m2 / sigma_max^2) of the truth."""
    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]), torch.tensor([[[0.5]], [[0.2]]]))


def mixture_2d():
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.5, -0.5]]),
                           torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]]))


# ============================================================ the range: rounding accepted, excursions refused
def test_float32_karras_grid_end_is_accepted_and_clamped():
    """k-diffusion's float32 Karras sigmas end at 0.0019999996 for sigma_min = 0.002: rounding, accepted,
    and the conversions there are those at t_min exactly."""
    sched = EDM(0.002, 80.0)
    gm = mixture_2d()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, "eps")
    rho = 7.0
    ramp = torch.linspace(0, 1, 10)  # k-diffusion get_sigmas_karras, float32 as it computes it
    sig = (80.0 ** (1 / rho) + ramp * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    end = float(sig[-1])
    assert end < 0.002 and 0.002 - end < 1e-9  # the grid really is off by rounding
    x = gm.marginal(sched, 80.0).sample(4, generator=torch.Generator().manual_seed(0))
    for t in (torch.tensor(end, dtype=F64), torch.full((4,), end, dtype=F64)):
        torch.testing.assert_close(dif.x0(t, x), dif.x0(torch.tensor(0.002, dtype=F64), x), rtol=0, atol=0)
    sol = flowsde.solve(dif.pf_ode(), x.float(), sig.double(), method="heun")
    assert sol.success and torch.isfinite(sol.x).all()


@pytest.mark.parametrize("t, bound, digits", [(0.00199, "t_min = 0.002", "0.00199"),
                                              (80.5, "t_max = 80.0", "80.5"),
                                              (0.0019999, "t_min = 0.002", "0.0019999")])
def test_real_excursion_is_refused_with_its_digits(t, bound, digits):
    sched = EDM(0.002, 80.0)
    dif = Diffusion(lambda x, t: torch.zeros_like(x), sched, "eps")
    x = torch.zeros(2, 3, dtype=F64)
    for tt in (torch.tensor(t, dtype=F64), torch.full((2,), t, dtype=F64)):
        with pytest.raises(InputError, match="valid range") as e:
            dif.x0(tt, x)
        msg = str(e.value)
        assert bound in msg and digits in msg and "by " in msg


def test_zero_bound_has_an_absolute_rounding_slack():
    dif = Diffusion(lambda x, t: torch.zeros_like(x), VE(), "eps")  # t_min = 0
    x = torch.zeros(2, 2, dtype=F64)
    dif.score(torch.tensor(-1e-10, dtype=F64), x)  # rounding of a [0, 1] grid
    with pytest.raises(InputError, match="below t_min"):
        dif.score(torch.tensor(-1e-6, dtype=F64), x)


def test_flow_model_likelihood_at_the_data_end():
    """Linear(t_min=0): a velocity model's PF-ODE and x0 are defined at t = 0 (flow_matching integrates
    its likelihood from there); the score (divides by sigma(0) = 0) is refused there, with the values.
    The likelihood from t_eps = 0 is the data density itself (exact trace in D = 2; ODE at 1e-8:
    accumulated error ~1e-7 nats, 1e-6 leaves a 10x margin), where t_eps = 1e-5 shifts it."""
    sched, gm = Linear(t_min=0.0), mixture_2d()
    dif = Diffusion(gm.oracle(sched, "velocity"), sched, "velocity")
    x = gm.sample(5, generator=torch.Generator().manual_seed(0))
    zero = torch.tensor(0.0, dtype=F64)
    torch.testing.assert_close(dif.x0(zero, x), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dif.pf_ode().drift(zero, x), gm.oracle(sched, "velocity")(x, zero.expand(5)))
    with pytest.raises(InputError, match=r"score of a 'velocity' model is undefined at t = 0.0.*sigma\(t\) = 0.0"):
        dif.score(zero, x)
    res = dif.log_likelihood(x, t_eps=0.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(res.logp, gm.log_prob(x), rtol=0, atol=1e-6)


# ============================================================ peers: k-diffusion's log_likelihood via to_denoiser
def test_kdiffusion_log_likelihood_runs_through_to_denoiser():
    """k-diffusion's own ``log_likelihood`` (torchdiffeq dopri5 in sigma) on a VP eps-model: its last
    step overshoots sigma_max = 152.17 and is interpolated back; the bridge evaluates those stages at
    sigma_max and the result is the exact log-density of the scaled data at sigma_min.

    Tolerance: dopri5 at rtol = atol = 1e-7 (error ~1e-6 nats) plus k-diffusion's prior N(0, r^2)
    against the true latent law (mixture + N(0, r^2)): zero mean, second moment m2 = 1.35, so the
    log-density gap is below m2 / r^2 = 6e-5 at r = 152; 2e-4 leaves a 3x margin."""
    kd = kd_sampling()
    gm, sched = mixture_1d(), VP()
    den = to_denoiser(Diffusion(gm.oracle(sched, "eps"), sched, "eps"))
    seen = []

    def model(x, s):
        seen.append(float(s.max()))
        return den(x, s)

    x = gm.sample(6, generator=torch.Generator().manual_seed(0))
    ll, _ = kd.log_likelihood(model, x, den.sigma_min, den.sigma_max, atol=1e-7, rtol=1e-7)
    exact = gm.marginal(EDM(1e-4, 500.0), den.sigma_min).log_prob(x)
    torch.testing.assert_close(ll, exact, rtol=0, atol=2e-4)
    assert max(seen) > den.sigma_max  # the test exercises evaluations past the span
    # k-diffusion's default tolerances overshoot further (1.49x measured); still accepted
    seen.clear()
    ll4, _ = kd.log_likelihood(model, x, den.sigma_min, den.sigma_max)
    assert max(seen) > 1.2 * den.sigma_max and torch.isfinite(ll4).all()
    # outside=1 accepts rounding only: the overshooting stage is refused, naming the value
    strict = to_denoiser(den.diffusion, outside=1.0)
    with pytest.raises(InputError, match=r"sigma = 1[5-9]\d\.\d+.*outside=") as e:
        kd.log_likelihood(strict, x, den.sigma_min, den.sigma_max)
    assert "152.166970283946" in str(e.value)


def test_denoiser_band_evaluates_at_the_nearest_end():
    gm, sched = mixture_2d(), VP()
    den = to_denoiser(Diffusion(gm.oracle(sched, "eps"), sched, "eps"))
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(den(x, 1.5 * den.sigma_max), den(x, den.sigma_max), rtol=0, atol=0)
    torch.testing.assert_close(den(x, 0.6 * den.sigma_min), den(x, den.sigma_min), rtol=0, atol=0)
    with pytest.raises(InputError, match="outside the schedule's range"):
        den(x, 2.5 * den.sigma_max)
    with pytest.raises(InputError, match="outside the schedule's range"):
        den(x, 0.0)
    with pytest.raises(InputError, match=">= 1"):
        to_denoiser(den.diffusion, outside=0.5)


# ============================================================ direction
@pytest.mark.parametrize("which, wrong, right", [("reverse_sde", (1e-3, 1.0), "decreasing"),
                                                 ("forward_sde", (1.0, 1e-3), "increasing")])
def test_one_way_problems_refuse_the_other_grid(which, wrong, right):
    gm, sched = mixture_2d(), VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, "eps")
    prob = getattr(dif, which)(0.5)
    assert prob.direction == ("reverse" if which == "reverse_sde" else "forward")
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(InputError) as e:
        flowsde.solve(prob, x, flowsde.grids.uniform(*wrong, 5), method="euler_maruyama")
    assert right in str(e.value)
    flowsde.solve(prob, x, flowsde.grids.uniform(*reversed(wrong), 5), method="euler_maruyama")
    # the PF-ODE runs both ways (likelihood forward, sampling reverse)
    assert dif.pf_ode().direction is None
    for grid in (wrong, tuple(reversed(wrong))):
        flowsde.solve(dif.pf_ode(), x, flowsde.grids.uniform(*grid, 5), method="euler")


# ============================================================ time policy
def test_problems_take_float64_time_and_cast_once_at_the_network():
    """The problems declare time_dtype=float64: a float32 solve keeps the grid's float64 times for the
    schedule (1/3 stays 1/3) and the network sees them cast to float32."""
    sched, seen = VP(), []
    gm = mixture_2d()
    oracle = gm.oracle(sched, "eps")

    def net(x, t):
        seen.append(t)
        return oracle(x.double(), t.double()).to(x.dtype)

    dif = Diffusion(net, sched, "eps")
    ode = dif.pf_ode()
    assert ode.time_dtype == F64 and dif.reverse_sde().time_dtype == F64
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([1.0 / 3.0, 0.25], dtype=F64)
    got = flowsde.solve(ode, x, ts, method="euler").x
    assert seen[0].dtype == torch.float32 and seen[0].shape == (3,)
    # reference: the coefficients at the float64 time 1/3, applied in float32
    t = torch.tensor(1.0 / 3.0, dtype=F64)
    f, s, ds = sched.f(t), sched.sigma(t), sched.d_sigma(t)
    eps = net(x, t.float().expand(3))
    u = (f.float() * x + (ds - f * s).float() * eps)
    torch.testing.assert_close(got, x + (0.25 - 1.0 / 3.0) * u, rtol=1e-6, atol=1e-6)


def test_coefficients_are_kept_per_time_and_bounded():
    sched, gm = VP(), mixture_2d()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, "eps")
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = dif.velocity(torch.tensor(0.4, dtype=F64), x)
    b = dif.velocity(0.4, x)  # the same time as a number hits the same entry
    assert len(dif._cache) == 1 and torch.equal(a, b)
    c = dif.velocity(torch.tensor(0.4, dtype=F64), x.float())  # another working dtype: its own entry
    assert len(dif._cache) == 2 and c.dtype == torch.float32
    torch.testing.assert_close(c.double(), a, rtol=1e-5, atol=1e-5)
    cheap = Diffusion(lambda x, t: x, sched, "eps")  # the bound: at most 4096 times kept
    for i in range(4200):
        cheap.eps(0.1 + i * 1e-4, x[:1])  # native output: the schedule is not evaluated
    assert 0 < len(cheap._cache) <= 4096


# ============================================================ a flow-matching model from pure noise
def test_velocity_model_reverse_sde_at_pure_noise():
    """Linear (rectified flow) at t = 1: alpha = 0, g^2 = 2t/(1-t) is infinite. With the diffusion
    coefficient given directly the reverse SDE is finite there: drift u - w^2/2 score with the score
    of pure noise, -x (the velocity model's eps = x + (1-t) u needs no division by alpha)."""
    sched, gm = Linear(), mixture_2d()
    dif = Diffusion(gm.oracle(sched, "velocity"), sched, "velocity")
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    one = torch.tensor(1.0, dtype=F64)
    u = gm.oracle(sched, "velocity")(x, one.expand(4))
    for w in (0.7, lambda t: 0.7 * torch.ones_like(t)):
        sde = dif.reverse_sde(diffusion=w)
        torch.testing.assert_close(sde.drift(one, x), u + 0.5 * 0.7**2 * x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sde.diffusion(one, x).expand(4, 1), torch.full((4, 1), 0.7, dtype=F64))
    # any beta > 0 is infinite there: the message says how to start from pure noise
    with pytest.raises(InputError, match=r"diffusion=") as e:
        dif.reverse_sde(1.0).drift(one, x)
    assert "infinite" in str(e.value)
    with pytest.raises(InputError, match="not both"):
        dif.reverse_sde(0.5, diffusion=0.5)


@pytest.mark.slow
def test_velocity_model_samples_from_pure_noise():
    """Euler-Maruyama on reverse_sde(diffusion=sigma(t)) from x ~ N(0, I) at t = 1 exactly to t = 0.02
    reproduces the exact marginal there: per-coordinate mean and variance z-tests (n = 4000) and a
    projected KS test, Bonferroni at family-wise alpha = 1e-3; fixed seeds."""
    from scipy import stats

    sched, gm = Linear(), mixture_2d()
    dif = Diffusion(gm.oracle(sched, "velocity"), sched, "velocity")
    n = 4000
    g = torch.Generator().manual_seed(3)
    xT = torch.randn(n, 2, dtype=F64, generator=g)
    ts = flowsde.grids.uniform(1.0, 0.02, 400)
    sol = flowsde.solve(dif.reverse_sde(diffusion=lambda t: sched.sigma(t)), xT, ts, method="euler_maruyama",
                        generator=torch.Generator().manual_seed(4))
    ref = gm.marginal(sched, 0.02).sample(200000, generator=torch.Generator().manual_seed(5))
    alpha = 1e-3 / 5
    for k in range(2):
        a, b = sol.x[:, k], ref[:, k]
        z_mean = (a.mean() - b.mean()) / math.sqrt(b.var() / n)
        assert abs(float(z_mean)) < stats.norm.ppf(1 - alpha / 2)
        z_var = (a.var() - b.var()) / math.sqrt(float(((b - b.mean()) ** 4).mean() - b.var() ** 2) / n)
        assert abs(float(z_var)) < stats.norm.ppf(1 - alpha / 2)
    proj = torch.tensor([0.6, 0.8], dtype=F64)
    assert stats.ks_2samp((sol.x @ proj).numpy(), (ref @ proj).numpy()).pvalue > alpha


# ============================================================ entry points: swapped arguments, meta tensors
def test_swapped_arguments_are_named():
    sched = VP()
    dif = Diffusion(lambda x, t: torch.zeros_like(x), sched, "eps")
    x, t = torch.zeros(4, 2), torch.tensor(0.5)
    calls = [lambda: dif.score(x, t), lambda: dif.x0(x, 0.5), lambda: dif.velocity(x, torch.full((4,), 0.5)),
             lambda: dif.pf_ode().drift(x, t), lambda: dif.reverse_sde().drift(x, t),
             lambda: dif.reverse_sde().diffusion(x, t), lambda: to_denoiser(dif)(t, x),
             lambda: EDMPrecond(lambda x, c: x)(t, x), lambda: to_flow_matching(dif)(t, x)]
    for call in calls:
        with pytest.raises(InputError, match="swapped"):
            call()


def test_nets_taking_time_first_are_named():
    with pytest.raises(InputError, match=r"signature is \(t, x"):
        Diffusion(lambda t, x: x, VP())
    with pytest.raises(InputError, match=r"signature is \(sigma, x"):
        from_flow_matching(lambda sigma, x: x)

    def net(x, t):  # a net that treats its first argument as time returns t's shape
        return t * 0

    with pytest.raises(InputError, match=r"shape of t: does the network take \(t, x\)"):
        Diffusion(net, VP()).score(torch.tensor(0.5), torch.zeros(3, 2))


def test_meta_tensors_are_refused_at_the_entry_points():
    dif = Diffusion(lambda x, t: x, VP())
    xm, t = torch.zeros(3, 2, device="meta"), torch.tensor(0.5)
    for call in (lambda: dif.score(t, xm), lambda: dif.pf_ode().drift(t, xm),
                 lambda: dif.score(t.to("meta"), torch.zeros(3, 1)), lambda: to_denoiser(dif)(xm, 1.0),
                 lambda: EDMPrecond(lambda x, c: x)(xm, 1.0)):
        with pytest.raises(InputError, match="'meta' device"):
            call()
    lin = torch.nn.Linear(2, 2, device="meta")
    for build in (lambda: Diffusion(lin, VP()), lambda: EDMPrecond(lin),
                  lambda: from_diffusers(lin, {"num_train_timesteps": 10})):
        with pytest.raises(InputError, match="parameters are on the 'meta' device"):
            build()


def test_time_in_range_is_the_one_rounding_rule():
    """flowsde.adapters.time_in_range: the rule Diffusion applies, for any other user-given time."""
    from flowsde._internal import ROUNDING, time_in_range

    assert time_in_range(0.0019999996, 0.002, 80.0) == 0.002
    assert time_in_range(80.0 * (1 + 0.5 * ROUNDING), 0.002, 80.0) == 80.0
    assert time_in_range(-1e-10, 0.0, 1.0) == 0.0 and time_in_range(0.5, 0.0, 1.0) == 0.5
    with pytest.raises(InputError, match=r"t_eps = 0.00199 is outside .* by 1e-05") as e:
        time_in_range(0.00199, 0.002, 80.0, name="t_eps", where="log_likelihood")
    assert str(e.value).startswith("log_likelihood: ")
