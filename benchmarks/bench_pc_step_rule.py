"""PC's Langevin step rules against exact marginals in D = 1, 2 and 64 (issue 21).

The network is the exact score of a Gaussian mixture (``GaussianMixture.oracle``), so the only
errors are the sampler's and Monte-Carlo's. VP schedule, ``reverse_sde(1)`` from the exact
marginal at t = 1 to t = 1e-3 on a uniform grid (default 100 steps), 4000 samples, fixed seeds.
Reported per rule: the relative covariance error ``||C_hat - C|| / ||C||`` (Frobenius), whether
``flowsde.validation.check_marginals`` passes (alpha = 0.01), the largest ``|x|`` and the number
of samples farther than 10 reference standard deviations (largest eigenvalue of the covariance)
from the reference mean.

    python benchmarks/bench_pc_step_rule.py                       # D = 1, 2, 64; ~1 min on one thread
    python benchmarks/bench_pc_step_rule.py --dims 2 --steps 30 100 300
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)

import flowsde
from flowsde.adapters import Diffusion
from flowsde.adapters.schedules import VP
from flowsde.validation import GaussianMixture, check_marginals

F64 = torch.float64
RULES = ("sigma", "per_sample", "score_sde")


def mixture(dim: int) -> GaussianMixture:
    """The 2-D mixture of tests/adapters/test_sampling_marginals.py, a 1-D one, and a seeded D-dim one."""
    w = torch.tensor([0.3, 0.7], dtype=F64)
    if dim == 1:
        return GaussianMixture(w, torch.tensor([[-1.5], [1.0]], dtype=F64), torch.tensor([[[0.2]], [[0.15]]], dtype=F64))
    if dim == 2:
        return GaussianMixture(w, torch.tensor([[-1.5, 0.5], [1.0, -0.5]], dtype=F64),
                               torch.tensor([[[0.25, 0.1], [0.1, 0.2]], [[0.3, -0.12], [-0.12, 0.15]]], dtype=F64))
    g = torch.Generator().manual_seed(0)
    mu = 0.5 * torch.randn(2, dim, generator=g, dtype=F64)
    A = torch.randn(2, dim, dim, generator=g, dtype=F64) / math.sqrt(dim)
    return GaussianMixture(w, mu, 0.1 * A @ A.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=F64))


def measure(gm: GaussianMixture, solver, *, steps: int = 100, samples: int = 4000, t_end: float = 1e-3,
            seed: int = 5) -> dict:
    """Sample ``gm`` at ``t_end`` with ``solver`` and compare with the exact marginal."""
    sch = VP()
    dif = Diffusion(gm.oracle(sch, "score"), sch, "score")
    x0 = gm.marginal(sch, 1.0).sample(samples, generator=torch.Generator().manual_seed(11))
    sol = flowsde.solve(dif.reverse_sde(1.0), x0, flowsde.grids.uniform(1.0, t_end, steps), method=solver,
                        generator=flowsde.per_sample_generators(range(seed, seed + samples)), throw=False)
    x, ref = sol.x, gm.marginal(sch, t_end)
    finite = torch.isfinite(x).all(1)
    res = check_marginals(x[finite], ref, alpha=0.01)
    w, mu, S = ref.weights, ref.means, ref.covs
    m = (w[:, None] * mu).sum(0)
    C = (w[:, None, None] * (S + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(m, m)
    sd = float(torch.linalg.eigvalsh(C).max().sqrt())
    dist = (x[finite] - m).norm(dim=1)
    return dict(cov_error=res.cov_error, passed=res.passed, max_abs=float(x[finite].abs().max()),
                beyond_10sd=int((dist > 10 * sd).sum()) + int((~finite).sum()), sd=sd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[1, 2, 64])
    ap.add_argument("--steps", type=int, nargs="+", default=[100])
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--samples", type=int, default=4000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'D':>3} {'steps':>5} {'step_rule':>10} {'cov_error':>9} {'passed':>6} {'max|x|':>8} {'>10sd':>5} {'s':>5}")
    for dim in args.dims:
        gm = mixture(dim)
        for steps in args.steps:
            for rule in args.rules:
                t = time.perf_counter()
                r = measure(gm, flowsde.solvers.PC(step_rule=rule), steps=steps, samples=args.samples)
                print(f"{dim:>3} {steps:>5} {rule:>10} {r['cov_error']:>9.4f} {str(r['passed']):>6} {r['max_abs']:>8.2f} "
                      f"{r['beyond_10sd']:>5} {time.perf_counter() - t:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
