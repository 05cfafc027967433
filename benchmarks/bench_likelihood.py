"""Likelihood benchmark: flowsde vs the anchors' recipes on one model, data and tolerance.

Model: the exact probability-flow ODE of a Gaussian mixture (K = 4, full covariances)
under the EDM schedule (sigma(t) = t, t in [0.002, 80]), ``GaussianMixture.oracle(schedule,
"velocity")``; data: 32 samples from the mixture; exact answer ``log p_{t_eps}(x)`` from the
mixture's closed-form marginal; every method uses the same exact prior
``log p_T`` so the error is the solver's (and the trace estimator's) alone.

Methods (float64, rtol = atol = 1e-5 unless swept):

* flowsde ``log_likelihood`` (RK45, per-sample and batch error control; exact trace and
  one Rademacher probe);
* k-diffusion's ``log_likelihood`` recipe (crowsonkb/k-diffusion ``sampling.py``: torchdiffeq
  ``odeint(method="dopri5")`` on ``(x, delta_ll)`` in sigma, one Rademacher probe held for the
  solve), re-implemented below, and the same torchdiffeq solve with the exact trace;
* torchode (``Dopri5`` + ``IntegralController``, per-sample steps, ``(B, D + 1)`` state), exact trace;
* score_sde's recipe (yang-song/score_sde ``likelihood.py``: ``scipy.integrate.solve_ivp(method="RK45")``
  on the flattened ``(B (D + 1),)`` numpy state, a host round trip per evaluation), exact trace.

Run: ``python benchmarks/bench_likelihood.py`` (~2-3 min on 2 cores; ``--quick`` for a smoke run;
``--repeats 3 --sweep 1e-3 1e-4 1e-6`` for the figures in ``docs/benchmarks.md``, ~4.5 min;
``--frontier`` for the equal-accuracy NFE comparison, ~5 min).
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
from flowsde.adapters.schedules import EDM
from flowsde.validation.references import GaussianMixture

DT = torch.float64


def make_problem(d: int, B: int = 32, K: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(K, d, generator=g, dtype=DT)
    A = torch.randn(K, d, d, generator=g, dtype=DT) / math.sqrt(d)
    covs = 0.3 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=DT)
    w = torch.softmax(torch.randn(K, generator=g, dtype=DT), 0)
    gm = GaussianMixture(w, means, covs)
    sched = EDM()
    t_eps, T = float(sched.t_min), float(sched.t_max)
    x = gm.sample(B, generator=g)
    exact = gm.log_prob_t(sched, torch.tensor(t_eps, dtype=DT), x)
    net = gm.oracle(sched, "velocity")

    def u(t, xx):  # the PF-ODE drift, t 0-dim or (B,)
        return net(xx, t)

    def prior(z):
        return gm.log_prob_t(sched, torch.tensor(T, dtype=DT), z)

    return dict(u=u, prior=prior, x=x, exact=exact, t_eps=t_eps, T=T, d=d)


def _div_exact(out, x):
    """tr(du/dx) per sample by D batched VJPs (the same autograd work as flowsde's exact trace)."""
    B, D = x.shape
    eye = torch.eye(D, dtype=x.dtype).unsqueeze(1).expand(D, B, D)
    (g,) = torch.autograd.grad(out, x, eye, is_grads_batched=True)
    return torch.diagonal(g, dim1=0, dim2=2).sum(-1)


def run_flowsde(p, rtol, atol, per_sample, trace="exact", seed=0):
    # the log-density channel held to atol nats per step (bpd_tol = atol / (d ln 2)), the state to rtol/atol
    kw = dict(trace=trace, rtol=rtol, atol=atol, per_sample=per_sample, bpd_tol=atol / (p["d"] * math.log(2)))
    if trace == "hutchinson":
        kw["generator"] = torch.Generator().manual_seed(seed)
    r = flowsde.log_likelihood(flowsde.ODE(p["u"]), p["x"], (p["t_eps"], p["T"]), p["prior"], **kw)
    return r.logp, r.nfe


def run_torchdiffeq(p, rtol, atol, trace="exact", seed=0):
    """k-diffusion's log_likelihood (crowsonkb/k-diffusion sampling.py), with the exact prior."""
    from torchdiffeq import odeint

    x = p["x"]
    v = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)).to(x.dtype) * 2 - 1
    fevals = 0

    def ode_fn(sigma, state):
        nonlocal fevals
        with torch.enable_grad():
            xx = state[0].detach().requires_grad_()
            d = p["u"](sigma, xx)
            fevals += 1
            if trace == "exact":
                d_ll = _div_exact(d, xx)
            else:
                grad = torch.autograd.grad((d * v).sum(), xx)[0]
                d_ll = (v * grad).flatten(1).sum(1)
        return d.detach(), d_ll.detach()

    x_min = x, x.new_zeros([x.shape[0]])
    t = x.new_tensor([p["t_eps"], p["T"]])
    sol = odeint(ode_fn, x_min, t, atol=atol, rtol=rtol, method="dopri5")
    latent, delta_ll = sol[0][-1], sol[1][-1]
    return p["prior"](latent) + delta_ll, fevals


