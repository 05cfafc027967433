"""k-diffusion's remaining samplers against k-diffusion 0.1.1.post1 itself (issue 22): ``dpm_2_ancestral``,
``dpmpp_sde``, ``dpm_fast`` and ``dpm_adaptive``.

Set-up as ``test_kdiffusion.py``: the peer's ``sampling.py`` (loaded alone), a denoiser ``model(x, sigma)``
run by flowsde as ``from_denoiser(model)`` (EDM schedule, ``alpha = 1``, ``sigma = t``) and by the peer as
that problem's ``D`` (one function on both sides: :func:`_peer`), float64 states, the same grid, and the
noise fed from flowsde:

* ``dpm_2_ancestral``, ``dpm_fast`` / ``dpm_adaptive`` with ``eta > 0``: a ``noise_sampler`` returning
  flowsde's per-sample draws (``flowsde._internal.randn`` with the same seeds), in flowsde's order;
* ``dpmpp_sde``: Brownian increments, either flowsde's :class:`flowsde.BrownianPath` handed to the peer
  as its ``noise_sampler``, or the peer's own ``BrownianTreeNoiseSampler`` handed to flowsde as its
  noise source (``dW(a, b) = ns(a, b) sqrt|b - a|``, the increment of the peer's tree).

``dpm_fast`` / ``dpm_adaptive``: the peer forms its times with ``torch.tensor(sigma)`` in torch's default
dtype, float32 (the log-sigma grid, the step sizes, ``rtol``/``atol``): run with the default dtype set to
float64 the peer is all float64 and flowsde equals it to 1e-12, NFE and accepted/rejected counts included;
with the peer's float32 times the two agree to what float32 times allow (measured: ``dpm_fast`` at
``n = 10, 20`` within 1e-5 relative, ``dpm_adaptive`` with the defaults at the same NFE within 1e-5).

Tolerance (``RTOL = 1e-12``): the formulas are the peer's; the evaluation differs in round-off only
(the peer forms ``exp(-(-log sigma))``, Python floats against 0-dim tensors); measured <= 2.7e-15
(``dpm_2_ancestral``, ``dpmpp_sde``), 2e-14 (``dpm_adaptive``), 6.1e-13 (``dpm_fast`` at ``n = 4, 5`` over
``[0.002, 80]``: steps of 4-6 units of log-SNR amplify a one-ulp difference by ``expm1(h)``).

Schedules other than EDM: flowsde works in the scaled state ``x/alpha`` at ``sigma/alpha``, which is
what k-diffusion's wrappers of VP models feed its samplers; the VP tests hand the peer that model,
``model(y, r) = D(t(r), alpha(t(r)) y)``, on the grid's ``r = sigma/alpha``.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsde
import flowsde._internal
from flowsde.adapters import Diffusion, from_denoiser
from flowsde.adapters.schedules import EDM, VP

from _samplers_peers import F64, gen, kdiffusion_sampling, mixture, nonlinear_denoiser

RTOL = 1e-12
SEEDS = [11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def kd():
    return kdiffusion_sampling()


@pytest.fixture
def f64_default():
    """torch's default dtype float64 for the peer's ``torch.tensor(sigma)`` (restored after)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _model(name):
    return {"nonlinear": nonlinear_denoiser, "exact": mixture().oracle(EDM(), "x0")}[name]


def _latents(n=len(SEEDS), scale=80.0, seed=1):
    return torch.randn(n, 2, dtype=F64, generator=gen(seed)) * scale


def _grid(kind, n):
    if kind == "edm":
        return flowsde.grids.edm(0.002, 80.0, steps=n, rho=7.0, final_zero=True)
    if kind == "edm-no-zero":  # ends at sigma_min > 0
        return flowsde.grids.edm(0.01, 40.0, steps=n, rho=7.0)
    return torch.cat([torch.linspace(math.log(80.0), math.log(0.002), n, dtype=F64).exp(),  # log-uniform + 0
                      torch.zeros(1, dtype=F64)])


def _peer(model):
    """The peer's ``model(x, sigma)``: flowsde's ``D`` of ``from_denoiser(model)``, so that both evaluate one
    function (the adapter's x0 path rounds differently from ``model`` by ~1e-13 at sigma ~ 0.002, which a
    step dividing by a small sigma amplifies beyond 1e-12)."""
    problem = from_denoiser(model).pf_ode()
    return lambda x, sigma: problem.denoise(sigma.reshape(-1)[0].to(F64), x)


