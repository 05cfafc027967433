"""Diffusion: every prediction type x every schedule against an exact analytic data distribution.

The data distribution is a single Gaussian N(m, s0^2 I) (written inline, independent of the
library): x_t | x_0 ~ N(alpha x_0, sigma^2 I) gives the marginal N(alpha m, (alpha^2 s0^2 + sigma^2) I),
score -(x - alpha m)/var_t, posterior mean E[x0|x] = m + alpha s0^2 (x - alpha m)/var_t and
E[eps|x] = sigma (x - alpha m)/var_t. The exact "network" of each prediction type is built
from these closed forms.

Tolerance: float64 throughout; a conversion multiplies round-off by at most its condition
number (1/alpha, 1/sigma, the ratio of derivative magnitudes: below ~1e4 over the drawn
parameters), so results agree to ~1e-12 relative to the size of the quantity; REL = 1e-8
leaves a 1e4 margin while any wrong coefficient gives an O(1e-2) or larger relative error.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsde
from flowsde import InputError
from flowsde.adapters import PREDICTIONS, Diffusion, GaussianPrior
from flowsde.adapters.schedules import EDM, VE, VP, Cosine, Discrete, Linear, SubVP

f64 = torch.float64
REL = 1e-8
IDENT = lambda t: t  # noqa: E731  Discrete label: call the net with the schedule's own time


def _discrete(seed: int, n: int) -> Discrete:
    g = torch.Generator().manual_seed(seed)
    return Discrete.from_betas(1e-4 + 0.2 * torch.rand(n, generator=g, dtype=f64), label=IDENT)


SCHEDULES = [VP(), SubVP(), Cosine(), VE(), EDM(), Linear(), _discrete(0, 50)]


@st.composite
def schedules(draw):
    kind = draw(st.sampled_from(["VP", "SubVP", "Cosine", "VE", "EDM", "Linear", "Discrete"]))
    if kind in ("VP", "SubVP"):
        b0 = draw(st.floats(0.05, 2.0))
        return (VP if kind == "VP" else SubVP)(beta_min=b0, beta_max=b0 + draw(st.floats(0.0, 30.0)))
    if kind == "Cosine":
        return Cosine(s=draw(st.floats(1e-3, 0.1)))
    if kind == "VE":
        smin = draw(st.floats(1e-2, 1.0))
        return VE(sigma_min=smin, sigma_max=smin * draw(st.floats(2.0, 1e3)))
    if kind == "EDM":
        return EDM(sigma_min=draw(st.floats(1e-2, 0.1)), sigma_max=draw(st.floats(1.0, 100.0)))
    if kind == "Linear":
        return Linear(t_min=1e-3)
    return _discrete(draw(st.integers(0, 10**6)), draw(st.integers(2, 60)))


class Gauss:
    """Exact data distribution N(m, s0^2 I) pushed through a schedule."""

    def __init__(self, m: torch.Tensor, s0: float):
        self.m, self.s0 = m, s0

    def parts(self, sch, t, x):
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        a, s, da, ds = (c(t)[:, None] for c in (sch.alpha, sch.sigma, sch.d_alpha, sch.d_sigma))
        var = a**2 * self.s0**2 + s**2
        r = x - a * self.m
        score = -r / var
        x0 = self.m + a * self.s0**2 * r / var
        eps = s * r / var
        return dict(score=score, x0=x0, eps=eps, velocity=da * x0 + ds * eps, v=a * eps - s * x0)

    def net(self, sch, prediction):
        return lambda x, t: self.parts(sch, t, x)[prediction]


def _assert_rel(out, ref, rel=REL):
    scale = float(ref.abs().max()) + 1e-300
    err = float((out - ref).abs().max())
    assert err <= rel * scale, f"relative error {err / scale:.3g} > {rel:g}"


def _t_range(sch, us):
    """Times in [t_lo, t_max] with t_lo >= t_min where sigma/alpha >= 1e-3: there every conversion's
    round-off amplification (at worst ~|x|/(sigma^2 |score|) for an x0-prediction's score) stays
    below ~1e6, so REL holds; the sigma -> 0 end is tested with its own bound below."""
    lo = max(sch.t_min, float(sch.t_from_sigma_ratio(torch.tensor(1e-3, dtype=f64))))
    return lo + torch.as_tensor(us, dtype=f64) * (sch.t_max - lo)


def _setup(sch, us, seed):
    g = torch.Generator().manual_seed(seed)
    D = 3
    gauss = Gauss(torch.randn(D, generator=g, dtype=f64), 0.3 + float(torch.rand(1, generator=g, dtype=f64)))
    t = _t_range(sch, us)
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    x = a * gauss.m + torch.sqrt(a**2 * gauss.s0**2 + s**2) * torch.randn(len(us), D, generator=g, dtype=f64)
    return gauss, t, x


UNITS = st.lists(st.floats(0.0, 0.999), min_size=1, max_size=5)


@settings(max_examples=70)
@given(sch=schedules(), pred=st.sampled_from(PREDICTIONS), us=UNITS, seed=st.integers(0, 2**31 - 1))
def test_every_conversion_is_exact(sch, pred, us, seed):
    if pred == "v" and not sch.variance_preserving:
        pred = "eps"
    gauss, t, x = _setup(sch, us, seed)
    dif = Diffusion(gauss.net(sch, pred), sch, pred)
    ref = gauss.parts(sch, t, x)
    for name in ("score", "eps", "x0", "velocity") + (("v",) if sch.variance_preserving else ()):
        out = getattr(dif, name)(t, x)
        assert out.shape == x.shape and out.dtype == f64
        _assert_rel(out, ref[name])
    # t as 0-dim gives the same as t as (B,)
    t0 = t[0]
    _assert_rel(dif.score(t0, x), gauss.parts(sch, t0.expand(len(us)), x)["score"])


@settings(max_examples=50)
@given(sch=schedules(), pred=st.sampled_from(PREDICTIONS), us=UNITS, seed=st.integers(0, 2**31 - 1),
       beta=st.floats(0.0, 3.0))
def test_sde_family_coefficients(sch, pred, us, seed, beta):
    if pred == "v" and not sch.variance_preserving:
        pred = "velocity"
    gauss, t, x = _setup(sch, us, seed)
    dif = Diffusion(gauss.net(sch, pred), sch, pred)
    score = gauss.parts(sch, t, x)["score"]
    f, g2 = sch.f(t)[:, None], sch.g2(t)[:, None]
    _assert_rel(dif.pf_ode().drift(t, x), f * x - g2 / 2 * score)
    assert dif.pf_ode().diffusion(t, x) is None
    tmax = sch.t_max
    for b, bt in ((beta, torch.full_like(t, beta)), (lambda tt: beta * tt / tmax, beta * t / tmax)):
        rev, fwd = dif.reverse_sde(b), dif.forward_sde(b)
        bt = bt[:, None]
        _assert_rel(rev.drift(t, x), f * x - (1 + bt) / 2 * g2 * score)
        _assert_rel(fwd.drift(t, x), f * x - (1 - bt) / 2 * g2 * score)
        for sde in (rev, fwd):
            g = sde.diffusion(t, x)
            assert g.shape == (len(us), 1) and sde.noise_type == "scalar" and sde.has_score
            torch.testing.assert_close(g, torch.sqrt(bt * g2), rtol=1e-12, atol=0)  # same closed form: round-off
        _assert_rel(rev.score(t, x), score)


def _oracle_in_schedule_time(gm, sch, pred):
    """The mixture's oracle called with the schedule's continuous time (``time="schedule"``)."""
    try:
        return gm.oracle(sch, pred, time="schedule")
    except TypeError:  # references.py without the ``time`` option: always schedule time
        return gm.oracle(sch, pred)


def test_gaussian_mixture_oracle():
    """A 2-component mixture (flowsde.validation.GaussianMixture, full covariances) through every
    schedule x prediction: the adapter's score equals the mixture's exact score."""
    from flowsde.validation import GaussianMixture

    gm = GaussianMixture(torch.tensor([0.35, 0.65], dtype=f64), torch.tensor([[1.0, -0.5], [-1.0, 1.5]], dtype=f64),
                         torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]], dtype=f64))
    g = torch.Generator().manual_seed(7)
    for sch in SCHEDULES:
        t = _t_range(sch, [0.0, 0.013, 0.37, 0.8, 0.999])
        # x drawn from the marginal at its own t: an x0-prediction's score -(x - alpha x0)/sigma^2 is
        # ill-conditioned (cancellation ~ |x|/(sigma^2 |score|)) far out in the tails at tiny sigma.
        x = torch.cat([gm.marginal(sch, float(ti)).sample(1, generator=g) for ti in t])
        ref = gm.score_t(sch, t, x)
        for pred in PREDICTIONS:
            if pred == "v" and not sch.variance_preserving:
                continue
            dif = Diffusion(_oracle_in_schedule_time(gm, sch, pred), sch, pred)
            _assert_rel(dif.score(t, x), ref, rel=1e-7)  # same float64 bound; mixture responsibilities add ~10x
            drift = sch.f(t)[:, None] * x - sch.g2(t)[:, None] / 2 * ref
            _assert_rel(dif.pf_ode().drift(t, x), drift, rel=1e-7)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_x0_prediction_near_data_end_is_round_off_limited(sch):
    """At t_min an x0-model's score -(x - alpha x0)/sigma^2 cancels: the error is bounded by the round-off
    of x and x0 (a few ulps of |x|) amplified by 1/sigma^2 -- a property of the parameterization."""
    gauss = Gauss(torch.tensor([0.3, -0.2], dtype=f64), 0.5)
    t = torch.full((4,), sch.t_min, dtype=f64)
    a, s = float(sch.alpha(t[0])), float(sch.sigma(t[0]))
    x = a * gauss.m + math.sqrt(a**2 * 0.25 + s**2) * torch.randn(4, 2, dtype=f64)
    out = Diffusion(gauss.net(sch, "x0"), sch, "x0").score(t, x)
    err = float((out - gauss.parts(sch, t, x)["score"]).abs().max())
    assert err <= 16 * torch.finfo(f64).eps * float(x.abs().max() + 1) / s**2


@pytest.mark.parametrize("label", ["index", "score_sde", "dpm_solver"])
def test_discrete_labels_agree_with_mixture_oracle(label):
    """GaussianMixture's default oracle takes the network label (``time="net"``) and maps it back;
    Diffusion calls the network with ``schedule.net_time(t)``: the two conventions must agree."""
    from flowsde.validation import GaussianMixture

    gm = GaussianMixture(torch.tensor([0.4, 0.6], dtype=f64), torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=f64),
                         torch.tensor([[[0.2, 0.0], [0.0, 0.3]], [[0.4, 0.1], [0.1, 0.2]]], dtype=f64))
    sch = Discrete.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=f64), label=label)
    t = torch.tensor([0.0013, 0.25, 0.5004, 0.97], dtype=f64)
    x = torch.cat([gm.marginal(sch, float(ti)).sample(1, generator=torch.Generator().manual_seed(2)) for ti in t])
    net = gm.oracle(sch, "eps", time="net")
    _assert_rel(Diffusion(net, sch, "eps").score(t, x), gm.score_t(sch, t, x), rel=1e-7)


def test_one_net_call_per_drift_and_net_sees_schedule_time():
    calls = []
    sch = _discrete(1, 20)
    gauss = Gauss(torch.zeros(2, dtype=f64), 1.0)

    def net(x, t):
        calls.append(t.clone())
        return gauss.parts(sch, t, x)["eps"]

    dif = Diffusion(net, sch, "eps")
    x, t = torch.randn(4, 2, dtype=f64), torch.tensor(0.5, dtype=f64)
    for problem in (dif.reverse_sde(1.0), dif.forward_sde(lambda tt: tt), dif.forward_sde(0.5), dif.pf_ode()):
        calls.clear()
        problem.drift(t, x)
        assert len(calls) == 1 and calls[0].shape == (4,)
    # beta = 1 forward is the noising SDE dx = f x dt + g dW: no network call, drift exactly f x
    calls.clear()
    torch.testing.assert_close(dif.forward_sde(1.0).drift(t, x), sch.f(t) * x, rtol=0, atol=0)
    assert calls == []
    # the Discrete label is applied: label="index" calls the net with N t - 1
    seen = []
    d2 = Diffusion(lambda x, lab: seen.append(lab) or torch.zeros_like(x), Discrete(sch.alphas_cumprod), "eps")
    d2.score(torch.tensor(0.5, dtype=f64), x)
    torch.testing.assert_close(seen[0], torch.full((4,), 20 * 0.5 - 1, dtype=f64))


def test_dtype_policy():
    sch = VP()
    gauss = Gauss(torch.tensor([0.5, -1.0], dtype=f64), 0.7)
    seen = []

    def net32(x, t):
        seen.append((x.dtype, t.dtype))
        return gauss.parts(sch, t.to(f64), x.to(f64))["x0"].to(x.dtype)

    x = torch.randn(6, 2, dtype=f64)
    t = torch.linspace(0.01, 1.0, 6, dtype=f64)
    exact = gauss.parts(sch, t, x)["score"]
    for dt in (None, f64):
        dif = Diffusion(net32, sch, "x0", compute_dtype=dt)
        out = dif.score(t.float(), x.float())
        assert out.dtype == torch.float32 and seen[-1] == (torch.float32, torch.float32)
        # float32 round-off in x, t and the net output, amplified by 1/sigma^2 <= ~60 here
        _assert_rel(out.double(), exact, rel=1e-4)


def test_prior():
    for sch, std in ((VP(), math.sqrt(1 - math.exp(-0.5 * 19.9 - 0.1))), (VE(), 50.0), (EDM(), 80.0), (Linear(), 1.0)):
        p = Diffusion(lambda x, t: x, sch, "eps").prior()
        assert isinstance(p, GaussianPrior)
        assert p.std == pytest.approx(std, rel=1e-12)
    p = GaussianPrior(2.0)
    x = torch.randn(5, 3, 2, dtype=f64)
    ref = torch.distributions.Normal(torch.tensor(0.0, dtype=f64), torch.tensor(2.0, dtype=f64)).log_prob(x).sum((1, 2))
    torch.testing.assert_close(p.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    # per-sample generators: sample i depends only on generator i (batch-size independent)
    a = p.sample((3, 4), generator=flowsde.per_sample_generators([1, 2, 3]), dtype=f64)
    b = p.sample((2, 4), generator=flowsde.per_sample_generators([1, 2]), dtype=f64)
    assert torch.equal(a[:2], b) and a.shape == (3, 4)
    assert p.sample((2, 3), generator=torch.Generator().manual_seed(0)).dtype == torch.get_default_dtype()


def test_log_likelihood_delegates():
    """``Diffusion.log_likelihood`` = ``adapters._likelihood.log_likelihood(self, ...)``; with the exact
    prior at T and the exact trace it recovers the exact Gaussian marginal log-density at t_eps."""
    from flowsde.adapters import _likelihood

    sch = VP()
    gauss = Gauss(torch.tensor([0.5, -0.5], dtype=f64), 0.8)
    dif = Diffusion(gauss.net(sch, "eps"), sch, "eps")
    x = torch.randn(3, 2, dtype=f64, generator=torch.Generator().manual_seed(3))

    def normal_logp(t):
        a, s = float(sch.alpha(torch.tensor(t, dtype=f64))), float(sch.sigma(torch.tensor(t, dtype=f64)))
        return lambda z: torch.distributions.Normal(a * gauss.m, math.sqrt(a**2 * 0.64 + s**2)).log_prob(z).sum(1)

    kw = dict(t_eps=1e-3, prior_logp=normal_logp(1.0), rtol=1e-8, atol=1e-8)
    a = dif.log_likelihood(x, **kw)
    b = _likelihood.log_likelihood(dif, x, **kw)
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=0)  # same deterministic computation
    # rtol = atol = 1e-8 on the ODE: the accumulated error is a few 1e-8 per unit of log-density
    torch.testing.assert_close(a.logp, normal_logp(1e-3)(x), rtol=0, atol=1e-5)


def test_velocity_model_has_score_and_sde_family():
    """A flow-matching velocity model on the Linear path gets a score and an SDE family; the PF-ODE of a
    velocity model is its own output, defined at both ends t = 0 and t = 1."""
    sch = Linear()
    gauss = Gauss(torch.tensor([1.0, -2.0], dtype=f64), 0.5)
    dif = Diffusion(gauss.net(sch, "velocity"), sch, "velocity")
    x = torch.randn(4, 2, dtype=f64)
    for tv in (0.0, 1.0):
        t = torch.tensor(tv, dtype=f64)
        _assert_rel(dif.pf_ode().drift(t, x), gauss.parts(sch, t, x)["velocity"])
    t = torch.tensor(1.0, dtype=f64)
    _assert_rel(dif.score(t, x), -x)  # at t = 1 the marginal is N(0, I)
    with pytest.raises(InputError, match="alpha"):
        dif.reverse_sde(1.0).drift(t, x)  # g^2 = 2t/(1-t) is infinite at t = 1


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_construction():
    net = lambda x, t: x  # noqa: E731
    with pytest.raises(InputError, match="prediction"):
        Diffusion(net, VP(), "noise")
    for sch in (VE(), EDM(), Linear(), SubVP()):
        with pytest.raises(InputError, match="alpha\\^2 \\+ sigma\\^2"):
            Diffusion(net, sch, "v")
    with pytest.raises(InputError, match="callable"):
        Diffusion("unet", VP())
    with pytest.raises(InputError, match="Schedule"):
        Diffusion(net, "vp")
    with pytest.raises(InputError, match="dtype"):
        Diffusion(net, VP(), compute_dtype="float64")
    with pytest.raises(InputError, match="check_t"):
        Diffusion(net, VP(), check_t="yes")
    with pytest.raises(InputError, match="undefined"):
        Diffusion(net, VE(), "eps").v(torch.tensor(0.5), torch.zeros(2, 2))
    for beta in (-0.5, float("nan"), "1"):
        with pytest.raises(InputError, match="beta"):
            Diffusion(net, VP()).reverse_sde(beta)
    with pytest.raises(InputError, match=">= 0"):
        Diffusion(net, VP()).forward_sde(lambda t: -t).drift(torch.tensor(0.5), torch.zeros(2, 2))


def test_bad_net_output():
    x = torch.zeros(3, 4)
    with pytest.raises(InputError, match=r"returned \(3, 2\).*shape of x"):
        Diffusion(lambda x, t: x[:, :2], VP()).score(torch.tensor(0.5), x)
    with pytest.raises(InputError, match="returned list"):
        Diffusion(lambda x, t: [0.0], VP()).score(torch.tensor(0.5), x)
    # non-finite output: caught by flowsde.solve's end-of-solve finiteness check
    dif = Diffusion(lambda x, t: torch.full_like(x, float("nan")), VP())
    with pytest.raises(flowsde.SolveError):
        flowsde.solve(dif.pf_ode(), x, flowsde.grids.uniform(1.0, 1e-3, 4), method="euler")


def test_bad_times():
    x = torch.zeros(3, 2, dtype=f64)
    dif = Diffusion(lambda x, t: torch.zeros_like(x), VP(), "eps")
    for tv in (0.0, 1.5, -0.1):
        with pytest.raises(InputError, match=r"t = .*valid range"):
            dif.score(torch.tensor(tv, dtype=f64), x)
    with pytest.raises(InputError, match="valid range"):
        dif.pf_ode().drift(torch.tensor([0.5, 0.0, 0.5], dtype=f64), x)
    with pytest.raises(InputError, match=r"shape \(B,\)"):
        dif.score(torch.tensor([0.5, 0.5], dtype=f64), x)
    # the endpoints themselves are valid, also as float32 (bounds compared in t's dtype)
    dif.score(torch.tensor(VP().t_min, dtype=torch.float32), x.float())
    dif.score(torch.tensor(1.0), x.float())
    # the native prediction is passed through without a range check; check_t=False skips all checks
    dif.eps(torch.tensor(0.0, dtype=f64), x)
    Diffusion(lambda x, t: torch.zeros_like(x), VP(), "eps", check_t=False).velocity(torch.tensor(1.5, dtype=f64), x)
    # Linear: alpha(1) = 0, so x0 / velocity from an eps model is undefined at t = 1 (score is fine)
    lin = Diffusion(lambda x, t: x.clone(), Linear(), "eps")
    one = torch.tensor(1.0, dtype=f64)
    lin.score(one, x)
    with pytest.raises(InputError, match="alpha"):
        lin.x0(one, x)
    with pytest.raises(InputError, match="alpha"):
        lin.pf_ode().drift(one, x)


def test_inputs_not_mutated():
    sch = Cosine()
    gauss = Gauss(torch.zeros(2, dtype=f64), 1.0)
    dif = Diffusion(gauss.net(sch, "v"), sch, "v", compute_dtype=f64)
    x, t = torch.randn(3, 2, dtype=f64), torch.full((3,), 0.4, dtype=f64)
    x_c, t_c = x.clone(), t.clone()
    for m in ("score", "eps", "x0", "v", "velocity"):
        getattr(dif, m)(t, x)
    dif.reverse_sde(0.5).drift(t, x)
    assert torch.equal(x, x_c) and torch.equal(t, t_c)


class _Net(torch.nn.Module):
    """``net(x, t)``: a fixed nonlinear map; ``bad = True`` makes it return a wrong shape."""

    def __init__(self):
        super().__init__()
        self.bad = False

    def forward(self, x, t):
        y = torch.tanh(x) * (1 + t.reshape((-1,) + (1,) * (x.dim() - 1)))
        return y[:, :1] if self.bad else y


@pytest.mark.parametrize("call", ["velocity", "x0", "eps", "reverse_drift", "pf_drift", "reverse_diffusion"])
def test_repeated_grid_time_same_answer_as_a_fresh_diffusion(call):
    # A grid time's checks and coefficients are kept after its first call (docs/adapters.md, "Guards"):
    # later calls with another batch size, dtype or device-less (meta) input must still get the full
    # path's answer and errors.
    def fn(d):
        return {"velocity": d.velocity, "x0": d.x0, "eps": d.eps, "reverse_drift": d.reverse_sde(0.5).drift,
                "pf_drift": d.pf_ode().drift, "reverse_diffusion": d.reverse_sde(0.5).diffusion}[call]

    net = _Net()
    dif = Diffusion(net, VP(), "eps")
    f = fn(dif)
    t = torch.tensor(0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g),
              torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g)):
        for _ in range(3):  # first call, the call that keeps the entry, the kept entry
            got = f(t, x)
            want = fn(Diffusion(net, VP(), "eps"))(t, x)
            assert got.dtype == x.dtype and torch.equal(got, want)
    with pytest.raises(InputError, match="meta"):
        f(t, torch.empty(4, 3, device="meta"))
    if call == "reverse_diffusion":  # no network call
        return
    net.bad = True
    with pytest.raises(InputError, match=r"returned \(4, 1\) for x of shape \(4, 3\)"):
        f(t, torch.randn(4, 3))


def test_repeated_grid_time_keeps_the_range_check():
    dif = Diffusion(_Net(), VP(), "eps")
    t_bad = torch.tensor(1.5, dtype=torch.float64)
    x = torch.randn(2, 3)
    for _ in range(3):  # refused every time: nothing is kept for a refused time
        with pytest.raises(InputError, match="above t_max"):
            dif.velocity(t_bad, x)
    unchecked = Diffusion(dif.net, dif.schedule, dif.prediction, check_t=False)  # the switch is configuration
    unchecked.velocity(t_bad, x)
    unchecked.velocity(t_bad, x)
    with pytest.raises(InputError, match="above t_max"):
        dif.velocity(t_bad, x)


# ============================================================ one Diffusion, many problems (issue 20)
def _family_calls(D):
    """Each call of one Diffusion's problems and conversions that keeps something per grid time."""
    return [("reverse beta=0 g", lambda: D.reverse_sde(beta=0.0).diffusion),
            ("reverse beta=0.5 g", lambda: D.reverse_sde(beta=0.5).diffusion),
            ("reverse diffusion=0.5 g", lambda: D.reverse_sde(diffusion=0.5).diffusion),
            ("reverse diffusion=0.5 drift", lambda: D.reverse_sde(diffusion=0.5).drift),
            ("reverse beta=0.5 drift", lambda: D.reverse_sde(beta=0.5).drift),
            ("reverse beta=1 drift", lambda: D.reverse_sde(1.0).drift),
            ("reverse beta(t) drift", lambda: D.reverse_sde(beta=lambda t: 0.5 + 0 * t).drift),
            ("forward beta=1 g", lambda: D.forward_sde(1.0).diffusion),
            ("forward beta=1 drift", lambda: D.forward_sde(1.0).drift),
            ("forward beta=0.3 g", lambda: D.forward_sde(beta=0.3).diffusion),
            ("forward beta=0.3 drift", lambda: D.forward_sde(beta=0.3).drift),
            ("forward diffusion=0.3 drift", lambda: D.forward_sde(diffusion=0.3).drift),
            ("pf drift", lambda: D.pf_ode().drift),
            ("velocity", lambda: D.velocity), ("score", lambda: D.score), ("x0", lambda: D.x0),
            ("eps", lambda: D.eps), ("v", lambda: D.v)]


@pytest.mark.parametrize("order", ["forward", "backward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_diffusion_many_problems_equal_a_fresh_one(order, dtype):
    # Every problem of one long-lived Diffusion, at the same grid time, in sequence, gives bit for bit
    # what the same call on a fresh Diffusion gives (reverse_sde(beta=0.5) after beta=0 gave g = 0;
    # beta=w and diffusion=w shared an entry; forward_sde(0.3) after forward_sde(1) gave the wrong g).
    net = _Net()
    D = Diffusion(net, VP(), "eps")
    t = torch.tensor(0.3, dtype=f64)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    calls = _family_calls(D)
    for name, mk in (calls if order == "forward" else calls[::-1]) * 2:
        f = mk()
        for _ in range(2):  # the call that keeps the entry, the kept entry
            got = f(t, x)
            want = dict(_family_calls(Diffusion(net, VP(), "eps")))[name]()(t, x)
            assert got.dtype == want.dtype and torch.equal(got, want), name


def test_one_diffusion_em_family_equals_fresh():
    # Euler-Maruyama at beta = 1 after beta = 0 (and after diffusion = 1) on one Diffusion, same grid and seed
    net = _Net()
    D = Diffusion(net, VP(), "eps")
    ts = flowsde.grids.uniform(1.0, 1e-3, 20).to(f64)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=f64)

    def em(prob):
        return flowsde.solve(prob, x, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(1)).x

    em(D.reverse_sde(0.0))
    em(D.reverse_sde(diffusion=1.0))
    assert torch.equal(em(D.reverse_sde(1.0)), em(Diffusion(net, VP(), "eps").reverse_sde(1.0)))


@pytest.mark.parametrize("attr", ["net", "schedule", "prediction", "compute_dtype", "check_t", "_cache", "pf_ode"])
def test_diffusion_is_immutable(attr):
    D = Diffusion(_Net(), VP(), "eps")
    with pytest.raises(AttributeError, match="immutable.*Build a new one"):
        setattr(D, attr, None)
    with pytest.raises(AttributeError, match="immutable"):
        delattr(D, attr)


def test_a_users_annotation_may_be_set():
    # nothing kept depends on it (compare_solvers reads event_shape); the answers stay a fresh object's
    D, fresh = Diffusion(_Net(), VP(), "eps"), Diffusion(_Net(), VP(), "eps")
    D.event_shape = (3,)
    assert D.event_shape == (3,)
    t, x = torch.tensor(0.4, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    assert torch.equal(D.eps(t, x), fresh.eps(t, x))
    del D.event_shape
    assert not hasattr(D, "event_shape")


def test_diffusion_holds_the_net_by_reference():
    # the weights may change (training): nothing is kept on them, the next call sees the new weights
    net = torch.nn.Linear(3, 3).double()
    D = Diffusion(lambda x, t: net(x), VP(), "eps")
    t, x = torch.tensor(0.3, dtype=f64), torch.randn(4, 3, dtype=f64)
    a = D.reverse_sde(0.5).drift(t, x)
    b = D.reverse_sde(0.5).drift(t, x)
    with torch.no_grad():
        net.weight.mul_(2.0)
    c = D.reverse_sde(0.5).drift(t, x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(c, Diffusion(lambda x, t: net(x), VP(), "eps").reverse_sde(0.5).drift(t, x))


def test_discrete_schedule_refuses_an_in_place_change():
    # Discrete keeps per-device tables derived from alphas_cumprod: changing it in place is refused
    sched = Discrete.from_betas(torch.linspace(1e-4, 0.02, 10, dtype=f64))
    t = torch.tensor(0.5, dtype=f64)
    sched.alpha(t)
    sched.alphas_cumprod[3] = 0.5
    with pytest.raises(InputError, match="modified in place"):
        sched.alpha(t)
