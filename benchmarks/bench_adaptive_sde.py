"""The adaptive-step SDE sampler (``method="adaptive_sde"``, Jolicoeur-Martineau et al. 2021) against
Euler-Maruyama and ``euler_ancestral`` on their best named grids, at equal sliced W2 (issue 22, item 5).

Model: ``flowsde.models.load("digits-eps")`` (VP, t in [1e-3, 1]), its reverse SDE with ``beta = 1``, in
float32 (``--dtype``). Every sampler starts from the same ``x_T`` (seed 0) and draws its own noise (seed 3).

Distance: sliced W2 (:func:`flowsde.validation.sliced_w2`, 128 projections) to a reference set of the
reverse SDE's law: ``--ref-steps`` Euler-Maruyama steps on the ``uniform`` grid from independent ``x_T``
(seed 1). The noise floor is the distance between two such independent sets (the second from seed 2), as
``workloads/_compare.py`` measures its floor between two independent reference sets. (Reference is the
SDE's law, not the PF-ODE's: with a learned score the two laws differ, and every SDE sampler here
converges to the former; the PF-ODE distance of each row is printed too.)

Cost: the adaptive sampler's NFE is the mean over samples of its per-sample evaluations (2 per try,
``Solution.stats["nfe_per_sample"]``): each sample has its own steps; the batch's loop runs until its
slowest sample is done (``Solution.nfe``, printed as "batch NFE"). The fixed-step samplers take 1 NFE per
step.

"NFE to match": for each tolerance of the adaptive sampler, the NFE Euler-Maruyama / euler_ancestral need
on each named grid to reach the same W2, interpolated in log NFE between the measured step counts (the
first count at or below the level and the one before it), the best grid's shown. ">" where no count reached
it.

    python benchmarks/bench_adaptive_sde.py                       # ~3 min on 2 cores
    python benchmarks/bench_adaptive_sde.py --ref-steps 500 --rtols 1 0.5 0.25 0.1   # the table of docs/samplers.md

Measured (docs/samplers.md, n = 1000, float32): the target (fewer NFE than both at equal W2) is NOT met
on this model: Euler-Maruyama on the ``quadratic`` grid reaches W2 within 1.5x of the noise floor at
10 NFE, where the adaptive sampler needs ~40 (mean per sample), about a third of them in rejected tries.
    python benchmarks/bench_adaptive_sde.py --samples 1000 --rtols 0.5 0.2
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import flowsde
from flowsde import models
from flowsde.adapters import GRID_NAMES, named_grid
from flowsde.validation import sliced_w2

F64 = torch.float64


def nfe_to_reach(curve, level):
    """``curve``: [(nfe, w2)] by increasing nfe; the NFE at which w2 first reaches ``level`` (log-linear
    interpolation from the previous count), ``None`` if never."""
    for k, (n, w) in enumerate(curve):
        if w <= level:
            if k == 0:
                return float(n)
            n0, w0 = curve[k - 1]
            f = (w0 - level) / (w0 - w)
            return math.exp(math.log(n0) + f * (math.log(n) - math.log(n0)))
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20, 30, 45, 60])
    ap.add_argument("--rtols", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    ap.add_argument("--atol", type=float, default=0.0078)
    ap.add_argument("--ref-steps", type=int, default=300)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--grids", nargs="+", default=list(GRID_NAMES))
    a = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    dt = getattr(torch, a.dtype)
    d = models.load("digits-eps", net_dtype=dt)
    n, T, t_end = a.samples, float(d.schedule.t_max), float(d.schedule.t_min)
    prior = lambda seed: d.prior().sample((n, 64), generator=torch.Generator().manual_seed(seed), dtype=dt)
    rs = d.reverse_sde(1.0)
    t0 = time.perf_counter()
    fine = named_grid(d, "uniform", a.ref_steps)
    ref = flowsde.solve(rs, prior(1), fine, method="euler_maruyama", generator=11).x
    ref_b = flowsde.solve(rs, prior(2), fine, method="euler_maruyama", generator=12).x
    span = torch.tensor([T, t_end], dtype=F64)
    pf_ref = flowsde.solve(d.pf_ode(), prior(1), span, method="rk45", rtol=1e-5, atol=1e-5).x

    def w2(x, to=ref):
        return sliced_w2(x, to, n_projections=128, generator=0)

    floor = w2(ref_b)
    print(f"digits-eps, reverse SDE beta=1, t {T:g} -> {t_end:g}, {a.dtype}, n={n}; reference: {a.ref_steps} EM "
          f"steps (uniform grid); noise floor (two independent reference sets) {floor:.4f}; PF-ODE reference "
          f"floor {w2(ref_b, pf_ref):.4f} (the SDE and PF-ODE laws of this model differ); "
          f"references {time.perf_counter() - t0:.0f} s\n")
    x_T = prior(0)
    curves = {}
    print("| sampler | grid | " + " | ".join(f"{k}" for k in a.steps) + " |", flush=True)
    print("|---|---|" + "---:|" * len(a.steps), flush=True)
    for method in ("euler_maruyama", "euler_ancestral"):
        for g in a.grids:
            row = []
            for k in a.steps:
                sol = flowsde.solve(rs, x_T, named_grid(d, g, k), method=method, generator=3)
                row.append((float(sol.nfe), w2(sol.x)))
            curves[(method, g)] = row
            print(f"| {method} | {g} | " + " | ".join(f"{w:.4f}" for _, w in row) + " |", flush=True)
    print("\n(W2 to the SDE reference by step count; 1 NFE per step)\n", flush=True)
    print("| adaptive_sde rtol | atol | NFE (mean per sample) | batch NFE | rejected/sample | W2 | W2 to PF-ODE ref | "
          "EM: NFE to match (grid) | euler_ancestral: NFE to match (grid) | s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|---:|", flush=True)
    for rtol in a.rtols:
        t1 = time.perf_counter()
        sol = flowsde.solve(rs, x_T, span, method="adaptive_sde", rtol=rtol, atol=a.atol, generator=3)
        sec = time.perf_counter() - t1
        nfe = float(sol.stats["nfe_per_sample"].double().mean())
        rej = float(sol.stats["rejected_per_sample"].double().mean())
        level = w2(sol.x)
        cells = []
        for method in ("euler_maruyama", "euler_ancestral"):
            best = None
            for g in a.grids:
                m = nfe_to_reach(curves[(method, g)], level)
                if m is not None and (best is None or m < best[0]):
                    best = (m, g)
            cells.append(f"{best[0]:.1f} ({best[1]})" if best else f"> {a.steps[-1]}")
        print(f"| {rtol:g} | {a.atol:g} | {nfe:.1f} | {sol.nfe} | {rej:.1f} | {level:.4f} | {w2(sol.x, pf_ref):.4f} | "
              f"{cells[0]} | {cells[1]} | {sec:.1f} |")
    print(f"\nnoise floor {floor:.4f}; total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