def _noise_sampler(x, seeds=SEEDS):
    gens = flowsde.per_sample_generators(seeds)
    return lambda sigma, sigma_next: flowsde._internal.randn(x.shape, gens, F64)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL)


# ---- dpm_2_ancestral ------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["nonlinear", "exact"])
@pytest.mark.parametrize("grid_kind", ["edm", "edm-no-zero", "log"])
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7)])
def test_dpm_2_ancestral_equals_peer(kd, model_name, grid_kind, eta, s_noise):
    model, sigmas = _model(model_name), _grid(grid_kind, 12)
    x = _latents(scale=float(sigmas[0]))
    ref = kd.sample_dpm_2_ancestral(_peer(model), x.clone(), sigmas, disable=True, eta=eta, s_noise=s_noise,
                                    noise_sampler=_noise_sampler(x))
    problem = from_denoiser(model).reverse_sde(eta * eta)
    sol = flowsde.solve(problem, x, sigmas, method="dpm_2_ancestral", s_noise=s_noise,
                        generator=flowsde.per_sample_generators(SEEDS))
    _close(sol.x, ref)
    n, to_zero = len(sigmas) - 1, float(sigmas[-1]) == 0
    assert sol.nfe == flowsde.solvers.get_solver("dpm_2_ancestral").nfe(n, to_zero_noise=to_zero) == 2 * n - to_zero
    # the peer's eta, given as an option, agrees with the problem's beta
    sol2 = flowsde.solve(problem, x, sigmas, method="dpm_2_ancestral", eta=eta, s_noise=s_noise,
                         generator=flowsde.per_sample_generators(SEEDS))
    assert torch.equal(sol2.x, sol.x)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 31 - 1), steps=st.integers(1, 20), eta=st.sampled_from([0.3, 1.0]))
def test_dpm_2_ancestral_equals_peer_over_seeds_and_steps(seed, steps, eta):
    kd = kdiffusion_sampling()
    sigmas = _grid("edm", steps)
    seeds = [seed, seed + 1, seed + 2]
    x = torch.randn(3, 2, dtype=F64, generator=gen(seed)) * 80.0
    ref = kd.sample_dpm_2_ancestral(_peer(nonlinear_denoiser), x.clone(), sigmas, disable=True, eta=eta,
                                    noise_sampler=_noise_sampler(x, seeds))
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).reverse_sde(eta * eta), x, sigmas,
                        method="dpm_2_ancestral", generator=flowsde.per_sample_generators(seeds))
    _close(sol.x, ref)


# ---- dpmpp_sde --------------------------------------------------------------------------------------


class _PeerTree(flowsde._internal.NoiseSource):
    """The peer's ``BrownianTreeNoiseSampler`` as flowsde's noise source: ``dW(a, b)`` is the tree's increment
    ``W(b) - W(a)`` (``ns(a, b) = (W(b) - W(a))/sqrt|b - a|``)."""

    def __init__(self, ns):
        self.ns = ns

    def randn_like(self, x):  # pragma: no cover - dpmpp_sde draws increments only
        raise AssertionError("dpmpp_sde draws Brownian increments only")

    def dW(self, t0, t1, sqrt_abs_dt, x):
        return self.ns(t0, t1) * sqrt_abs_dt


@pytest.mark.parametrize("model_name", ["nonlinear", "exact"])
@pytest.mark.parametrize("grid_kind", ["edm", "log"])
@pytest.mark.parametrize("eta, s_noise, r1", [(1.0, 1.0, 0.5), (0.5, 1.0, 0.5), (1.0, 0.8, 0.3)])
def test_dpmpp_sde_equals_peer_on_flowsde_brownian_path(kd, model_name, grid_kind, eta, s_noise, r1):
    model, sigmas = _model(model_name), _grid(grid_kind, 10)
    x = _latents(scale=float(sigmas[0]))
    path = flowsde.BrownianPath(0.0, float(sigmas[0]), x.shape, generator=7)

    def ns(sigma, sigma_next):  # flowsde's increment over the same interval, normalised
        a, b = float(sigma), float(sigma_next)
        return path.increment(a, b) / abs(b - a) ** 0.5

    ref = kd.sample_dpmpp_sde(_peer(model), x.clone(), sigmas, disable=True, eta=eta, s_noise=s_noise, r=r1,
                              noise_sampler=ns)
    sol = flowsde.solve(from_denoiser(model).reverse_sde(eta * eta), x, sigmas, method="dpmpp_sde",
                        s_noise=s_noise, r1=r1, generator=path)
    _close(sol.x, ref)
    n = len(sigmas) - 1
    assert sol.nfe == 2 * n - 1 == flowsde.solvers.get_solver("dpmpp_sde").nfe(n, to_zero_noise=True)


