"""``flowsde compare``: every sampler on one model, NFE for NFE, against references."""

from __future__ import annotations

import time
from pathlib import Path

from ._errors import CLIError
from ._output import out_dir, progress_enabled

DEFAULT_NFE = (10, 20, 40, 80)
DEFAULT_RK45_TOLS = (1e-2, 1e-3, 1e-4, 1e-5)


def add_arguments(p) -> None:
    p.add_argument("--solvers", nargs="+", metavar="NAME", default=None,
                   help="samplers to compare (default: every sampler named in the description above)")
    p.add_argument("--nfe", nargs="+", type=_positive_int, metavar="N", default=list(DEFAULT_NFE),
                   help="the NFE ladder: budgets for the fixed-step samplers "
                        f"(default: {' '.join(map(str, DEFAULT_NFE))})")
    p.add_argument("--rk45-tols", nargs="+", type=_positive_float, metavar="TOL", default=list(DEFAULT_RK45_TOLS),
                   help="tolerances (rtol = atol) swept for RK45 and the other adaptive solvers (torchdiffeq:*) "
                        "(default: 1e-2 1e-3 1e-4 1e-5)")
    p.add_argument("--batch-size", "-n", type=_positive_int, default=256, metavar="N",
                   help="samples per solver, run as one batch (default: 256)")
    p.add_argument("--beta", type=_nonneg_float, default=1.0,
                   help="reverse-SDE family member of the stochastic samplers: 1 = Anderson's reverse SDE, "
                        "0 = the PF-ODE (default: 1)")
    p.add_argument("--grid", nargs="+", metavar="NAME|FILE", default=None,
                   help="time grids of the fixed-step samplers, each run on every one: uniform (in t), quadratic "
                        "(in t), edm (rho=7 in sigma/alpha), log_snr (uniform in log-SNR), or a grid file of "
                        "flowsde tune (used on its sampler and NFE only) (default: each sampler's default grid, "
                        "edm)")
    p.add_argument("--s-churn", type=_nonneg_float, default=10.0, help="s_churn of edm_churn (default: 10)")
    p.add_argument("--reference-tol", type=_positive_float, default=1e-8,
                   help="RK45 tolerance of the float64 PF-ODE reference (default: 1e-8)")
    p.add_argument("--sde-reference-steps", type=_positive_int, default=None, metavar="K",
                   help="Euler-Maruyama steps of the fine SDE reference (default: max(1000, 8 x the most steps))")
    p.add_argument("--likelihood-tols", nargs="*", type=_positive_float, default=[], metavar="TOL",
                   help="gmm only: likelihood rows against the exact log p at these log-density tolerances "
                        "(bpd_tol, bits/dim; the state's rtol = atol follow it)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for compare.csv, compare.json, errors.png, samples.png "
                        "(default: a new folder ./flowsde-compare-<time>)")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1 or str(v) != s.strip().lstrip("+"):
        import argparse

        raise argparse.ArgumentTypeError(f"{s!r} is not a positive integer")
    return v


def _finite_float(s: str, *, strict: bool) -> float:
    """An argparse type: a finite number ``> 0`` (``strict``) or ``>= 0``."""
    import argparse
    import math

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not (math.isfinite(v) and (v > 0 if strict else v >= 0)):
        raise argparse.ArgumentTypeError(f"{s!r} must be a finite number {'>' if strict else '>='} 0")
    return v


def _positive_float(s: str) -> float:
    return _finite_float(s, strict=True)


def _nonneg_float(s: str) -> float:
    return _finite_float(s, strict=False)


def plan(model, args):
    """The solver set, checked (names, every budget) before any work."""
    from flowsde.workloads import default_methods, known_methods, steps_for_budget

    solvers = list(args.solvers) if args.solvers else list(default_methods())
    known = known_methods()
    bad = [s for s in solvers if s not in known]
    if bad:
        raise CLIError(f"--solvers: unknown {', '.join(bad)}; choose from {', '.join(known)}.")
    import flowsde

    for s in solvers:
        if s in known and s not in ("edm_heun", "edm_churn") and flowsde.solvers.get_solver(s).adaptive:
            continue  # a tolerance sweep (--rk45-tols), no budget
        for b in args.nfe:
            steps_for_budget(s, b)  # InputError: a budget below one step
    try:
        import matplotlib  # noqa: F401  (the two PNGs; checked before any work)
    except ImportError:
        raise CLIError("compare writes two PNGs and needs matplotlib: pip install flowsde[plots].") from None
    args.grids = _grids(args.grid, model)
    if args.likelihood_tols and model.exact is None:
        raise CLIError("--likelihood-tols: only with --model gmm (the exact log p is needed); use `flowsde nll` "
                       "for a trained model.")
    return solvers


