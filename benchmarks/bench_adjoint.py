"""Peak memory and wall time of the log-likelihood's gradient: flowsde's adjoint against backprop and torchdiffeq.

The gradient of ``sum_b log p(x_b)`` with respect to the data and an MLP's parameters, for the ODE
``dx/dt = omega R x + MLP_theta(t, x)`` (``R`` a block rotation: divergence 0, it sets the number of steps),
``D = 8``, ``B = 32``, float64, Hutchinson's trace with one fixed Rademacher probe per sample (the same
probes for every method), over ``t in [0, 1]`` to ``N(0, I)``. Three ways:

* ``flowsde-adjoint``: :func:`flowsde._adjoint.adjoint_log_likelihood` (continuous adjoint, x restarted from
  8 forward checkpoints, its own ladder of two solves; steps shared by the batch, ``per_sample=False``, as
  torchdiffeq: the per-sample mode's per-sample parameter VJPs cost ~16x more per evaluation at B = 64), swept
  over ``grad_tol`` (``bpd_tol = grad_tol / 100``); "steps" are the forward's
  accepted steps at the answer's level (the largest over the samples), "nfe" all evaluations of all levels.
* ``backprop-rk4``: autograd through a fixed-step RK4 solve of ``(x, L)`` with ``N`` steps (the graph of every
  step kept: what ``solve(grad=True)`` or flow_matching's ``compute_likelihood(enable_grad=True)`` do).
* ``torchdiffeq-adjoint``: ``torchdiffeq.odeint_adjoint`` (dopri5, ``rtol = atol = tol``, the adjoint at the
  same tolerances; x re-integrated backward), swept over ``tol``; "steps" = forward evaluations / 6.

Each measurement runs in a fresh subprocess. Memory: the process's peak resident set (``ru_maxrss``, a
high-water mark kept by the kernel, so no peak is missed between samples) minus the resident set just
before the timed call, after a warm-up call on 2 samples; it counts every tensor torch allocates on the
CPU (what ``tracemalloc`` does not see). The children run with glibc's mmap threshold fixed (``MALLOC``),
so that the resident set follows the live tensors rather than the allocator's retained heap. Gradient error
("grad err"): relative norm of (dx, dtheta) against backprop through RK4 with 1000 steps (its own error
~(omega h)^4 ~ 2e-8); "est": flowsde's own estimate ``grad_error_rel``.

    python benchmarks/bench_adjoint.py            # two settings each (~3 minutes on 2 shared CPU cores)
    python benchmarks/bench_adjoint.py --full     # the sweep 50-500 steps (~6 minutes)
    python benchmarks/bench_adjoint.py --memory --batch 2048   # flowsde's adjoint alone, 40-600 steps, at a
                                                  # batch whose tensors dwarf the resident set's noise (~0.4 MiB)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
from flowsde._internal import adjoint_log_likelihood, draw_probes

D, B, H, OMEGA, T = 8, 32, 64, 12.0, 1.0
F64 = torch.float64
LOG2PI = math.log(2 * math.pi)


class Drift(torch.nn.Module):
    """``omega R x + MLP(t, x)``, ``R`` 2x2 rotation blocks (skew-symmetric: no divergence)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(D + 1, H), torch.nn.Tanh(), torch.nn.Linear(H, H),
                                       torch.nn.Tanh(), torch.nn.Linear(H, D)).double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / math.sqrt(p.shape[-1]))
        R = torch.zeros(D, D, dtype=F64)
        for i in range(0, D, 2):
            R[i, i + 1], R[i + 1, i] = 1.0, -1.0
        self.register_buffer("R", OMEGA * R)

    def forward(self, t, x):
        tt = (t.reshape(-1, 1) if t.dim() else t.reshape(1, 1)).to(x.dtype).expand(x.shape[0], 1)
        return x @ self.R.T + self.net(torch.cat([x, tt], 1))


def prior(z):
    return -0.5 * z.square().sum(1) - 0.5 * D * LOG2PI


def data(b):
    return torch.randn(b, D, dtype=F64, generator=torch.Generator().manual_seed(1))


def hutch_div(u, x, z):
    (g,) = torch.autograd.grad(u, x, z, create_graph=True)
    return (g * z).sum(1)


def run_flowsde(drift, x, setting):
    r = adjoint_log_likelihood(flowsde.ODE(drift), x, (0.0, T), prior, params=tuple(drift.parameters()),
                               trace="hutchinson", probes=1, generator=0, bpd_tol=setting * 1e-2, grad_tol=setting,
                               per_sample=False)
    steps = int(r.result.accepted)
    return r.dx, r.dparams, steps, r.stats["nfe_forward"] + r.stats["nfe_backward"], r.grad_error_rel


def run_backprop(drift, x, steps):
    z = draw_probes(tuple(x.shape), 1, "rademacher", 0, F64, x.device)[0]
    xr = x.clone().requires_grad_(True)
    params = tuple(drift.parameters())

    def f(t, y):
        u = drift(t, y)
        return u, hutch_div(u, y, z)

    steps = int(steps)
    h = T / steps
    y, L = xr, torch.zeros(x.shape[0], dtype=F64)
    for i in range(steps):
        t = torch.tensor(i * h, dtype=F64)
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1[0])
        k3 = f(t + h / 2, y + h / 2 * k2[0])
        k4 = f(t + h, y + h * k3[0])
        L = L + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        y = y + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
    g = torch.autograd.grad((prior(y) + L).sum(), (xr,) + params)
    return g[0], g[1:], steps, 4 * steps, float("nan")


