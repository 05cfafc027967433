"""flowsde.log_likelihood against exact answers that need no adapters.

* dx/dt = A x: x_T = expm(T A) x, and the divergence is the constant tr A, so
  log p_0(x) = log p_T(x_T) + T tr A exactly.
* Gaussian data N(0, diag s^2) under sigma(t) = t (EDM): the PF-ODE drift
  u = t x / (s^2 + t^2) is written by hand and p_t = N(0, diag(s^2 + t^2)).
Tolerances: with rtol = atol = 1e-6 the log-density channel is controlled to 1e-6 per
step; 1e-4 (100 x tol) bounds the accumulated global error (< 100 steps taken).
"""

import math
import warnings

import pytest
import torch

import flowsde
from flowsde import InputError, SolveError, Status
from flowsde import bits_per_dim, dequantize, log_likelihood

LOG2PI = math.log(2 * math.pi)


def std_normal_logp(z):
    D = z[0].numel()
    return -0.5 * z.reshape(z.shape[0], -1).square().sum(1) - 0.5 * D * LOG2PI


def _gauss_logp(x, var):
    """log N(x; 0, diag(var)), var of the event shape, x (B, *event)."""
    x = x.reshape(x.shape[0], -1)
    var = var.reshape(1, -1)
    return (-0.5 * x.square() / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)


def _edm_gauss_ode(s2):
    # p_t = N(0, s^2 + t^2); score = -x / (s^2 + t^2); PF-ODE dx/dt = -sigma sigma' score = t x / (s^2 + t^2)
    def u(t, x):
        tt = t.reshape((-1,) + (1,) * (x.dim() - 1)) if t.dim() else t
        return tt * x / (s2 + tt**2)
    return flowsde.ODE(u)


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("span", [(0.0, 2.0), (2.0, 0.0)])
def test_linear_ode_exact_change(per_sample, span):
    torch.manual_seed(1)
    A = 0.4 * torch.randn(6, 6, dtype=torch.float64)
    ode = flowsde.ODE(lambda t, x: (x.reshape(x.shape[0], -1) @ A.T).reshape(x.shape))
    x = torch.randn(4, 2, 3, dtype=torch.float64)  # event shape (2, 3), D = 6
    x_copy = x.clone()
    r = log_likelihood(ode, x, span, std_normal_logp, rtol=1e-6, atol=1e-6, per_sample=per_sample)
    T = span[1] - span[0]
    zT = (x.reshape(4, -1) @ torch.linalg.matrix_exp(T * A).T).reshape(x.shape)
    exact = std_normal_logp(zT) + T * torch.trace(A)
    assert torch.equal(x, x_copy)
    assert r.stderr is None and r.success
    assert (r.logp - exact).abs().max() < 1e-4
    assert (r.delta_logp - T * torch.trace(A)).abs().max() < 1e-4
    assert r.nfe > 0 and not r.logp.requires_grad


@pytest.mark.parametrize("d", [2, 16])
def test_gaussian_data_hand_written_pf_ode(d):
    torch.manual_seed(2)
    s2 = torch.linspace(0.2, 2.0, d, dtype=torch.float64) ** 2
    T = 5.0
    x = torch.randn(8, d, dtype=torch.float64) * s2.sqrt()
    r = log_likelihood(_edm_gauss_ode(s2), x, (0.0, T), lambda z: _gauss_logp(z, s2 + T**2), rtol=1e-6, atol=1e-6)
    assert (r.logp - _gauss_logp(x, s2)).abs().max() < 1e-4


def _cubic_ode():
    # dx/dt = -x^3: stiffer for larger |x|, so samples of different sizes need different step counts
    return flowsde.ODE(lambda t, x: -x**3)


