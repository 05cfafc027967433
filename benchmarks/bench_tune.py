"""Grids tuned to a model against the named grids, on x_T not used for tuning (issue 22, item 3).

For each shipped digits model and each sampler, :func:`flowsde.workloads.tune_grid` fits the grid at one NFE
on a calibration batch (seed 12345); :func:`flowsde.workloads.compare_solvers` then runs the sampler on every
named grid and on the tuned one from compare's own x_T (seed 0, held out), against its float64 PF-ODE
reference. Printed: the best named grid's error, the tuned grid's, their ratio (target <= 0.5), SW2 of both
with the noise floor, and the tuning cost (NFE per calibration sample, seconds).

digits-velocity's schedule has alpha = 0 at t_max = 1 (log-SNR infinite), where the grids in sigma/alpha and
log-SNR are undefined: its span here is t in [0.01, 0.999] (the same network, ``Linear(t_max=0.999)``), so that
every named grid competes, for every sampler alike.

    python benchmarks/bench_tune.py                       # both models, euler heun dpmpp_2m unipc, NFE 10
    python benchmarks/bench_tune.py --models digits-eps --solvers heun --samples 64 --eval-samples 128
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from flowsde import models
from flowsde.adapters import GRID_NAMES, Diffusion
from flowsde.workloads import compare_solvers, tune_grid

VELOCITY_T_MAX = 0.999


def load(name: str):
    d = models.load(name, net_dtype=torch.float64)
    if not math.isfinite(float(d.schedule.log_snr(torch.tensor(float(d.schedule.t_max), dtype=torch.float64)))):
        d = Diffusion(d.net, dataclasses.replace(d.schedule, t_max=VELOCITY_T_MAX), prediction=d.prediction)
    return d


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits-eps", "digits-velocity"])
    ap.add_argument("--solvers", nargs="+", default=["euler", "heun", "dpmpp_2m", "unipc"])
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    ap.add_argument("--eval-samples", type=int, default=256, help="held-out samples of compare (default 256)")
    ap.add_argument("--max-iterations", type=int, default=60)
    ap.add_argument("--out", default=None, help="folder for the grid files (default: not written)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"NFE {a.nfe}; tuned on {a.samples} x_T (seed 12345), scored on {a.eval_samples} other x_T "
             "(compare's seed 0) against the float64 PF-ODE reference (RK45 1e-8)", "",
             "| model | sampler | best named grid | its error | tuned error | ratio | SW2 named / tuned (floor) | "
             "calibration: named -> tuned | tuning NFE | tuning s |",
             "|---|---|---|---:|---:|---:|---|---|---:|---:|"]
    for name in a.models:
        d = load(name)
        tuned = []
        for s in a.solvers:
            tg = tune_grid(d, s, a.nfe, samples=a.samples, event_shape=(64,), max_iterations=a.max_iterations,
                           model=name)
            tuned.append(tg)
            if a.out:
                import pathlib

                pathlib.Path(a.out).mkdir(parents=True, exist_ok=True)
                tg.write(pathlib.Path(a.out) / f"{name}-{s}-nfe{a.nfe}.json")
            print(f"{name} {s}: tuned in {tg.seconds:.1f} s, {tg.tuning_nfe} NFE; calibration error "
                  f"{tg.error_init:.3e} ({tg.init}) -> {tg.error:.3e}", flush=True)
        t0 = time.perf_counter()
        res = compare_solvers(d, event_shape=(64,), samples=a.eval_samples, budgets=(a.nfe,), methods=a.solvers,
                              grid=[*GRID_NAMES, *tuned], rk45_tols=())
        print(f"{name}: held-out comparison in {time.perf_counter() - t0:.1f} s", flush=True)
        floor = res.noise_floor
        for s, tg in zip(a.solvers, tuned):
            rows = [r for r in res.rows if r.method == s and r.error is not None]
            named = [r for r in rows if not r.grid.startswith("tuned")]
            best = min(named, key=lambda r: r.error)
            mine = next(r for r in rows if r.grid.startswith("tuned"))
            lines.append(f"| {name} | {s} | {best.grid} | {best.error:.2e} | {mine.error:.2e} | "
                         f"{mine.error / best.error:.2f} | {best.distance:.4f} / {mine.distance:.4f} ({floor:.4f}) | "
                         f"{tg.error_init:.2e} -> {tg.error:.2e} | {tg.tuning_nfe} | {tg.seconds:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
