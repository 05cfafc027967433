"""``flowsde tune``: fit the grid of one sampler at one NFE to one model, written as a grid file (JSON).

The grid minimises the sampler's RMS error per coordinate to a float64 PF-ODE reference (RK45) over a
calibration batch of prior draws x_T (`--samples`, seeded by `--calibration-seed`, which differs from
compare's `--seed` by default, so compare's rows are held out). Use it with
`flowsde compare --grid grid.json --solvers S --nfe N` (next to named grids: `--grid edm log_snr grid.json`).
"""

from __future__ import annotations

import time

from ._errors import CLIError
from ._output import out_file


def add_arguments(p) -> None:
    from ._compare import _positive_float, _positive_int

    p.add_argument("--solver", required=True, metavar="NAME",
                   help="a fixed-step PF-ODE sampler: euler, heun, dpmpp_2m, unipc, ...")
    p.add_argument("--nfe", required=True, type=_positive_int, metavar="N",
                   help="the NFE budget the grid is for (the most steps that fit)")
    p.add_argument("--out", required=True, metavar="FILE", help="the grid file to write (.json)")
    p.add_argument("--samples", type=_positive_int, default=128, metavar="N",
                   help="calibration samples x_T, one batch (default: 128)")
    p.add_argument("--calibration-seed", type=int, default=12345, metavar="SEED",
                   help="seed of the calibration x_T (default: 12345, not compare's --seed)")
    p.add_argument("--max-iterations", type=_positive_int, default=60, metavar="K",
                   help="L-BFGS-B iterations (default: 60)")
    p.add_argument("--init", default=None, metavar="GRID",
                   help="the named grid to start from (default: the best named grid on the calibration batch)")
    p.add_argument("--t-start", type=_positive_float, default=None, metavar="T",
                   help="the grid's first time (default: the schedule's t_max; compare runs from t_max)")
    p.add_argument("--t-end", type=_positive_float, default=None, metavar="T",
                   help="the grid's last time (default: the schedule's t_min; compare stops there)")
    p.add_argument("--reference-tol", type=_positive_float, default=1e-8,
                   help="RK45 tolerance of the float64 PF-ODE reference (default: 1e-8)")


def main(args, model) -> int:
    from flowsde.workloads import known_methods, tune_grid

    out = out_file(args.out, suffix=".json")
    if args.solver not in known_methods():
        raise CLIError(f"--solver {args.solver}: unknown; choose a fixed-step PF-ODE sampler (euler, heun, "
                       "dpmpp_2m, unipc, ...).")
    t0 = time.perf_counter()
    net = model.reference if model.reference is not None else model.diffusion
    res = tune_grid(net, args.solver, args.nfe, samples=args.samples, generator=args.calibration_seed,
                    start=args.t_start, stop=args.t_end, event_shape=model.event_shape, init=args.init,
                    max_iterations=args.max_iterations,
                    reference_tol=args.reference_tol, model=model.spec)
    res.write(out)
    print(f"Model: {model.spec}; sampler {res.solver} at NFE {res.nfe} ({res.steps} steps); "
          f"{res.samples} calibration samples (seed {res.seed})")
    print(f"Objective: {res.objective}")
    print(f"Error on the calibration batch: {res.error_init:.3e} on the best named grid ({res.init}) -> "
          f"{res.error:.3e} tuned ({res.error / res.error_init:.2f}x)")
    print(f"Grid: {', '.join(f'{v:.6g}' for v in res.grid.tolist())}")
    print(f"Tuning cost: {res.tuning_nfe} NFE per calibration sample ({res.extra['solves']} solves), "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"Grid file: {out}  (use: flowsde compare --model {model.spec} --grid {out} --solvers {res.solver} "
          f"--nfe {res.nfe})")
    return 0


__all__ = ["add_arguments", "main"]
