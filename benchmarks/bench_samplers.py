"""Per-step overhead of the samplers of ``docs/samplers.md`` (multistep ones above all).

One tiny MLP denoiser in k-diffusion's convention ``model(x, sigma) -> x0`` (about 100-150 us per
call on one CPU thread, so any per-step overhead shows), EDM's rho-grid of ``--steps`` levels
ending at 0, float32 states, batch 64. Timed side by side, round-robin, as the minimum over
``--reps`` repeats of the thread's CPU time (one torch thread: on a shared machine, wall time
counts the waits for a core too):

* ``bare``: a hand-written loop with the same network calls and a first-order update per call
  (the floor: network + one update);
* ``kdiff``: k-diffusion 0.1.1's own sampler of the same name (its ``sampling.py``, loaded alone;
  ``disable=True``, a noise sampler drawing ``randn_like``) where it has one;
* ``flowsde``: ``flowsde.solve(edm_ode(model), x, sigmas, method=...)`` with its defaults
  (``throw=True``: per-sample finiteness sums on the device, one host sync at the end), and with
  ``throw=False``;
* ``flowsde+Diffusion``: the same sampler on ``Diffusion(net, VP(), "eps").pf_ode()`` /
  ``reverse_sde(1)`` (the adapter's coefficients, range checks and conversions per call), against
  a bare loop on that network with precomputed coefficients.

Reported: ms per solve, us per step, and the overhead per step over ``bare`` in us.

    python benchmarks/bench_samplers.py                 # CPU, all methods, ~1 min
    python benchmarks/bench_samplers.py --reps 30 --steps 50
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
from flowsde.adapters import Diffusion, edm_ode
from flowsde.adapters.schedules import VP
from flowsde.validation import k_diffusion_sampling

METHODS = ["ddim", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "lms", "unipc", "dpm_2",
           "dpmpp_2s_ancestral", "edm"]
KDIFF = {"euler_ancestral": "sample_euler_ancestral", "dpmpp_2m": "sample_dpmpp_2m",
         "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_3m_sde": "sample_dpmpp_3m_sde", "lms": "sample_lms",
         "dpm_2": "sample_dpm_2", "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral", "edm": "sample_heun"}
STOCHASTIC = {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s_ancestral"}


def make_mlp(d, width, depth):
    layers = [torch.nn.Linear(d + 1, width), torch.nn.SiLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.SiLU()]
    layers += [torch.nn.Linear(width, d)]
    return torch.nn.Sequential(*layers).eval()


def timed(fns: dict, reps: int) -> dict:
    """Min over ``reps`` round-robin repeats of each function's CPU time (``time.thread_time``: with
    one torch thread every op runs on the calling thread, and time spent waiting for a core on a
    shared machine is not counted), after one warm-up."""
    out = {k: float("inf") for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.thread_time()
            f()
            out[k] = min(out[k], time.thread_time() - t0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--part", choices=("overhead", "digits", "all"), default="overhead",
                    help="overhead: per-step cost; digits: error vs NFE on the shipped digits model")
    args = ap.parse_args(argv)
    if args.part in ("digits", "all"):
        digits_part()
    if args.part == "digits":
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = make_mlp(args.dim, args.width, args.depth)
    B, D, n = args.batch, args.dim, args.steps

    def model(x, sigma):  # k-diffusion convention
        return x - sigma[:, None] * net(torch.cat([x, sigma[:, None].log()], 1))

    sigmas = flowsde.grids.edm(0.002, 80.0, n, 7.0)
    sig32 = sigmas.to(torch.float32)
    x0 = torch.randn(B, D) * 80.0
    ode = edm_ode(model)
    try:
        kd = k_diffusion_sampling()
    except ImportError as e:
        print(f"{e}: the k-diffusion column is left empty")
        kd = None
    s_in = torch.ones(B)
    sig_l = sig32.tolist()

    def bare(calls_per_step=1):
        x = x0
        for i in range(n):
            for _ in range(calls_per_step):
                den = model(x, sig32[i] * s_in)
            x = den if sig_l[i + 1] == 0 else x + (sig_l[i + 1] - sig_l[i]) / sig_l[i] * (x - den)
        return x

    with torch.no_grad():
        t_call = timed({"net": lambda: model(x0, sig32[3] * s_in)}, 200)["net"]
        print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
              f"Python {platform.python_version()}; batch {B}, dim {D}, MLP width {args.width} depth {args.depth} "
              f"({1e6 * t_call:.0f} us / call), {n} steps on EDM's grid (ending at 0), float32, min of "
              f"{args.reps} round-robin repeats")
        print(f"{'method':<20}{'variant':<18}{'ms/solve':>10}{'us/step':>10}{'over bare (us/step)':>21}")
        for m in args.methods:
            solver = flowsde.solvers.get_solver(m)
            k = solver.evals_per_step
            problem = ode
            fns = {"bare": (lambda k=k: bare(k))}
            if m in STOCHASTIC:
                problem = flowsde.adapters.from_denoiser(model).reverse_sde(1.0)
            fns["flowsde"] = lambda p=problem, m=m: flowsde.solve(p, x0, sigmas, method=m,
                                                                  generator=torch.Generator().manual_seed(0))
            fns["flowsde throw=F"] = lambda p=problem, m=m: flowsde.solve(
                p, x0, sigmas, method=m, generator=torch.Generator().manual_seed(0), throw=False)
            if kd is not None and m in KDIFF:
                fn = getattr(kd, KDIFF[m])
                kw = {"noise_sampler": (lambda s, sn: torch.randn_like(x0))} if m in STOCHASTIC else {}
                fns["kdiff"] = lambda fn=fn, kw=kw: fn(model, x0, sig32, disable=True, **kw)
            r = timed(fns, args.reps)
            for v, s in r.items():
                over = "" if v == "bare" else f"{1e6 * (s - r['bare']) / n:+.1f}"
                print(f"{m:<20}{v:<18}{1e3 * s:>10.2f}{1e6 * s / n:>10.1f}{over:>21}")
        adapter_rows(args)


def adapter_rows(args):
    """The multistep samplers on a Diffusion's problems (VP, eps network) against a bare loop on the
    same network with the per-step coefficients precomputed (DPM-Solver++(2M) arithmetic)."""
    B, D, n = args.batch, args.dim, args.steps
    torch.manual_seed(0)
    mlp = make_mlp(D, args.width, args.depth)

    def net(x, t):
        return mlp(torch.cat([x, t[:, None]], 1))

    sched = VP()
    d = Diffusion(net, sched, prediction="eps")
    ts = torch.cat([flowsde.grids.log_uniform(1.0, 1e-3, n - 1), torch.zeros(1, dtype=torch.float64)])
    a, s = sched.alpha(ts), sched.sigma(ts)
    lam = torch.log(a) - torch.log(s)
    h = lam[1:] - lam[:-1]
    cx = (s[1:] / s[:-1]).tolist()
    cd = (a[1:] * -torch.expm1(-h)).tolist()
    w = [0.0] + (1.0 / (2.0 * h[:-1] / h[1:])).tolist()
    ai, si = a.tolist(), s.tolist()
    labels = [t.to(torch.float32).expand(B) for t in ts[:-1]]
    x0 = torch.randn(B, D)

    def bare_2m():
        x, prev = x0, None
        for i in range(n):
            eps = net(x, labels[i])
            den = (x - si[i] * eps) / ai[i]
            if i == n - 1:
                return den
            dd = den if prev is None else (1 + w[i]) * den - w[i] * prev
            x, prev = cx[i] * x + cd[i] * dd, den
        return x

    with torch.no_grad():
        fns = {"bare 2M loop": bare_2m}
        for m in ("dpmpp_2m", "unipc", "lms", "ddim"):
            fns[m] = lambda m=m: flowsde.solve(d.pf_ode(), x0, ts, method=m)
        fns["dpmpp_2m_sde"] = lambda: flowsde.solve(d.reverse_sde(1.0), x0, ts, method="dpmpp_2m_sde",
                                                    generator=torch.Generator().manual_seed(0))
        r = timed(fns, args.reps)
    print(f"\nwith the adapter: Diffusion(net, VP(), 'eps'), {n} steps log-uniform t = 1 -> 1e-3, then 0")
    print(f"{'loop':<20}{'ms/solve':>10}{'us/step':>10}{'over bare (us/step)':>21}")
    for k, v in r.items():
        over = "" if k.startswith("bare") else f"{1e6 * (v - r['bare 2M loop']) / n:+.1f}"
        print(f"{k:<20}{1e3 * v:>10.2f}{1e6 * v / n:>10.1f}{over:>21}")


def digits_part(n_samples=256, budgets=(10, 20, 40, 80)):
    """Which deterministic sampler at which NFE, on the shipped ``digits-eps`` model (VP, eps,
    t in [1e-3, 1]): the error of each method against the PF-ODE's own solution (RK45,
    rtol = atol = 1e-7) from the same latents, at ``t_min = 1e-3`` (grids end there, so no method
    takes a step to zero noise and all are compared on the same map). Grid: EDM's rho-grid
    (rho = 7) in the noise level sigma/alpha, mapped to the schedule's time; ``n`` the largest
    number of steps whose ``n * evals_per_step`` (every step costs that on a grid without a final
    zero) fits the budget.
    Error: RMS over samples of |x - x_ref| / sqrt(64) (pixel units of the [-1, 1] data range)."""
    import flowsde.models as models

    d = models.load("digits-eps", net_dtype=torch.float64)
    info = models.info("digits-eps")
    sched = info.schedule
    t_lo, t_hi = info.t_range
    r_lo = float(sched.sigma_ratio(torch.tensor(t_lo, dtype=torch.float64)))
    r_hi = float(sched.sigma_ratio(torch.tensor(t_hi, dtype=torch.float64)))
    x_T = torch.randn(n_samples, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = flowsde.solve(d.pf_ode(), x_T, torch.tensor([t_hi, t_lo], dtype=torch.float64), method="rk45",
                            rtol=1e-7, atol=1e-7)
        print(f"\ndigits-eps: {n_samples} samples, error vs RK45 (rtol 1e-7, NFE {ref.nfe}) at t = {t_lo}, "
              "EDM rho-grid (rho 7) in sigma/alpha")
        methods = ["ddim", "dpm_2", "dpmpp_2m", "lms", "unipc", "edm", "heun"]
        print(f"{'method':<10}" + "".join(f"{'NFE<=' + str(b):>14}" for b in budgets))
        for m in methods:
            solver = flowsde.solvers.get_solver(m) if m != "heun" else flowsde.solvers.Heun()
            cells = []
            for b in budgets:
                n = b // solver.evals_per_step  # no step to zero noise: evals_per_step at every step
                r = flowsde.grids.edm(r_lo, r_hi, steps=n, rho=7.0, final_zero=False)
                ts = sched.t_from_sigma_ratio(r).clamp(t_lo, t_hi)
                ts[0], ts[-1] = t_hi, t_lo
                sol = flowsde.solve(d.pf_ode(), x_T, ts, method=solver)
                err = float(((sol.x - ref.x) ** 2).mean().sqrt())
                cells.append(f"{err:.4f} ({sol.nfe})")
            print(f"{m:<10}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
