"""The solver-comparison harness: every solver on one model, NFE for NFE, against exact answers.

On a data distribution with an exact answer (a :class:`GaussianMixture`
pushed through any schedule) every quantity below is compared with the
truth, not with another solver:

* deterministic solvers (``euler``, ``heun``, ``rk45``) integrate the PF-ODE
  from the same prior draws; their **path error** is the RMS distance to a
  tight-tolerance RK45 solution of the same ODE (rtol = atol = 1e-10, float64);
* every solver (stochastic ones too: Euler–Maruyama on the reverse SDE,
  predictor–corrector, EDM's churn sampler) gets a **marginal distance**: the
  largest Kolmogorov–Smirnov distance over fixed random 1-D projections between
  its samples at ``t_end`` and the *exact* marginal there (a closed-form CDF), and
  the mean / covariance errors;
* the **likelihood** rows compare ``flowsde.log_likelihood`` (RK45, exact
  trace) with the exact ``log p_{t_end}`` of the same points.

Deterministic and stochastic samplers start from the same exact samples of
``p_T`` (the mixture's marginal at ``T``, not the approximate Gaussian prior), so
every error measured is the solver's own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

import flowsde
from flowsde import InputError

from ._marginals import check_marginals
from .references import GaussianMixture

__all__ = ["compare_solvers", "ComparisonRow", "Comparison", "default_mixture"]

DETERMINISTIC = ("euler", "heun", "rk45")
STOCHASTIC = ("euler_maruyama", "pc", "edm_churn")
ALL_METHODS = DETERMINISTIC + STOCHASTIC


def default_mixture(dim: int = 2, dtype=torch.float64) -> GaussianMixture:
    """The built-in demo distribution: 3 anisotropic Gaussians in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(1234)
    K = 3
    means = torch.randn(K, dim, generator=g, dtype=dtype) * 1.5
    A = torch.randn(K, dim, dim, generator=g, dtype=dtype) * 0.3
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=dtype)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)
    return GaussianMixture(weights, means, covs, dtype=dtype)


@dataclass
class ComparisonRow:
    method: str
    setting: str  #: steps or tolerance
    nfe: float  #: mean NFE per sample
    path_error: Optional[float]  #: RMS distance to the reference ODE solution (deterministic only)
    ks: float  #: max KS distance over projections to the exact marginal at t_end
    mean_error: float  #: |sample mean - exact mean|
    cov_error: float  #: relative Frobenius error of the sample covariance
    seconds: float


