"""Round-off equivalence with k-diffusion's samplers (float64, same grid, same model, same noise).

k-diffusion 0.1.1.post1's ``sampling.py`` (loaded alone, see ``_samplers_peers.py``) runs on a denoiser
``model(x, sigma)`` and a grid of sigmas ending in 0; flowsde runs the same denoiser as
``from_denoiser(model)`` (the EDM schedule, ``alpha = 1``, ``sigma = t``) on the same grid. The
stochastic samplers get k-diffusion a ``noise_sampler`` that returns flowsde's draws
(``flowsde._internal.randn`` from per-sample generators with the same seeds), in the order flowsde
takes them.

Tolerance: the formulas agree exactly; the evaluation differs in round-off only (k-diffusion
forms ``sigma_next/sigma`` as ``exp(-t_next)/exp(-t)``, integrates LMS coefficients with
``quad``, sums in another order). States are O(sigma_max) = O(80) at the start (ulp 1.4e-14) and
the steps contract them, so a few ulps per step stay well below 1e-13 (measured <= 4.5e-15): RTOL = 1e-12.
"""

import pytest
import torch

import flowsde
import flowsde._internal
from flowsde.adapters import from_denoiser

from _samplers_peers import F64, gen, kdiffusion_sampling, mixture, nonlinear_denoiser

RTOL = 1e-12
SEEDS = [11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def kd():
    return kdiffusion_sampling()


def _models():
    from flowsde.adapters.schedules import EDM

    return {"nonlinear": nonlinear_denoiser, "exact": mixture().oracle(EDM(), "x0")}


def _setup(model_name, n=12):
    model = _models()[model_name]
    sigmas = flowsde.grids.edm(0.002, 80.0, steps=n, rho=7.0, final_zero=True)
    latents = torch.randn(len(SEEDS), 2, dtype=F64, generator=gen(1))
    return model, sigmas, latents * sigmas[0]


def _noise_sampler(x):
    gens = flowsde.per_sample_generators(SEEDS)
    return lambda sigma, sigma_next: flowsde._internal.randn(x.shape, gens, F64)


@pytest.mark.parametrize("model_name", ["nonlinear", "exact"])
@pytest.mark.parametrize("method,kd_name", [("dpmpp_2m", "sample_dpmpp_2m"), ("dpm_2", "sample_dpm_2"),
                                            ("lms", "sample_lms")])
def test_deterministic(kd, model_name, method, kd_name):
    model, sigmas, x = _setup(model_name)
    ref = getattr(kd, kd_name)(model, x.clone(), sigmas, disable=True)
    sol = flowsde.solve(from_denoiser(model).pf_ode(), x, sigmas, method=method)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL, atol=RTOL)
    n = len(sigmas) - 1
    assert sol.nfe == (2 * n - 1 if method == "dpm_2" else n) == flowsde.solvers.get_solver(method).nfe(n, to_zero_noise=True)


@pytest.mark.parametrize("model_name", ["nonlinear", "exact"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("method,kd_name,beta_of_eta", [
    ("euler_ancestral", "sample_euler_ancestral", lambda e: e * e),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", lambda e: e * e),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", lambda e: e),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", lambda e: e),
])
def test_stochastic_same_noise(kd, model_name, eta, method, kd_name, beta_of_eta):
    model, sigmas, x = _setup(model_name)
    ref = getattr(kd, kd_name)(model, x.clone(), sigmas, disable=True, eta=eta, noise_sampler=_noise_sampler(x))
    problem = from_denoiser(model).reverse_sde(beta_of_eta(eta))
    sol = flowsde.solve(problem, x, sigmas, method=method, generator=flowsde.per_sample_generators(SEEDS))
    torch.testing.assert_close(sol.x, ref, rtol=RTOL, atol=RTOL)
    # the peer's own eta, given as an option, agrees with the problem's beta
    sol2 = flowsde.solve(problem, x, sigmas, method=method, eta=eta, generator=flowsde.per_sample_generators(SEEDS))
    assert torch.equal(sol2.x, sol.x)


def test_dpmpp_2m_sde_heun_variant(kd):
    model, sigmas, x = _setup("nonlinear")
    ref = kd.sample_dpmpp_2m_sde(model, x.clone(), sigmas, disable=True, eta=1.0, solver_type="heun",
                                 noise_sampler=_noise_sampler(x))
    sol = flowsde.solve(from_denoiser(model).reverse_sde(1.0), x, sigmas, method="dpmpp_2m_sde",
                        solver_type="heun", generator=flowsde.per_sample_generators(SEEDS))
    torch.testing.assert_close(sol.x, ref, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lms_orders(kd, order):
    model, sigmas, x = _setup("nonlinear", n=9)
    ref = kd.sample_lms(model, x.clone(), sigmas, disable=True, order=order)
    sol = flowsde.solve(from_denoiser(model).pf_ode(), x, sigmas, method="lms", order=order)
    torch.testing.assert_close(sol.x, ref, rtol=RTOL, atol=RTOL)


def test_heun_without_churn_is_edm_solver(kd):
    """k-diffusion's sample_heun (no churn) is the ``edm`` solver (bit for bit: the same operations)."""
    model, sigmas, x = _setup("nonlinear")
    ref = kd.sample_heun(model, x.clone(), sigmas, disable=True)
    sol = flowsde.solve(from_denoiser(model).pf_ode(), x, sigmas, method="edm")
    assert torch.equal(sol.x, ref)
    assert sol.nfe == 2 * (len(sigmas) - 1) - 1