@pytest.mark.filterwarnings("ignore:log_likelihood.*steps were taken in the last:RuntimeWarning")  # x' = -x^3 from 3
def test_nfe_per_sample_in_per_sample_and_batch_shared_modes():
    x = torch.tensor([[0.1, 0.0], [1.0, -1.0], [3.0, 2.0]], dtype=torch.float64)
    kw = dict(rtol=1e-6, atol=1e-6)
    ps = log_likelihood(_cubic_ode(), x, (0.0, 2.0), std_normal_logp, per_sample=True, **kw)
    per = ps.stats["nfe_per_sample"]
    assert per.dtype == torch.int64 and per.shape == (3,) and per.device == x.device
    assert len(set(per.tolist())) == 3 and int(per.max()) == ps.nfe
    # each sample's count is what it costs alone: solved as a batch of one it takes the same evaluations
    for i in range(3):
        alone = log_likelihood(_cubic_ode(), x[i:i + 1], (0.0, 2.0), std_normal_logp, per_sample=True, **kw)
        assert alone.nfe == int(per[i]) and alone.stats["nfe_per_sample"].tolist() == [alone.nfe]
    bt = log_likelihood(_cubic_ode(), x, (0.0, 2.0), std_normal_logp, per_sample=False, **kw)
    assert bt.stats["nfe_per_sample"].tolist() == [bt.nfe] * 3
    rs = log_likelihood(_cubic_ode(), x, (0.0, 2.0), std_normal_logp, per_sample=False,
                        error_estimate="global", **kw)
    per = rs.stats["nfe_per_sample"]
    # every solve a sample took part in is counted; the batch's count is the sum over the ladder's solves,
    # all of which the sample at the highest level took part in
    assert int(per.max()) == rs.nfe and (per >= 2).all()


def test_nfe_per_sample_with_torchdiffeq_is_the_batch_count():
    pytest.importorskip("torchdiffeq")
    x = torch.tensor([[0.1, 0.0], [3.0, 2.0]], dtype=torch.float64)
    r = log_likelihood(_cubic_ode(), x, (0.0, 2.0), std_normal_logp, rtol=1e-6, atol=1e-6,
                       method="torchdiffeq:dopri5")
    assert r.stats["nfe_per_sample"].tolist() == [r.nfe] * 2


def test_float32_data():
    s2 = torch.full((4,), 0.5)
    x = torch.randn(3, 4) * s2.sqrt()
    r = log_likelihood(_edm_gauss_ode(s2), x, (0.0, 3.0), lambda z: _gauss_logp(z, s2 + 9.0))
    assert r.logp.dtype == torch.float64 and r.z.dtype == torch.float32  # log-densities in float64
    # tolerance 1e-5 plus float32 round-off of a sum of ~60 steps of O(1) terms (~1e-5)
    assert (r.logp.double() - _gauss_logp(x.double(), s2.double())).abs().max() < 1e-3


def _mlp_ode(D, seed=3):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(16, D + 1, generator=g, dtype=torch.float64) / math.sqrt(D)
    W2 = torch.randn(D, 16, generator=g, dtype=torch.float64) / 4

    def u(t, x):
        tt = t.expand(x.shape[0]) if t.dim() == 0 else t
        h = torch.tanh(torch.cat([x, tt[:, None]], 1) @ W1.T)
        return h @ W2.T - 0.3 * x
    return flowsde.ODE(u)


@pytest.mark.slow
def test_hutchinson_mean_agrees_with_exact_within_stderr():
    D = 5
    ode = _mlp_ode(D)
    x = torch.randn(4, D, dtype=torch.float64)
    ex = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, rtol=1e-7, atol=1e-7)
    for noise in ("rademacher", "gaussian"):
        g = torch.Generator().manual_seed(7)
        h = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, trace="hutchinson", probes=256, probe=noise,
                           generator=g, rtol=1e-7, atol=1e-7)
        assert h.logp_probes.shape == (4, 256)
        assert (h.stderr > 0).all()
        # 4 standard errors: two-sided false-alarm rate 6e-5 per sample under the CLT (seed fixed)
        assert ((h.logp - ex.logp).abs() < 4 * h.stderr).all(), (h.logp - ex.logp, h.stderr)


def test_hutchinson_same_seed_same_estimate_and_per_sample_generators():
    D = 4
    ode = _mlp_ode(D)
    x = torch.randn(3, D, dtype=torch.float64)
    kw = dict(trace="hutchinson", probes=3)
    a = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, generator=torch.Generator().manual_seed(5), **kw)
    b = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.logp, b.logp) and torch.equal(a.stderr, b.stderr)
    # per-sample generators: sample 2's estimate does not depend on the batch it is in
    full = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp,
                          generator=flowsde.per_sample_generators([10, 11, 12]), **kw)
    alone = log_likelihood(ode, x[2:], (0.0, 1.0), std_normal_logp,
                           generator=flowsde.per_sample_generators([12]), **kw)
    # same probes, its own step sizes (per-sample control): equal to solver tolerance (1e-5 x 100)
    assert (full.logp[2] - alone.logp[0]).abs() < 1e-3