@pytest.mark.parametrize("eta", [1.0, 0.6])
def test_dpmpp_sde_equals_peer_with_its_brownian_tree(kd, eta):
    """The peer's default noise (``BrownianTreeNoiseSampler`` over ``[sigma_min, sigma_max]``, per-sample
    seeds) drives both."""
    model, sigmas = nonlinear_denoiser, _grid("edm", 10)
    x = _latents(scale=80.0)
    pos = sigmas[sigmas > 0]

    def tree():
        return kd.BrownianTreeNoiseSampler(x, pos.min(), pos.max(), seed=SEEDS)

    ref = kd.sample_dpmpp_sde(_peer(model), x.clone(), sigmas, disable=True, eta=eta, noise_sampler=tree())
    sol = flowsde.solve(from_denoiser(model).reverse_sde(eta * eta), x, sigmas, method="dpmpp_sde",
                        generator=_PeerTree(tree()))
    _close(sol.x, ref)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 31 - 1), steps=st.integers(1, 16))
def test_dpmpp_sde_equals_peer_over_seeds_and_steps(seed, steps):
    kd = kdiffusion_sampling()
    sigmas = _grid("edm", steps)
    x = torch.randn(3, 2, dtype=F64, generator=gen(seed)) * 80.0
    path = flowsde.BrownianPath(0.0, 80.0, x.shape, generator=seed)
    ref = kd.sample_dpmpp_sde(_peer(nonlinear_denoiser), x.clone(), sigmas, disable=True,
                              noise_sampler=lambda s, sn: path.increment(s, sn) / abs(float(sn) - float(s)) ** 0.5)
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).reverse_sde(1.0), x, sigmas, method="dpmpp_sde",
                        generator=path)
    _close(sol.x, ref)


def test_dpmpp_sde_noise_is_brownian_with_a_generator():
    """With a plain generator the two draws of a step are increments of one Brownian path: the second
    normal (over ``[t0, t1]``) has correlation ``sqrt(|t_s - t0|/|t1 - t0|)`` with the first, as the
    peer's tree gives them; each is standard normal."""
    from flowsde.solvers import DPMppSDE

    seen = []

    class Spy(flowsde._internal.NoiseSource):
        def __init__(self):
            self.g = gen(5)

        def dW(self, t0, t1, sq, x):
            w = torch.randn(x.shape, generator=self.g, dtype=x.dtype) * sq
            seen.append((float(t0), float(t1), w))
            return w

    sigmas = torch.tensor([10.0, 1.0], dtype=F64)
    x = torch.zeros(20000, 1, dtype=F64)
    flowsde.solve(from_denoiser(lambda x, s: 0 * x).reverse_sde(1.0), x, sigmas, method=DPMppSDE(), generator=Spy())
    (t0, ts, w_s), (_, t1, w_rest) = seen
    assert t0 == 10.0 and t1 == 1.0 and 1.0 < ts < 10.0
    z1, z2 = w_s / abs(ts - t0) ** 0.5, (w_s + w_rest) / abs(t1 - t0) ** 0.5
    corr = float((z1 * z2).mean() / (z1.std() * z2.std()))
    assert abs(corr - math.sqrt(abs(ts - t0) / abs(t1 - t0))) < 4 / math.sqrt(20000)
    assert abs(float(z2.std()) - 1) < 0.03


