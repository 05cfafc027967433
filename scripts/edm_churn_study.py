"""How far does EDM's stochastic sampler land from the target marginal?

Karras et al. (2022) Algorithm 2 (NVlabs/edm ``generate.py`` ``edm_sampler``):
at each level ``t_i`` of the rho-grid, *churn* (raise the noise level to
``t^ = t_i (1 + gamma)``, ``gamma = min(s_churn / N, sqrt(2) - 1)``, by adding
fresh noise), then take one Heun step of the probability-flow ODE from ``t^``
to ``t_{i+1}``. Khungurn's notes (seed 001) argue that this is not an exact
discretisation of any member of the SDE family. We measure it.

Set-up: an exact 2-D Gaussian mixture (3 narrow components), the EDM
schedule (alpha = 1, sigma = t), the exact denoiser (posterior mean) as the
network, float64, ``n`` particles started from the EXACT marginal at
``sigma_max = 80`` (so the only error is the sampler's), EDM's grid
(sigma_min = 0.002, rho = 7, final step to 0). Samplers:

* ``edm``: Algorithm 2 with s_churn in {0, 2, 10, 40} (s_churn = 0 is
  Algorithm 1, the deterministic Heun sampler) through ``flowsde.adapters.edm_sampler``,
  i.e. the core's ``flowsde.solvers.EDMChurn`` solver; NFE = 2N - 1. gamma is
  clipped at sqrt(2) - 1, so s_churn >= 0.414 N all behave alike.
* ``edm/sub8``: the same churn, but each ODE move t^ -> t_{i+1} split into 8
  Heun steps of ``flowsde.solve`` (a diagnostic: it separates the churn from the ODE error).
* ``em``: Euler-Maruyama on the reverse-time family member with beta = 1
  (Anderson's reverse SDE) on the same grid; NFE = N (and at 2N steps, for
  equal NFE).
* ``pc``: the same predictor plus one Langevin corrector step per level
  (score_sde, snr = 0.16), with flowsde's default step rule (from the noise level), its per-sample rule and
  score_sde's batch-mean rule; NFE = 2N.

Distances to the exact target p_0 (samples vs closed form, no reference
sampling noise): the maximum over 16 random projections of the one-sample KS
statistic (``check_marginals(...).max_ks``), the mean error |m_hat - m| and
the relative covariance error |C_hat - C|_F / |C|_F, and the smallest
Holm-adjusted p-value of ``check_marginals`` (< 0.01: the output is
distinguishable from the target at this ``n``). The row ``exact`` gives the
noise floor of each measure at this ``n``.

Run:  python scripts/edm_churn_study.py            (~95 s on 2 shared cores, n = 20000)
      python scripts/edm_churn_study.py --n 4000   (quicker, noisier)
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import flowsde
from flowsde.adapters import Diffusion, edm_ode, edm_sampler
from flowsde.validation import GaussianMixture, check_marginals

F64 = torch.float64


def _schedule():
    from flowsde.adapters.schedules import EDM

    return EDM(sigma_min=0.002, sigma_max=80.0)


def _edm(denoise, x_T, sigmas, s_churn, seed):
    """Algorithm 2 through flowsde.adapters.edm_sampler (the core's flowsde.solvers.EDMChurn solver)."""
    model = lambda x, s: denoise(x, s)  # noqa: E731 - k-diffusion style model(x, sigma)
    sol = edm_sampler(model, x_T / float(sigmas[0]), grid=sigmas, s_churn=s_churn,
                      generator=torch.Generator().manual_seed(seed))
    return sol.x


def _edm_substeps(denoise, x, sigmas, s_churn, seed, substeps):
    """A diagnostic, not EDM's algorithm: EDM's churn at every level (the forward noising kernel
    x + sqrt(t^^2 - t_i^2) z, which maps p_{t_i} onto p_{t^} exactly), then the ODE move t^ -> t_{i+1}
    split into ``substeps`` Heun steps of flowsde.solve (Euler into t = 0). Separates the churn from
    the ODE step's error."""
    gen = torch.Generator().manual_seed(seed)
    ode = edm_ode(lambda x, s: denoise(x, s))
    sig = [float(v) for v in sigmas]
    N = len(sig) - 1
    gamma = min(s_churn / N, math.sqrt(2) - 1)
    nfe = 0
    for i in range(N):
        t_hat = sig[i] * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(t_hat ** 2 - sig[i] ** 2) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        knots = torch.linspace(t_hat, sig[i + 1], substeps + 1, dtype=F64)
        sol = flowsde.solve(ode, x, knots, method=flowsde.solvers.Heun(final_euler=sig[i + 1] == 0))
        x, nfe = sol.x, nfe + sol.nfe
    return x, nfe


def _family_sde(gm, sched, beta):
    """Reverse-time family member for alpha = 1, sigma = t (drift -(1 + beta)/2 g^2 score, diffusion
    sqrt(beta) g, g^2 = 2t), solved with decreasing t."""
    return Diffusion(gm.oracle(sched, "x0"), sched, prediction="x0").reverse_sde(beta)


def mixture():
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]),
        torch.tensor([[[0.04, 0.01], [0.01, 0.02]], [[0.01, 0.0], [0.0, 0.09]], [[0.05, -0.02], [-0.02, 0.03]]]),
    )