def test_one_fixed_probe_equals_path_integral_of_zJz():
    # With one probe z, the estimate is log p_T(x_T) + int z^T J(t, x(t)) z dt; the reference
    # integrates the augmented ODE with 400 fixed RK4-equivalent Heun steps (error O(h^2) ~ 1e-5).
    D = 3
    ode = _mlp_ode(D)
    x = torch.randn(2, D, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    h = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, trace="hutchinson", probes=1, generator=g,
                       rtol=1e-8, atol=1e-8)
    z = torch.randint(0, 2, (1, 2, D), generator=torch.Generator().manual_seed(9)).to(torch.float64) * 2 - 1

    def aug(t, y):
        xx = y[:, :D].detach().requires_grad_(True)
        with torch.enable_grad():
            u = ode.drift(t, xx)
            (vjp,) = torch.autograd.grad(u, xx, z[0])
        return torch.cat([u.detach(), (vjp * z[0]).sum(1, keepdim=True)], 1)

    y0 = torch.cat([x, torch.zeros(2, 1, dtype=torch.float64)], 1)
    ref = flowsde.solve(flowsde.ODE(aug), y0, flowsde.grids.uniform(0.0, 1.0, 401), method="heun").x
    expected = std_normal_logp(ref[:, :D]) + ref[:, D]
    assert torch.isnan(h.stderr).all()  # one probe: no spread to estimate
    assert (h.logp - expected).abs().max() < 1e-4


def test_bits_per_dim_hand_cases():
    # the uniform density over the L bins (width Delta = (hi - lo)/(L - 1), centred on the grid
    # lo + k Delta) gives every value probability L^-D -> log2(L) bits/dim
    D = 6
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0), (0.0, 255.0)):
        for kw, L in ((dict(bits=1), 2), (dict(bits=5), 32), (dict(bits=8), 256), (dict(levels=17), 17),
                      (dict(levels=3), 3), (dict(levels=16, bits=4), 16)):
            width = L * (hi - lo) / (L - 1)
            logp = torch.full((2,), -D * math.log(width), dtype=torch.float64)
            bpd = bits_per_dim(logp, D, data_range=(lo, hi), **kw)
            assert torch.allclose(bpd, torch.full((2,), math.log2(L), dtype=torch.float64), atol=1e-12)
    # offset: -log2(Delta); 8 bits (the default) in [-1, 1]: log2(255 / 2)
    zero = torch.zeros(1, dtype=torch.float64)
    assert abs(float(bits_per_dim(zero, 3)) - math.log2(127.5)) < 1e-12
    assert abs(float(bits_per_dim(zero, 3, levels=17, data_range=(0, 16))) - 0.0) < 1e-12
    for kw in (dict(bits=0), dict(levels=1), dict(levels=16, bits=3), dict(levels=2.5),
               dict(data_range=(1.0, -1.0))):
        with pytest.raises(InputError):
            bits_per_dim(zero, 3, **kw)


@pytest.mark.parametrize("kw, L", [(dict(bits=4), 16), (dict(levels=17), 17), (dict(levels=17, bits=None), 17)])
def test_dequantize_stays_in_bins(kw, L):
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, L, (5, 7), generator=g).to(torch.float64)
    k[0, :2] = torch.tensor([0.0, L - 1.0])  # both ends of the range
    x = -1 + 2 * k / (L - 1)  # L-level data in [-1, 1], endpoints included
    y = dequantize(x, data_range=(-1, 1), generator=g, **kw)
    delta = 2 / (L - 1)
    u = (y - x) / delta  # U - 1/2 in [-1/2, 1/2): the bin centred on x
    assert ((u >= -0.5) & (u < 0.5)).all()
    assert u.std() > 0.2  # uniform over the bin (std 0.29), not a constant shift
    with pytest.raises(InputError, match=f"not {L}-level data"):
        dequantize((x + 0.3 * delta).clamp(-1, 1), data_range=(-1, 1), **kw)


