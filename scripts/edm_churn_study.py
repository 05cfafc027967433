"""How far does EDM's stochastic sampler land from the target marginal?

Karras et al. (2022) Algorithm 2 (NVlabs/edm ``generate.py`` ``edm_sampler``):
at each level ``t_i`` of the rho-grid, *churn* (raise the noise level to
``t^ = t_i (1 + gamma)``, ``gamma = min(S_churn / N, sqrt(2) - 1)``, by adding
fresh noise), then take one Heun step of the probability-flow ODE from ``t^``
to ``t_{i+1}``. Khungurn's notes (seed 001) argue that this is not an exact
discretisation of any member of the SDE family. We measure it.

Set-up: an exact 2-D Gaussian mixture (3 narrow components), the EDM
schedule (alpha = 1, sigma = t), the exact denoiser (posterior mean) as the
network, float64, ``n`` particles started from the EXACT marginal at
``sigma_max = 80`` (so the only error is the sampler's), EDM's grid
(sigma_min = 0.002, rho = 7, final step to 0). Samplers:

* ``edm``: Algorithm 2 with S_churn in {0, 2, 10, 40} (S_churn = 0 is
  Algorithm 1, the deterministic Heun sampler); NFE = 2N - 1. gamma is
  clipped at sqrt(2) - 1, so S_churn >= 0.414 N all behave alike.
* ``edm/sub8``: the same churn, but each ODE move t^ -> t_{i+1} split into 8
  Heun steps (a diagnostic: it separates the churn from the ODE error).
* ``em``: Euler-Maruyama on the reverse-time family member with beta = 1
  (Anderson's reverse SDE) on the same grid; NFE = N (and at 2N steps, for
  equal NFE).
* ``pc``: the same predictor plus one Langevin corrector step per level
  (score_sde, snr = 0.16), with flowsde's per-sample step rule and with
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
from flowsde.validation import GaussianMixture, check_marginals

F64 = torch.float64


class _EDMSchedule:
    """alpha = 1, sigma = t (fallback when flowsde.adapters.schedules is absent)."""

    t_min, t_max = 0.002, 80.0

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)


def _schedule():
    try:
        from flowsde.adapters.schedules import EDM

        return EDM(sigma_min=0.002, sigma_max=80.0)
    except ImportError:
        return _EDMSchedule()


def _edm_sampler_local(denoise, x, sigmas, S_churn, gen, substeps=1):
    """Algorithm 2 of Karras et al. 2022, as NVlabs/edm generate.py ``edm_sampler`` (x is already
    x_0 at sigmas[0]; sigmas ends in 0; S_min = 0, S_max = inf, S_noise = 1). ``substeps > 1``
    splits each ODE step t_hat -> t_next into that many Heun steps (a diagnostic, not EDM's)."""
    N = len(sigmas) - 1
    nfe = 0
    for i in range(N):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(S_churn / N, math.sqrt(2) - 1)
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(t_hat ** 2 - t_cur ** 2) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        knots = torch.linspace(t_hat, t_next, substeps + 1, dtype=F64).tolist()
        for a, b in zip(knots[:-1], knots[1:]):
            d = (x - denoise(x, a)) / a
            x_next = x + (b - a) * d
            nfe += 1
            if b > 0:
                d2 = (x_next - denoise(x_next, b)) / b
                x_next = x + (b - a) * (0.5 * d + 0.5 * d2)
                nfe += 1
            x = x_next
    return x, nfe


_EDM_IMPL = ["?"]
try:
    from flowsde.adapters import Diffusion as _Diffusion  # noqa: F401

    _HAVE_DIFFUSION = True
except ImportError:
    _HAVE_DIFFUSION = False


def _edm(denoise, x_T, sigmas, S_churn, seed):
    gen = torch.Generator().manual_seed(seed)
    try:
        from flowsde.adapters import edm_sampler  # engineer D's implementation, when present
    except ImportError:
        edm_sampler = None
    if edm_sampler is None:
        _EDM_IMPL[0] = "local Algorithm 2 (scripts/edm_churn_study.py)"
        return _edm_sampler_local(denoise, x_T, sigmas, S_churn, gen)[0]
    _EDM_IMPL[0] = "flowsde.adapters.edm_sampler"
    model = lambda x, s: denoise(x, s)  # noqa: E731 - k-diffusion style model(x, sigma)
    sol = edm_sampler(model, x_T / float(sigmas[0]), sigmas=sigmas, S_churn=S_churn, generator=gen)
    return sol.x


def _family_sde(gm, sched, beta):
    """Reverse-time family member for alpha = 1, sigma = t: f = 0, g^2 = 2t;
    drift -(1 + beta)/2 g^2 score, diffusion sqrt(beta) g (solved with decreasing t)."""
    try:
        from flowsde.adapters import Diffusion

        return Diffusion(gm.oracle(sched, "x0"), sched, prediction="x0").reverse_sde(beta)
    except ImportError:
        score = lambda t, x: gm.oracle(sched, "score")(x, t)  # noqa: E731
        return flowsde.SDE(lambda t, x: -(1 + beta) * t * score(t, x),
                           lambda t, x: torch.sqrt(2 * beta * t).expand(x.shape[0]) if t.dim() == 0 else
                           torch.sqrt(2 * beta * t), score=score)


def mixture():
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]),
        torch.tensor([[[0.04, 0.01], [0.01, 0.02]], [[0.01, 0.0], [0.0, 0.09]], [[0.05, -0.02], [-0.02, 0.03]]]),
    )


