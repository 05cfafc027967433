"""The flowsde command line.

    flowsde demo                      # the main job on the built-in default model
    flowsde compare [options]         # solver comparison, NFE for NFE, against exact answers
    flowsde likelihood [options]      # exact log-likelihood / bits-per-dim of the built-in model

The built-in model is an exact "oracle" network of a Gaussian mixture
(:func:`flowsde.validation.default_mixture`) under a chosen schedule and
parameterization: every number printed is compared with a closed form.
"""

from __future__ import annotations

import argparse
import sys
import time


def _model(args):
    import torch

    from flowsde.adapters import Diffusion, schedules
    from flowsde.validation._compare import default_mixture

    sched = {
        "vp": lambda: schedules.VP(),
        "cosine": lambda: schedules.Cosine(),
        "subvp": lambda: schedules.SubVP(),
        "ve": lambda: schedules.VE(),
        "edm": lambda: schedules.EDM(),
        "linear": lambda: schedules.Linear(),
    }[args.schedule]()
    data = default_mixture(args.dim, dtype=torch.float64)
    net = data.oracle(sched, args.prediction)
    return Diffusion(net, sched, prediction=args.prediction), data


def _common(p):
    p.add_argument("--schedule", default="vp", choices=["vp", "cosine", "subvp", "ve", "edm", "linear"])
    p.add_argument("--prediction", default="eps", choices=["eps", "score", "x0", "v", "velocity"])
    p.add_argument("--dim", type=int, default=2, help="dimension of the built-in mixture")
    p.add_argument("--seed", type=int, default=0)


def cmd_compare(args) -> int:
    from flowsde.validation._compare import compare_solvers

    diffusion, data = _model(args)
    t0 = time.perf_counter()
    res = compare_solvers(diffusion, data, n=args.n, budgets=args.budgets, methods=args.methods, seed=args.seed,
                          likelihood_tols=args.likelihood_tols, grid=args.grid, progress=True)
    print(res.table())
    if args.plot:
        res.plot(args.plot)
        print(f"\nplot written to {args.plot}")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "setting", "nfe", "path_error", "ks", "mean_error", "cov_error", "seconds"])
            for r in res.rows:
                w.writerow([r.method, r.setting, r.nfe, r.path_error, r.ks, r.mean_error, r.cov_error, r.seconds])
        print(f"rows written to {args.csv}")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_likelihood(args) -> int:
    import torch

    import flowsde

    diffusion, data = _model(args)
    sched = diffusion.schedule
    T, t_eps = float(sched.t_max), float(sched.t_min)
    target = data.marginal(sched, t_eps)
    x = target.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    exact = target.log_prob(x)
    prior = data.marginal(sched, T)
    print(f"{diffusion!r}\nlog p_t(x) at t = {t_eps:g} of {args.n} points, prior = exact marginal at T = {T:g}\n")
    print("| trace | rtol=atol | NFE | mean logp | mean exact | max abs error | mean stderr | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for trace in args.trace:
        for tol in args.tols:
            t0 = time.perf_counter()
            r = flowsde.log_likelihood(diffusion.pf_ode(), x, (t_eps, T), prior.log_prob, trace=trace,
                                       probes=args.probes if trace == "hutchinson" else 1, rtol=tol, atol=tol,
                                       generator=torch.Generator().manual_seed(args.seed + 1), progress=True)
            se = "—" if r.stderr is None else f"{float(r.stderr.mean()):.3g}"
            print(f"| {trace} | {tol:.0e} | {r.nfe} | {float(r.logp.mean()):.5f} | {float(exact.mean()):.5f} | "
                  f"{float((r.logp - exact).abs().max()):.2e} | {se} | {time.perf_counter() - t0:.2f} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flowsde", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="the main job on the built-in default model (a quick comparison)")
    _common(d)
    d.set_defaults(n=4000, budgets=[10, 20, 40, 80], methods=None, likelihood_tols=[1e-3, 1e-5], grid="edm",
                   plot=None, csv=None, func=cmd_compare)

    c = sub.add_parser("compare", help="compare solvers NFE for NFE against exact answers")
    _common(c)
    c.add_argument("--n", type=int, default=2000, help="samples per solver")
    c.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 80, 160])
    c.add_argument("--methods", nargs="+", default=None,
                   help="subset of euler heun rk45 euler_maruyama pc edm_churn (default: all)")
    c.add_argument("--likelihood-tols", type=float, nargs="*", default=[1e-3, 1e-5])
    c.add_argument("--grid", default="edm", choices=["edm", "uniform"])
    c.add_argument("--plot", default=None, help="write an error-vs-NFE plot (PNG) here")
    c.add_argument("--csv", default=None, help="write the rows as CSV here")
    c.set_defaults(func=cmd_compare)

    lk = sub.add_parser("likelihood", help="exact log-likelihood of the built-in model's data")
    _common(lk)
    lk.add_argument("--n", type=int, default=200)
    lk.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5])
    lk.add_argument("--trace", nargs="+", default=["exact", "hutchinson"], choices=["exact", "hutchinson"])
    lk.add_argument("--probes", type=int, default=4)
    lk.set_defaults(func=cmd_likelihood)

    args = ap.parse_args(argv)
    if getattr(args, "methods", None) is None and args.func is cmd_compare:
        from flowsde.validation._compare import ALL_METHODS

        args.methods = list(ALL_METHODS)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