@dataclass
class Comparison:
    rows: list
    likelihood: list = field(default_factory=list)  #: (rtol, nfe, mean |logp - exact|, max |...|, seconds)
    info: dict = field(default_factory=dict)

    def table(self) -> str:
        """The comparison as a Markdown table (and the likelihood table under it)."""
        out = [f"Model: {self.info.get('model', '')}", "",
               "| method | setting | NFE | path error | KS to exact marginal | mean err | cov err | s |",
               "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            pe = "—" if r.path_error is None else f"{r.path_error:.2e}"
            out.append(f"| {r.method} | {r.setting} | {r.nfe:.0f} | {pe} | {r.ks:.4f} | {r.mean_error:.2e} | "
                       f"{r.cov_error:.2e} | {r.seconds:.2f} |")
        floor = self.info.get("ks_floor")
        if floor is not None:
            out.append("")
            out.append(f"KS of {self.info['n']} exact samples (the noise floor of the KS column): {floor:.4f}")
        if self.likelihood:
            out += ["", "| likelihood rtol=atol | NFE | mean abs logp error (nats) | max abs error | s |",
                    "|---|---:|---:|---:|---:|"]
            for tol, nfe, mean_err, max_err, sec in self.likelihood:
                out.append(f"| {tol:.0e} | {nfe:.0f} | {mean_err:.2e} | {max_err:.2e} | {sec:.2f} |")
        return "\n".join(out)

    def plot(self, path: str) -> None:
        """Error against NFE (log-log), one line per method; needs matplotlib."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for m in dict.fromkeys(r.method for r in self.rows):
            rs = [r for r in self.rows if r.method == m]
            if rs[0].path_error is not None:
                axes[0].loglog([r.nfe for r in rs], [r.path_error for r in rs], "o-", label=m)
            axes[1].semilogx([r.nfe for r in rs], [r.ks for r in rs], "o-", label=m)
        if self.info.get("ks_floor") is not None:
            axes[1].axhline(self.info["ks_floor"], color="gray", ls="--", label="exact samples")
        axes[0].set(xlabel="NFE", ylabel="RMS path error vs reference ODE", title="PF-ODE solvers")
        axes[1].set(xlabel="NFE", ylabel="max KS distance to exact marginal", title="all samplers")
        for a in axes:
            a.grid(True, which="both", alpha=0.3)
            a.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def compare_solvers(
    diffusion,
    data: GaussianMixture,
    *,
    n: int = 2000,
    budgets: Sequence[int] = (10, 20, 40, 80, 160),
    methods: Sequence[str] = ALL_METHODS,
    t_end: Optional[float] = None,
    rk45_tols: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
    likelihood_tols: Sequence[float] = (1e-3, 1e-5),
    likelihood_n: int = 200,
    grid: str = "edm",
    s_churn: float = 10.0,
    seed: int = 0,
    n_projections: int = 8,
    progress: bool = False,
) -> Comparison:
    """Run every solver on ``diffusion`` (whose network must model ``data``), NFE for NFE.

    Arguments:
        diffusion: a :class:`flowsde.adapters.Diffusion`; for exact answers its network
            should be ``data.oracle(schedule, prediction)``.
        data: the data distribution (exact marginals at every t).
        n: samples per solver.
        budgets: NFE budgets for the fixed-step solvers (steps = budget / NFE per step).
        methods: subset of ``("euler", "heun", "rk45", "euler_maruyama", "pc", "edm_churn")``.
        t_end: where sampling stops (default: the schedule's ``t_min``).
        rk45_tols: the tolerances swept for RK45 (its NFE is what it took).
        likelihood_tols: tolerances of the likelihood rows (``()`` to skip).
        grid: ``"edm"`` (rho = 7 in sigma/alpha, mapped to schedule time) or ``"uniform"`` in t.
        s_churn: EDM's S_churn for the ``edm_churn`` sampler.
        seed: everything random derives from it.

    Returns:
        :class:`Comparison` with ``.table()`` and ``.plot(path)``.
    """
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise InputError(f"compare_solvers(methods=...): unknown {bad}; choose from {ALL_METHODS}.")
    if n < 30:
        raise InputError(f"compare_solvers(n={n}): need at least 30 samples for the marginal tests.")
    sched = diffusion.schedule
    T = float(sched.t_max)
    t_end = float(sched.t_min) if t_end is None else float(t_end)
    dtype = data.dtype
    gen = torch.Generator().manual_seed(seed)
    xT = data.marginal(sched, T).sample(n, generator=gen)
    target = data.marginal(sched, t_end)
    info = {"model": f"{diffusion!r} on {data!r}; T={T:g} -> t_end={t_end:g}, n={n}", "n": n}

    def marg(x):
        r = check_marginals(x, target, n_projections=n_projections, seed=seed)
        return r.max_ks, float(abs(r.mean_error).max()), float(r.cov_error)

    info["ks_floor"] = marg(target.sample(n, generator=torch.Generator().manual_seed(seed + 1)))[0]

    def make_grid(steps):
        if grid == "uniform":
            return flowsde.grids.uniform(T, t_end, steps, dtype=dtype)
        r_hi = float(sched.sigma(torch.tensor(T, dtype=dtype)) / sched.alpha(torch.tensor(T, dtype=dtype)))
        r_lo = float(sched.sigma(torch.tensor(t_end, dtype=dtype)) / sched.alpha(torch.tensor(t_end, dtype=dtype)))
        ratios = flowsde.grids.edm(r_lo, r_hi, steps + 1, 7.0, final_zero=False, dtype=dtype)
        ts = sched.t_from_sigma_ratio(ratios)
        ts[0], ts[-1] = T, t_end
        return ts

    pf = diffusion.pf_ode()
    ref = flowsde.solve(pf, xT, torch.tensor([T, t_end], dtype=dtype), method=flowsde.RK45(rtol=1e-10, atol=1e-10))
    rows = []

    def add(method, setting, sol_x, nfe, seconds, deterministic):
        pe = None
        if deterministic:
            pe = float(((sol_x - ref.x) ** 2).flatten(1).sum(1).mean().sqrt())
        ks, me, ce = marg(sol_x)
        rows.append(ComparisonRow(method, setting, nfe, pe, ks, me, ce, seconds))

    per_step = {"euler": 1, "heun": 2, "euler_maruyama": 1, "pc": 2, "edm_churn": 2}
    for method in methods:
        if method == "rk45":
            for tol in rk45_tols:
                t0 = time.perf_counter()
                sol = flowsde.solve(pf, xT, torch.tensor([T, t_end], dtype=dtype),
                                    method=flowsde.RK45(rtol=tol, atol=tol))
                add("rk45", f"tol {tol:.0e}", sol.x, sol.nfe, time.perf_counter() - t0, True)
            continue
        for budget in budgets:
            steps = max(1, budget // per_step[method])
            ts = make_grid(steps)
            g = torch.Generator().manual_seed(seed + 7)
            t0 = time.perf_counter()
            if method in ("euler", "heun"):
                sol = flowsde.solve(pf, xT, ts, method=method)
                x, nfe = sol.x, sol.nfe
            elif method == "euler_maruyama":
                sol = flowsde.solve(diffusion.reverse_sde(1.0), xT, ts, method="euler_maruyama", generator=g)
                x, nfe = sol.x, sol.nfe
            elif method == "pc":
                sol = flowsde.solve(diffusion.reverse_sde(1.0), xT, ts,
                                    method=flowsde.PC(),
                                    generator=g)
                x, nfe = sol.x, sol.nfe
            else:  # edm_churn
                from flowsde.adapters._edm import edm_sampler

                # EDM works in the scaled variable x / alpha with sigma-ratio r = sigma / alpha. Its
                # grid is our ts mapped to r, plus the final 0 it expects; "stop" ends at r(t_end)
                # and returns x_t there (NFE 2 (steps) per step, no Euler step to 0).
                a_t, s_t = sched.alpha(ts), sched.sigma(ts)
                r = torch.cat([s_t / a_t, ts.new_zeros(1)])
                latents = xT / (a_t[0] * r[0])
                res = edm_sampler(diffusion, latents, sigmas=r, S_churn=s_churn, generator=g, last_step="stop")
                x, nfe = res.x, res.nfe
            add(method, f"{steps} steps", x, nfe, time.perf_counter() - t0, method in DETERMINISTIC)

    lik = []
    if likelihood_tols:
        xs = target.sample(likelihood_n, generator=torch.Generator().manual_seed(seed + 3))
        exact = target.log_prob(xs)
        prior = data.marginal(sched, T)
        for tol in likelihood_tols:
            t0 = time.perf_counter()
            res = flowsde.log_likelihood(pf, xs, (t_end, T), prior.log_prob, rtol=tol, atol=tol)
            err = (res.logp - exact).abs()
            lik.append((tol, float(res.nfe), float(err.mean()), float(err.max()), time.perf_counter() - t0))
    return Comparison(rows, lik, info)