def distances(x, gm):
    """(max KS over 16 projections, |mean error|, relative covariance error, smallest Holm-adjusted p-value)."""
    res = check_marginals(x, gm, n_projections=16, seed=123)
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
        sigmas = flowsde.grids.edm(0.002, 80.0, n=N, rho=7, final_zero=True)
        for c in args.churn:
            x = _edm(denoise, x_T.clone(), sigmas, c, args.seed + 1)
            rows.append(("edm", N, f"{c:g}", 2 * N - 1) + distances(x, gm))
        for M in ((N, 2 * N) if N == max(args.steps) else (N,)):  # EM at 2N = EDM's NFE is the next row set
            ts = flowsde.grids.edm(0.002, 80.0, n=M, rho=7, final_zero=True)
            sol = flowsde.solve(sde, x_T, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(7))
            rows.append(("em", M, "beta=1", sol.nfe) + distances(sol.x, gm))
        if args.substeps > 1 and N <= 16:  # same churn, (nearly) exact ODE moves: isolates the ODE discretisation error
            for c in args.churn:
                x, nfe = _edm_sampler_local(denoise, x_T.clone(), sigmas, c, torch.Generator().manual_seed(args.seed + 1),
                                            substeps=args.substeps)
                rows.append((f"edm/sub{args.substeps}", N, f"{c:g}", nfe) + distances(x, gm))
        for rule in ("per_sample", "score_sde"):
            sol = flowsde.solve(sde, x_T, sigmas, method=flowsde.PC(snr=0.16, n_corrector=1, step_rule=rule),
                                generator=torch.Generator().manual_seed(8))
            rows.append((f"pc/{rule}", N, "beta=1", sol.nfe) + distances(sol.x, gm))
    print(f"n = {args.n} particles, 2-D mixture of 3, EDM schedule, exact denoiser, start at the exact "
          f"marginal at sigma = 80, grid rho = 7 ending at 0.")
    print(f"EDM sampler: {_EDM_IMPL[0]}; EM/PC: {'flowsde.adapters.Diffusion' if _HAVE_DIFFUSION else 'local'} "
          "reverse_sde(beta=1).")
    print(f"{'sampler':13s} {'steps':>5s} {'S_churn':>8s} {'NFE':>4s} {'max KS':>8s} {'|mean err|':>10s} "
          f"{'rel cov err':>11s} {'Holm p':>8s}")
    for r in rows:
        print(f"{r[0]:13s} {str(r[1]):>5s} {str(r[2]):>8s} {r[3]:>4d} {r[4]:8.4f} {r[5]:10.4f} {r[6]:11.4f} {r[7]:8.2g}")
    print(f"({time.time() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
