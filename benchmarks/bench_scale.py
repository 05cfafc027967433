"""Scale and anchors, one model and one set of inputs (figures in docs/benchmarks.md).

Sections (all on the same model, float32, one thread per process):

* ``nll``: data-set NLL throughput (samples/s) of :func:`flowsde.workloads.dataset_nll` with
  1 and 2 processes (``torchrun``, gloo), the time of the call itself (process start excluded).
* ``likelihood``: one batch of dequantized digits, Hutchinson (1 Rademacher probe), RK45 /
  dopri5 at the same rtol = atol = tol on every channel, over a sweep of tol (``--sweep``), and
  each method's time at the errors flowsde reached (log-log interpolation): flowsde
  batch-shared and per-sample control, torchdiffeq on
  the augmented state ``(x, log-density)``, the score_sde scipy recipe (``solve_ivp`` RK45 in
  float64 with a host round trip at every evaluation), k-diffusion's ``log_likelihood`` (its
  EDM-sigma frame, through :func:`flowsde.adapters.to_denoiser`). Error: |logp - reference| of
  the same method and probe at rtol = atol = 1e-9 in float64 (each method has its own probe and
  frame, so each is compared with its own tight solve).
* ``sampling``: the PF-ODE from the same prior draws: k-diffusion ``sample_euler`` /
  ``sample_heun`` on Karras sigmas, a bare Euler loop in the same frame, flowsde ``solve``
  (euler, heun) on the same grid mapped to the schedule's time, and flowsde's EDM sampler.

Each timing is the minimum over ``--repeats`` runs (the machine may be shared). "Floor" is
NFE x the cost of one network evaluation at that batch (forward, plus one vector-Jacobian
product for the likelihood), measured the same way; "overhead" is the time above it. Peak
memory: extra resident memory of a forked child that runs the method (CPU), or
``torch.cuda.max_memory_allocated`` (GPU).

Model: the shipped ``digits-eps`` (``flowsde.models``) when installed, else an MLP of the same
size with random weights (printed in the header).

    python benchmarks/bench_scale.py                       # all sections
    python benchmarks/bench_scale.py --section nll --samples 256 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
from flowsde.adapters import VP, Diffusion, edm_sampler, to_denoiser
from flowsde.validation import k_diffusion_sampling

HERE = os.path.abspath(__file__)


# -- model and data ------------------------------------------------------------------------------

class _MLPEps(torch.nn.Module):
    """Fallback: an eps-prediction MLP the size of the shipped digits network (~0.27 M parameters)."""

    def __init__(self, dim=64, width=256, depth=3, n_freq=16):
        super().__init__()
        self.register_buffer("freqs", torch.logspace(math.log10(0.05), math.log10(3.0), n_freq))
        self.inp = torch.nn.Linear(dim + 2 * n_freq, width)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.temb = torch.nn.ModuleList(torch.nn.Linear(2 * n_freq, width) for _ in range(depth))
        self.out = torch.nn.Linear(width, dim)
        with torch.no_grad():
            self.out.weight.mul_(0.1)

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        ang = t[:, None] * self.freqs * 10
        e = torch.cat([ang.sin(), ang.cos()], 1)
        h = torch.nn.functional.silu(self.inp(torch.cat([x, e], 1)))
        for lin, te in zip(self.hidden, self.temb):
            h = h + torch.nn.functional.silu(lin(h) + te(e))
        return self.out(h)


def build(device="cpu", dtype=torch.float32):
    """``(diffusion, name, data)``: the model and the digits test data on the 17-level grid of [-1, 1]."""
    try:
        import flowsde.models as fm

        dif = fm.load("digits-eps", device=device, net_dtype=dtype)
        data = fm.digits("test")
        name = "digits-eps (shipped, flowsde.models)"
    except (ImportError, AttributeError, KeyError):
        from sklearn.datasets import load_digits

        torch.manual_seed(0)
        net = _MLPEps().to(device=device, dtype=dtype)
        dif = Diffusion(net, VP(), prediction="eps")
        k = torch.as_tensor(load_digits().data, dtype=torch.float64)[-360:]  # the last 360 as a test split
        data = -1 + 2 * k / 16
        name = f"MLP eps-VP, {sum(p.numel() for p in net.parameters())} parameters, random weights (fallback)"
    return dif, name, data


def dequantized(data, n, device, dtype):
    g = flowsde.per_sample_generators(range(n))
    return flowsde.dequantize(data[:n], levels=17, data_range=(-1.0, 1.0), generator=g).to(device=device, dtype=dtype)


# -- timing and memory ---------------------------------------------------------------------------

def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _best_of(fn, repeats, device):
    """``(best seconds, fn's last result)``: the minimum wall time over ``repeats`` calls."""
    res, best = None, math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        res = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, res


def _run_child(fn, repeats, device, conn):
    try:
        rss0 = _rss_kib()
        best, res = _best_of(fn, repeats, device)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0  # KiB on Linux
        # plain lists: torch would send tensors through shared memory, which a pipe cannot carry here
        res = tuple(r.detach().cpu().tolist() if isinstance(r, torch.Tensor) else r for r in res)
        conn.send(("ok", best, res, peak / 1024))
    except Exception as e:  # noqa: BLE001 - reported in the table
        conn.send(("error", f"{type(e).__name__}: {e}", None, None))
    conn.close()


def measure(fn, repeats, device):
    """``(best seconds, fn's result, peak MiB)``; CPU: in a forked child (its peak extra RSS)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        best, res = _best_of(fn, repeats, device)
        return best, res, (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_run_child, args=(fn, repeats, device, b))
    p.start()
    status, best, res, peak = a.recv()
    p.join()
    if status != "ok":
        raise RuntimeError(best)
    res = tuple(torch.tensor(r, dtype=torch.float64) if isinstance(r, list) else r for r in res)
    return best, res, peak


def per_call(fn, device, n=20, rounds=10):
    """Seconds per call of ``fn``: the minimum over ``rounds`` of the mean over ``n`` calls."""
    fn()
    best = math.inf
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


# -- likelihood ----------------------------------------------------------------------------------

def rademacher(shape, seed, device, dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)


def aug_func(drift, v):
    """``(x, L) -> (u, v^T J v)``: the augmented ODE with one held Hutchinson probe."""
    def f(t, y):
        x = y[0].detach()
        with torch.enable_grad():
            x.requires_grad_(True)
            u = drift(t, x)
            (g,) = torch.autograd.grad(u, x, v)
        return u.detach(), (g * v).flatten(1).sum(1)
    return f


def torchdiffeq_ll(dif, x, v, rtol, atol):
    from torchdiffeq import odeint

    sched, pf, prior = dif.schedule, dif.pf_ode(), dif.prior()
    calls = [0]
    lo, hi = float(sched.t_min), float(sched.t_max)
    # clamped: torchdiffeq's initial-step probe evaluates past the end time
    inner = aug_func(lambda t, x: pf.drift(t.clamp(lo, hi).to(x.dtype), x), v)

    def f(t, y):
        calls[0] += 1
        return inner(t, y)

    ts = torch.tensor([float(sched.t_min), float(sched.t_max)], dtype=torch.float64, device=x.device)
    z, L = odeint(f, (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)), ts, rtol=rtol, atol=atol,
                  method="dopri5")
    return (prior.log_prob(z[-1]) + L[-1]).double().cpu(), calls[0]


def scipy_ll(dif, x, v, rtol, atol):
    """score_sde ``get_likelihood_fn``: scipy RK45 on the flattened (x, L) in float64, host round trip each call."""
    import numpy as np
    from scipy.integrate import solve_ivp

    sched, pf, prior = dif.schedule, dif.pf_ode(), dif.prior()
    B, shape = x.shape[0], x.shape
    f = aug_func(lambda t, x: pf.drift(t, x), v)

    def ode(t, y):
        yt = torch.from_numpy(y).to(device=x.device, dtype=x.dtype)
        xs, L = yt[: -B].reshape(shape), yt[-B:]
        tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
        u, d = f(tt, (xs, L))
        return np.concatenate([u.cpu().numpy().reshape(-1), d.cpu().numpy()]).astype(np.float64)

    y0 = np.concatenate([x.cpu().numpy().reshape(-1), np.zeros(B)]).astype(np.float64)
    sol = solve_ivp(ode, (float(sched.t_min), float(sched.t_max)), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[:-B, -1]).reshape(shape).to(device=x.device, dtype=x.dtype)
    L = torch.from_numpy(sol.y[-B:, -1])
    return prior.log_prob(z).double().cpu() + L, sol.nfev


def flowsde_ll(dif, x, tol, per_sample, per_dim=False, time_warp=None):
    """flowsde with every channel at ``tol`` as the others: ``rtol = atol = tol`` on the state, and
    ``bpd_tol = tol / (D ln 2)``, i.e. ``tol`` nats of absolute local error on the log-density
    (``per_dim``: ``bpd_tol = tol``, the log-density held per dimension as the state's RMS norm is);
    ``time_warp``: ``log_likelihood``'s (``None``: its default)."""
    sched, pf, prior = dif.schedule, dif.pf_ode(), dif.prior()
    D = x[0].numel()
    r = flowsde.log_likelihood(pf, x, (float(sched.t_min), float(sched.t_max)), prior.log_prob, trace="hutchinson",
                               generator=torch.Generator(device=x.device).manual_seed(1), rtol=tol, atol=tol,
                               bpd_tol=tol if per_dim else tol / (D * math.log(2)), per_sample=per_sample,
                               time_warp=time_warp)
    return r.logp.double().cpu(), r.nfe


def kd_ll(kd, dif, x, rtol, atol):
    den = to_denoiser(dif)
    calls = [0]

    def model(x, sigma):  # clamped: torchdiffeq's initial-step probe evaluates past sigma_max
        calls[0] += 1
        return den._eval(x, sigma.clamp(den.sigma_min, den.sigma_max))

    torch.manual_seed(1)  # k-diffusion draws its probe from the global RNG
    a = float(dif.schedule.alpha(torch.tensor(float(dif.schedule.t_min), dtype=torch.float64)))
    ll, info = kd.log_likelihood(model, x / a, den.sigma_min, den.sigma_max, atol=atol, rtol=rtol)
    return ll.double().cpu(), calls[0]


def as64(dif):
    return Diffusion(copy.deepcopy(dif.net).double(), dif.schedule, prediction=dif.prediction)


def _interp_time(points, err):
    """Time (or any cost) at error ``err`` by log-log interpolation between a method's (error, cost) points."""
    pts = sorted((e, t) for e, t in points if e > 0)
    for (e0, t0), (e1, t1) in zip(pts, pts[1:]):
        if e0 <= err <= e1:
            if e1 == e0:
                return min(t0, t1)
            w = (math.log(err) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    return None


def section_likelihood(args, dif, data, kd):
    return likelihood_comparison(args, dif, dequantized(data, args.batch, args.device, torch.float32), kd)


def likelihood_comparison(args, dif, x, kd, d64=None, per_dim=False):
    """The likelihood comparison on the batch ``x`` (float32) under ``dif``: a sweep of ``args.sweep``
    tolerances, each method against its own tight float64 solve (``d64``: the float64 model, default a
    copy of ``dif``'s network in float64), and the times at equal error. ``per_dim``: flowsde's
    ``bpd_tol`` is the tolerance itself (see :func:`flowsde_ll`; at image size the nats mapping asks
    for far less error than the others reach)."""
    dev, B = args.device, x.shape[0]
    warp = getattr(args, "time_warp", None)  # flowsde's time_warp (None: the library default)
    v = rademacher(tuple(x.shape), 1, dev, torch.float32)
    rdt = getattr(args, "ref_dtype", torch.float64)  # the references' dtype (float64 unless asked)
    d64, x64, v64 = (d64 or as64(dif)), x.to(rdt), v.to(rdt)
    pf = dif.pf_ode()
    t_mid = torch.full((B,), 0.5, device=dev)

    def fvjp():
        xx = x.detach().requires_grad_(True)
        u = pf.drift(t_mid, xx)
        torch.autograd.grad(u, xx, v)

    c = per_call(fvjp, dev)
    fl_tol = "bpd_tol = tol" if per_dim else "bpd_tol = tol / (D ln 2)"
    print(f"\n## likelihood: batch {B}, Hutchinson 1 probe, float32, rtol = atol = tol on every channel "
          f"(flowsde: {fl_tol}); one drift + VJP = {c * 1e3:.3f} ms")
    rt = getattr(args, "ref_tol", 1e-9)
    print("error: mean |logp - reference| over the batch, the reference being the same method and probe at "
          f"tol = {rt:g} in {str(rdt).replace('torch.', '')}")
    refs = {
        "flowsde": flowsde_ll(d64, x64, rt, per_sample=False, per_dim=per_dim, time_warp=warp)[0],
        "own-probe": torchdiffeq_ll(d64, x64, v64, rt, rt)[0],
    }
    if kd is not None:
        refs["kd"] = kd_ll(kd, d64, x64, rt, rt)[0]

    eps = torch.finfo(x.dtype).eps

    def methods(tol):
        # flowsde refuses tolerances below the data dtype's resolution (an error estimate of round-off);
        # the anchors run on, so that their errors reach the ones flowsde gets at its tightest tolerance
        m = [] if tol < eps else [
            ("flowsde RK45, batch-shared steps", "flowsde",
             lambda: flowsde_ll(dif, x, tol, per_sample=False, per_dim=per_dim, time_warp=warp)),
            ("flowsde RK45, per-sample steps", "flowsde",
             lambda: flowsde_ll(dif, x, tol, per_sample=True, per_dim=per_dim, time_warp=warp)),
        ]
        m += [
            ("torchdiffeq dopri5, augmented state", "own-probe", lambda: torchdiffeq_ll(dif, x, v, tol, tol)),
            ("score_sde recipe (scipy RK45, host round trip)", "own-probe", lambda: scipy_ll(dif, x, v, tol, tol)),
        ]
        if kd is not None:
            m.append(("k-diffusion log_likelihood (dopri5)", "kd", lambda: kd_ll(kd, dif, x, tol, tol)))
        return m

    rows = []
    print(f"{'tol':>6s} {'method':48s} {'NFE':>5s} {'time s':>8s} {'floor s':>8s} {'overhead':>8s} "
          f"{'err nats':>9s} {'err bpd':>9s} {'peak MiB':>8s}")
    for tol in args.sweep:
        if tol < eps:
            print(f"{tol:6.0e} flowsde: skipped, below {str(x.dtype).replace('torch.', '')}'s resolution "
                  f"({eps:.2g}), which it refuses")
        for name, ref, fn in methods(tol):
            try:
                t, (lp, nfe), peak = measure(fn, args.repeats, dev)
            except Exception as e:  # noqa: BLE001
                print(f"{tol:6.0e} {name:48s} failed: {e}")
                continue
            floor = nfe * c
            err = float((lp - refs[ref]).abs().mean())
            row = dict(tol=tol, method=name, nfe=nfe, seconds=t, floor=floor, overhead=(t - floor) / t,
                       err_nats=err, err_bpd=err / (x[0].numel() * math.log(2)), peak_mib=peak,
                       samples_per_s=B / t)
            rows.append(row)
            print(f"{tol:6.0e} {name:48s} {nfe:5d} {t:8.3f} {floor:8.3f} {row['overhead']:8.1%} {err:9.2e} "
                  f"{row['err_bpd']:9.2e} {peak:8.1f}")
    # equal error: each method's time interpolated (log-log) at the errors flowsde reached
    base = "flowsde RK45, batch-shared steps"
    names = [base] + [n for n in dict.fromkeys(r["method"] for r in rows) if n != base]
    pts = {n: [(r["err_nats"], r["seconds"]) for r in rows if r["method"] == n] for n in names}
    nfe_pts = {n: [(r["err_nats"], r["nfe"]) for r in rows if r["method"] == n] for n in names}
    print("\nat equal error, relative to flowsde batch-shared (log-log interpolation over the sweep; n/a: "
          "outside a method's range): time, and in brackets NFE (the load-independent part)")
    ratios = []
    for r in [r for r in rows if r["method"] == base]:
        line = [f"err {r['err_nats']:.2e} nats:"]
        for n in names[1:]:
            t = _interp_time(pts[n], r["err_nats"])
            nfe = _interp_time(nfe_pts[n], r["err_nats"])
            label = n.split(" (")[0].replace(" steps", "").replace(", augmented state", "")
            line.append(f"{label} {t / r['seconds']:.2f}x ({nfe / r['nfe']:.2f}x)" if t else f"{label} n/a")
            ratios.append(dict(err=r["err_nats"], method=n, ratio=(t / r["seconds"]) if t else None,
                               nfe_ratio=(nfe / r["nfe"]) if nfe else None))
        print("  " + line[0] + " " + "; ".join(line[1:]))
    return dict(rows=rows, equal_error=ratios)


# -- sampling ------------------------------------------------------------------------------------

def section_sampling(args, dif, kd):
    dev, B, N = args.device, args.sample_batch, args.steps
    D = 64
    sched = dif.schedule
    den = to_denoiser(dif)
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(B, D, generator=g).to(dev)
    rho, smin, smax = 7.0, den.sigma_min * 1.0001, den.sigma_max * 0.9999
    i = torch.arange(N, dtype=torch.float64)
    sig = (smax ** (1 / rho) + i / (N - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    sigmas = torch.cat([sig, sig.new_zeros(1)]).to(dev, torch.float32)
    ts = sched.t_from_sigma_ratio(sig).clamp(sched.t_min, sched.t_max).to(dev)  # N levels: N - 1 steps
    pf = dif.pf_ode()
    x_T = latents * float(sched.sigma(torch.tensor(float(ts[0]), dtype=torch.float64)))  # alpha x (sigma_max) scaled

    t_mid = torch.full((B,), 0.5, device=dev)
    with torch.no_grad():
        c = per_call(lambda: dif.net(latents, t_mid), dev)
    print(f"\n## sampling: batch {B}, {N} Karras levels (rho 7) over the model's sigma range, float32; "
          f"one network call = {c * 1e3:.3f} ms")

    def bare():
        x = latents * sigmas[0]
        with torch.no_grad():
            for k in range(N):
                s, s1 = sigmas[k], sigmas[k + 1]
                d = (x - den._eval(x, s.expand(B))) / s
                x = x + d * (s1 - s)
        return x, N

    def kd_euler():
        with torch.no_grad():
            return kd.sample_euler(den, latents * sigmas[0], sigmas, disable=True), N

    def kd_heun():
        with torch.no_grad():
            return kd.sample_heun(den, latents * sigmas[0], sigmas, disable=True), 2 * N - 1

    def fl(method):
        def run():
            sol = flowsde.solve(pf, x_T, ts, method=method)
            return sol.x, sol.nfe
        return run

    def edm():
        sol = edm_sampler(dif, latents, steps=N, sigma_min=smin, sigma_max=smax, dtype=torch.float32)
        return sol.x, sol.nfe

    methods = [("bare Euler loop (EDM frame)", bare), ("flowsde solve euler", fl("euler")),
               ("flowsde solve heun", fl("heun")), ("flowsde edm_sampler (Heun, s_churn 0)", edm)]
    if kd is not None:
        methods[1:1] = [("k-diffusion sample_euler", kd_euler), ("k-diffusion sample_heun", kd_heun)]
    rows = []
    print(f"{'method':40s} {'NFE':>5s} {'time ms':>9s} {'floor ms':>9s} {'overhead':>8s} {'per NFE us':>10s} "
          f"{'peak MiB':>8s}")
    for name, fn in methods:
        try:
            t, (x, nfe), peak = measure(fn, args.repeats, dev)
        except Exception as e:  # noqa: BLE001
            print(f"{name:40s} failed: {e}")
            continue
        nfe = int(nfe)
        floor = nfe * c
        row = dict(method=name, nfe=nfe, seconds=t, floor=floor, overhead=(t - floor) / t, peak_mib=peak,
                   overhead_per_nfe_us=(t - floor) / nfe * 1e6)
        rows.append(row)
        print(f"{name:40s} {nfe:5d} {t * 1e3:9.2f} {floor * 1e3:9.2f} {row['overhead']:8.1%} "
              f"{row['overhead_per_nfe_us']:10.1f} {peak:8.1f}")
    return rows


# -- data-set NLL, 1 vs 2 processes -----------------------------------------------------------------

def nll_worker(args):
    import torch.distributed as td

    from flowsde.workloads import dataset_nll

    torch.set_num_threads(1)
    if "RANK" in os.environ:
        td.init_process_group("gloo")
    dif, _, data = build()
    best = math.inf
    res = None
    for _ in range(args.repeats):
        if td.is_initialized():
            td.barrier()
        t0 = time.perf_counter()
        res = dataset_nll(dif, data, levels=17, data_range=(-1.0, 1.0), trace="hutchinson", probes=1,
                          batch_size=args.nll_batch, limit=args.n, rtol=args.tol, atol=args.tol)
        if td.is_initialized():
            td.barrier()
        best = min(best, time.perf_counter() - t0)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(dict(seconds=best, n=res.n, mean_bpd=res.mean_bpd, world=res.world_size,
                                          rows=[r.line() for r in res.rows])))
    if td.is_initialized():
        td.destroy_process_group()


def section_nll(args):
    print(f"\n## data-set NLL: {args.n} digits, batch {args.nll_batch}, Hutchinson 1 probe, rtol = atol = "
          f"{args.tol:g}, levels 17; torchrun --standalone, gloo, OMP_NUM_THREADS=1; time of the dataset_nll "
          f"call (process start excluded), min of {args.repeats} per launch; the process counts "
          f"{args.procs} launched in turn, {args.rounds} round(s), so load drifts hit them alike")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {k: [] for k in args.procs}
    rows = {}
    for rnd in range(args.rounds):
        for nproc in args.procs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", HERE,
                   "--nll-worker", "--samples", str(args.n), "--nll-batch", str(args.nll_batch), "--repeats",
                   str(args.repeats), "--tol", str(args.tol)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                print(f"round {rnd}, {nproc} process(es): failed\n{p.stderr[-2000:]}")
                continue
            r = json.loads(line[0][len("RESULT "):])
            runs[nproc].append(r["seconds"])
            rows.setdefault(nproc, r["rows"])
            print(f"round {rnd}, {nproc} process(es): {r['seconds']:.2f} s, {r['n'] / r['seconds']:.2f} samples/s, "
                  f"mean bpd {r['mean_bpd']:.4f}")
    out = {}
    for k, ts in runs.items():
        if ts:
            out[k] = dict(best_seconds=min(ts), seconds=ts, samples_per_s=args.n / min(ts))
    if 1 in out:
        for k in out:
            if k == 1:
                continue
            pairs = [a / b for a, b in zip(runs[1], runs[k])]
            same = rows[k] == rows[1]
            print(f"speed-up {k} vs 1 process(es): best times {out[1]['best_seconds'] / out[k]['best_seconds']:.2f}x; "
                  f"per round {', '.join(f'{q:.2f}x' for q in pairs)}; rows identical to 1 process: {same}")
            out[k].update(speedup_best=out[1]["best_seconds"] / out[k]["best_seconds"], speedup_rounds=pairs,
                          rows_identical=same)
            # load-independent: the network evaluations each rank gets (batch b to rank b % k, all pending)
            nfe = [int(ln.split(",")[4]) for ln in rows[1]]
            per_batch = [nfe[i] for i in range(0, len(nfe), args.nll_batch)]
            shares = [sum(per_batch[r::k]) for r in range(k)]
            bound = sum(per_batch) / max(shares)
            print(f"  work per rank (network evaluations of its batches): {shares}; the sharding allows at most "
                  f"{bound:.2f}x on {k} free cores")
            out[k].update(nfe_per_rank=shares, speedup_bound=bound)
    return out


# -- main ------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", choices=("all", "nll", "likelihood", "sampling"), default="all")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the data-set NLL solves")
    p.add_argument("--sweep", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
                   help="tolerances of the likelihood comparison (flowsde skips those below float32's "
                        "resolution; the anchors go on, to reach its errors)")
    p.add_argument("--batch", type=int, default=32, help="likelihood batch")
    p.add_argument("--time-warp", type=float, default=None,
                   help="flowsde's log_likelihood time_warp in the likelihood section (default: the library's)")
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--samples", dest="n", type=int, default=128, help="samples of the data-set NLL")
    p.add_argument("--nll-batch", type=int, default=16)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3, help="launches of each process count, in turn")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--nll-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nll_worker:
        return nll_worker(args)
    torch.set_num_threads(1)
    dif, name, data = build(args.device)
    try:
        kd = k_diffusion_sampling()
    except ImportError as e:
        print(f"k-diffusion's sampling.py not loadable ({e}); its rows are skipped")
        kd = None
    print(f"# bench_scale: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, device {args.device}; model: {name}; 1 thread per process; min of {args.repeats}")
    res = {}
    if args.section in ("all", "nll"):
        res["nll"] = section_nll(args)
    if args.section in ("all", "likelihood"):
        res["likelihood"] = section_likelihood(args, dif, data, kd)
    if args.section in ("all", "sampling"):
        res["sampling"] = section_sampling(args, dif, kd)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
