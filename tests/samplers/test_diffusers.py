"""Equivalence with diffusers' schedulers through the diffusers bridge.

A diffusers-style eps network ``unet(sample, timestep)`` and a scheduler become a flowsde
``Diffusion`` by ``flowsde.adapters.from_diffusers`` (the ``Discrete`` schedule of the scheduler's
``alphas_cumprod``, network label = the training index). The scheduler's own timesteps (its
``timestep_spacing``) give the grid ``t = (k + 1)/N`` for each timestep ``k``, then ``t = 0``
(``alpha_bar = 1``, zero noise) where diffusers' last step lands; the scheduler loop
``x = scheduler.step(unet(x, k), k, x).prev_sample`` is the reference.

Precision. ``DDIMScheduler`` and ``UniPCMultistepScheduler`` step in the dtype of the sample, but
read ``alphas_cumprod`` / ``sigmas`` as float32 tensors; the tests hand them float64 copies of the
same numbers (the peer's arithmetic unchanged), so both sides run in float64 and agree to
round-off: RTOL64. ``DPMSolverMultistepScheduler`` and ``EulerAncestralDiscreteScheduler`` cast
the sample to float32 in every step (``sample = sample.to(torch.float32)``, "upcast to avoid
precision issues"); against them the float64 flowsde solve agrees to float32 round-off of the
peer's state: RTOL32 (measured <= 1.6e-6 relative on states of size <= 3).
"""

import numpy as np
import pytest
import torch

import flowsde
from flowsde.adapters import from_diffusers, scheduler_grid
from flowsde.adapters.schedules import Discrete

from _samplers_peers import F64, diffusers_schedulers, mixture

RTOL64 = 1e-11  # float64: a few ulps per step on states of size <= 3 over <= 25 steps (measured <= 6e-15)
RTOL32 = 2e-5  # float32 states inside the peer: ~2 ulps (1.2e-7) per step, 25 steps, states <= 3
SEEDS = [3, 4, 5, 6]

# diffusers' set_timesteps calls np.array(tensor), which numpy 2 flags in torch's __array__ (peer code)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


def _unets(ac):
    sched = Discrete(ac)
    exact = mixture().oracle(sched, "eps")  # label -> t = (k + 1)/N inside

    def smooth(x, k):
        k = torch.as_tensor(k, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1)
        return torch.tanh(x) * (0.5 + k / 1000) + 0.2 * torch.sin(2 * x + k / 300)

    return {"exact": exact, "smooth": smooth}


def _scheduler(cls_name, **cfg):
    diffusers = diffusers_schedulers()
    sch = getattr(diffusers, cls_name)(num_train_timesteps=1000, beta_schedule="linear", **cfg)
    sch.alphas_cumprod = sch.alphas_cumprod.to(F64)  # the same numbers, so that the peer computes in float64
    return sch


def _grid(sch, final="zero"):
    """The scheduler's own grid (flowsde.adapters.scheduler_grid): ``t = (k + 1)/N`` at its timesteps,
    then ``t = 0`` (``final="zero"``) or the first training step ``t = 1/N`` (``final="sigma_min"``)."""
    grid = scheduler_grid(sch)
    assert float(grid[-1]) == (0.0 if final == "zero" else 1.0 / sch.config.num_train_timesteps)
    return grid


def _float64_sigmas(sch, final="zero"):
    """The scheduler's sigmas (at its integer timesteps, then 0 or sigma at step 0) recomputed in
    float64 from the same alphas_cumprod (diffusers stores them as float32)."""
    ac = sch.alphas_cumprod.numpy()
    table = np.sqrt((1 - ac) / ac)
    last = 0.0 if final == "zero" else table[0]
    sch.sigmas = torch.from_numpy(np.concatenate([table[sch.timesteps.numpy().astype(np.int64)], [last]]))


def _peer_loop(sch, unet, x, **step_kw):
    x = x.clone()
    for k in sch.timesteps:
        x_in = sch.scale_model_input(x, k)
        x = sch.step(unet(x_in, k), k, x, **step_kw).prev_sample
    return x


