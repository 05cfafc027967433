"""diffusers' remaining samplers against diffusers itself: ``deis`` (``DEISMultistepScheduler``),
``dpmpp_3m`` (``DPMSolverMultistepScheduler(solver_order=3)``), ``dpmpp_single``
(``DPMSolverSinglestepScheduler``), ``sa_solver`` (``SASolverScheduler``), and ``flow_euler`` /
``flow_heun`` (``FlowMatchEulerDiscreteScheduler`` / ``FlowMatchHeunDiscreteScheduler``).

The set-up is tests/samplers/test_diffusers.py's (its helpers are reused): the exact mixture eps network
and a smooth non-trivial one, the scheduler's own timesteps as the grid ``t = (k + 1)/N``, the
scheduler loop ``x = scheduler.step(unet(x, k), k, x).prev_sample`` as the reference, noise from the
same per-sample generators on both sides.

Precision. ``DEISMultistepScheduler``, ``DPMSolverSinglestepScheduler`` and ``SASolverScheduler`` step
in the dtype of the sample (handed float64 ``alphas_cumprod`` / ``sigmas``): float64 agreement to
RTOL64 = 1e-12. ``DPMSolverMultistepScheduler`` and the two flow-matching schedulers cast the sample
to float32 in every step (``sample.to(torch.float32)``): against the stock peer the agreement is
float32 round-off (RTOL32; measured <= 2.3e-6 relative), and against the same peer code run with
``torch.float32`` read as ``torch.float64`` in its module (:func:`_peer_in_float64`: the upcast made
a float64 one, nothing else changed) it is RTOL64 (measured <= 1.2e-14).

Grids. DEIS and SA-Solver end at the first training step (``sigma_min``, ``t = 1/N``), which
``scheduler_grid`` does not know for them (it reads ``final_sigmas_type``, which they lack):
:func:`_grid` ends their grids there. ``from_diffusers`` does not list ``SASolverScheduler`` and
``FlowMatchHeunDiscreteScheduler``: the model is read through the DDPM family's duck-typed object and
``FlowMatchEulerDiscreteScheduler`` (the same model definitions).
"""

import math
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsde
from flowsde import InputError
from flowsde.adapters import Diffusion, from_diffusers, scheduler_grid
from flowsde.adapters.schedules import VP, Linear
from flowsde._internal import deis_weights
from flowsde.solvers import DEIS, DPMpp3M, DPMppSingle, SASolver

from _samplers_peers import F64, diffusers_schedulers, gen, mixture
from test_diffusers import RTOL32, SEEDS, _float64_sigmas, _latents, _peer_loop, _scheduler, _unets

RTOL64 = 1e-12
N = 1000

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*", "ignore::FutureWarning")


class _Float64Torch:
    """``torch`` with ``float32`` read as ``float64``, installed in a peer's module by :func:`_peer_in_float64`."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def _peer_in_float64(monkeypatch, sch):
    """Run ``sch``'s own step code with its float32 upcast made a float64 one (restored after the test)."""
    monkeypatch.setattr(sys.modules[type(sch).__module__], "torch", _Float64Torch())


def _grid(sch, final):
    """The scheduler's grid ending at zero noise (``"zero"``) or at the first training step (``"sigma_min"``)."""
    if type(sch).__name__ == "SASolverScheduler":  # not listed by scheduler_grid: read as the DDPM family
        sch = types.SimpleNamespace(timesteps=sch.timesteps, set_timesteps=None, config={"num_train_timesteps": N})
    grid = scheduler_grid(sch)
    return torch.cat([grid[:-1], torch.tensor([0.0 if final == "zero" else 1.0 / N], dtype=F64)])


def _ddpm_model(sch):
    """The DDPM-family reading of a scheduler from_diffusers does not list (same alphas_cumprod, same labels)."""
    return types.SimpleNamespace(alphas_cumprod=sch.alphas_cumprod, config={"num_train_timesteps": N})


def _window(t):
    """SASolverScheduler's default ``tau_func`` (tau = 1 on timesteps 200..800) as flowsde's beta(t), t = (k + 1)/N."""
    return ((t >= 201 / N) & (t <= 801 / N)).to(t.dtype)


# ---------------------------------------------------------------------------------------------- DEIS
def _deis(unet_name, n, order, x_T):
    sch = _scheduler("DEISMultistepScheduler", solver_order=order)
    sch.set_timesteps(n)
    _float64_sigmas(sch, "sigma_min")
    unet = _unets(sch.alphas_cumprod)[unet_name]
    ref = _peer_loop(sch, unet, x_T)
    sol = flowsde.solve(from_diffusers(unet, sch).pf_ode(), x_T, _grid(sch, "sigma_min"), method="deis", order=order)
    return sol, ref


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n,order", [(10, 2), (20, 2), (5, 3), (14, 3), (20, 3), (8, 1)])
def test_deis(unet_name, n, order):
    sol, ref = _deis(unet_name, n, order, _latents())
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)
    assert sol.nfe == n