# ---- dpm_fast ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["nonlinear", "exact"])
@pytest.mark.parametrize("ends", [(80.0, 0.002), (14.6, 0.03)])
@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 6, 10, 11, 20])
def test_dpm_fast_equals_peer(kd, f64_default, model_name, ends, nfe):
    model = _model(model_name)
    x = _latents(scale=ends[0])
    ref = kd.sample_dpm_fast(_peer(model), x.clone(), ends[1], ends[0], nfe, disable=True)
    sol = flowsde.solve(from_denoiser(model).pf_ode(), x, torch.tensor(ends, dtype=F64), method="dpm_fast", nfe=nfe)
    _close(sol.x, ref)
    assert sol.nfe == nfe == flowsde.solvers.get_solver("dpm_fast", nfe=nfe).nfe(1)
    assert sol.steps == sol.accepted == nfe // 3 + 1 and sol.rejected == 0


@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 0.9)])
def test_dpm_fast_with_noise_equals_peer(kd, f64_default, eta, s_noise):
    x = _latents()
    ref = kd.sample_dpm_fast(_peer(nonlinear_denoiser), x.clone(), 0.002, 80.0, 10, disable=True, eta=eta,
                             s_noise=s_noise, noise_sampler=_noise_sampler(x))
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).reverse_sde(eta * eta), x,
                        torch.tensor([80.0, 0.002], dtype=F64), method="dpm_fast", nfe=10, s_noise=s_noise,
                        generator=flowsde.per_sample_generators(SEEDS))
    _close(sol.x, ref)


@pytest.mark.parametrize("nfe", [10, 20])
def test_dpm_fast_against_the_peer_in_float32_times(kd, nfe):
    """The peer as shipped forms its log-sigma grid in float32: the results agree to that resolution."""
    assert torch.get_default_dtype() == torch.float32
    x = _latents()
    ref = kd.sample_dpm_fast(_peer(nonlinear_denoiser), x.clone(), 0.002, 80.0, nfe, disable=True)
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).pf_ode(), x, torch.tensor([80.0, 0.002], dtype=F64),
                        method="dpm_fast", nfe=nfe)
    torch.testing.assert_close(sol.x, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sol.x, ref, rtol=1e-12, atol=1e-12)  # the float32 times do show


def test_dpm_fast_is_batch_independent_and_runs_in_float32():
    """Per-sample generators: a sample's result does not depend on its batch (unlike ``dpm_adaptive``);
    a float32 state gives the float64 result to float32 round-off."""
    x = _latents()
    grid = torch.tensor([80.0, 0.002], dtype=F64)
    sde = from_denoiser(nonlinear_denoiser).reverse_sde(0.25)
    whole = flowsde.solve(sde, x, grid, method="dpm_fast", nfe=10, generator=flowsde.per_sample_generators(SEEDS))
    part = flowsde.solve(sde, x[2:], grid, method="dpm_fast", nfe=10,
                         generator=flowsde.per_sample_generators(SEEDS[2:]))
    assert torch.equal(whole.x[2:], part.x)
    ode = from_denoiser(nonlinear_denoiser).pf_ode()
    for method, opts in (("dpm_fast", dict(nfe=10)), ("dpm_adaptive", {})):
        x64 = flowsde.solve(ode, x, grid, method=method, **opts).x
        x32 = flowsde.solve(ode, x.float(), grid, method=method, **opts).x
        assert x32.dtype == torch.float32
        torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-4)


# ---- dpm_adaptive -----------------------------------------------------------------------------------


def _info_matches(sol, info):
    assert (sol.nfe, sol.steps, sol.accepted, sol.rejected) == (info["nfe"], info["steps"], info["n_accept"],
                                                                info["n_reject"])


@pytest.mark.parametrize("model_name", ["nonlinear", "exact"])
@pytest.mark.parametrize("ends", [(80.0, 0.002), (14.6, 0.03)])
def test_dpm_adaptive_defaults_equal_peer_defaults(kd, f64_default, model_name, ends):
    """k-diffusion's defaults on both sides: the same result, NFE, tries, accepted and rejected steps."""
    model = _model(model_name)
    x = _latents(scale=ends[0])
    ref, info = kd.sample_dpm_adaptive(_peer(model), x.clone(), ends[1], ends[0], disable=True, return_info=True)
    sol = flowsde.solve(from_denoiser(model).pf_ode(), x, torch.tensor(ends, dtype=F64), method="dpm_adaptive")
    _close(sol.x, ref)
    _info_matches(sol, info)
    assert info["n_reject"] >= 0 and sol.nfe == 3 * sol.steps


