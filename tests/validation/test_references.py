"""Analytic references against independent closed forms (float64).

Tolerances: every check compares two float64 evaluations of the same closed
form by different routes (scipy vs eigendecomposition, autograd vs analytic
gradient); they agree to round-off, ~1e-12 relative, so 1e-9 leaves a
1000x margin while any formula error is O(1).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from _vhelpers import ExpSchedule, mixture_2d
from flowsde import InputError
from flowsde.validation import OU, DiracMixture, GaussianMixture

SCHED = ExpSchedule()


def _schedules():
    """The inline schedule, plus the real ones once adapters.schedules exists."""
    out = [SCHED]
    try:
        from flowsde.adapters import schedules as S
    except ImportError:
        return out
    for name, kw in (("VP", {}), ("Cosine", {}), ("SubVP", {}), ("VE", {}), ("EDM", {}), ("Linear", {})):
        if hasattr(S, name):
            out.append(getattr(S, name)(**kw))
    if hasattr(S, "Discrete"):
        out.append(S.Discrete.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)))
    return out


def _scipy_logpdf(gm, x):
    dens = sum(w * stats.multivariate_normal(m, c).pdf(x) for w, m, c in
               zip(gm.weights.numpy(), gm.means.numpy(), gm.covs.numpy()))
    return np.log(dens)


def test_log_prob_matches_scipy():
    gm = mixture_2d()
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    np.testing.assert_allclose(gm.log_prob(x).numpy(), _scipy_logpdf(gm, x.numpy()), rtol=1e-10)


def test_log_prob_t_matches_scipy_marginal_and_event_shapes():
    gm = GaussianMixture(torch.tensor([1.0, 2.0, 1.0]), torch.randn(3, 4, dtype=torch.float64),
                         torch.stack([torch.eye(4, dtype=torch.float64) * v for v in (0.3, 1.0, 2.0)]))
    t = 0.7
    x = torch.randn(20, 2, 2, dtype=torch.float64)
    a, s = math.exp(-t), math.sqrt(1 - math.exp(-2 * t))
    ref = GaussianMixture(gm.weights, a * gm.means, a * a * gm.covs + s * s * torch.eye(4, dtype=torch.float64))
    expect = _scipy_logpdf(ref, x.reshape(20, 4).numpy())
    np.testing.assert_allclose(gm.log_prob_t(SCHED, t, x).numpy(), expect, rtol=1e-10)
    np.testing.assert_allclose(gm.marginal(SCHED, t).log_prob(x).numpy(), expect, rtol=1e-10)
    # per-sample times give the same as a shared time
    tt = torch.full((20,), t, dtype=torch.float64)
    np.testing.assert_allclose(gm.log_prob_t(SCHED, tt, x).numpy(), expect, rtol=1e-10)


@pytest.mark.parametrize("sched", _schedules(), ids=lambda s: type(s).__name__)
def test_score_is_autograd_of_log_prob(sched):
    gm = mixture_2d()
    B = 30
    lo, hi = max(float(getattr(sched, "t_min", 0.0)), 1e-3), float(getattr(sched, "t_max", 1.0))
    t = torch.linspace(lo, hi * 0.999, B, dtype=torch.float64)
    x = gm.sample(B) * sched.alpha(t)[:, None] + sched.sigma(t)[:, None] * torch.randn(B, 2, dtype=torch.float64)
    x.requires_grad_(True)
    g = torch.autograd.grad(gm.log_prob_t(sched, t, x).sum(), x)[0]
    torch.testing.assert_close(gm.score_t(sched, t, x.detach()), g, rtol=1e-9, atol=1e-9)


def test_oracle_identities_and_posterior_mean():
    gm = mixture_2d()
    B = 40
    t = torch.linspace(0.05, 2.5, B, dtype=torch.float64)
    a, s = SCHED.alpha(t)[:, None], SCHED.sigma(t)[:, None]
    x = torch.randn(B, 2, dtype=torch.float64) * 1.5
    o = {p: gm.oracle(SCHED, p)(x, t) for p in ("eps", "score", "x0", "v", "velocity")}
    torch.testing.assert_close(o["score"], -o["eps"] / s, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o["x0"], (x - s * o["eps"]) / a, rtol=1e-9, atol=1e-9)  # Tweedie
    torch.testing.assert_close(o["v"], a * o["eps"] - s * o["x0"], rtol=1e-10, atol=1e-10)
    u = SCHED.d_alpha(t)[:, None] * o["x0"] + SCHED.d_sigma(t)[:, None] * o["eps"]
    torch.testing.assert_close(o["velocity"], u, rtol=1e-10, atol=1e-10)
    # velocity = PF-ODE drift f x - g^2/2 score
    torch.testing.assert_close(o["velocity"], -x - o["score"], rtol=1e-9, atol=1e-9)
    # x0 oracle = posterior mean by Bayes' rule, computed per component independently
    logw, posts = [], []
    for k in range(2):
        mu, S = gm.means[k], gm.covs[k]
        C = a[:, :, None] ** 2 * S + s[:, :, None] ** 2 * torch.eye(2, dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal(a * mu, covariance_matrix=C)
        logw.append(gm.weights[k].log() + mvn.log_prob(x))
        # E[x0 | x, k] = mu + a S C^{-1} (x - a mu)  (S, C symmetric)
        posts.append(mu + a * torch.linalg.solve(C, (x - a * mu)[..., None])[..., 0] @ S)
    r = torch.softmax(torch.stack(logw, 1), 1)
    post = r[:, :1] * posts[0] + r[:, 1:] * posts[1]
    torch.testing.assert_close(o["x0"], post, rtol=1e-9, atol=1e-9)


def test_oracle_accepts_float32_and_0dim_time():
    gm = mixture_2d()
    x = torch.randn(5, 1, 2)
    out = gm.oracle(SCHED, "eps")(x, torch.tensor(0.5))
    assert out.shape == x.shape and out.dtype == torch.float32
    ref = gm.oracle(SCHED, "eps")(x.double().reshape(5, 2), torch.full((5,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out.reshape(5, 2).double(), ref, rtol=1e-6, atol=1e-6)  # float32 round-off


def test_x0_oracle_at_alpha_zero_is_prior_mean():
    gm = mixture_2d()

    class Lin:
        def alpha(self, t):
            return 1 - t

        def sigma(self, t):
            return t

    x = torch.randn(4, 2, dtype=torch.float64)
    out = gm.oracle(Lin(), "x0")(x, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(out, (gm.weights[:, None] * gm.means).sum(0).expand(4, 2), rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(n=st.integers(1, 6), d=st.integers(1, 3), t=st.floats(0.01, 2.0), seed=st.integers(0, 10_000))
def test_dirac_denoiser_is_edm_softmax_average(n, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(n, d, generator=g, dtype=torch.float64)
    dm = DiracMixture(data)
    x = torch.randn(7, d, generator=g, dtype=torch.float64)
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = SCHED.alpha(tt), SCHED.sigma(tt)
    # EDM (Karras et al. 2022, eq. 57) in its own units: D(x/s; sigma = sigma/alpha)
    xe, se = x / a, s / a
    logits = -((xe[:, None, :] - data[None]) ** 2).sum(-1) / (2 * se ** 2)
    expect = torch.softmax(logits, 1) @ data
    torch.testing.assert_close(dm.denoiser(SCHED)(x, tt), expect, rtol=1e-9, atol=1e-9)
    # and the marginal is the mixture of N(alpha y_n, sigma^2 I)
    ref = GaussianMixture(torch.ones(n), a * data, torch.full((n,), float(s * s), dtype=torch.float64))
    torch.testing.assert_close(dm.log_prob_t(SCHED, tt, x), ref.log_prob(x), rtol=1e-10, atol=1e-10)


def test_dirac_errors():
    dm = DiracMixture(torch.randn(3, 2))
    with pytest.raises(InputError, match="no density"):
        dm.log_prob(torch.zeros(1, 2))
    with pytest.raises(InputError, match="singular"):
        dm.score_t(SCHED, 0.0, torch.zeros(2, 2, dtype=torch.float64))


def test_sampling_moments():
    gm = mixture_2d()
    x = gm.sample(20000, generator=torch.Generator().manual_seed(1))
    mean = (gm.weights[:, None] * gm.means).sum(0)
    # CLT: per-coordinate std of the sample mean <= sqrt(max var / n) ~ 0.009; 5 sd => false alarm < 1e-6
    sd = math.sqrt(float(x.var(0).max()) / 20000)
    assert (x.mean(0) - mean).abs().max() < 5 * sd


def test_bad_mixture_input():
    with pytest.raises(InputError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(InputError, match="weights"):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(InputError, match="NaN"):
        GaussianMixture([1.0], [[0.0, float("nan")]], [1.0])
    with pytest.raises(InputError, match="prod"):
        mixture_2d().log_prob(torch.zeros(3, 3))
    with pytest.raises(InputError, match="prediction"):
        mixture_2d().oracle(SCHED, "noise")


def test_ou_closed_form():
    ou = OU(b=0.7, s=1.3)
    t = torch.tensor(1.9, dtype=torch.float64)
    x0 = torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    torch.testing.assert_close(ou.mean(t, x0), x0 * math.exp(-0.7 * 1.9))
    torch.testing.assert_close(ou.var(t), torch.tensor(1.69 * (1 - math.exp(-2 * 0.7 * 1.9)) / 1.4,
                                                       dtype=torch.float64))
    torch.testing.assert_close(OU(0.0, 2.0).var(t), 4 * t)
    # the mean/variance ODEs m' = -b m, v' = -2 b v + s^2 hold (autograd in t)
    tt = t.clone().requires_grad_(True)
    dv = torch.autograd.grad(ou.var(tt), tt)[0]
    torch.testing.assert_close(dv, -2 * 0.7 * ou.var(t) + 1.69)
    sde = ou.sde()
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(sde.drift(t, x), -0.7 * x)
    # exact samples: mean within 5 CLT standard deviations (false alarm < 1e-6)
    xs = ou.sample(t, torch.full((20000, 1), 1.0, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert abs(float(xs.mean()) - math.exp(-0.7 * 1.9)) < 5 * math.sqrt(float(ou.var(t)) / 20000)
