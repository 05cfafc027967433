"""Diffusion.log_likelihood on Gaussian-mixture data with the exact oracle networks.

The exact answer is the mixture's closed-form marginal ``log p_{t_eps}(x)``
(``GaussianMixture.log_prob_t``), and the prior is the exact marginal at ``T``, so the
only error is the solver's. Bound: 1e-3 nats at rtol = atol = 1e-5 (docs/likelihood.md): the
log-density channel is controlled to 1e-5 nats per step in absolute terms, and a solve
takes < 60 steps, so the accumulated error is <= 6e-4 even without cancellation.
"""

import math

import pytest
import torch

from flowsde import InputError
from flowsde.adapters import EDM, VP, Diffusion, Linear
from flowsde.validation import GaussianMixture, likelihood_mixture, schedule_predictions

DT = torch.float64
LOG2PI = math.log(2 * math.pi)


# one prediction type per schedule, so the conversions are exercised too
CASES = schedule_predictions()


@pytest.mark.parametrize("warp", [None, 1.0])
@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("sched,pred", CASES, ids=lambda c: type(c).__name__ if not isinstance(c, str) else c)
def test_mixture_logp_exact_within_1e3(sched, pred, d, warp):
    # the documented defaults (time_warp 1.5 on these spans in t >= 0, docs/likelihood.md, "Time warp"),
    # and the schedule's own time unwarped
    gm, g = likelihood_mixture(d)
    x = gm.sample(6, generator=g)
    dif = Diffusion(gm.oracle(sched, pred), sched, prediction=pred)
    T = torch.tensor(float(sched.t_max), dtype=DT)
    kw = {} if warp is None else dict(time_warp=warp)
    r = dif.log_likelihood(x, prior_logp=lambda z: gm.log_prob_t(sched, T, z), **kw)
    # a velocity model is evaluated at the data end t = 0 (its drift is defined there), the others at t_min
    t_eps = 0.0 if pred == "velocity" else float(sched.t_min)
    exact = gm.log_prob_t(sched, torch.tensor(t_eps, dtype=DT), x)
    assert r.success and r.stderr is None
    assert (r.logp - exact).abs().max() < 1e-3, (r.logp - exact, r.nfe)
    assert r.stats["t_eps"] == t_eps and r.stats["time"] == "t" and r.stats["time_warp"] == (warp or 1.5)


def test_log_snr_time_variable_agrees():
    gm, g = likelihood_mixture(3)
    x = gm.sample(4, generator=g)
    sched = VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    T = torch.tensor(1.0, dtype=DT)
    r = dif.log_likelihood(x, time="log_snr", prior_logp=lambda z: gm.log_prob_t(sched, T, z))
    exact = gm.log_prob_t(sched, torch.tensor(sched.t_min, dtype=DT), x)
    assert (r.logp - exact).abs().max() < 1e-3  # same bound as above


def _gauss(d, m, s2):
    return GaussianMixture(torch.ones(1, dtype=DT), m.reshape(1, d), s2 * torch.eye(d, dtype=DT).unsqueeze(0))


@pytest.mark.parametrize("kw, L", [(dict(bits=8), 256), (dict(levels=17), 17)])
def test_bits_per_dim_and_corrected_form_by_hand(kw, L):
    # Data N(m, s^2 I); VP; t_eps = 0.05 so the noise at t_eps matters. Everything below is a
    # closed form for Gaussians: p_eps = N(alpha m, v I), v = alpha^2 s^2 + sigma^2.
    d, s2 = 4, 0.25
    m = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=DT)
    gm = _gauss(d, m, s2)
    sched = VP()
    t_eps = 0.05
    dif = Diffusion(gm.oracle(sched, "score"), sched, prediction="score")
    k = torch.randint(0, L, (3, d), generator=torch.Generator().manual_seed(1)).to(DT)
    x = -1 + 2 * k / (L - 1)  # L-level data in [-1, 1]
    T = torch.tensor(1.0, dtype=DT)
    r = dif.log_likelihood(x, t_eps=t_eps, prior_logp=lambda z: gm.log_prob_t(sched, T, z), **kw,
                           corrected=True, generator=torch.Generator().manual_seed(5))
    # replay the generator: dequantization noise first, then e
    g = torch.Generator().manual_seed(5)
    y = x + (torch.rand(x.shape, generator=g, dtype=DT) - 0.5) * 2 / (L - 1)  # the bin centred on x
    e = torch.randn(x.shape, generator=g, dtype=DT)
    a = float(sched.alpha(torch.tensor(t_eps, dtype=DT)))
    s = float(sched.sigma(torch.tensor(t_eps, dtype=DT)))
    v = a * a * s2 + s * s

    def logN(z, mean, var):
        return (-0.5 * (z - mean).square() / var - 0.5 * math.log(2 * math.pi * var)).sum(1)

    logp_clean = logN(y, a * m, v)
    offset = math.log2((L - 1) / 2)  # -log2(bin width)
    bpd = -logp_clean / (d * math.log(2)) + offset
    x_eps = a * y + s * e
    score = -(x_eps - a * m) / v
    residual = logN(y, (x_eps + s * s * score) / a, (s / a) ** 2) + 0.5 * d * (1 + math.log(2 * math.pi * s * s))
    corrected = logN(x_eps, a * m, v) + residual
    # solver bound as in the mixture test; bpd scales nats by 1/(d ln 2) < 1
    assert (r.logp - logp_clean).abs().max() < 1e-3
    assert (r.bpd - bpd).abs().max() < 1e-3
    assert (r.residual - residual).abs().max() < 1e-9  # closed form vs closed form: round-off
    assert (r.logp_corrected - corrected).abs().max() < 1e-3
    assert (r.bpd_corrected + corrected / (d * math.log(2)) - offset).abs().max() < 1e-3
    assert r.stats["dequantized"] and r.stats["levels"] == L
    # batch-shared steps (the default): every sample's count is the batch's, both solves + the score call
    assert r.stats["nfe_per_sample"].tolist() == [r.nfe] * 3