def test_data_outside_range_refused():
    # data in [-2, 2] with data_range (-1, 1) must not give a number
    x = torch.tensor([[-2.0, 0.0, 2.0], [0.0, 0.5, 1.0]], dtype=torch.float64)
    with pytest.raises(InputError, match=r"outside \[-1.0, 1.0\] in samples \[0\]"):
        dequantize(x, levels=5, data_range=(-1, 1))
    # the scaling's rounding is not an excursion: lo - 1 ulp is on the grid
    x = torch.tensor([[-1.0 - 2e-16, 1.0 + 2e-16]], dtype=torch.float64)
    assert dequantize(x, levels=5, data_range=(-1, 1)).shape == x.shape


def test_bad_input():
    s2 = torch.ones(3, dtype=torch.float64)
    ode = _edm_gauss_ode(s2)
    x = torch.randn(2, 3, dtype=torch.float64)
    prior = lambda z: _gauss_logp(z, s2 + 1.0)  # noqa: E731
    with pytest.raises(InputError, match="floating point"):
        log_likelihood(ode, torch.ones(2, 3, dtype=torch.int64), (0.0, 1.0), prior)
    with pytest.raises(InputError, match="shape"):
        log_likelihood(ode, torch.randn(2, 4, dtype=torch.float64), (0.0, 1.0), prior)
    with pytest.raises(InputError, match="dtype"):
        log_likelihood(ode, x.float(), (0.0, 1.0), prior)  # drift returns float64 for float32 data
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN/Inf in samples \[1\]"):
        log_likelihood(ode, bad, (0.0, 1.0), prior)
    for kw in (dict(rtol=0.0), dict(atol=-1.0), dict(trace="diag"), dict(probe="uniform"), dict(probes=0),
               dict(trace="exact", probes=4)):
        with pytest.raises(InputError):
            log_likelihood(ode, x, (0.0, 1.0), prior, **kw)
    with pytest.raises(InputError, match="t_span"):
        log_likelihood(ode, x, (1.0, 1.0), prior)
    with pytest.raises(InputError, match="prior_logp returned"):
        log_likelihood(ode, x, (0.0, 1.0), lambda z: z)
    with pytest.raises(InputError, match="PF-ODE|probability-flow"):
        log_likelihood(flowsde.SDE(ode.drift, lambda t, x: torch.ones_like(x)), x, (0.0, 1.0), prior)
    with pytest.raises(InputError, match="hutchinson"):
        log_likelihood(ode, torch.randn(4, 3, 64, 64), (0.0, 1.0), prior, exact_max_bytes=2**19)  # one replica > budget


def test_nan_mid_solve_and_max_steps():
    def u(t, x):
        tt = t.reshape(-1, 1) if t.dim() else t
        return -x + torch.where(tt > 0.6, float("nan"), 0.0)

    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(SolveError, match=r"NaN/Inf .*step \d+, t = 0\.\d+ \(step size"):
        log_likelihood(flowsde.ODE(u), x, (0.0, 1.0), std_normal_logp)
    r = log_likelihood(flowsde.ODE(u), x, (0.0, 1.0), std_normal_logp, throw=False)
    assert (r.status == Status.NON_FINITE).all() and (r.t_final <= 0.6).all()
    ode = _edm_gauss_ode(torch.ones(3, dtype=torch.float64))
    with pytest.raises(SolveError, match=r"max_steps = 2 at t = .* step size"):
        log_likelihood(ode, x, (0.0, 5.0), std_normal_logp, max_steps=2)


def test_float32_log_density_accumulates_in_float64():
    # u = -x/2 in D = 4096: div u = -2048 exactly in float32, so delta_logp = -2048 T = -3072 for
    # T = 1.5. float32 resolves 2.4e-4 at 3072: accumulating the ~100 stage increments in float32
    # would be off by ~1e-4; in float64 the sum is exact to round-off of the float64 step sizes.
    D = 4096
    x = torch.randn(2, D)
    ode = flowsde.ODE(lambda t, x: -0.5 * x)
    prior = lambda z: std_normal_logp(z.double())  # noqa: E731
    # in t (time_warp=1): the integrand is then constant and every stage sum exact in float64
    r = log_likelihood(ode, x, (0.0, 1.5), prior, bpd_tol=1e-7, rtol=1e-5, atol=1e-5, time_warp=1,
                       error_estimate="embedded")  # one solve at a local tolerance below float32's promise
    assert r.delta_logp.dtype == torch.float64
    with pytest.raises(InputError, match="floor"):  # the global promise is refused there, with the floor
        log_likelihood(ode, x, (0.0, 1.5), prior, bpd_tol=1e-7)
    assert (r.delta_logp + 3072.0).abs().max() < 1e-8


