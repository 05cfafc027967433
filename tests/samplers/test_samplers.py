"""The semi-linear problems and their samplers: structure, last-step rules, noise, batch
independence, bad input. (Equivalence with the peers: test_kdiffusion.py, test_diffusers.py;
orders and marginals: test_orders_and_marginals.py, slow.)"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError, SemiLinearODE, SemiLinearSDE
from flowsde.adapters import Diffusion, edm_ode, from_denoiser
from flowsde.adapters.schedules import EDM, VE, VP, Cosine, Discrete, Linear

from _samplers_peers import F64, gen, mixture
from method_table import names

RTOL = 1e-12
ODE_METHODS = names("sampler", ode=True)  # tests/method_table.py
SDE_METHODS = names("sampler", sde=True)

SCHEDULES = [
    (VP(), "eps"),
    (Cosine(), "v"),
    (VE(sigma_min=0.01, sigma_max=50.0), "score"),
    (EDM(), "x0"),
    (Linear(), "velocity"),
    (Discrete.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=F64)), "eps"),
]
IDS = ["vp-eps", "cosine-v", "ve-score", "edm-x0", "linear-velocity", "discrete-eps"]


def diffusion(schedule, prediction):
    return Diffusion(mixture().oracle(schedule, prediction), schedule, prediction=prediction)


def vp():
    return diffusion(VP(), "eps")


def grid_to_zero(n=12, t_max=1.0, t_min=1e-3):
    return torch.cat([flowsde.grids.log_uniform(t_max, t_min, n - 1), torch.zeros(1, dtype=F64)])


def latents(n=6, seed=0):
    return torch.randn(n, 2, dtype=F64, generator=gen(seed))


# ---------------------------------------------------------------------------------------- problems
@pytest.mark.parametrize("schedule,prediction", SCHEDULES, ids=IDS)
def test_adapter_problems_carry_their_own_structure(schedule, prediction):
    """pf_ode() / reverse_sde(beta) are SemiLinear problems whose drift is the structure's
    (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) D (and, for the SDE, the family's
    -beta lambda' (x - alpha D) and sqrt(beta) g): the equations of flowsde/_semilinear.py hold for
    every schedule x parameterization, to round-off."""
    d = diffusion(schedule, prediction)
    ode, sde = d.pf_ode(), d.reverse_sde(0.7)
    assert isinstance(ode, SemiLinearODE) and isinstance(ode, flowsde.ODE)
    assert isinstance(sde, SemiLinearSDE) and isinstance(sde, flowsde.SDE) and sde.beta == 0.7
    sch = d.schedule
    derived_ode = SemiLinearODE(d.x0, alpha=sch.alpha, sigma=sch.sigma, d_alpha=sch.d_alpha, d_sigma=sch.d_sigma)
    derived_sde = SemiLinearSDE(d.x0, alpha=sch.alpha, sigma=sch.sigma, d_alpha=sch.d_alpha, d_sigma=sch.d_sigma,
                                beta=0.7)
    x = latents(8) * 2
    for t in (0.3 * sch.t_max, 0.9 * sch.t_max, 2 * sch.t_min + 0.01 * sch.t_max):
        t = torch.tensor(t, dtype=F64)
        torch.testing.assert_close(derived_ode.drift(t, x), ode.drift(t, x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(derived_sde.drift(t, x), sde.drift(t, x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(derived_sde.diffusion(t, x).expand(8, 1), sde.diffusion(t, x).expand(8, 1),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(derived_ode.score(t, x), ode.score(t, x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ode.eps(t, x), derived_ode.eps(t, x), rtol=1e-9, atol=1e-9)
        r = ode.ratio(t)
        torch.testing.assert_close(ode.t_from_ratio(r), t, rtol=1e-10, atol=1e-12)


def test_old_solvers_see_the_same_problems():
    """pf_ode() keeps the Diffusion's own velocity: a Heun solve is unchanged by the new type."""
    d = vp()
    ts = flowsde.grids.uniform(1.0, 1e-3, 10)
    old = flowsde.solve(flowsde.ODE(d.velocity), latents(), ts, method="heun")
    new = flowsde.solve(d.pf_ode(), latents(), ts, method="heun")
    assert torch.equal(old.x, new.x)


def test_user_built_problem_without_adapters():
    """The core problem needs no schedule object: alpha, sigma as plain float64 functions."""
    gm = mixture()
    sched = VP()
    den = gm.oracle(sched, "x0")
    p = SemiLinearODE(lambda t, x: den(x, t), alpha=sched.alpha, sigma=sched.sigma, d_alpha=sched.d_alpha,
                      d_sigma=sched.d_sigma)
    ts = grid_to_zero(20)
    a = flowsde.solve(p, latents(), ts, method="dpmpp_2m")
    b = flowsde.solve(vp().pf_ode(), latents(), ts, method="dpmpp_2m")
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------- last step
@pytest.mark.parametrize("method", names("sampler"))
def test_step_to_zero_noise(method):
    """The last step of a grid ending at zero noise never evaluates the model at sigma = 0 and
    follows its peer: the data prediction exactly (DDIM / DPM-Solver++ / UniPC, "denoising step"), an
    Euler step to r = 0 equal to it up to round-off (k-diffusion's Euler-type steps, EDM), or the
    multistep formula (LMS)."""
    d = vp()
    calls = []

    def spy(t, x):
        calls.append(t.reshape(-1)[0].item())
        return d.x0(t, x)

    problem = SemiLinearODE(spy, alpha=d.schedule.alpha, sigma=d.schedule.sigma, d_alpha=d.schedule.d_alpha,
                            d_sigma=d.schedule.d_sigma, t_from_ratio=d.schedule.t_from_sigma_ratio)
    if method not in ODE_METHODS:
        problem = SemiLinearSDE(spy, alpha=d.schedule.alpha, sigma=d.schedule.sigma, d_alpha=d.schedule.d_alpha,
                                d_sigma=d.schedule.d_sigma, t_from_ratio=d.schedule.t_from_sigma_ratio, beta=0.0)
    ts = grid_to_zero(10)
    sol = flowsde.solve(problem, latents(), ts, method=method, save_all=True)
    assert min(calls) > 0
    assert sol.nfe == len(calls) == flowsde.solvers.get_solver(method).nfe(10, to_zero_noise=True)
    x_last, t_last = sol.xs[-2], ts[-2]
    clean = d.x0(t_last, x_last)
    if method in ("ddim", "dpmpp_2m", "unipc", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        assert torch.equal(sol.x, clean)
    elif method != "lms":
        torch.testing.assert_close(sol.x, clean, rtol=RTOL, atol=RTOL)
    else:
        assert not torch.equal(sol.x, clean) and bool(torch.isfinite(sol.x).all())


def test_edm_last_step_policies():
    d = from_denoiser(mixture().oracle(EDM(), "x0"))
    sig = flowsde.grids.edm(0.002, 80.0, steps=10)
    x = latents() * 80
    e = flowsde.solve(d.pf_ode(), x, sig, method="edm", save_all=True)
    dn = flowsde.solve(d.pf_ode(), x, sig, method="edm", last_step="denoise", save_all=True)
    assert torch.equal(dn.x, d.x0(sig[-2], dn.xs[-2]))
    torch.testing.assert_close(e.x, dn.x, rtol=RTOL, atol=RTOL)
    assert e.nfe == dn.nfe == 19


# ---------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("method", SDE_METHODS)
def test_batch_independence_with_per_sample_generators(method):
    d = vp()
    x = latents(6)
    ts = grid_to_zero(8)
    full = flowsde.solve(d.reverse_sde(1.0), x, ts, method=method, generator=flowsde.per_sample_generators(range(6)))
    part = flowsde.solve(d.reverse_sde(1.0), x[3:], ts, method=method,
                         generator=flowsde.per_sample_generators(range(3, 6)))
    assert torch.equal(full.x[3:], part.x)
    same = flowsde.solve(d.reverse_sde(1.0), x, ts, method=method, generator=flowsde.per_sample_generators(range(6)))
    assert torch.equal(full.x, same.x)
    det = flowsde.solve(d.reverse_sde(0.0), x, ts, method=method)
    assert not torch.allclose(det.x, full.x)


def test_edm_churn_batch_independence():
    d = from_denoiser(mixture().oracle(EDM(), "x0"))
    sig = flowsde.grids.edm(0.002, 80.0, steps=8)
    x = latents(4) * 80
    full = flowsde.solve(d.pf_ode(), x, sig, method="edm", s_churn=20.0,
                         generator=flowsde.per_sample_generators(range(4)))
    part = flowsde.solve(d.pf_ode(), x[2:], sig, method="edm", s_churn=20.0,
                         generator=flowsde.per_sample_generators([2, 3]))
    assert torch.equal(full.x[2:], part.x)


@pytest.mark.parametrize("method", SDE_METHODS)
def test_zero_beta_is_the_deterministic_method(method):
    """reverse_sde(0.0) draws nothing: the result does not depend on the generator."""
    d = vp()
    ts = grid_to_zero(8)
    a = flowsde.solve(d.reverse_sde(0.0), latents(), ts, method=method, generator=gen(1))
    b = flowsde.solve(d.reverse_sde(0.0), latents(), ts, method=method, generator=gen(2))
    assert torch.equal(a.x, b.x)


def test_ddim_on_ode_is_eta_zero_and_dpmpp_2m_sde_limit_is_dpmpp_2m():
    d = vp()
    ts = grid_to_zero(9)
    ode = flowsde.solve(d.pf_ode(), latents(), ts, method="ddim")
    sde0 = flowsde.solve(d.reverse_sde(0.0), latents(), ts, method="ddim")
    torch.testing.assert_close(ode.x, sde0.x, rtol=RTOL, atol=RTOL)
    a = flowsde.solve(d.pf_ode(), latents(), ts, method="dpmpp_2m")
    b = flowsde.solve(d.reverse_sde(0.0), latents(), ts, method="dpmpp_2m_sde")
    torch.testing.assert_close(a.x, b.x, rtol=RTOL, atol=RTOL)
    # DDIM is Euler in the scaled variable: euler_ancestral without noise
    c = flowsde.solve(d.reverse_sde(0.0), latents(), ts, method="euler_ancestral")
    torch.testing.assert_close(c.x, ode.x, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------- grids
def test_start_at_pure_noise_alpha_zero():
    """A flow-matching velocity model on the Linear schedule may start at t = 1 (alpha = 0, pure
    noise) with the exponential integrators: DDIM's first step is then x1 = s1 x + a1 D exactly."""
    d = diffusion(Linear(t_max=1.0), "velocity")
    x = latents()
    ts = torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=F64)
    sol = flowsde.solve(d.pf_ode(), x, ts, method="ddim", save_all=True)
    torch.testing.assert_close(sol.xs[1], 0.6 * x + 0.4 * d.x0(ts[0], x), rtol=RTOL, atol=RTOL)
    for method in ("dpmpp_2m", "ddim"):
        out = flowsde.solve(d.pf_ode(), x, flowsde.grids.uniform(1.0, 0.0, 64), method=method)
        assert bool(torch.isfinite(out.x).all())
    with pytest.raises(InputError, match="scaled state"):
        flowsde.solve(d.pf_ode(), x, ts, method="lms")
    with pytest.raises(InputError, match="alpha"):
        flowsde.solve(d.pf_ode(), x, ts, method="unipc")


def test_float32_state_and_save_all():
    d = vp()
    ts = grid_to_zero(10)
    lo = flowsde.solve(d.pf_ode(), latents().float(), ts, method="unipc", save_all=True)
    hi = flowsde.solve(d.pf_ode(), latents(), ts, method="unipc")
    assert lo.x.dtype == torch.float32 and lo.xs.shape == (11, 6, 2)
    torch.testing.assert_close(lo.x.double(), hi.x, rtol=1e-4, atol=1e-4)


def test_nan_in_the_model_gives_status_or_error():
    d = vp()

    def bad(t, x):
        out = d.x0(t, x)
        out[1] = float("nan")
        return out

    p = SemiLinearODE(bad, alpha=d.schedule.alpha, sigma=d.schedule.sigma, d_alpha=d.schedule.d_alpha,
                      d_sigma=d.schedule.d_sigma)
    with pytest.raises(flowsde.SolveError, match="denoise returned NaN/Inf at step 0"):
        flowsde.solve(p, latents(), grid_to_zero(5), method="dpmpp_2m")
    sol = flowsde.solve(p, latents(), grid_to_zero(5), method="dpmpp_2m", throw=False)
    assert sol.status.tolist() == [0, 1, 0, 0, 0, 0]


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input():
    d = vp()
    x, ts = latents(), grid_to_zero(6)
    with pytest.raises(InputError, match="semi-linear structure"):
        flowsde.solve(flowsde.ODE(d.velocity), x, ts, method="dpmpp_2m")
    with pytest.raises(InputError, match="is stochastic: solve the reverse-time SDE"):
        flowsde.solve(d.pf_ode(), x, ts, method="euler_ancestral")
    with pytest.raises(InputError, match="is deterministic"):
        flowsde.solve(d.reverse_sde(1.0), x, ts, method="dpmpp_2m")
    with pytest.raises(InputError, match=r"reverse_sde\(beta=0.25\)"):
        flowsde.solve(d.pf_ode(), x, ts, method="ddim", eta=0.5)
    with pytest.raises(InputError, match="disagrees with the problem's beta"):
        flowsde.solve(d.reverse_sde(1.0), x, ts, method="dpmpp_2m_sde", eta=0.5)
    with pytest.raises(InputError, match="constant beta"):
        flowsde.solve(d.reverse_sde(lambda t: 0.5 + 0 * t), x, ts, method="dpmpp_2m_sde")
    with pytest.raises(InputError, match="> 1 has no DDIM step"):
        flowsde.solve(d.reverse_sde(2.0), x, ts, method="ddim")
    with pytest.raises(InputError, match="must decrease strictly"):
        flowsde.solve(d.pf_ode(), x, torch.tensor([0.1, 0.5, 0.9], dtype=F64), method="ddim")
    with pytest.raises(InputError, match="only the last time"):
        clipped = SemiLinearODE(d.x0, alpha=torch.ones_like, sigma=lambda t: (t - 0.2).clamp(min=0),
                                d_alpha=torch.zeros_like, d_sigma=torch.ones_like)
        flowsde.solve(clipped, x, torch.tensor([1.0, 0.1, 0.0], dtype=F64), method="ddim")
    with pytest.raises(InputError, match="t_from_ratio"):
        sch = d.schedule
        p = SemiLinearODE(d.x0, alpha=sch.alpha, sigma=sch.sigma, d_alpha=sch.d_alpha, d_sigma=sch.d_sigma)
        flowsde.solve(p, x, ts, method="dpm_2")
    with pytest.raises(InputError, match="no option"):
        flowsde.solve(d.pf_ode(), x, ts, method="dpmpp_2m", eta=1.0)
    with pytest.raises(InputError, match="order must be 1, 2 or 3"):
        flowsde.solvers.UniPC(order=4)
    with pytest.raises(InputError, match="variant"):
        flowsde.solvers.UniPC(variant="bh3")
    with pytest.raises(InputError, match="order must be an int"):
        flowsde.solvers.LMS(order=0)
    with pytest.raises(InputError, match="solver_type"):
        flowsde.solvers.DPMpp2MSDE(solver_type="euler")
    with pytest.raises(InputError, match="s_churn"):
        flowsde.solvers.EDMChurn(s_churn=-1.0)
    with pytest.raises(InputError, match="last_step"):
        flowsde.solvers.EDMChurn(last_step="stop")
    with pytest.raises(InputError, match="eta must be"):
        flowsde.solvers.DDIM(eta=-1.0)
    with pytest.raises(InputError, match="beta must be"):
        SemiLinearSDE(d.x0, alpha=math.exp, sigma=math.exp, d_alpha=math.exp, d_sigma=math.exp, beta=-1.0)
    with pytest.raises(InputError, match="alpha must be callable"):
        SemiLinearODE(d.x0, alpha=1.0, sigma=math.exp, d_alpha=math.exp, d_sigma=math.exp)


def test_declared_attributes():
    for name in names("sampler"):
        s = flowsde.solvers.get_solver(name)
        assert s.order in (1, 2, 3) and s.evals_per_step in (1, 2)
        assert (s.weak_order == 1.0) == bool(s.noise_types)
    assert flowsde.solvers.get_solver("unipc", lower_order_final=False).order == 3
    assert flowsde.solvers.get_solver("lms", order=1).order == 1
    assert edm_ode(lambda x, s: x).is_semilinear


# ---------------------------------------------------------------------------------------- exactness
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None)
@given(method=st.sampled_from(ODE_METHODS), sched=st.sampled_from([0, 1, 2, 3]),
       cuts=st.lists(st.floats(0.05, 0.95), min_size=2, max_size=8, unique=True),
       to_zero=st.booleans())
def test_exact_for_a_point_mass(method, sched, cuts, to_zero):
    """Data at a single point c: D(t, x) = c, and the probability-flow ODE's solution is the straight
    line x_t = alpha_t c + (sigma_t/sigma_s)(x_s - alpha_s c), linear in sigma/alpha for the scaled
    state. Every method integrates it exactly on any grid of any schedule (the exponential
    integrators by construction, the Euler/Heun/LMS steps in r since the scaled solution is linear
    in r): a check of each method's coefficients that needs no reference solver."""
    schedule = [VP(), Cosine(), EDM(), VE(sigma_min=0.01, sigma_max=50.0)][sched]
    c = torch.tensor([[0.7, -1.3]], dtype=F64)
    p = SemiLinearODE(lambda t, x: c.expand_as(x).clone(), alpha=schedule.alpha, sigma=schedule.sigma,
                      d_alpha=schedule.d_alpha, d_sigma=schedule.d_sigma, t_from_ratio=schedule.t_from_sigma_ratio)
    lo, hi = schedule.t_min, schedule.t_max
    ts = torch.tensor([hi] + sorted((lo + f * (hi - lo) for f in cuts), reverse=True) + [lo], dtype=F64)
    if to_zero and schedule.sigma(torch.tensor(0.0, dtype=F64)) == 0:
        ts = torch.cat([ts, torch.zeros(1, dtype=F64)])
    x = latents(4) * float(schedule.sigma(ts[0]))
    out = flowsde.solve(p, x, ts, method=method).x
    a0, s0, a1, s1 = (float(f(ts[k])) for k in (0, -1) for f in (schedule.alpha, schedule.sigma))
    exact = a1 * c + (s1 / s0) * (x - a0 * c)
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10 * float(x.abs().max()))


@pytest.mark.parametrize("method", [m for m in names("sampler") if flowsde.solvers.get_solver(m).evals_per_step == 2])
def test_declared_nfe_on_a_grid_stopping_above_zero_noise(method):
    """Two-stage samplers take both evaluations on every step of a grid ending at sigma > 0."""
    d = vp()
    problem = d.pf_ode() if flowsde.solvers.get_solver(method).solves_ode else d.reverse_sde(0.0)
    ts = torch.linspace(d.schedule.t_max, d.schedule.t_min, 7, dtype=torch.float64)
    sol = flowsde.solve(problem, latents(), ts, method=method)
    assert sol.nfe == flowsde.solvers.get_solver(method).nfe(6) == 12