def test_default_prior_and_hutchinson_run():
    gm, g = likelihood_mixture(2)
    x = gm.sample(3, generator=g)
    sched = VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    r = dif.log_likelihood(x, trace="hutchinson", probes=4, generator=torch.Generator().manual_seed(0))
    exact = gm.log_prob_t(sched, torch.tensor(sched.t_min, dtype=DT), x)
    assert r.logp_probes.shape == (3, 4) and (r.stderr > 0).all()
    # default prior N(0, I) vs the exact p_T (alpha(1) ~ 6e-3): a small mismatch, plus the
    # probe error; 6 standard errors + 0.01 nats of prior mismatch is a loose sanity band
    assert ((r.logp - exact).abs() < 6 * r.stderr + 1e-2).all()


def test_bad_input():
    gm, g = likelihood_mixture(2)
    sched = VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    x = gm.sample(2, generator=g)
    with pytest.raises(InputError, match="t_eps"):
        dif.log_likelihood(x, t_eps=0.0)
    with pytest.raises(InputError, match="time="):
        dif.log_likelihood(x, time="sigma")
    with pytest.raises(InputError, match="levels= or bits="):
        dif.log_likelihood(x, dequantize=True)
    with pytest.raises(InputError, match="not 256-level"):
        dif.log_likelihood(x.clamp(-0.9, 0.9), bits=8)  # continuous data is not on the 8-bit grid
    with pytest.raises(InputError, match="without levels= or bits="):
        dif.log_likelihood(x, data_range=(-1, 1))  # regression: bpd=None in silence before
    # regression: data in [-2, 2] with data_range (-1, 1) gave 15.6 bits/dim
    wide = torch.tensor([[-2.0, 0.5], [1.5, 2.0]], dtype=DT)
    for kw in (dict(bits=8), dict(levels=17, dequantize=False)):
        with pytest.raises(InputError, match="outside"):
            dif.log_likelihood(wide, data_range=(-1, 1), **kw)
    with pytest.raises(InputError, match="contradicts"):
        dif.log_likelihood(x, levels=17, bits=4)
    with pytest.raises(InputError):
        dif.log_likelihood(torch.randn(2, 3, dtype=DT))  # the mixture has D = 2
    lin = Linear()
    for time in ("log_snr", "vp_time"):  # alpha = 0 at t = 1: neither variable reaches the prior end
        with pytest.raises(InputError, match=f"time='{time}': log-SNR is .*-inf.*or time='t'"):
            Diffusion(gm.oracle(lin, "velocity"), lin, prediction="velocity").log_likelihood(x, time=time)
    with pytest.raises(InputError, match="rtol"):
        dif.log_likelihood(x, rtol=0.0)


def test_image_shaped_event_and_float32():
    # D = 4 data as (B, 1, 2, 2) images: the exact trace works on any event shape
    gm, g = likelihood_mixture(4)
    x = gm.sample(3, generator=g)
    sched = EDM()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    T = torch.tensor(float(sched.t_max), dtype=DT)
    prior = lambda z: gm.log_prob_t(sched, T, z.reshape(z.shape[0], -1).to(DT)).to(z.dtype)  # noqa: E731
    exact = gm.log_prob_t(sched, torch.tensor(float(sched.t_min), dtype=DT), x)
    r = dif.log_likelihood(x.reshape(3, 1, 2, 2), prior_logp=prior)
    assert r.z.shape == (3, 1, 2, 2)
    assert (r.logp - exact).abs().max() < 1e-3  # same bound as the mixture test
    r32 = dif.log_likelihood(x.reshape(3, 1, 2, 2).float(), prior_logp=prior)
    assert r32.logp.dtype == torch.float64 and r32.z.dtype == torch.float32
    # float32: tolerance 1e-5 plus round-off of ~40 steps on log-densities of size ~10 (~1e-4)
    assert (r32.logp.double() - exact).abs().max() < 2e-3