def _latents(n=len(SEEDS)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, dtype=F64, generator=g)


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim(unet_name, spacing, eta):
    sch = _scheduler("DDIMScheduler", clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    sch.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    sch.set_timesteps(20)
    unet = _unets(sch.alphas_cumprod)[unet_name]
    x_T = _latents()
    ref = _peer_loop(sch, unet, x_T, eta=eta, generator=flowsde.per_sample_generators(SEEDS))
    d = from_diffusers(unet, sch)
    problem = d.pf_ode() if eta == 0 else d.reverse_sde(eta ** 2)
    sol = flowsde.solve(problem, x_T, _grid(sch), method="ddim", generator=flowsde.per_sample_generators(SEEDS))
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)
    assert sol.nfe == 20


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n,order,variant,final", [(10, 2, "bh2", "zero"), (25, 2, "bh2", "zero"),
                                                   (12, 3, "bh2", "zero"), (8, 1, "bh2", "zero"),
                                                   (12, 2, "bh1", "sigma_min"), (12, 3, "bh2", "sigma_min")])
def test_unipc(unet_name, n, order, variant, final):
    sch = _scheduler("UniPCMultistepScheduler", solver_order=order, solver_type=variant, final_sigmas_type=final)
    sch.set_timesteps(n)
    _float64_sigmas(sch, final)
    unet = _unets(sch.alphas_cumprod)[unet_name]
    x_T = _latents()
    ref = _peer_loop(sch, unet, x_T)
    sol = flowsde.solve(from_diffusers(unet, sch).pf_ode(), x_T, _grid(sch, final), method="unipc", order=order,
                        variant=variant)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL64, atol=RTOL64)
    assert sol.nfe == n


def test_unipc_bh1_step_to_zero_noise():
    """diffusers' bh1 step to sigma = 0 computes B(h) = -h = -inf times a zero sum: NaN. flowsde's step
    to zero noise is first order whatever the variant and returns the data prediction there."""
    sch = _scheduler("UniPCMultistepScheduler", solver_order=2, solver_type="bh1")
    sch.set_timesteps(12)
    _float64_sigmas(sch)
    unet = _unets(sch.alphas_cumprod)["exact"]
    x_T = _latents()
    assert bool(torch.isnan(_peer_loop(sch, unet, x_T)).all())
    d = from_diffusers(unet, sch)
    ts = _grid(sch)
    sol = flowsde.solve(d.pf_ode(), x_T, ts, method="unipc", variant="bh1", save_all=True)
    assert torch.equal(sol.x, d.x0(ts[-2], sol.xs[-2]))


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("n", [10, 20])
def test_dpm_solver_multistep(unet_name, n):
    """DPMSolverMultistepScheduler's defaults (order 2, dpmsolver++, midpoint, final sigma 0) are dpmpp_2m."""
    sch = _scheduler("DPMSolverMultistepScheduler")
    sch.set_timesteps(n)
    _float64_sigmas(sch)
    unet = _unets(sch.alphas_cumprod)[unet_name]
    x_T = _latents()
    ref = _peer_loop(sch, unet, x_T)
    sol = flowsde.solve(from_diffusers(unet, sch).pf_ode(), x_T, _grid(sch), method="dpmpp_2m")
    torch.testing.assert_close(sol.x, ref, rtol=RTOL32, atol=RTOL32)


@pytest.mark.parametrize("unet_name", ["exact", "smooth"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_ancestral(unet_name, spacing):
    """EulerAncestralDiscreteScheduler works in the scaled state x/alpha (k-diffusion's); its last
    level is sigma = 0, where the scaled and unscaled states coincide. Integer timesteps only
    (``leading`` / ``trailing``): with ``linspace`` its fractional timesteps interpolate sigma
    linearly, which the Discrete schedule (log-SNR linear) does not."""
    sch = _scheduler("EulerAncestralDiscreteScheduler", timestep_spacing=spacing)
    sch.set_timesteps(15)
    _float64_sigmas(sch)
    unet = _unets(sch.alphas_cumprod)[unet_name]
    x_T = _latents()
    sigma_T = float(sch.sigmas[0])
    ref = _peer_loop(sch, unet, x_T * (sigma_T ** 2 + 1) ** 0.5, generator=flowsde.per_sample_generators(SEEDS))
    sol = flowsde.solve(from_diffusers(unet, sch).reverse_sde(1.0), x_T, _grid(sch), method="euler_ancestral",
                        generator=flowsde.per_sample_generators(SEEDS))
    torch.testing.assert_close(sol.x, ref, rtol=RTOL32, atol=RTOL32)