@pytest.mark.parametrize("options", [
    dict(order=2),
    dict(rtol=0.01, atol=0.001),
    dict(order=3, rtol=0.02, pcoeff=0.3, icoeff=0.9, dcoeff=0.1, accept_safety=0.9, h_init=0.2),
])
def test_dpm_adaptive_options_equal_peer(kd, f64_default, options):
    x = _latents()
    ref, info = kd.sample_dpm_adaptive(_peer(nonlinear_denoiser), x.clone(), 0.002, 80.0, disable=True,
                                       return_info=True, **options)
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).pf_ode(), x, torch.tensor([80.0, 0.002], dtype=F64),
                        method="dpm_adaptive", **options)
    _close(sol.x, ref)
    _info_matches(sol, info)
    assert info["n_reject"] > 0 or options.get("order") == 2  # the controller's rejections are exercised


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_dpm_adaptive_with_noise_equals_peer(kd, f64_default, eta):
    x = _latents()
    ref, info = kd.sample_dpm_adaptive(_peer(nonlinear_denoiser), x.clone(), 0.002, 80.0, disable=True,
                                       return_info=True, eta=eta, noise_sampler=_noise_sampler(x))
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).reverse_sde(eta * eta), x,
                        torch.tensor([80.0, 0.002], dtype=F64), method="dpm_adaptive",
                        generator=flowsde.per_sample_generators(SEEDS))
    _close(sol.x, ref)
    _info_matches(sol, info)


def test_dpm_adaptive_defaults_against_the_peer_in_float32_times(kd):
    """The peer as shipped (float32 times, rtol/atol): the same NFE and steps, results within 1e-5."""
    assert torch.get_default_dtype() == torch.float32
    x = _latents()
    ref, info = kd.sample_dpm_adaptive(_peer(nonlinear_denoiser), x.clone(), 0.002, 80.0, disable=True,
                                       return_info=True)
    sol = flowsde.solve(from_denoiser(nonlinear_denoiser).pf_ode(), x, torch.tensor([80.0, 0.002], dtype=F64),
                        method="dpm_adaptive")
    _info_matches(sol, info)
    torch.testing.assert_close(sol.x, ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 31 - 1), batch=st.integers(1, 6), order=st.sampled_from([2, 3]))
def test_dpm_adaptive_equals_peer_over_seeds(seed, batch, order):
    kd = kdiffusion_sampling()
    x = torch.randn(batch, 2, dtype=F64, generator=gen(seed)) * 80.0
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref, info = kd.sample_dpm_adaptive(_peer(nonlinear_denoiser), x.clone(), 0.002, 80.0, disable=True, order=order,
                                           return_info=True)
        sol = flowsde.solve(from_denoiser(nonlinear_denoiser).pf_ode(), x, torch.tensor([80.0, 0.002]),
                            method="dpm_adaptive", order=order)
    finally:
        torch.set_default_dtype(old)
    _close(sol.x, ref)
    _info_matches(sol, info)


def test_dpm_adaptive_error_norm_is_over_the_batch():
    """The documented exception to batch independence: a sample's result depends on the batch it is in."""
    x = _latents()
    grid = torch.tensor([80.0, 0.002], dtype=F64)
    ode = from_denoiser(nonlinear_denoiser).pf_ode()
    whole = flowsde.solve(ode, x, grid, method="dpm_adaptive")
    alone = flowsde.solve(ode, x[:1], grid, method="dpm_adaptive")
    assert whole.steps != alone.steps or not torch.equal(whole.x[:1], alone.x)


def test_dpm_adaptive_max_steps():
    x = _latents()
    grid = torch.tensor([80.0, 0.002], dtype=F64)
    ode = from_denoiser(nonlinear_denoiser).pf_ode()
    with pytest.raises(flowsde.SolveError, match="max_steps=3"):
        flowsde.solve(ode, x, grid, method="dpm_adaptive", max_steps=3)
    sol = flowsde.solve(ode, x, grid, method="dpm_adaptive", max_steps=3, throw=False)
    assert sol.steps == 3 and bool((sol.status == int(flowsde.Status.MAX_STEPS)).all())
    assert bool((sol.t_final > 0.002).all())