def distances(x, gm):
    """(max KS over 16 projections, |mean error|, relative covariance error, smallest Holm-adjusted p-value)."""
    res = check_marginals(x, gm, n_projections=16, generator=123)
    return res.max_ks, float(torch.as_tensor(res.mean_error).norm()), res.cov_error, res.worst[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="particles")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--churn", type=float, nargs="+", default=[0.0, 2.0, 10.0, 40.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--substeps", type=int, default=8,
                    help="also run Algorithm 2 (steps <= 16) with each ODE step split into this many Heun steps (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # (n, 2) tensors: intra-op threads only add overhead (and stall on a busy machine)
    t_start = time.time()
    gm, sched = mixture(), _schedule()
    denoise_net = gm.oracle(sched, "x0")

    def denoise(x, s):
        return denoise_net(x, torch.as_tensor(s, dtype=x.dtype).expand(x.shape[0]))

    g = torch.Generator().manual_seed(args.seed)
    x_T = gm.sample(args.n, generator=g) + 80.0 * torch.randn(args.n, 2, generator=g, dtype=F64)
    rows = [("exact", "-", "-", 0) + distances(gm.sample(args.n, generator=g), gm)]
    sde = _family_sde(gm, sched, 1.0)
    for N in args.steps:
        sigmas = flowsde.grids.edm(0.002, 80.0, steps=N, rho=7, final_zero=True)
        for c in args.churn:
            x = _edm(denoise, x_T.clone(), sigmas, c, args.seed + 1)
            rows.append(("edm", N, f"{c:g}", 2 * N - 1) + distances(x, gm))
        for M in ((N, 2 * N) if N == max(args.steps) else (N,)):  # EM at 2N = EDM's NFE is the next row set
            ts = flowsde.grids.edm(0.002, 80.0, steps=M, rho=7, final_zero=True)
            sol = flowsde.solve(sde, x_T, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(7))
            rows.append(("em", M, "beta=1", sol.nfe) + distances(sol.x, gm))
        if args.substeps > 1 and N <= 16:  # same churn, (nearly) exact ODE moves: isolates the ODE discretisation error
            for c in args.churn:
                x, nfe = _edm_substeps(denoise, x_T.clone(), sigmas, c, args.seed + 1, args.substeps)
                rows.append((f"edm/sub{args.substeps}", N, f"{c:g}", nfe) + distances(x, gm))
        for rule in ("sigma", "per_sample", "score_sde"):
            sol = flowsde.solve(sde, x_T, sigmas, method=flowsde.solvers.PC(snr=0.16, corrector_steps=1, step_rule=rule),
                                generator=torch.Generator().manual_seed(8))
            rows.append((f"pc/{rule}", N, "beta=1", sol.nfe) + distances(sol.x, gm))
    print(f"n = {args.n} particles, 2-D mixture of 3, EDM schedule, exact denoiser, start at the exact "
          f"marginal at sigma = 80, grid rho = 7 ending at 0.")
    print("EDM sampler: flowsde.adapters.edm_sampler (flowsde.solvers.EDMChurn); EM/PC: flowsde.adapters.Diffusion "
          "reverse_sde(beta=1).")
    print(f"{'sampler':13s} {'steps':>5s} {'s_churn':>8s} {'NFE':>4s} {'max KS':>8s} {'|mean err|':>10s} "
          f"{'rel cov err':>11s} {'Holm p':>8s}")
    for r in rows:
        print(f"{r[0]:13s} {str(r[1]):>5s} {str(r[2]):>8s} {r[3]:>4d} {r[4]:8.4f} {r[5]:10.4f} {r[6]:11.4f} {r[7]:8.2g}")
    print(f"({time.time() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