def test_deis_order_1_is_ddim_and_steps_to_zero_noise():
    """DEIS of order 1 is the DDIM (first-order DPM-Solver) step, also on the step to zero noise."""
    d = Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")
    grid = torch.cat([flowsde.grids.uniform(0.9, 0.05, 9), torch.zeros(1, dtype=F64)])
    x = _latents()
    a = flowsde.solve(d.pf_ode(), x, grid, method="deis", order=1)
    b = flowsde.solve(d.pf_ode(), x, grid, method="ddim")
    torch.testing.assert_close(a.x, b.x, rtol=RTOL64, atol=RTOL64)
    # orders 2 and 3 step to zero noise with the weights' limit rho log^k rho -> 0: continuous there
    r = [3.0, 1.5, 0.7, 0.2]
    for q in (2, 3):
        at_zero = deis_weights(r + [0.0], 3, q)
        near = deis_weights(r + [1e-20], 3, q)  # the weights differ from the limit by O(rho log^2 rho)
        assert all(math.isfinite(w) for w in at_zero)
        np.testing.assert_allclose(at_zero, near, rtol=0, atol=1e-14)
    assert bool(torch.isfinite(flowsde.solve(d.pf_ode(), x, grid, method="deis", order=3).x).all())


# ------------------------------------------------------------------------------------------ dpmpp_3m
@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n", [5, 10, 14, 20])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_3m(monkeypatch, unet_name, n, solver_type):
    sch = _scheduler("DPMSolverMultistepScheduler", solver_order=3, solver_type=solver_type)
    sch.set_timesteps(n)
    _float64_sigmas(sch)
    unet = _unets(sch.alphas_cumprod)[unet_name]
    x_T = _latents()
    sol = flowsde.solve(from_diffusers(unet, sch).pf_ode(), x_T, scheduler_grid(sch), method="dpmpp_3m",
                        solver_type=solver_type)
    ref32 = _peer_loop(sch, unet, x_T)  # the stock peer: float32 states
    torch.testing.assert_close(sol.x, ref32, rtol=RTOL32, atol=RTOL32)
    sch.set_timesteps(n)
    _float64_sigmas(sch)
    _peer_in_float64(monkeypatch, sch)
    ref = _peer_loop(sch, unet, x_T)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)
    assert sol.nfe == n


def test_dpmpp_3m_heun_is_dpmpp_3m_sde_at_beta_0():
    """With the heun form of its second step, 15 or more steps and a grid not ending at zero noise,
    diffusers' DPM-Solver++(3M) is k-diffusion's 3M SDE sampler at beta = 0."""
    d = Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")
    grid = flowsde.grids.uniform(0.9, 0.02, 16)
    x = _latents()
    a = flowsde.solve(d.pf_ode(), x, grid, method="dpmpp_3m", solver_type="heun")
    b = flowsde.solve(d.reverse_sde(0.0), x, grid, method="dpmpp_3m_sde")
    torch.testing.assert_close(a.x, b.x, rtol=RTOL64, atol=RTOL64)


# -------------------------------------------------------------------------------------- dpmpp_single
@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n,order,solver_type,final", [
    (10, 2, "midpoint", "zero"), (9, 2, "midpoint", "zero"), (20, 2, "heun", "sigma_min"), (11, 2, "midpoint", "sigma_min"),
    (9, 3, "midpoint", "sigma_min"), (10, 3, "heun", "zero"), (11, 3, "heun", "sigma_min"), (12, 3, "midpoint", "zero"),
    (7, 1, "midpoint", "zero"),
])
def test_dpmpp_single(unet_name, n, order, solver_type, final):
    sch = _scheduler("DPMSolverSinglestepScheduler", solver_order=order, solver_type=solver_type,
                     final_sigmas_type=final)
    sch.set_timesteps(n)
    _float64_sigmas(sch, final)
    unet = _unets(sch.alphas_cumprod)[unet_name]
    x_T = _latents()
    ref = _peer_loop(sch, unet, x_T)
    sol = flowsde.solve(from_diffusers(unet, sch).pf_ode(), x_T, _grid(sch, final), method="dpmpp_single",
                        order=order, solver_type=solver_type)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)
    assert sol.nfe == n