def test_result_types_and_one_signature():
    import inspect

    import flowsde
    from flowsde import LikelihoodResult

    # one result type: the core leaves the data-level fields None, the Diffusion fills them in
    x = torch.zeros(2, 2, dtype=torch.float64)
    core = flowsde.log_likelihood(flowsde.ODE(lambda t, x: -x), x, (0.0, 1.0), lambda z: -0.5 * (z * z).sum(1))
    assert isinstance(core, LikelihoodResult) and core.bpd is None and core.logp_corrected is None
    gm, g = likelihood_mixture(2)
    sched = VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    r = dif.log_likelihood(gm.sample(2, generator=g))
    assert isinstance(r, LikelihoodResult) and r.bpd is None and r.solver_error.shape == (2,)
    # Diffusion.log_likelihood spells out the core's options, from the core's own signature
    params = inspect.signature(dif.log_likelihood).parameters
    core = inspect.signature(flowsde.log_likelihood).parameters
    for name, p in core.items():
        if p.kind is p.KEYWORD_ONLY:
            assert params[name].default == p.default, name
    assert "levels" in params and "corrected" in params and "options" not in params
    with pytest.raises(InputError, match=r"unknown option\(s\) \['noise'\]"):
        dif.log_likelihood(gm.sample(2, generator=g), noise="gaussian")


def test_t_eps_rounding_clamped_real_excursion_refused():
    gm, g = likelihood_mixture(2)
    sched = EDM()
    dif = Diffusion(gm.oracle(sched, "x0"), sched, prediction="x0")
    x = gm.sample(2, generator=g)
    # k-diffusion's float32 sigma_min: 0.0019999996 for 0.002, off by rounding only
    r = dif.log_likelihood(x, t_eps=0.0019999996)
    assert r.stats["t_eps"] == 0.002
    with pytest.raises(InputError, match=r"log_likelihood: t_eps = 0\.0019 is outside .* by 0\.0001"):
        dif.log_likelihood(x, t_eps=0.0019)


def test_prior_end_where_alpha_vanishes_is_explained():
    # Linear with t_max = 1: alpha(1) = 0; an eps model's velocity divides by alpha there
    gm, g = likelihood_mixture(2)
    lin = Linear()
    dif = Diffusion(gm.oracle(lin, "eps"), lin, prediction="eps")
    with pytest.raises(InputError, match="alpha = 0.*velocity.*not N\\(0, sigma\\^2 I\\)"):
        dif.log_likelihood(gm.sample(2, generator=g))




def test_failed_sample_has_nan_numbers_in_every_field():
    # issue 21: a throw=False result held finite partial numbers for a failed sample; every number of
    # that sample is NaN (the corrected ones and the residual too), the status says why, and the other
    # samples are bit for bit those of a run without the failure
    gm, g = likelihood_mixture(2)
    sched = VP()
    inner = gm.oracle(sched, "eps")

    def net(x, t):
        out = inner(x, t)
        bad = (x[:, :1] > 5) & (t.reshape(-1, 1) > 0.3) if t.dim() else (x[:, :1] > 5) & (t > 0.3)
        return torch.where(bad, float("nan"), out)

    x = gm.sample(3, generator=g)
    x[1] = 8.0  # only sample 1 reaches the NaN
    kw = dict(corrected=True, per_sample=True, throw=False, trace="hutchinson", probes=2, bpd_tol=1e-3)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    ref = Diffusion(inner, sched, prediction="eps").log_likelihood(x, generator=gens(), **kw)
    r = Diffusion(net, sched, prediction="eps").log_likelihood(x, generator=gens(), **kw)
    assert r.status.tolist() == [0, 1, 0] and ref.status.tolist() == [0, 0, 0]
    ok = torch.tensor([True, False, True])
    for name in ("logp", "stderr", "solver_error", "prior_logp", "delta_logp", "logp_probes", "logp_corrected",
                 "stderr_corrected", "solver_error_corrected", "residual"):
        v, w = getattr(r, name), getattr(ref, name)
        assert torch.isnan(v[1]).all(), name
        assert torch.equal(v[ok], w[ok]), name
