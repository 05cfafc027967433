"""Each fixed-step PF-ODE sampler's default grid, chosen by measurement (issue 22, item 2).

Every fixed-step PF-ODE sampler of compare's default set (:func:`flowsde.workloads.default_methods`, which
has ``edm_heun``) runs on every named grid (``flowsde.adapters.GRID_NAMES``) at NFE 10, 20 and 40, through
:func:`flowsde.workloads.compare_solvers` (``grid=[every name]``), on the shipped ``digits-eps`` and
``digits-velocity`` models and on exact-score mixture oracles (``default_mixture(dim)``, ``GaussianMixture.oracle``)
on a VP and a Cosine schedule (eps) and a Linear one (velocity). The error is compare's: RMS per coordinate
against the float64 RK45 PF-ODE reference from the same x_T.

The velocity models' schedule has alpha = 0 at t_max = 1 (log-SNR infinite), where the grids in sigma/alpha
and log-SNR are undefined and the samplers in x/alpha (``edm_heun``, ``ddim``, ``dpmpp_2m``, ...) cannot start:
as in ``bench_tune.py`` (whose :func:`load` is reused), their span is t in [t_min, 0.999], so that every named
grid competes for every sampler alike.

Rule, per sampler: among the named grids, the one of least geometric mean error over (models x NFE) whose
geometric mean is within 1.2x of the best grid's and with no cell (model, NFE) worse than 2x that cell's best
grid. Where no grid passes over all models, the same rule per schedule family: ``vp`` (VP, Cosine: eps
models) and ``flow`` (Linear: velocity models, alpha = 0 at t = 1). Where no grid passes within a family
either, the fallback (shown in brackets): among the grids within 1.2x of the best geometric mean, the one
whose worst cell is least worse than that cell's best.

Of the reverse-SDE samplers only Euler-Maruyama is ranked (strong error against a 4000-step Euler-Maruyama
reference on the same Brownian path). pc's Langevin corrector is no discretization of the path (its error
levels off) and the others draw their own noise (no pathwise error; sliced W2 at 128 samples is at its noise
floor): they keep compare's ``DEFAULT_GRID``.

    python benchmarks/bench_default_grids.py                  # ~128 samples, NFE 10 20 40, all models
    python benchmarks/bench_default_grids.py --models vp-eps linear-velocity --samples 64
"""

from __future__ import annotations

import _checkout  # noqa: F401  (refuse to measure another clone's code)

import argparse
import dataclasses
import json
import math
import time

import torch

from flowsde import models
from flowsde.adapters import GRID_NAMES, Diffusion, schedules
from flowsde.workloads import compare_solvers, default_methods, default_mixture
from flowsde.workloads._compare import BUDGETED, _adaptive, _is_ode_method

from bench_tune import VELOCITY_T_MAX, load

#: the models measured, by schedule family
MODELS = {
    "digits-eps": "vp",
    "digits-velocity": "flow",
    "vp-eps": "vp",
    "cosine-eps": "vp",
    "linear-velocity": "flow",
}
ORACLE_DIM = 8
RATIO_MEAN, RATIO_CELL = 1.2, 2.0
#: Euler-Maruyama steps of the SDE reference (on every grid, the NFE-40 run has 1/100 of its steps)
SDE_REFERENCE_STEPS = 4000


def build(name: str):
    """``(diffusion, data, event_shape, reference_tol)`` of a model of :data:`MODELS`."""
    if name.startswith("digits"):
        return load(name), None, tuple(models.info(name).event_shape), 1e-5
    sched = {"vp-eps": schedules.VP(), "cosine-eps": schedules.Cosine(),
             "linear-velocity": dataclasses.replace(schedules.Linear(), t_max=VELOCITY_T_MAX)}[name]
    prediction = name.split("-")[1]
    data = default_mixture(ORACLE_DIM)
    return Diffusion(data.oracle(sched, prediction), sched, prediction=prediction), data, (ORACLE_DIM,), 1e-7


def ranked_samplers():
    """compare's default fixed-step samplers that have a pathwise error: the PF-ODE ones (``edm_heun`` among
    them) and Euler-Maruyama (strong error on the Brownian path of the SDE reference)."""
    ms = [m for m in default_methods() if _is_ode_method(m) and m not in BUDGETED and (m == "edm_heun" or
                                                                                         not _adaptive(m))]
    return (ms if "edm_heun" in ms else ms + ["edm_heun"]) + ["euler_maruyama"]