# ----------------------------------------------------------------------------------------- sa_solver
def _sa(unet_name, n, p, c, tau, x_T, seeds):
    cfg = {} if tau == "default" else {"tau_func": lambda t: tau}
    sch = _scheduler("SASolverScheduler", predictor_order=p, corrector_order=c, **cfg)
    sch.set_timesteps(n)
    _float64_sigmas(sch, "sigma_min")
    unet = _unets(sch.alphas_cumprod)[unet_name]
    ref = _peer_loop(sch, unet, x_T, generator=flowsde.per_sample_generators(seeds))
    d = from_diffusers(unet, _ddpm_model(sch))
    problem = d.reverse_sde(_window) if tau == "default" else d.reverse_sde(tau ** 2)
    sol = flowsde.solve(problem, x_T, _grid(sch, "sigma_min"), method="sa_solver", predictor_order=p,
                        corrector_order=c, generator=flowsde.per_sample_generators(seeds))
    return sol, ref


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n,p,c,tau", [(10, 2, 2, "default"), (20, 2, 2, "default"), (8, 2, 2, 1.0), (8, 2, 2, 0.0),
                                       (12, 2, 2, 0.5), (10, 1, 1, "default"), (10, 3, 3, "default"), (9, 3, 1, 1.0),
                                       (9, 1, 2, 1.0)])
def test_sa_solver(unet_name, n, p, c, tau):
    sol, ref = _sa(unet_name, n, p, c, tau, _latents(), SEEDS)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)
    assert sol.nfe == n


def test_sa_solver_on_the_ode_draws_nothing():
    """On the probability-flow ODE (tau = 0) SA-Solver is deterministic and equals the SDE solve at beta = 0."""
    sch = _scheduler("SASolverScheduler", tau_func=lambda t: 0)
    sch.set_timesteps(10)
    _float64_sigmas(sch, "sigma_min")
    d = from_diffusers(_unets(sch.alphas_cumprod)["exact"], _ddpm_model(sch))
    x, grid = _latents(), _grid(sch, "sigma_min")
    state = torch.get_rng_state()
    a = flowsde.solve(d.pf_ode(), x, grid, method="sa_solver")
    assert torch.equal(torch.get_rng_state(), state)
    b = flowsde.solve(d.reverse_sde(0.0), x, grid, method="sa_solver", generator=7)
    torch.testing.assert_close(a.x, b.x, rtol=RTOL64, atol=RTOL64)


# ------------------------------------------------------------------------------- flow_euler, flow_heun
def _velocity_unets():
    vel = mixture().oracle(Linear(), "velocity", time="schedule")

    def exact(x, timestep):  # diffusers' flow models are called at timestep = sigma N
        return vel(x, torch.as_tensor(timestep, dtype=x.dtype) / N)

    def smooth(x, timestep):
        k = torch.as_tensor(timestep, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1)
        return torch.tanh(x) * (0.5 + k / 1000) + 0.2 * torch.sin(2 * x + k / 300)

    return {"exact": exact, "smooth": smooth}


def _flow_loop(sch, unet, x, sigmas):
    """The scheduler loop, the model called at the float64 ``sigma N`` (the peer's float32 timesteps only index)."""
    x = x.clone()
    for i, k in enumerate(sch.timesteps):
        x = sch.step(unet(x, sigmas[i] * N), k, x).prev_sample
    return x


def _flow_scheduler(cls, n, shift):
    sch = getattr(diffusers_schedulers(), cls)(num_train_timesteps=N, shift=shift)
    sch.set_timesteps(n)
    sch.sigmas = sch.sigmas.to(F64)  # its float32 sigmas, in float64
    return sch


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n,shift", [(5, 1.0), (20, 1.0), (10, 3.0)])
@pytest.mark.parametrize("method,cls", [("flow_euler", "FlowMatchEulerDiscreteScheduler"),
                                        ("flow_heun", "FlowMatchHeunDiscreteScheduler")])
def test_flow_matching(monkeypatch, unet_name, n, shift, method, cls):
    """flow_euler is euler and flow_heun is heun(final_euler=True) on the velocity model (the same solves);
    FlowMatchHeunDiscreteScheduler repeats each inner sigma (its two stages), the grid keeps one."""
    unet = _velocity_unets()[unet_name]
    x1 = _latents()
    sch = _flow_scheduler(cls, n, shift)
    sigmas = sch.sigmas.clone()
    grid = torch.unique_consecutive(sigmas)
    model = from_diffusers(unet, _flow_scheduler("FlowMatchEulerDiscreteScheduler", n, shift))
    sol = flowsde.solve(model.pf_ode(), x1, grid, method=method)
    same = flowsde.solve(model.pf_ode(), x1, grid, method="euler" if method == "flow_euler" else "heun",
                         **({} if method == "flow_euler" else {"final_euler": True}))
    assert torch.equal(sol.x, same.x) and sol.nfe == same.nfe == len(sch.timesteps)
    torch.testing.assert_close(sol.x, _flow_loop(sch, unet, x1, sigmas), rtol=RTOL32, atol=RTOL32)
    sch = _flow_scheduler(cls, n, shift)
    _peer_in_float64(monkeypatch, sch)
    torch.testing.assert_close(sol.x, _flow_loop(sch, unet, x1, sigmas), rtol=RTOL64, atol=RTOL64)