# ---- other schedules: the scaled state, as k-diffusion's VP wrappers feed the peer ---------------------


def _vp_peer_model(problem):
    def model(y, r):
        t = problem.t_from_ratio(r[0].to(F64))
        return problem.denoise(t, problem.alpha(t) * y)
    return model


@pytest.mark.parametrize("method, kd_name", [("dpm_2_ancestral", "sample_dpm_2_ancestral"),
                                             ("dpmpp_sde", "sample_dpmpp_sde")])
def test_vp_schedule_equals_peer_in_the_scaled_state_deterministic_limit(kd, method, kd_name):
    d = Diffusion(mixture().oracle(VP(), "x0"), VP(), prediction="x0")
    problem = d.reverse_sde(0.0)
    grid = torch.cat([flowsde.grids.log_uniform(1.0, 1e-3, 11), torch.zeros(1, dtype=F64)])
    r = problem.sigma(grid) / problem.alpha(grid)
    x = _latents(scale=1.0)
    ref = getattr(kd, kd_name)(_vp_peer_model(problem), x.clone() / float(problem.alpha(grid[0])), r, disable=True,
                               eta=0.0, noise_sampler=lambda a, b: torch.zeros_like(x))
    sol = flowsde.solve(problem, x, grid, method=method)
    _close(sol.x, ref * float(problem.alpha(grid[-1])))


def test_vp_schedule_dpm_2_ancestral_with_noise_equals_peer(kd):
    d = Diffusion(mixture().oracle(VP(), "x0"), VP(), prediction="x0")
    problem = d.reverse_sde(1.0)
    grid = torch.cat([flowsde.grids.log_uniform(1.0, 1e-3, 11), torch.zeros(1, dtype=F64)])
    r = problem.sigma(grid) / problem.alpha(grid)
    x = _latents(scale=1.0)
    ref = kd.sample_dpm_2_ancestral(_vp_peer_model(problem), x.clone() / float(problem.alpha(grid[0])), r,
                                    disable=True, noise_sampler=_noise_sampler(x))
    sol = flowsde.solve(problem, x, grid, method="dpm_2_ancestral", generator=flowsde.per_sample_generators(SEEDS))
    _close(sol.x, ref * float(problem.alpha(grid[-1])))


@pytest.mark.parametrize("method, options", [("dpm_fast", dict(nfe=11)), ("dpm_adaptive", {})])
def test_vp_schedule_fast_and_adaptive_equal_peer(kd, f64_default, method, options):
    d = Diffusion(mixture().oracle(VP(), "x0"), VP(), prediction="x0")
    problem = d.pf_ode()
    grid = torch.tensor([1.0, 1e-3], dtype=F64)
    r = (problem.sigma(grid) / problem.alpha(grid)).tolist()
    x = _latents(scale=1.0)
    y = x.clone() / float(problem.alpha(grid[0]))
    if method == "dpm_fast":
        ref = kd.sample_dpm_fast(_vp_peer_model(problem), y, r[1], r[0], 11, disable=True)
    else:
        ref, info = kd.sample_dpm_adaptive(_vp_peer_model(problem), y, r[1], r[0], disable=True, return_info=True)
    sol = flowsde.solve(problem, x, grid, method=method, **options)
    _close(sol.x, ref * float(problem.alpha(grid[-1])))
    if method == "dpm_adaptive":
        _info_matches(sol, info)


# ---- input checks -----------------------------------------------------------------------------------