def run_torchode(p, rtol, atol):
    import torchode as to

    x = p["x"]
    B, D = x.shape
    fevals = 0

    def f(t, y):
        nonlocal fevals
        fevals += 1
        with torch.enable_grad():
            xx = y[:, :D].detach().requires_grad_()
            d = p["u"](t.to(x.dtype), xx)
            div = _div_exact(d, xx)
        return torch.cat([d.detach(), div.detach()[:, None]], 1)

    term = to.ODETerm(f)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=atol, rtol=rtol, term=term)
    solver = to.AutoDiffAdjoint(step, ctrl)
    y0 = torch.cat([x, torch.zeros(B, 1, dtype=x.dtype)], 1)
    prob = to.InitialValueProblem(y0=y0, t_start=torch.full((B,), p["t_eps"], dtype=DT),
                                  t_end=torch.full((B,), p["T"], dtype=DT))
    sol = solver.solve(prob)
    yT = sol.ys[:, -1]
    return p["prior"](yT[:, :D]) + yT[:, D], fevals


def run_scipy(p, rtol, atol):
    """score_sde's recipe: scipy RK45 on the flattened state, torch <-> numpy on every evaluation."""
    from scipy import integrate

    x = p["x"]
    B, D = x.shape
    fevals = 0

    def f(t, y):
        nonlocal fevals
        fevals += 1
        xx = torch.from_numpy(y[: B * D].reshape(B, D)).requires_grad_()
        with torch.enable_grad():
            d = p["u"](torch.tensor(t, dtype=DT), xx)
            div = _div_exact(d, xx)
        return np.concatenate([d.detach().numpy().reshape(-1), div.detach().numpy()])

    y0 = np.concatenate([x.numpy().reshape(-1), np.zeros(B)])
    sol = integrate.solve_ivp(f, (p["t_eps"], p["T"]), y0, rtol=rtol, atol=atol, method="RK45")
    yT = torch.from_numpy(sol.y[:, -1])
    return p["prior"](yT[: B * D].reshape(B, D)) + yT[B * D:], fevals


def time_variable_table():
    """Error / NFE of Diffusion.log_likelihood in time="t" vs "log_snr" (docs/likelihood.md)."""
    from flowsde.adapters import EDM as EDM_, VE, VP, Diffusion

    print("| schedule | d | t, per-sample | t, batch | log-SNR, per-sample | log-SNR, batch |")
    print("|---|---|---|---|---|---|")
    for d in (2, 16):
        g = torch.Generator().manual_seed(0)
        means = 1.5 * torch.randn(3, d, generator=g, dtype=DT)
        A = torch.randn(3, d, d, generator=g, dtype=DT) / math.sqrt(d)
        covs = 0.3 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=DT)
        gm = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=DT), means, covs)
        x = gm.sample(8, generator=g)
        for sched in (VP(), VE(), EDM_()):
            dif = Diffusion(gm.oracle(sched, "score"), sched, prediction="score")
            T = torch.tensor(float(sched.t_max), dtype=DT)
            exact = gm.log_prob_t(sched, torch.tensor(float(sched.t_min), dtype=DT), x)
            cells = []
            for tv in ("t", "log_snr"):
                for ps in (True, False):
                    r = dif.log_likelihood(x, time=tv, per_sample=ps, prior_logp=lambda z: gm.log_prob_t(sched, T, z))
                    cells.append(f"{float((r.logp - exact).abs().max()):.1e} / {r.nfe}")
            print(f"| {type(sched).__name__} | {d} | " + " | ".join(cells) + " |")


def equal_accuracy(curve, e_ref):
    """NFE flowsde needs for a max error <= ``e_ref``, from a tolerance sweep ``[(err, nfe), ...]``.

    ``best``: the fewest NFE of any swept tolerance reaching it (a lucky tolerance counts);
    ``reliable``: the fewest NFE from which on every swept point with as many or more NFE
    reaches it (the error of an adaptive solve is not monotone in the tolerance). ``None``
    when no point reaches it."""
    ok = [n for e, n in curve if e <= e_ref]
    best = min(ok) if ok else None
    bad = [n for e, n in curve if e > e_ref]
    above = [n for n in ok if not bad or n > max(bad)]
    return best, (min(above) if above else None)