# --------------------------------------------------------------------- over seeds and step counts
@settings(derandomize=True, max_examples=12, deadline=None)
@given(method=st.sampled_from(["deis", "dpmpp_3m", "dpmpp_single", "sa_solver"]), n=st.integers(2, 25),
       seed=st.integers(0, 2 ** 16))
def test_equal_to_the_peer_over_seeds_and_steps(method, n, seed):
    x_T = torch.randn(3, 2, dtype=F64, generator=gen(seed))
    if method == "deis":
        sol, ref = _deis("exact", n, 2, x_T)
    elif method == "sa_solver":
        sol, ref = _sa("exact", n, 2, 2, "default", x_T, [seed, seed + 1, seed + 2])
    else:
        cls, final = {"dpmpp_3m": ("DPMSolverMultistepScheduler", "zero"),
                      "dpmpp_single": ("DPMSolverSinglestepScheduler", "zero")}[method]
        sch = _scheduler(cls, solver_order=3 if method == "dpmpp_3m" else 2)
        sch.set_timesteps(n)
        _float64_sigmas(sch, final)
        unet = _unets(sch.alphas_cumprod)["exact"]
        sol = flowsde.solve(from_diffusers(unet, sch).pf_ode(), x_T, _grid(sch, final), method=method)
        with pytest.MonkeyPatch.context() as mp:
            if method == "dpmpp_3m":
                _peer_in_float64(mp, sch)
            ref = _peer_loop(sch, unet, x_T)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)


# ----------------------------------------------------------------------------------------- orders
@pytest.mark.slow
def test_dpmpp_single_order_3_on_whole_groups():
    """On grids of 3 m steps with lower_order_final=False every group is a full 3-stage step: order 3
    (the declared order, 2, is that of grids whose last group is shortened; tests/method_table.py fits it)."""
    d = Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")
    x = torch.randn(32, 2, dtype=F64, generator=gen(0)) * 1.2
    ref = flowsde.solve(d.pf_ode(), x, torch.tensor([0.4, 0.02], dtype=F64), method="rk45", rtol=1e-11,
                        atol=1e-11).x
    ns = [24, 48, 96, 192]
    errs = [float((flowsde.solve(d.pf_ode(), x, flowsde.grids.uniform(0.4, 0.02, n), method="dpmpp_single",
                                 order=3).x - ref).abs().max()) for n in ns]
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope - 3) < 0.25, (errs, slope)


# ------------------------------------------------------------------------------------------- input
def test_bad_options_and_grids():
    for make, match in [(lambda: DEIS(order=4), "order must be 1, 2 or 3"),
                        (lambda: DPMpp3M(solver_type="bh2"), "must be one of"),
                        (lambda: DPMppSingle(order=0), "order must be 1, 2 or 3"),
                        (lambda: DPMppSingle(solver_type="logrho"), "must be one of"),
                        (lambda: SASolver(predictor_order=5), "must be 1, 2, 3 or 4")]:
        with pytest.raises(InputError, match=match):
            make()
    d = from_diffusers(_unets(torch.linspace(0.999, 0.01, N, dtype=F64))["exact"],
                       types.SimpleNamespace(alphas_cumprod=torch.linspace(0.999, 0.01, N, dtype=F64),
                                             config={"num_train_timesteps": N}))
    x, grid = _latents(), flowsde.grids.uniform(0.9, 0.1, 8)
    with pytest.raises(InputError, match=r"beta\(t\) must return"):
        flowsde.solve(d.reverse_sde(lambda t: torch.ones(3, dtype=F64)), x, grid, method="sa_solver")
    with pytest.raises(InputError, match="deterministic"):
        flowsde.solve(d.reverse_sde(1.0), x, grid, method="deis")
    flow = Diffusion(mixture().oracle(Linear(), "velocity"), Linear(), prediction="velocity")
    at_noise = flowsde.grids.uniform(1.0, 0.1, 8)  # alpha(1) = 0
    for method in ("sa_solver", "dpmpp_single", "deis"):
        with pytest.raises(InputError, match="alpha"):
            flowsde.solve(flow.pf_ode(), x, at_noise, method=method)
    assert math.isfinite(float(flowsde.solve(flow.pf_ode(), x, at_noise, method="dpmpp_3m").x.abs().max()))
