"""Convergence orders of the fixed-step solvers against exact answers (slow).

The methods, their levels and tolerances are those of tests/method_table.py (set-ups
"linear-ode", "ou", "mlp-sde"); each test reads the order the solver declares (diffrax's order
tests read ``solver.order(terms)`` / ``strong_order(terms)`` the same way) and fits the slope with
:func:`flowsde.validation.fit_order`.

Strong order: diffrax's method (test/helpers.py, test_sde1.py): many Brownian
paths, each a virtual Brownian tree shared by every step size and by a fine
reference; nested grids; error = sqrt(mean over paths of max over save times
of the squared distance); slope of log error on log step within the case's tolerance.
"""

import math

import pytest
import torch

import flowsde
from flowsde import grids
from flowsde.validation import fit_order
from method_table import order_cases

F64 = torch.float64
pytestmark = pytest.mark.slow


def fitted_slope(hs, errs):
    return fit_order(hs, errs).order


def ou_sde(b, s):
    return flowsde.SDE(lambda t, x: -b * x, lambda t, x: torch.full((), s, dtype=x.dtype, device=x.device))


def strong_errors(sde, x0, t0, t1, levels, ref_level, method="euler_maruyama", n_paths_seed=0, levy=False):
    """Errors of each level against the fine reference, all driven by one BrownianPath."""
    path = flowsde.BrownianPath(t0, t1, x0.shape, generator=n_paths_seed, levy_area=levy, tol=2.0 ** -(ref_level + 4))
    ref = flowsde.solve(sde, x0, grids.uniform(t0, t1, 2 ** ref_level), method=method, generator=path, save_all=True)
    errs = []
    for lvl in levels:
        sol = flowsde.solve(sde, x0, grids.uniform(t0, t1, 2 ** lvl), method=method, generator=path, save_all=True)
        ref_at = ref.xs[:: 2 ** (ref_level - lvl)]  # nested grids: the coarse times are fine times
        sq = ((sol.xs - ref_at) ** 2).flatten(2).sum(-1)  # (times, paths)
        errs.append(math.sqrt(sq.max(0).values.mean().item()))
    return errs


class _MLP(torch.nn.Module):
    def __init__(self, d, width, seed, final_tanh):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(d, width, generator=g, dtype=F64) / math.sqrt(d)
        self.w2 = torch.randn(width, d, generator=g, dtype=F64) / math.sqrt(width)
        self.final_tanh = final_tanh

    def forward(self, x):
        y = torch.tanh(x @ self.w1) @ self.w2
        return torch.tanh(y) if self.final_tanh else y


def nonlinear_sde():
    # diffrax test_sde1.py's problem: d = 3, t in [0, 2], drift 0.5 MLP, diffusion 0.25 tanh-MLP (diagonal).
    f, g = _MLP(3, 8, 1, False), _MLP(3, 8, 2, True)
    return flowsde.SDE(lambda t, x: 0.5 * f(x), lambda t, x: 0.25 * g(x), noise_type="diagonal")