def run_torchdiffeq(drift, x, tol):
    from torchdiffeq import odeint_adjoint

    z = draw_probes(tuple(x.shape), 1, "rademacher", 0, F64, x.device)[0]
    calls = [0]

    class Aug(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drift = drift

        def forward(self, t, state):
            calls[0] += 1
            y = state[0]
            if not torch.is_grad_enabled():  # the forward solve (under no_grad); the adjoint's y comes with its graph
                y = y.detach().requires_grad_(True)
            with torch.enable_grad():
                u = self.drift(t, y)
                return u, hutch_div(u, y, z)

    xr = x.clone().requires_grad_(True)
    aug = Aug()
    ts = torch.tensor([0.0, T], dtype=F64)
    yT, LT = odeint_adjoint(aug, (xr, torch.zeros(x.shape[0], dtype=F64)), ts, rtol=tol, atol=tol, method="dopri5",
                            adjoint_params=tuple(drift.parameters()))
    fwd = calls[0]
    params = tuple(drift.parameters())
    g = torch.autograd.grad((prior(yT[-1]) + LT[-1]).sum(), (xr,) + params)
    return g[0], g[1:], round(fwd / 6), calls[0], float("nan")


#: glibc's malloc with a fixed mmap threshold and no trim threshold, so that freed blocks go back to the OS at
#: once: with its defaults the dynamic threshold lets the heap keep freed memory, and the peak resident set of a
#: longer run grows (+85 % from 69 to 250 steps for the adjoint, measured) without any more live tensors
#: (+1.6 % with these settings)
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
#: the reference's steps: RK4's error (omega h)^4 ~ 2e-8 relative at omega = 12
REF_STEPS = 1000
RUNS = {"flowsde-adjoint": run_flowsde, "backprop-rk4": run_backprop, "torchdiffeq-adjoint": run_torchdiffeq}
WARM = {"flowsde-adjoint": 1e-2, "backprop-rk4": 3, "torchdiffeq-adjoint": 1e-2}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(method: str, setting: float, out: str, batch: int) -> None:
    """A child process: warm up on 2 samples, then time and measure one gradient of ``batch`` samples; write it
    to ``out``."""
    global B
    B = batch
    torch.set_num_threads(1)
    drift = Drift()
    run = RUNS[method]
    run(drift, data(2), WARM[method])
    x = data(B)
    before = rss()
    t0 = time.perf_counter()
    dx, dp, steps, nfe, est = run(drift, x, setting)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(dict(dx=dx.detach(), dp=[p.detach() for p in dp], steps=steps, nfe=nfe, est=est, wall=wall,
                    peak=max(0, peak - before)), out)


def measure(method: str, setting: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "g.pt")
        subprocess.run([sys.executable, __file__, "--one", method, repr(setting), out, "--batch", str(B)],
                       check=True, env=dict(os.environ, **MALLOC))
        return torch.load(out)


def flat(r) -> torch.Tensor:
    return torch.cat([r["dx"].flatten()] + [p.flatten() for p in r["dp"]])


def main():
    global B
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "SETTING", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help="the longer sweep (~6 minutes)")
    ap.add_argument("--memory", action="store_true",
                    help="flowsde's adjoint alone over grad_tol 1e-2..1e-8 (its memory against its steps)")
    ap.add_argument("--batch", type=int, default=B, help=f"samples (default {B})")
    a = ap.parse_args()
    B = a.batch
    if a.one:
        method, setting, out = a.one
        one(method, float(setting), out, a.batch)
        return
    sweeps = {"flowsde-adjoint": [1e-3, 1e-6], "backprop-rk4": [50, 500], "torchdiffeq-adjoint": [1e-6, 1e-9]}
    if a.full:
        sweeps = {"flowsde-adjoint": [1e-3, 1e-5, 1e-7], "backprop-rk4": [50, 100, 200, 500],
                  "torchdiffeq-adjoint": [1e-5, 1e-7, 1e-9, 1e-10]}
    if a.memory:
        sweeps = {"flowsde-adjoint": [1e-2, 1e-4, 1e-6, 1e-8]}
    gref = None
    if not a.memory:  # (--memory: no reference; backprop through 1000 steps of a large batch would not fit)
        ref = measure("backprop-rk4", REF_STEPS)
        gref = flat(ref)
        print(f"reference: backprop-rk4 with {REF_STEPS} steps (peak {ref['peak'] / 2**20:.0f} MiB, "
              f"{ref['wall']:.1f} s)")
    print(f"D={D} B={B} MLP {D + 1}-{H}-{H}-{D} tanh + rotation omega={OMEGA}, float64, Hutchinson 1 probe, "
          "CPU 1 thread")
    print(f"{'method':<20} {'setting':>8} {'steps':>6} {'nfe':>6} {'grad err':>9} {'est':>8} {'peak MiB':>9} "
          f"{'wall s':>7}")
    rows = []
    for method, settings in sweeps.items():
        for s in settings:
            r = measure(method, s)
            err = float("nan") if gref is None else float((flat(r) - gref).norm() / gref.norm())
            rows.append((method, s, r))
            print(f"{method:<20} {s:>8.0e} {r['steps']:>6} {r['nfe']:>6} {err:>9.1e} {r['est']:>8.1e} "
                  f"{r['peak'] / 2**20:>9.1f} {r['wall']:>7.2f}", flush=True)
    fl = [r for m, _, r in rows if m == "flowsde-adjoint"]
    lo, hi = min(fl, key=lambda r: r["steps"]), max(fl, key=lambda r: r["steps"])
    growth = hi["peak"] / max(lo["peak"], 1) - 1
    print(f"flowsde adjoint: peak memory {lo['peak'] / 2**20:.1f} MiB at {lo['steps']} steps -> "
          f"{hi['peak'] / 2**20:.1f} MiB at {hi['steps']} steps ({100 * growth:+.0f} %; target <= +10 %)")


if __name__ == "__main__":
    main()
