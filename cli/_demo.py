"""``flowsde demo``: the README's main job, about a minute on a CPU.

On the shipped ``digits-eps`` model: a short ``compare`` (PF-ODE and reverse-SDE samplers at
NFE 10, 20, 40 against a float64 RK45 reference) and a short ``nll`` (bits/dim of the first held-out
digits), plots and tables written to one folder. ``--model gmm``: the comparison on the exact
Gaussian-mixture oracle, where every error is against a closed form (likelihood rows included).
"""

from __future__ import annotations

import time

from ._output import out_dir


def add_arguments(p) -> None:
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the tables and plots (default: a new folder ./flowsde-demo-<time>)")


def main(args, model, parse) -> int:
    """``parse(argv)`` parses a full command line (the demo reuses compare's and nll's options)."""
    t0 = time.perf_counter()
    common = ["--model", args.model, "--seed", str(args.seed), "--device", str(args.device),
              "--dtype", str(args.dtype).replace("torch.", "")] + (["--quiet"] if args.quiet else [])
    if model.exact is not None:
        common += ["--schedule", args.schedule, "--prediction", args.prediction, "--dim", str(args.dim)]
        cargs = parse(["compare"] + common + ["--batch-size", "1000", "--nfe", "10", "20", "40", "80",
                                              "--likelihood-tols", "1e-3", "1e-5", "--sde-reference-steps", "640",
                                              "--solvers", "euler", "heun", "edm_heun", "rk45", "euler_maruyama",
                                              "pc", "edm_churn"])
    else:
        import flowsde

        extra = [m for m in ("dpmpp_2m", "unipc") if m in flowsde.solvers.METHODS]
        cargs = parse(["compare"] + common + ["--batch-size", "128", "--nfe", "10", "20", "40",
                                              "--rk45-tols", "1e-3", "1e-5", "--sde-reference-steps", "400",
                                              "--solvers", "euler", "heun", *extra, "rk45", "euler_maruyama"])
    from . import _compare, _nll

    solvers = _compare.plan(model, cargs)
    out = out_dir(args.out, "demo")
    print(_compare.where(out, args.out))
    print(f"== flowsde compare {' '.join(_shown(cargs, model))}\n")
    _compare.run(model, cargs, solvers=solvers, out=out)
    if model.exact is None and model.test_data is not None:
        nargs = parse(["nll"] + common + ["--limit", "32", "--batch-size", "32", "--out", str(out / "nll.csv")])
        print(f"\n== flowsde nll --model {args.model} --limit 32 --out {out / 'nll.csv'}\n")
        _nll.main(nargs, model)
    print(f"\nAll files are in {out.resolve()}/  (demo took {time.perf_counter() - t0:.0f} s)")
    return 0


def _shown(cargs, model):
    s = ["--model", model.spec, "--nfe"] + [str(b) for b in cargs.nfe] + ["--batch-size", str(cargs.batch_size)]
    if cargs.solvers:
        s += ["--solvers"] + list(cargs.solvers)
    return s