@pytest.mark.parametrize("bpd_tol", [1e-3, 1e-5])
def test_bpd_tol_bounds_the_error_and_solver_error_reports_it(bpd_tol):
    # The knob in the user's units: the error in bits/dim stays below bpd_tol (the channel is held
    # to bpd_tol D ln 2 nats per step; docs/likelihood.md measures the global error at 0.1-0.5x).
    d = 16
    s2 = torch.linspace(0.2, 2.0, d, dtype=torch.float64) ** 2
    T = 10.0
    x = torch.randn(6, d, dtype=torch.float64) * s2.sqrt()
    r = log_likelihood(_edm_gauss_ode(s2), x, (0.002, T), lambda z: _gauss_logp(z, s2 + T**2), bpd_tol=bpd_tol)
    err_bpd = (r.logp - _gauss_logp(x, s2 + 0.002**2)).abs() / (d * math.log(2))
    assert err_bpd.max() < bpd_tol
    assert r.stats["rtol"] == r.stats["atol"] == bpd_tol  # the state's default follows the knob
    assert r.solver_error.shape == (6,) and (r.solver_error >= 0).all()
    assert torch.allclose(r.solver_error_bpd, r.solver_error / (d * math.log(2)))
    assert r.solver_error_bpd.max() < bpd_tol


