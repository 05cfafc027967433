"""How well ``LikelihoodResult.solver_error`` tracks the true solver error, on the exact mixtures.

Gaussian mixtures (K = 3, full covariances, d in {2, 8, 16}) under VP/eps, VE/score, EDM/x0 and
Linear/velocity with the closed-form oracle networks and the exact prior, so the only error is the
solver's: true error = ``|logp - log p_{t_eps}(x)|`` (closed form), estimate = ``solver_error``
(the sum of the embedded error estimates of the log-density channel over the accepted steps).
``bpd_tol`` is swept over 1e-3 .. 1e-7 with the state's tolerances at their default (= bpd_tol).

Prints, per bpd_tol, the median and the 90 % range of estimate / true error over samples and
problems, the fraction of samples whose true error exceeds the estimate (and exceeds 10x the
estimate), and the max true error in bits/dim against bpd_tol.

Run: ``python benchmarks/bench_likelihood_estimate.py [--plot docs/img/likelihood_estimate.png]``
(about two minutes on 2 cores); ``--estimate resolve`` for ``error_estimate="resolve"``.
"""

from __future__ import annotations

import argparse
import math

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
from flowsde.adapters import Diffusion
from flowsde.validation import likelihood_mixture, schedule_predictions

DT = torch.float64
CASES = schedule_predictions()  # the problems of tests/adapters/test_adapter_likelihood.py


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--estimate", default="embedded", choices=["embedded", "resolve"],
                    help="error_estimate= of log_likelihood")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tols = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    rows = {tol: [] for tol in tols}  # (true, estimate, d) in nats
    for d in (2, 8, 16):
        for sched, pred in CASES:
            gm, g = likelihood_mixture(d)
            x = gm.sample(args.batch, generator=g)
            dif = Diffusion(gm.oracle(sched, pred), sched, prediction=pred)
            T = torch.tensor(float(sched.t_max), dtype=DT)
            for tol in tols:
                r = dif.log_likelihood(x, prior_logp=lambda z: gm.log_prob_t(sched, T, z), bpd_tol=tol,
                                       error_estimate=args.estimate)
                exact = gm.log_prob_t(sched, torch.tensor(r.stats["t_eps"], dtype=DT), x)
                for e, s in zip((r.logp - exact).abs().tolist(), r.solver_error.tolist()):
                    rows[tol].append((e, s, d))
    print("| bpd_tol | median est/true | 5-95 % est/true | true > est | true > 10 est | max true (bits/dim) |")
    print("|---|---|---|---|---|---|")
    for tol in tols:
        t = torch.tensor([e for e, _, _ in rows[tol]], dtype=DT)
        s = torch.tensor([s for _, s, _ in rows[tol]], dtype=DT)
        dd = torch.tensor([d for _, _, d in rows[tol]], dtype=DT)
        ratio = s / t.clamp_min(1e-300)
        q = torch.quantile(ratio, torch.tensor([0.05, 0.5, 0.95], dtype=DT))
        print(f"| {tol:.0e} | {q[1]:.2f} | {q[0]:.2f} - {q[2]:.2f} | {float((t > s).double().mean()):.0%} | "
              f"{float((t > 10 * s).double().mean()):.0%} | {float((t / (dd * math.log(2))).max()):.1e} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4))
        for tol, mk in zip(tols, "os^vD"):
            t = [max(e, 1e-14) for e, _, _ in rows[tol]]
            s = [max(v, 1e-14) for _, v, _ in rows[tol]]
            ax.loglog(t, s, mk, ms=3, alpha=0.6, label=f"bpd_tol {tol:.0e}")
        lo, hi = 1e-12, 1e-1
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [lo / 10, hi / 10], "k:", lw=0.8)
        ax.plot([lo, hi], [lo * 10, hi * 10], "k:", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("true solver error |logp - exact| (nats)")
        ax.set_ylabel("solver_error estimate (nats)")
        ax.set_title("exact mixtures, d = 2, 8, 16; 4 schedules", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