def requested(label: str) -> str:
    """The grid name asked for, from a row's grid label (``"uniform (edm: no log-SNR at T)"`` -> ``"edm"``)."""
    return label.split("(", 1)[1].split(":", 1)[0].strip() if "(" in label else label


def measure(names, methods, budgets, samples, seed):
    """``{(model, method, grid, budget): error}`` and the fallbacks seen ``{(model, grid)}``."""
    err, fell_back = {}, set()
    for name in names:
        d, data, ev, tol = build(name)
        t0 = time.perf_counter()
        res = compare_solvers(d, data, event_shape=ev, samples=samples, budgets=tuple(budgets), methods=methods,
                              grid=list(GRID_NAMES), reference_tol=tol, generator=seed, n_projections=16,
                              sde_reference_steps=SDE_REFERENCE_STEPS)
        for r in res.rows:
            if r.kind == "reference" or r.budget is None:
                continue
            g = requested(r.grid)
            if g != r.grid:
                fell_back.add((name, g))
            err[(name, r.method, g, r.budget)] = r.error
        print(f"# {name}: {len(res.rows) - 1} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    return err, fell_back


def geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def choose(err, method, names, budgets):
    """``(grid, met, {grid: (geomean, worst cell ratio)})`` by the rule of the module docstring; where no grid
    meets it (``met`` False), the one of least worst-cell ratio among those within 1.2x of the best mean."""
    cells = [(n, b) for n in names for b in budgets]
    stats = {}
    for g in GRID_NAMES:
        gm = geomean([err[(n, method, g, b)] for n, b in cells])
        worst = max(err[(n, method, g, b)] / min(err[(n, method, h, b)] for h in GRID_NAMES) for n, b in cells)
        stats[g] = (gm, worst)
    best = min(v[0] for v in stats.values())
    ok = [g for g in GRID_NAMES if stats[g][0] <= RATIO_MEAN * best and stats[g][1] <= RATIO_CELL]
    if ok:
        return min(ok, key=lambda g: stats[g][0]), True, stats
    near = [g for g in GRID_NAMES if stats[g][0] <= RATIO_MEAN * best]
    return min(near, key=lambda g: stats[g][1]), False, stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--solvers", nargs="+", default=None, help="default: compare's fixed-step PF-ODE samplers")
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the errors and the choice here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    methods = a.solvers or ranked_samplers()
    t0 = time.perf_counter()
    err, fell_back = measure(a.models, methods, a.nfe, a.samples, a.seed)
    print(f"# {a.samples} samples, NFE {' '.join(map(str, a.nfe))}, {time.perf_counter() - t0:.0f} s in all")
    if fell_back:
        print("# fell back to uniform in t (no log-SNR at T): "
              + ", ".join(f"{g} on {n}" for n, g in sorted(fell_back)))
    families = {f: [n for n in a.models if MODELS[n] == f] for f in ("vp", "flow")}
    scopes = [("all", list(a.models))] + [(f, ns) for f, ns in families.items() if ns]
    head = " | ".join(GRID_NAMES)
    print("\nGeometric mean RMS error over (models x NFE); in brackets the worst cell's ratio to that cell's "
          f"best grid. Chosen: least geometric mean within {RATIO_MEAN}x of the best, no cell over {RATIO_CELL}x; "
          "(in brackets) where none is: of those within 1.2x, the least worst cell.\n")
    print(f"| sampler | models | {head} | chosen |")
    print("|---|---|" + "---:|" * len(GRID_NAMES) + "---|")
    out = {"errors": {"|".join(map(str, k)): v for k, v in err.items()}, "choice": {}}
    for m in methods:
        overall = None
        for scope, names in scopes:
            g, met, stats = choose(err, m, names, a.nfe)
            cells = " | ".join(f"{stats[h][0]:.2e} ({stats[h][1]:.1f}x)" for h in GRID_NAMES)
            print(f"| {m} | {scope} | {cells} | {g if met else f'({g})'} |")
            if scope == "all":
                overall = g if met else None
                out["choice"][m] = overall
            elif overall is None:
                out["choice"][f"{m}|{scope}"] = g if met else f"{g} (rule not met: fallback)"
    print("\nDefaults (SAMPLER_GRIDS in workloads/_compare.py):")
    for m in methods:
        per = {f: out["choice"][m] or out["choice"][f"{m}|{f}"] for f in families if families[f]}
        print(f"  {m!r}: {{" + ", ".join(f"{f!r}: {g.split(' ')[0]!r}" for f, g in per.items()) + "},"
              + ("" if out["choice"][m] else "  # " + "; ".join(f"{f}: {g}" for f, g in per.items())))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