def test_probe_keyword_and_tolerance_refusals():
    s2 = torch.ones(3, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    prior = lambda z: _gauss_logp(z, s2 + 1.0)  # noqa: E731
    r = log_likelihood(_edm_gauss_ode(s2), x, (0.0, 1.0), prior, trace="hutchinson", probe="gaussian", probes=2,
                       generator=torch.Generator().manual_seed(0))
    assert r.stats["probe"] == "gaussian"
    with pytest.raises(TypeError):
        log_likelihood(_edm_gauss_ode(s2), x, (0.0, 1.0), prior, noise="gaussian")  # renamed probe=
    with pytest.raises(InputError, match="below what torch.float32 can meet"):
        log_likelihood(_edm_gauss_ode(s2.float()), x.float(), (0.0, 1.0), prior, rtol=1e-9, atol=1e-9)
    with pytest.raises(InputError, match="bpd_tol"):
        log_likelihood(_edm_gauss_ode(s2), x, (0.0, 1.0), prior, bpd_tol=0.0)
    with pytest.raises(InputError, match="half precision|float16"):
        log_likelihood(_edm_gauss_ode(s2), x.half(), (0.0, 1.0), prior)


@pytest.mark.parametrize("bpd_tol", [1e-2, 1e-4, 1e-6])
def test_global_error_estimate_bounds_the_true_error_per_sample(bpd_tol):
    # error_estimate="global" (the default): each sample's answer is within bpd_tol of the exact log-density
    # and its solver_error bounds its true error; the embedded estimate (one solve) is neither
    d = 2
    s2 = torch.tensor([0.05, 0.3], dtype=torch.float64)
    T = 10.0
    x = torch.randn(16, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * s2.sqrt()
    prior = lambda z: _gauss_logp(z, s2 + T**2)  # noqa: E731
    exact = _gauss_logp(x, s2 + 0.002**2)
    nats = bpd_tol * d * math.log(2)
    r = log_likelihood(_edm_gauss_ode(s2), x, (0.002, T), prior, bpd_tol=bpd_tol)
    true = (r.logp - exact).abs()
    assert r.stats["error_estimate"] == "global" and "global" in r.stats["guarantee"]
    assert (true <= nats).all(), (true / nats).max()
    assert (true <= r.solver_error).all(), (true / r.solver_error).max()
    assert r.stats["met_per_sample"].all() and (r.solver_error <= nats).all()
    # tight: the estimate is a few times the true error (or of bpd_tol / 100 where the answer is better)
    assert (r.solver_error / true.clamp(min=nats / 100)).median() <= 5
    one = log_likelihood(_edm_gauss_ode(s2), x, (0.002, T), prior, bpd_tol=bpd_tol, error_estimate="embedded")
    assert one.nfe < r.nfe and one.stats["guarantee"].startswith("local error only")
    with pytest.raises(InputError, match="error_estimate"):
        log_likelihood(_edm_gauss_ode(s2), x, (0.002, T), prior, error_estimate="twice")


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("rho", [1.5, 2.0])
def test_time_warp_same_integral_exact_answer(rho, per_sample):
    # integrating in s = t^(1/rho) changes the steps, not the answer: within the same bound as t itself,
    # with the time reached reported in t and the user's drift called with t in the span
    d = 4
    s2 = torch.linspace(0.1, 1.0, d, dtype=torch.float64) ** 2
    T = 20.0
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * s2.sqrt()
    seen = []
    base = _edm_gauss_ode(s2)

    def u(t, x):
        seen.append(t.detach().clone())
        return base.drift(t, x)

    prior = lambda z: _gauss_logp(z, s2 + T**2)  # noqa: E731
    r = log_likelihood(flowsde.ODE(u), x, (0.002, T), prior, bpd_tol=1e-6, time_warp=rho, per_sample=per_sample)
    exact = _gauss_logp(x, s2 + 0.002**2)
    assert r.success and r.stats["time_warp"] == rho
    assert (r.logp - exact).abs().max() < 1e-4
    assert torch.equal(r.t_final, torch.full_like(r.t_final, T))
    ts = torch.cat([t.reshape(-1) for t in seen])
    assert ts.min() >= 0.002 and ts.max() <= T and ts.dtype == torch.float64  # time_dtype of the ODE: float64
    plain = log_likelihood(base, x, (0.002, T), prior, bpd_tol=1e-6, per_sample=per_sample, time_warp=1)
    assert not torch.equal(r.logp, plain.logp)  # a different step sequence ...
    assert (r.logp - plain.logp).abs().max() < 1e-4  # ... to the same answer


def test_time_warp_float32_and_data_end_at_zero():
    # t = 0 at the data end (s = 0, dt/ds = 0 there for rho > 1), float32 state
    d = 3
    s2 = torch.tensor([0.05, 0.2, 1.0], dtype=torch.float64)
    T = 10.0
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * s2.sqrt()
    r = log_likelihood(_edm_gauss_ode(s2.float()), x.float(), (0.0, T), lambda z: _gauss_logp(z, s2 + T**2),
                       bpd_tol=1e-5, time_warp=1.5)
    assert r.success and (r.logp - _gauss_logp(x, s2)).abs().max() < 1e-3


def test_time_warp_refusals():
    s2 = torch.ones(2, dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64)
    prior = lambda z: _gauss_logp(z, s2 + 1.0)  # noqa: E731
    for bad in (0.5, float("nan"), True, "1.5"):
        with pytest.raises(InputError, match="time_warp must be a finite number >= 1"):
            log_likelihood(_edm_gauss_ode(s2), x, (0.0, 1.0), prior, time_warp=bad)
    with pytest.raises(InputError, match=r"needs t >= 0.*\(-1.0, 1.0\)"):
        log_likelihood(_edm_gauss_ode(s2), x, (-1.0, 1.0), prior, time_warp=2.0)


def test_time_warp_failure_names_times_in_t():
    # a drift that turns NaN above t = 3: the error's [t, t + h] (in t, not in the warped s) holds 3
    def u(t, x):
        tt = t.reshape((-1,) + (1,) * (x.dim() - 1)) if t.dim() else t
        return torch.where(tt > 3.0, torch.nan, 1.0) * x

    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with pytest.raises(SolveError) as e:
        log_likelihood(flowsde.ODE(u), x, (0.01, 10.0), std_normal_logp, time_warp=1.5)
    t, h = e.value.t, float(str(e.value).split("step size ")[1].split(":")[0])
    assert t <= 3.0 <= t + h, (t, h)
    r = log_likelihood(flowsde.ODE(u), x, (0.01, 10.0), std_normal_logp, time_warp=1.5, throw=False)
    assert (r.status == Status.NON_FINITE).all() and ((r.t_final > 0.01) & (r.t_final <= 3.0)).all()


@pytest.mark.parametrize("error_estimate", ["embedded", "global"])
@pytest.mark.parametrize("trace,probes", [("exact", 1), ("hutchinson", 2)])
def test_failed_sample_numbers_are_nan_and_the_others_untouched(trace, probes, error_estimate):
    # issue 21: with throw=False a failed sample held a finite partial logp (a partial integral that
    # passed for an answer); its numbers are NaN and its status says why; the others are bit for bit
    # those of the same run without the failure
    def ode(fail):
        def u(t, x):
            tt = t.reshape(-1, 1) if t.dim() else t
            bad = (x[:, :1].abs() > 50) & (tt > 0.3) if fail else torch.zeros_like(x[:, :1], dtype=torch.bool)
            return -0.5 * x + torch.where(bad, float("nan"), 0.0)
        return flowsde.ODE(u)

    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[2, 0] = 100.0  # sample 2 alone meets the NaN
    kw = dict(trace=trace, probes=probes, per_sample=True, error_estimate=error_estimate, throw=False,
              generator=flowsde.per_sample_generators([1, 2, 3, 4]))
    r = log_likelihood(ode(True), x, (0.0, 1.0), std_normal_logp, **kw)
    kw["generator"] = flowsde.per_sample_generators([1, 2, 3, 4])
    ref = log_likelihood(ode(False), x, (0.0, 1.0), std_normal_logp, **kw)
    assert r.status.tolist() == [0, 0, int(Status.NON_FINITE), 0]
    ok = torch.tensor([True, True, False, True])
    for name in ("logp", "solver_error", "prior_logp", "delta_logp") + (("stderr", "logp_probes") if probes > 1
                                                                          else ()):
        v, w = getattr(r, name), getattr(ref, name)
        assert torch.isnan(v[2]).all(), name
        assert torch.equal(v[ok], w[ok]), name  # bit-identical where the sample succeeded
    assert r.stats["nfe_per_sample"][2] > 0  # what it took before it failed: a count, kept


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_samples_answer_does_not_depend_on_its_batch(dtype):
    # issue 19: at the defaults (per-sample steps, the ladder's per-sample decisions) a sample solved alone and
    # in a batch of 64 has the same logp: to 1e-12 relative in float64; within bpd_tol in float32, where the
    # network's matrix products round differently by batch shape
    torch.manual_seed(0)
    D = 8
    net = torch.nn.Sequential(torch.nn.Linear(D + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, D)).to(dtype)

    def u(t, x):
        tt = (t.reshape(-1, 1) if t.dim() else t.expand(1, 1)).to(x.dtype).expand(x.shape[0], 1)
        return -0.5 * x + 0.3 * net(torch.cat([x, tt], 1))

    ode = flowsde.ODE(u)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        batch = log_likelihood(ode, x, (0.0, 1.0), std_normal_logp)
        for i in (0, 17, 63):
            alone = log_likelihood(ode, x[i:i + 1], (0.0, 1.0), std_normal_logp)
            if dtype == torch.float64:
                assert abs(float(alone.logp[0] - batch.logp[i])) <= 1e-12 * abs(float(batch.logp[i]))
                assert int(alone.stats["nfe_per_sample"][0]) == int(batch.stats["nfe_per_sample"][i])
            else:
                assert abs(float(alone.logp[0] - batch.logp[i])) <= batch.stats["bpd_tol"] * D * math.log(2)


def test_a_drift_rough_at_the_data_end_is_diagnosed():
    # issue 19 item 6: a model that wiggles next to the data end (a network never trained there) makes the
    # solver spend most of its steps there; the call says so, where, and what to do; a smooth one does not
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def rough(t, x):  # a fast oscillation that dies out over the first ~1 % of the span
        tt = t.reshape(-1, 1) if t.dim() else t
        return -0.5 * x + 30.0 * torch.sin(tt / 1e-4) * torch.exp(-tt / 3e-3) * x

    with pytest.warns(RuntimeWarning, match=r"last 1% of the span.*data end.*whole time range"):
        r = log_likelihood(flowsde.ODE(rough), x, (0.0, 1.0), std_normal_logp, bpd_tol=1e-4, time_warp=1,
                           error_estimate="embedded")
    assert r.stats["steps_near_data_end"] > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smooth = log_likelihood(flowsde.ODE(lambda t, x: -0.5 * x), x, (0.0, 1.0), std_normal_logp, bpd_tol=1e-4,
                                time_warp=1, error_estimate="embedded")
    assert smooth.stats["steps_near_data_end"] < 0.5