def frontier(dims, lo=1.0, hi=6.0, step=0.25):
    """flowsde (batch, the default) at rtol = atol = 10^-lo .. 10^-hi vs torchdiffeq at 1e-3 .. 1e-6:
    the NFE flowsde needs to reach torchdiffeq's accuracy (the target: <= 0.8x)."""
    n = int(round((hi - lo) / step))
    tols = [10 ** -(lo + i * step) for i in range(n + 1)]
    for d in dims:
        p = make_problem(d)
        curve = []
        for s in tols:
            logp, nfe = run_flowsde(p, s, s, False)
            curve.append((float((logp - p["exact"]).abs().max()), nfe))
        print(f"### d = {d}: flowsde batch, rtol = atol = 10^-{lo:g} .. 10^-{hi:g} (step 10^-{step:g}), "
              "max abs err / NFE\n")
        print(" ".join(f"{e:.1e}/{nf}" for e, nf in curve) + "\n")
        print("| torchdiffeq rtol = atol | torchdiffeq err / NFE | flowsde NFE for <= that err, best (ratio) "
              "| reliable (ratio) |")
        print("|---|---|---|---|")
        for s in (1e-3, 1e-4, 1e-5, 1e-6):
            logp, nfe = run_torchdiffeq(p, s, s)
            e = float((logp - p["exact"]).abs().max())
            best, rel = equal_accuracy(curve, e)
            cell = lambda v: "not reached" if v is None else f"{v} ({v / nfe:.2f}x)"
            print(f"| {s:g} | {e:.1e} / {nfe} | {cell(best)} | {cell(rel)} |")
        print()


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return (f"{cpu}, nproc = {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least sensitive to load)")
    ap.add_argument("--sweep", type=float, nargs="*", default=[1e-3, 1e-4],
                    help="extra tolerances for the per-sample vs batch vs torchdiffeq error/NFE sweep")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--time-variable", action="store_true",
                    help="only the t vs log-SNR table of docs/likelihood.md (mixture tests, rtol = atol = 1e-5)")
    ap.add_argument("--frontier", action="store_true",
                    help="only the equal-accuracy comparison: flowsde swept over rtol = atol = 1e-1 .. 1e-6 "
                         "(quarter decades) vs torchdiffeq at 1e-3 .. 1e-6")
    a = ap.parse_args(argv)
    if a.frontier:
        torch.set_num_threads(a.threads)
        print(f"machine: {machine()}\n")
        frontier(a.dims)
        return
    if a.time_variable:
        time_variable_table()
        return
    if a.quick:
        a.dims, a.batch, a.repeats, a.sweep = [8], 8, 1, []
    torch.set_num_threads(a.threads)
    try:
        import torchode  # noqa: F401

        have_torchode = True
    except ImportError:
        have_torchode = False
    print(f"machine: {machine()}")
    print(f"model: Gaussian mixture K=4, EDM schedule, exact PF-ODE; B={a.batch}; rtol=atol={a.tol:g}; "
          f"wall = best of {a.repeats}\n")
    for d in a.dims:
        p = make_problem(d, a.batch)
        tol = a.tol
        rows = [
            ("flowsde rk45 per-sample, exact", lambda: run_flowsde(p, tol, tol, True)),
            ("flowsde rk45 batch, exact", lambda: run_flowsde(p, tol, tol, False)),
            ("torchdiffeq dopri5 (k-diffusion recipe), exact", lambda: run_torchdiffeq(p, tol, tol)),
        ]
        if have_torchode:
            rows.append(("torchode dopri5 per-sample, exact", lambda: run_torchode(p, tol, tol)))
        rows += [
            ("scipy RK45 (score_sde recipe), exact", lambda: run_scipy(p, tol, tol)),
            ("flowsde rk45, 1 Rademacher probe", lambda: run_flowsde(p, tol, tol, True, "hutchinson")),
            ("k-diffusion recipe as published, 1 probe", lambda: run_torchdiffeq(p, tol, tol, "hutchinson")),
        ]
        res = []
        for name, fn in rows:
            (logp, nfe), wall = timed(fn, 1 if "scipy" in name else a.repeats)
            err = (logp - p["exact"]).abs()
            res.append((name, float(err.max()), float(err.mean()), nfe, wall))
        ref = next(r for r in res if r[0].startswith("torchdiffeq"))
        print(f"### d = {d}\n")
        print("| method | max abs err (nats) | mean abs err | NFE | wall (s) | NFE / torchdiffeq "
              "| wall / torchdiffeq |")
        print("|---|---|---|---|---|---|---|")
        for name, emax, emean, nfe, wall in res:
            print(f"| {name} | {emax:.2e} | {emean:.2e} | {nfe} | {wall:.3f} | {nfe / ref[3]:.2f} | "
                  f"{wall / ref[4]:.2f} |")
        print()
        if a.sweep:
            print(f"tolerance sweep, d = {d} (max abs err / NFE; one run each, NFE and error are deterministic):\n")
            print("| rtol = atol | flowsde per-sample | flowsde batch | torchdiffeq dopri5 |")
            print("|---|---|---|---|")
            for s in sorted(set(a.sweep + [a.tol]), reverse=True):
                cells = []
                for fn in (lambda: run_flowsde(p, s, s, True), lambda: run_flowsde(p, s, s, False),
                           lambda: run_torchdiffeq(p, s, s)):
                    logp, nfe = fn()
                    cells.append(f"{float((logp - p['exact']).abs().max()):.1e} / {nfe}")
                print(f"| {s:g} | " + " | ".join(cells) + " |")
            print()

if __name__ == "__main__":
    main()