@pytest.mark.parametrize("method, case", order_cases("ou", "strong") + order_cases("mlp-sde", "strong"))
@pytest.mark.parametrize("forward", [True, False], ids=["forward", "backward"])
def test_strong_order(method, case, forward):
    # OU (additive noise): Euler-Maruyama coincides with Milstein there, so its declared strong order
    # on additive noise is 1, not 0.5 (Kloeden & Platen, sec. 10.3). diffrax's MLP problem: diagonal,
    # x-dependent noise.
    order = case.declared(method)
    if case.setup == "ou":
        t0, t1 = (0.0, 1.0) if forward else (1.0, 0.0)
        sde, x0 = ou_sde(1.0, 0.8), torch.full((100, 2), 1.5, dtype=F64)  # 100 paths x 2 dims
    else:
        t0, t1 = (0.0, 2.0) if forward else (2.0, 0.0)
        sde, x0 = nonlinear_sde(), torch.randn(60, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    levels = list(case.levels)
    levy = getattr(case.solver(method), "needs_levy_area", False)  # srk reads the space-time Levy area
    errs = strong_errors(sde, x0, t0, t1, levels, case.ref_level, method=method, levy=levy)
    slope = fitted_slope([2.0 ** -lvl for lvl in levels], errs)
    assert case.accepts(slope, method), (method, case, order, slope, errs)
    if case.setup == "mlp-sde":
        assert errs[0] < 0.05 * 20  # limit check: the coarsest solve is not wildly off the reference


@pytest.mark.parametrize("method, case", order_cases("ou", "weak"))
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_weak_order_on_ou(method, case, t0, t1):
    # Weak error of phi(x) = x and x^2 against the EXACT OU moments (mean x0 e^{-bT}, variance
    # s^2 (1 - e^{-2bT}) / 2b). Monte-Carlo noise is cut by driving all step sizes with the same
    # paths, and is bounded here: 2e5 samples give a standard error of the second moment
    # about 0.35 * sqrt(2/2e5) ~ 1e-3, below the smallest weak error fitted (~5e-3 at h = 1/32).
    # Solved backward (t1 < t0), dx = -b x dt with dt < 0 is, in s = -t, dx = +b x ds: b flips sign.
    order = case.declared(method)
    b_sde, s, T, xinit = 1.0, 0.8, abs(t1 - t0), 2.0
    b = b_sde if t1 > t0 else -b_sde
    x0 = torch.full((200_000, 1), xinit, dtype=F64)
    mean_ex = xinit * math.exp(-b * T)
    m2_ex = mean_ex ** 2 + s ** 2 * (1 - math.exp(-2 * b * T)) / (2 * b)
    hs, errs = [], []
    gen_seed = 11
    for n in (2 ** lvl for lvl in case.levels):  # 2 .. 32 steps
        x = flowsde.solve(ou_sde(b_sde, s), x0, grids.uniform(t0, t1, n), method=method,
                          generator=torch.Generator().manual_seed(gen_seed)).x
        err = abs(x.mean().item() - mean_ex) + abs((x ** 2).mean().item() - m2_ex)
        hs.append(T / n)
        errs.append(err)
    slope = fitted_slope(hs, errs)
    assert case.accepts(slope, method), (method, case, order, slope, errs)


@pytest.mark.parametrize("method, case", order_cases("linear-ode"))
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_ode_order(method, case, t0, t1):
    # y' = A y, A = 0.5 N(0, 1) (6 x 6), exact y(t1) = expm((t1 - t0) A) y(t0)  (diffrax test_ode_order).
    order = case.declared(method)
    A = 0.5 * torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    y0 = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    ode = flowsde.ODE(lambda t, y: y @ A.T)
    exact = y0 @ torch.linalg.matrix_exp((t1 - t0) * A).T
    ns = [2 ** k for k in case.levels]
    errs = [(flowsde.solve(ode, y0, grids.uniform(t0, t1, n), method=method).x - exact).abs().max().item()
            for n in ns]
    slope = fitted_slope([1 / n for n in ns], errs)
    assert case.accepts(slope, method), (method, case, order, slope, errs)


@pytest.mark.parametrize("step_rule, d", [("per_sample", 64), ("score_sde", 4), ("score_sde", 64), ("sigma", 1),
                                         ("sigma", 2), ("sigma", 64)])
def test_langevin_corrector_converges_to_a_fixed_gaussian(step_rule, d):
    # Target N(m, s^2 I), from N(m, I). An unadjusted Langevin chain with constant step eps has
    # stationary variance s^2 / (1 - eps / (2 s^2)) (Gaussian target, exact). The snr rule gives
    # eps <= ~2 snr^2 s^2 near stationarity, so the relative variance lies in [1, 1 / (1 - snr^2)].
    # The per-sample rule is tested in d = 64, where ||s|| concentrates; in d = 4 a sample that
    # starts near the mode gets a huge frozen step (documented in flowsde.solvers.langevin / docs).
    # The "sigma" rule (sigma = s: eps = 2 snr^2 s^2 exactly) holds in every dimension.
    # Statistics: n x d draws; the sample mean has SE s / sqrt(n d), the sample variance relative
    # SE sqrt(2 / (n d)); 5 SE bounds (two-sided false alarm < 1e-6 per check).
    m, s, snr = 1.5, 0.7, 0.16
    n = 32000 // d
    score = lambda t, x: -(x - m) / s ** 2  # noqa: E731
    x0 = m + torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(0))  # N(m, I)
    x = flowsde.solvers.langevin(score, torch.tensor(0.0, dtype=F64), x0, torch.Generator().manual_seed(1),
                         steps=1500, snr=snr, step_rule=step_rule, sigma=s if step_rule == "sigma" else None)
    se_mean = s / math.sqrt(n * d)
    assert abs(x.mean().item() - m) < 5 * se_mean
    rel_var = x.var().item() / s ** 2
    se_var = math.sqrt(2 / (n * d))
    assert 1 - 5 * se_var < rel_var < 1 / (1 - snr ** 2) + 5 * se_var, rel_var


def test_recomputing_a_per_sample_step_every_step_is_biased():
    # Documented negative result (see flowsde.solvers.langevin): with eps(x) recomputed from the current
    # state, the chain is a discretization of dx = eps(x) s dt + sqrt(2 eps(x)) dW, whose stationary
    # law is p / eps(x) (with eps ~ 1/||s||^2: p ||s||^2, variance (d + 2)/d = 1.5 per coordinate
    # for N(0, I) in d = 4, and more with the ||z|| factor): far outside the 5 SE band used above.
    d, n = 4, 8000
    score = lambda t, x: -x  # noqa: E731
    x = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor(0.0, dtype=F64)
    for _ in range(1500):
        x = flowsde.solvers.langevin(score, t, x, gen, steps=1, snr=0.05, step_rule="per_sample")
    assert x.var().item() > 1.3