def test_bad_input_is_refused():
    ode = from_denoiser(nonlinear_denoiser).pf_ode()
    x = _latents()
    sigmas = _grid("edm", 5)
    with pytest.raises(flowsde.InputError, match="takes the two end points"):
        flowsde.solve(ode, x, sigmas, method="dpm_fast", nfe=5)
    with pytest.raises(flowsde.InputError, match="sigma > 0 at both ends"):
        flowsde.solve(ode, x, torch.tensor([80.0, 0.0], dtype=F64), method="dpm_adaptive")
    with pytest.raises(flowsde.InputError, match="needs its budget"):
        flowsde.solve(ode, x, torch.tensor([80.0, 0.002], dtype=F64), method="dpm_fast")
    with pytest.raises(flowsde.InputError, match="nfe"):
        flowsde.solvers.DPMFast(nfe=0)
    with pytest.raises(flowsde.InputError, match="order must be 2"):
        flowsde.solvers.DPMAdaptive(order=1)
    with pytest.raises(flowsde.InputError, match="rtol"):
        flowsde.solvers.DPMAdaptive(rtol=-1.0)
    with pytest.raises(flowsde.InputError, match="s_noise"):
        flowsde.solvers.DPM2Ancestral(s_noise=-1.0)
    with pytest.raises(flowsde.InputError, match="r1"):
        flowsde.solvers.DPMppSDE(r1=0.0)
    with pytest.raises(flowsde.InputError, match="stochastic"):  # the ancestral samplers solve the SDE
        flowsde.solve(ode, x, sigmas, method="dpm_2_ancestral")
    with pytest.raises(flowsde.InputError, match="disagrees"):
        flowsde.solve(from_denoiser(nonlinear_denoiser).reverse_sde(1.0), x, sigmas, method="dpmpp_sde", eta=0.5)


# ---- orders -----------------------------------------------------------------------------------------


def _vp_order_problem():
    return Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")


@pytest.mark.slow
@pytest.mark.parametrize("nfe_of_m, declared", [(lambda m: 3 * m + 2, 3), (lambda m: 3 * m + 1, 2)])
def test_dpm_fast_order(nfe_of_m, declared):
    """dpm_fast's steps are set by its budget: with ``m`` steps, budgets ``3m + 2`` (last step DPM-Solver-2)
    converge at order 3 and ``3m + 1`` (last step DPM-Solver-1) at order 2, in the step ``h`` in ``lam``;
    VP probability-flow ODE of the mixture, ``t: 0.4 -> 0.02``, against RK45 at 1e-11 (the ``vp-mixture``
    set-up of tests/method_table.py)."""
    d = _vp_order_problem()
    x0 = torch.randn(32, 2, dtype=F64, generator=gen(0)) * 1.2
    grid = torch.tensor([0.4, 0.02], dtype=F64)
    exact = flowsde.solve(d.pf_ode(), x0, grid, method="rk45", rtol=1e-11, atol=1e-11).x
    ms = [8, 16, 32, 64, 128]  # measured slopes: 2.90 (3m + 2), 2.11 (3m + 1)
    errs = [float((flowsde.solve(d.pf_ode(), x0, grid, method="dpm_fast", nfe=nfe_of_m(m)).x - exact).abs().max())
            for m in ms]
    slope = -torch.linalg.lstsq(torch.stack([torch.log(torch.tensor(ms, dtype=F64) + 1),
                                             torch.ones(len(ms), dtype=F64)], 1),
                                torch.log(torch.tensor(errs, dtype=F64))[:, None]).solution[0, 0].item()
    assert -0.25 < slope - declared < 0.75, (errs, slope)


@pytest.mark.slow
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_meets_its_tolerance_on_the_exact_mixture(order):
    """The adaptive pair's error follows rtol: tightening rtol by 100x cuts the error against RK45, and the
    NFE grows as ``rtol^(-1/order)`` roughly (within a factor of 2). Measured (max error, NFE) at rtol 1e-3 / 1e-5:
    order 2: (1.7e-3, 58) / (2.0e-5, 552); order 3: (1.2e-3, 36) / (1.6e-5, 129)."""
    d = _vp_order_problem()
    x0 = torch.randn(32, 2, dtype=F64, generator=gen(0)) * 1.2
    grid = torch.tensor([0.4, 0.02], dtype=F64)
    exact = flowsde.solve(d.pf_ode(), x0, grid, method="rk45", rtol=1e-11, atol=1e-11).x
    out = {}
    for rtol in (1e-3, 1e-5):
        sol = flowsde.solve(d.pf_ode(), x0, grid, method="dpm_adaptive", order=order, rtol=rtol, atol=rtol)
        out[rtol] = (float((sol.x - exact).abs().max()), sol.nfe)
    (e1, n1), (e2, n2) = out[1e-3], out[1e-5]
    assert e2 < e1 / 10, out
    ratio = n2 / n1
    expect = 100 ** (1 / order)
    assert expect / 2 < ratio < expect * 2, out