def _grids(values, model):
    """``--grid``: the names as they are, grid files read (:class:`flowsde.workloads.TunedGrid`); None: each
    sampler's default grid."""
    if not values:
        return None
    from flowsde.adapters import GRID_NAMES
    from flowsde.workloads import TunedGrid

    out = []
    for v in values:
        if v in GRID_NAMES:
            out.append(v)
        elif Path(v).is_file():
            g = TunedGrid.read(v)
            if g.model != model.spec:
                print(f"note: --grid {v} was tuned on {g.model}, not on {model.spec}.")
            out.append(g)
        else:
            raise CLIError(f"--grid {v}: neither a grid name ({', '.join(GRID_NAMES)}) nor a grid file; write one "
                           f"with `flowsde tune --model {model.spec} --solver S --nfe N --out grid.json`.")
    return out


def _grid_words(args) -> str:
    return "each sampler's default grid" if not args.grid else f"grid {' '.join(args.grid)}"


def run(model, args, *, solvers, out: Path, title: str = "") -> dict:
    """Run the comparison, print the table, write the files; returns {what: path}."""
    from flowsde.workloads import compare_solvers

    t0 = time.perf_counter()
    res = compare_solvers(
        model.diffusion, model.exact, event_shape=model.event_shape, samples=args.batch_size, budgets=tuple(args.nfe),
        methods=solvers, beta=args.beta, rk45_tols=tuple(args.rk45_tols), reference_tol=args.reference_tol,
        sde_reference_steps=args.sde_reference_steps,
        likelihood_tols=tuple(args.likelihood_tols), grid=getattr(args, "grids", None), s_churn=args.s_churn,
        generator=args.seed,
        dtype=args.dtype, device=args.device, reference_model=model.reference,
        progress=progress_enabled(args.quiet))
    res.info["title"] = title or f"{model.spec}: error vs NFE"
    res.info["model_spec"] = model.spec
    res.info["command"] = "flowsde compare " + " ".join(_argv(args))
    paths = {"table (CSV)": out / "compare.csv", "table (JSON)": out / "compare.json",
             "error vs NFE": out / "errors.png", "samples": out / "samples.png"}
    res.write_csv(paths["table (CSV)"])
    res.write_json(paths["table (JSON)"])
    res.plot_errors(paths["error vs NFE"])  # each line against its own reference; the others named on it
    density = model.density(5000) if model.density is not None else None
    res.plot_samples(paths["samples"], image_shape=model.image_shape, data_range=model.data_range, density=density)
    print(f"Model: {model.spec} ({model.description})")
    print(f"{args.batch_size} samples per solver from the same x_T (seed {args.seed}), T = {res.info['T']:g} -> "
          f"t_end = {res.info['t_end']:g}, {res.info['dtype']} on {res.info['device']}, {_grid_words(args)}")
    print(f"Reference: {res.info['reference']}")
    if "sde_reference" in res.info:
        print(f"SDE reference: {res.info['sde_reference']}")
    print(f"SW2 against: {res.info['distance_reference']}")
    print()
    print(res.table())
    print()
    print("Columns:")
    print(res.explain())
    print()
    missing = res.without_error()
    if missing:
        print(f"errors.png: no line for {', '.join(missing)}: no pathwise error (their noise is not the shared "
              f"Brownian path's increments); compare them by SW2.")
    marked = any(res.path_of(m) != "ode" for m in dict.fromkeys(r.method for r in res.rows if r.kind != "reference"))
    print("samples.png: each solver at its smallest budget (where they differ)"
          + ("; rows marked * are drawn on another path than the reference (reverse SDE, own noise)." if marked else "."))
    for what, p in paths.items():
        print(f"{what}: {p}")
    print(f"(compare took {time.perf_counter() - t0:.1f} s)")
    return paths


def _argv(args) -> list:
    """The options that define the run, as a command line (stored in compare.json)."""
    s = ["--model", args.model, "--nfe", *map(str, args.nfe), "--batch-size", str(args.batch_size), "--beta",
         f"{args.beta:g}", "--seed", str(args.seed), "--dtype", str(args.dtype).replace("torch.", ""),
         *(["--grid", *args.grid] if args.grid else [])]
    if args.solvers:
        s += ["--solvers", *args.solvers]
    return s


def main(args, model) -> int:
    solvers = plan(model, args)
    out = out_dir(args.out, "compare")
    print(where(out, args.out))
    run(model, args, solvers=solvers, out=out)
    return 0


def where(out: Path, given) -> str:
    """The line that says where the files go (the default folder is new, in the working directory)."""
    if given is None:
        return f"Files go to a new folder in the working directory: {out.resolve()} (--out DIR to choose)\n"
    return f"Files go to {out.resolve()}\n"


__all__ = ["add_arguments", "main", "plan", "run", "where"]
