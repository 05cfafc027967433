"""The adaptive-step SDE sampler ``method="adaptive_sde"`` (Jolicoeur-Martineau et al. 2021, Algorithm 1).

* options: bad values raise :class:`flowsde.InputError` naming them;
* batch independence: with per-sample generators a sample's result is the same alone and in any batch
  (float64, to round-off), its steps included;
* Brownian consistency: :class:`BrownianMemory` samples one Brownian path whatever the order of the
  queries; with a :class:`flowsde.BrownianPath` the solution converges strongly to a fine Euler-Maruyama
  solution on the same path as the tolerance shrinks;
* tolerance: on an analytic Gaussian VP reverse SDE, a tighter tolerance costs more NFE and gives a
  smaller weak error (mean and variance against the exact marginal);
* marginals (slow): from exact samples of ``p_T`` of the 2-D Gaussian-mixture oracle, the samples pass
  :func:`flowsde.validation.check_marginals` against the exact marginal at ``t_end``; the paper's
  fresh-noise rule (``fresh_noise=True``) fails the same test (power, and the reason for the default).
"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError, SolveError, Status
from flowsde.adapters import Diffusion
from flowsde.adapters.schedules import VP
from flowsde.solvers import AdaptiveSDE
from flowsde.validation import check_marginals
from flowsde._internal import BrownianMemory

from _samplers_peers import F64, gen, mixture

T_END = 1e-3
SPAN = torch.tensor([1.0, T_END], dtype=F64)


# ---- an analytic problem: VP (beta_min 0.1, beta_max 20) on Gaussian data N(MU, S0^2) per coordinate
MU = torch.tensor([1.0, -0.5], dtype=F64)
S0 = torch.tensor([0.3, 0.8], dtype=F64)


def _vp(t):
    t = t.to(F64)
    beta = 0.1 + 19.9 * t
    log_a = -0.5 * (0.1 * t + 0.5 * 19.9 * t ** 2)
    return beta, log_a.exp()


def _moments(t):
    _, a = _vp(torch.as_tensor(t, dtype=F64))
    return a * MU, a ** 2 * S0 ** 2 + 1 - a ** 2


def gaussian_reverse_sde():
    """``dx = [-beta/2 x - beta score] dt + sqrt(beta) dW`` (decreasing t), ``score`` exact."""

    def col(v, x):
        return v.reshape(-1, 1) if v.dim() else v

    def drift(t, x):
        beta, a = _vp(t)
        beta, a = col(beta, x), col(a, x)
        var = a ** 2 * S0 ** 2 + 1 - a ** 2
        score = -(x - a * MU) / var
        return -0.5 * beta * x - beta * score

    def diffusion(t, x):
        beta, _ = _vp(t)
        return beta.sqrt()

    return flowsde.SDE(drift, diffusion, noise_type="scalar")


def _exact_x_T(n, seed):
    m, v = _moments(1.0)
    return m + v.sqrt() * torch.randn(n, 2, dtype=F64, generator=gen(seed))


# ---- options
@pytest.mark.parametrize("options, match", [
    (dict(rtol=-0.1), "rtol"), (dict(atol=float("nan")), "atol"), (dict(rtol=0.0, atol=0.0), "at least one"),
    (dict(safety=0.0), "safety"), (dict(safety=1.5), "safety"), (dict(r=0.0), "r must"), (dict(r=True), "r must"),
    (dict(extrapolate="yes"), "extrapolate"), (dict(max_steps=0), "max_steps"), (dict(max_steps=2.5), "max_steps"),
    (dict(first_step=-1.0), "first_step"), (dict(first_step=float("inf")), "first_step"),
    (dict(fresh_noise=1), "fresh_noise"), (dict(tol=0.1), "no option"),
])
def test_bad_options_raise_input_error(options, match):
    with pytest.raises(InputError, match=match):
        flowsde.solve(gaussian_reverse_sde(), _exact_x_T(4, 0), SPAN, method="adaptive_sde", **options)


def test_tolerances_below_float32_resolution_are_refused():
    x = _exact_x_T(4, 0).float()
    with pytest.raises(InputError, match="float32"):
        flowsde.solve(gaussian_reverse_sde(), x, SPAN, method=AdaptiveSDE(rtol=1e-9, atol=1e-9))


def test_repr_and_registry():
    s = flowsde.solvers.get_solver("adaptive_sde", rtol=0.05)
    assert isinstance(s, AdaptiveSDE) and s.adaptive and s.rtol == 0.05
    assert "rtol=0.05" in repr(s) and "fresh_noise=False" in repr(s)
    assert s.strong_order_for("additive") == 1.0 and s.strong_order_for("scalar") is None


# ---- batch independence
def test_a_sample_alone_equals_it_in_a_batch():
    d = Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")
    problem = d.reverse_sde(1.0)
    x = torch.randn(6, 2, dtype=F64, generator=gen(5)) * 1.1
    seeds = [10, 11, 12, 13, 14, 15]
    batch = flowsde.solve(problem, x, SPAN, method="adaptive_sde", rtol=0.05,
                          generator=flowsde.per_sample_generators(seeds))
    nfe = batch.stats["nfe_per_sample"]
    assert len(set(nfe.tolist())) > 1  # the samples took different numbers of steps
    for i in (0, 3, 5):
        alone = flowsde.solve(problem, x[i:i + 1], SPAN, method="adaptive_sde", rtol=0.05,
                              generator=flowsde.per_sample_generators([seeds[i]]))
        torch.testing.assert_close(alone.x[0], batch.x[i], rtol=1e-12, atol=1e-12)
        assert int(alone.stats["nfe_per_sample"][0]) == int(nfe[i])
        assert alone.nfe == int(nfe[i])  # alone, the batch's evaluations are the sample's
    # another batch order: the same samples
    perm = [4, 1, 5, 0, 3, 2]
    other = flowsde.solve(problem, x[perm], SPAN, method="adaptive_sde", rtol=0.05,
                          generator=flowsde.per_sample_generators([seeds[p] for p in perm]))
    torch.testing.assert_close(other.x, batch.x[perm], rtol=1e-12, atol=1e-12)
    assert batch.success and torch.equal(batch.t_final, torch.full((6,), T_END, dtype=F64))


# ---- the Brownian path of rejected tries
def test_brownian_memory_samples_one_brownian_path():
    """Queries out of order (reject at 1, accept 0.3 and 0.5, hit 1 again, go beyond): each increment has
    variance its length, disjoint ones are uncorrelated, and the path goes through the first point."""
    B = 40000
    torch.manual_seed(0)
    m = BrownianMemory(torch.zeros(B, 1, dtype=F64))
    yes, no = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    g = gen(7)

    def query(h, accept):
        h = torch.full((B,), h, dtype=F64)
        dW = m.increment(h, torch.randn(B, 1, dtype=F64, generator=g))
        m.update(h, dW, yes if accept else no, no if accept else yes)
        return dW[:, 0]

    w1 = query(1.0, False)
    a, b = query(0.3, True), query(0.5, True)
    c = query(0.2, True)  # t = 1.0: the rejected point
    torch.testing.assert_close(a + b + c, w1, rtol=0, atol=1e-6)
    assert m.s.shape[1] == 0  # every revealed point is now in the past
    e = query(0.8, True)
    se = 4 / math.sqrt(B)  # ~4 standard errors of a sample variance/covariance
    for inc, length in ((a, 0.3), (b, 0.5), (c, 0.2), (e, 0.8), (a + b + c + e, 1.8)):
        assert abs(float(inc.var()) / length - 1) < 2 * se * 1.5, (length, float(inc.var()))
    for u, v in ((a, b), (b, c), (a, c), (c, e)):
        assert abs(float((u * v).mean())) < 1.5 * se, float((u * v).mean())


@pytest.mark.slow
def test_brownian_path_strong_convergence():
    """On one :class:`flowsde.BrownianPath`, the solution tends to the fine Euler-Maruyama one on the same
    path as the tolerance shrinks (strong order 1 for additive noise), at more NFE."""
    problem, x = gaussian_reverse_sde(), _exact_x_T(8, 3)
    path = flowsde.BrownianPath(1.0, T_END, x.shape, generator=21, tol=1e-10)
    ref = flowsde.solve(problem, x, flowsde.grids.log_uniform(1.0, T_END, 5000), method="euler_maruyama",
                        generator=path).x
    errs, nfes = [], []
    # the reference's 5000 steps leave the ratio as 20000 do (7.77 both, measured); 2500 move it to 7.2
    for rtol in (0.1, 0.01):  # 10x tighter: the strong error falls by more than 3x (it fell 7.8x measured)
        sol = flowsde.solve(problem, x, SPAN, method="adaptive_sde", rtol=rtol, atol=rtol / 10, generator=path)
        errs.append(float((sol.x - ref).pow(2).mean().sqrt()))
        nfes.append(float(sol.stats["nfe_per_sample"].double().mean()))
    assert errs[0] > 3 * errs[1], errs
    assert nfes[0] < nfes[1], nfes


# ---- tolerance
def test_tighter_tolerance_gives_smaller_weak_error_at_more_nfe():
    problem, n = gaussian_reverse_sde(), 20000
    x = _exact_x_T(n, 4)
    m, v = _moments(T_END)
    errs, nfes = [], []
    for rtol in (0.5, 0.05):
        sol = flowsde.solve(problem, x, SPAN, method="adaptive_sde", rtol=rtol, atol=rtol / 10, generator=5)
        err = float(((sol.x.mean(0) - m).abs() / v.sqrt()).max() + (sol.x.var(0) / v - 1).abs().max())
        errs.append(err)
        nfes.append(float(sol.stats["nfe_per_sample"].double().mean()))
    # the sampling error of the statistic at n = 20000 is ~ 0.03 (4 standard errors)
    assert errs[0] > 0.1 and errs[1] < 0.05 and errs[1] < errs[0] / 3, errs
    assert nfes[1] > 2 * nfes[0], nfes


def test_ode_limit_is_an_adaptive_heun_euler_pair():
    d = Diffusion(mixture().oracle(VP(), "eps"), VP(), prediction="eps")
    x = torch.randn(5, 2, dtype=F64, generator=gen(9))
    ref = flowsde.solve(d.pf_ode(), x, SPAN, method="rk45", rtol=1e-10, atol=1e-10).x
    errs = [float((flowsde.solve(d.pf_ode(), x, SPAN, method="adaptive_sde", rtol=tol, atol=tol).x - ref)
                  .abs().max()) for tol in (1e-2, 1e-4)]
    assert errs[1] < errs[0] / 10 and errs[1] < 1e-2, errs


def test_max_steps_status_and_error():
    problem, x = gaussian_reverse_sde(), _exact_x_T(3, 0)
    sol = flowsde.solve(problem, x, SPAN, method="adaptive_sde", max_steps=3, generator=0, throw=False)
    assert sol.status.tolist() == [int(Status.MAX_STEPS)] * 3 and bool((sol.t_final > 0.5).all())
    with pytest.raises(SolveError, match="max_steps"):
        flowsde.solve(problem, x, SPAN, method="adaptive_sde", max_steps=3, generator=0)
    full = flowsde.solve(problem, x, SPAN, method="adaptive_sde", generator=0, save_all=True)
    assert full.xs.shape == (2, 3, 2) and torch.equal(full.xs[0], x) and torch.equal(full.grid, SPAN)


# ---- marginals on the exact mixture (slow)
@pytest.mark.slow
def test_lands_on_the_mixture_marginals_and_the_papers_fresh_noise_does_not():
    gm, sched = mixture(), VP()
    d = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    n, g = 2000, gen(1)
    a, s = float(sched.alpha(torch.tensor(1.0, dtype=F64))), float(sched.sigma(torch.tensor(1.0, dtype=F64)))
    x_T = a * gm.sample(n, generator=g) + s * torch.randn(n, 2, dtype=F64, generator=g)
    target = gm.marginal(sched, T_END)
    sol = flowsde.solve(d.reverse_sde(1.0), x_T, SPAN, method="adaptive_sde", rtol=0.05, generator=gen(3))
    res = check_marginals(sol.x, target, alpha=1e-3)
    assert res.passed, res.summary()
    paper = flowsde.solve(d.reverse_sde(1.0), x_T, SPAN, method="adaptive_sde", rtol=0.05, fresh_noise=True,
                          generator=gen(3))
    assert not check_marginals(paper.x, target, alpha=1e-3).passed
