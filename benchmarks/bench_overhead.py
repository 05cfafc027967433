"""Per-step overhead of ``flowsde.solve`` against hand-written loops on the same function.

Anchors, side by side in one run (ratios = flowsde time / anchor time):

* k-diffusion's ``sample_heun`` (crowsonkb/k-diffusion ``sampling.py``, re-derived
  here with ``s_churn = 0``: it draws ``randn_like`` every step even when
  ``gamma = 0``, and takes a Euler last step to sigma = 0), and the same loop
  without that draw ("bare Heun");
* a bare Euler–Maruyama loop.

flowsde runs the same grid with ``Heun(final_euler=True)`` (NFE 2N - 1) and
``euler_maruyama``, with ``throw`` on (default) and off.

The adapter part (``--part adapter``) times ``flowsde.solve`` on a
``flowsde.adapters.Diffusion``'s PF-ODE and reverse SDE against bare loops that
call the same network with precomputed schedule coefficients (see
:func:`adapter_part`), for MLPs of about 150 us and 20 us per call.

    python benchmarks/bench_overhead.py            # CPU, tiny MLP; both parts
    python benchmarks/bench_overhead.py --part adapter --reps 30
    python benchmarks/bench_overhead.py --device cuda --width 4096 --depth 8   # a larger net on GPU
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde


def make_mlp(d, width, depth, device, dtype):
    layers = [torch.nn.Linear(d + 1, width), torch.nn.SiLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.SiLU()]
    layers += [torch.nn.Linear(width, d)]
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()


def timed_interleaved(fns: dict, reps, sync, stat=statistics.median, clock=time.perf_counter):
    """Time of each function (``stat`` over ``reps``: median, or ``min`` on a loaded machine),
    measured round-robin so that load changes on the machine hit every variant alike. ``clock``:
    wall time (``time.perf_counter``) or this thread's CPU time (``time.thread_time``, which does not
    count the time the thread waits for a core: the CPU-only figure on a shared machine)."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    sync()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = clock()
            f()
            sync()
            times[k].append(clock() - t0)
    return {k: stat(v) for k, v in times.items()}


def _timing(args) -> dict:
    """``--clock cpu`` (default): this thread's CPU time, min over the repeats (the figure a shared,
    loaded machine can still give: waiting for a core is not counted); ``wall``: wall time, median."""
    if args.clock == "cpu":
        return dict(stat=min, clock=time.thread_time)
    return dict(stat=statistics.median, clock=time.perf_counter)


def _timing_words(args) -> str:
    if args.clock == "cpu":
        return f"this thread's CPU time (time.thread_time), min over {args.reps} round-robin repeats"
    return f"wall time, median over {args.reps} round-robin repeats"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("solver", "adapter", "breakdown", "all"), default="all",
                    help="solver: flowsde.solve vs k-diffusion / bare loops; adapter: solve + Diffusion vs a bare loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: thread CPU time, min of repeats (shared machines); wall: wall time, median (GPU)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-step overhead, not BLAS)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("adapter", "all"):
        adapter_part(args)
    if args.part in ("solver", "all"):
        solver_part(args)
    if args.part in ("breakdown", "all"):
        breakdown_part(args)


def solver_part(args):
    dev = torch.device(args.device)
    dtype = torch.float32
    torch.manual_seed(0)
    net = make_mlp(args.dim, args.width, args.depth, dev, dtype)

    def denoiser(x, sigma):  # k-diffusion convention: model(x, sigma * s_in) -> x0
        return x - sigma[:, None] * net(torch.cat([x, sigma[:, None].log()], 1))

    def drift(t, x):  # the same PF-ODE as flowsde sees it: dx/dsigma = (x - D(x, sigma)) / sigma
        s = t.expand(x.shape[0]) if t.dim() == 0 else t
        return (x - denoiser(x, s)) / s[:, None]

    sigmas = flowsde.grids.edm(0.002, 80.0, args.steps, 7.0).to(device=dev, dtype=dtype)
    x0 = torch.randn(args.batch, args.dim, device=dev, dtype=dtype) * 80.0

    def kdiff_heun(draw_noise=True):
        x = x0
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            if draw_noise:
                torch.randn_like(x)  # k-diffusion draws eps every step, used only if gamma > 0
            sigma_hat = sigmas[i]
            denoised = denoiser(x, sigma_hat * s_in)
            d = (x - denoised) / sigma_hat
            dt = sigmas[i + 1] - sigma_hat
            if sigmas[i + 1] == 0:
                x = x + d * dt
            else:
                x_2 = x + d * dt
                denoised_2 = denoiser(x_2, sigmas[i + 1] * s_in)
                d_2 = (x_2 - denoised_2) / sigmas[i + 1]
                x = x + (d + d_2) / 2 * dt
        return x

    ode = flowsde.ODE(drift)
    heun = flowsde.solvers.Heun(final_euler=True)

    # EM on an SDE with the same drift cost, on a uniform grid in [1, 0.01].
    g = torch.tensor(0.5, device=dev, dtype=dtype)
    sde = flowsde.SDE(lambda t, x: drift(t + 1.0, x), lambda t, x: g)
    ts_em = flowsde.grids.uniform(1.0, 0.01, args.steps).to(device=dev, dtype=dtype)
    gen_seed = 0

    def bare_em():
        gen = torch.Generator(device=dev).manual_seed(gen_seed)
        x = x0
        for i in range(len(ts_em) - 1):
            t0, t1 = ts_em[i], ts_em[i + 1]
            h = t1 - t0
            z = torch.randn(x.shape, generator=gen, device=dev, dtype=dtype)
            x = x + h * drift(t0 + 1.0, x) + g * h.abs().sqrt() * z
        return x

    def fl_em(check):
        gen = torch.Generator(device=dev).manual_seed(gen_seed)
        return flowsde.solve(sde, x0, ts_em, method="euler_maruyama", generator=gen, throw=check).x

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        # Same answers first (to float32 round-off, relative to the largest entry: flowsde's updates
        # are fused multiply-adds, x + h d in one addcmul): the comparison is of equal work.
        for a, b in ((kdiff_heun(), flowsde.solve(ode, x0, sigmas, method=heun).x), (bare_em(), fl_em(True))):
            err = float((a - b).abs().max() / b.abs().max())
            if not err < 1e-5:
                raise SystemExit(f"bench_overhead: flowsde and the anchor loop disagree ({err:.2e})")
        r = timed_interleaved({
            "kdiff_heun": lambda: kdiff_heun(True),
            "bare_heun": lambda: kdiff_heun(False),
            "flowsde_heun": lambda: flowsde.solve(ode, x0, sigmas, method=heun),
            "flowsde_heun_nocheck": lambda: flowsde.solve(ode, x0, sigmas, method=heun, throw=False),
            "bare_em": bare_em,
            "flowsde_em": lambda: fl_em(True),
            "flowsde_em_nocheck": lambda: fl_em(False),
        }, args.reps, sync, **_timing(args))

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device={dev} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"batch={args.batch}, dim={args.dim}, MLP width={args.width} depth={args.depth}, steps={args.steps}")
    print(f"times: {_timing_words(args)}")
    print(f"{'loop':<24}{'ms / solve':>12}{'us / step':>12}{'ratio':>10}")
    rows = [("kdiff_heun", None), ("bare_heun", None), ("flowsde_heun", "kdiff_heun"),
            ("flowsde_heun", "bare_heun"), ("flowsde_heun_nocheck", "bare_heun"),
            ("bare_em", None), ("flowsde_em", "bare_em"), ("flowsde_em_nocheck", "bare_em")]
    for k, ref in rows:
        label = k if ref is None else f"{k} / {ref}"
        ratio = "" if ref is None else f"{r[k] / r[ref]:.3f}"
        print(f"{label:<40}{1e3 * r[k]:>10.3f}{1e6 * r[k] / args.steps:>10.1f}{ratio:>10}")


# ------------------------------------------------------------------------------------------
# Adapter overhead: flowsde.solve on a Diffusion's problems against a bare loop on the network
# ------------------------------------------------------------------------------------------


class TimeMLP(torch.nn.Module):
    """``net(x, t)``: an MLP on ``[x, t]`` (the eps-network of the benchmark)."""

    def __init__(self, d, width, depth):
        super().__init__()
        self.mlp = make_mlp(d, width, depth, "cpu", torch.float32)

    def forward(self, x, t):
        return self.mlp(torch.cat([x, t[:, None]], 1))


def vp_loop_constants(sched, ts: torch.Tensor, B: int, device, dtype) -> dict:
    """Per-step constants of hand-written loops on an eps-network under ``sched`` on the grid ``ts``
    (float64 formulas, cast once): the PF-ODE ``u = A x + C_ode eps``, the reverse SDE (beta = 1)
    drift ``A x + C_rev eps`` and diffusion ``g``, the steps ``dt`` and ``sqrt|dt|``, and the
    network's ``(B,)`` time ``labels``; lists indexed by step."""
    t0s = ts[:-1].to(torch.float64)
    a, s, da, ds = sched.alpha(t0s), sched.sigma(t0s), sched.d_alpha(t0s), sched.d_sigma(t0s)
    f, g2 = da / a, sched.g2(t0s)
    C_ode = ds - f * s  # u = f x + (sigma' - f sigma) eps
    C_rev = C_ode + 0.5 * g2 / s  # reverse drift (beta = 1) u - g^2/2 score, score = -eps/sigma
    dt = ts[1:].to(torch.float64) - t0s

    def cast(v):
        return [c.to(device=device, dtype=dtype) for c in v]

    return dict(A=cast(f), C_ode=cast(C_ode), C_rev=cast(C_rev), dt=cast(dt), g=cast(g2.sqrt()),
                sqrt_dt=cast(dt.abs().sqrt()),
                labels=[t.to(device=device, dtype=dtype).expand(B) for t in sched.net_time(t0s)])


def bare_vp_euler(net, x0: torch.Tensor, k: dict) -> torch.Tensor:
    """Euler on the PF-ODE by hand with the constants of :func:`vp_loop_constants`: the network call,
    two ops for the drift, two for the update."""
    x = x0
    for i in range(len(k["dt"])):
        eps = net(x, k["labels"][i])
        x = x + k["dt"][i] * torch.addcmul(k["C_ode"][i] * eps, k["A"][i], x)
    return x


#: the two networks of the adapter part: (label, width, depth) of an MLP on [x, t] at batch 64, dim 16;
#: about 150 us and 20 us per call on one unloaded core of the machine in docs/benchmarks.md
#: (each run measures and prints its own per-call time, in the same round-robin as the loops).
ADAPTER_NETS = (("~150 us", 256, 2), ("~20 us", 8, 1))


def adapter_part(args):
    """Euler on ``pf_ode()`` and Euler-Maruyama on ``reverse_sde(1)`` of an eps-network under VP,
    100 steps from t = 1 to 1e-3, against the same loops written by hand: coefficients of the
    schedule precomputed per step in float64 (``u = A x + C eps``, the reverse drift likewise),
    the network called with a prebuilt time tensor, the same arithmetic per step (two ops for the
    drift, two for the update; EM the same noise draws). flowsde runs with its defaults: input
    checks on (``check_t="auto"``: the time range per call, read from the CPU time without a device
    sync), ``throw=True`` (per-sample finiteness sums on the device, one sync at the end).
    "cold" builds a new ``Diffusion`` for every solve (coefficients computed, not reused);
    "solve_no_adapter" is ``flowsde.solve`` on a plain ODE / SDE whose functions are the bare
    loop's (the solver's own share)."""
    from flowsde.adapters import Diffusion
    from flowsde.adapters.schedules import VP

    if args.device != "cpu":
        print("adapter part: CPU only (the question is Python overhead per call); skipped")
        return
    f64, B, D, n = torch.float64, args.batch, args.dim, args.steps
    sched = VP()
    ts = flowsde.grids.uniform(1.0, 1e-3, n).to(f64)
    t0s = ts[:-1]
    k = vp_loop_constants(sched, ts, B, "cpu", torch.float32)
    A_l, Co_l, Cr_l, dt_l, g_l, sdt_l = k["A"], k["C_ode"], k["C_rev"], k["dt"], k["g"], k["sqrt_dt"]
    print(f"\n== adapter overhead: Diffusion(net, VP(), 'eps'), {n} steps t = 1 -> 1e-3, batch {B}, dim {D}, "
          f"float32, {torch.get_num_threads()} thread(s); times: {_timing_words(args)}")
    print(f"{'net':<34}{'loop':<22}{'ms / solve':>11}{'us / step':>11}{'beyond net':>11}{'ratio':>8}")
    for name, width, depth in ADAPTER_NETS:
        torch.manual_seed(0)
        net = TimeMLP(D, width, depth).eval()
        labels = k["labels"]
        x0 = torch.randn(B, D, generator=torch.Generator().manual_seed(0))

        def net_only():
            x = x0
            for i in range(n):
                net(x, labels[i])
            return x

        def bare_euler():
            return bare_vp_euler(net, x0, k)

        def bare_em():
            gen = torch.Generator().manual_seed(1)
            x = x0
            for i in range(n):
                eps = net(x, labels[i])
                z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
                x = x + dt_l[i] * torch.addcmul(Cr_l[i] * eps, A_l[i], x) + (g_l[i] * sdt_l[i]) * z
            return x

        dif = Diffusion(net, sched, "eps")
        ode, sde = dif.pf_ode(), dif.reverse_sde(1.0)

        def fl_euler():
            return flowsde.solve(ode, x0, ts, method="euler").x

        index = {float(t): i for i, t in enumerate(t0s)}

        def hand_drift(t, x):  # the bare loop's drift as a plain flowsde.ODE: the solver alone, no adapter
            i = index[t.item()]
            return torch.addcmul(Co_l[i] * net(x, labels[i]), A_l[i], x)

        hand_ode = flowsde.ODE(hand_drift, time_dtype=f64)

        def fl_hand():
            return flowsde.solve(hand_ode, x0, ts, method="euler").x

        def hand_em_drift(t, x):
            i = index[t.item()]
            return torch.addcmul(Cr_l[i] * net(x, labels[i]), A_l[i], x)

        hand_sde = flowsde.SDE(hand_em_drift, lambda t, x: g_l[index[t.item()]], time_dtype=f64)

        def fl_hand_em():
            return flowsde.solve(hand_sde, x0, ts, method="euler_maruyama",
                                 generator=torch.Generator().manual_seed(1)).x

        def fl_euler_cold():
            return flowsde.solve(Diffusion(net, sched, "eps").pf_ode(), x0, ts, method="euler").x

        def fl_em():
            return flowsde.solve(sde, x0, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(1)).x

        with torch.no_grad():
            # equal work first: the same answer to float32 round-off
            for mine, theirs in ((fl_euler, bare_euler), (fl_euler_cold, bare_euler), (fl_hand, bare_euler),
                                 (fl_em, bare_em), (fl_hand_em, bare_em)):
                u, v = mine(), theirs()
                err = float((u - v).abs().max() / v.abs().max())
                if not err < 1e-4:
                    raise SystemExit(f"bench_overhead: {mine.__name__} and {theirs.__name__} disagree ({err:.2e})")
            r = timed_interleaved({"net_only": net_only, "bare_euler": bare_euler, "flowsde_euler": fl_euler,
                                   "solve_no_adapter": fl_hand, "flowsde_euler_cold": fl_euler_cold,
                                   "bare_em": bare_em, "flowsde_em": fl_em, "solve_no_adapter_em": fl_hand_em},
                                  args.reps, lambda: None, **_timing(args))
            # the adapter alone, per call: the PF-ODE drift against the same network call and arithmetic
            # by hand, each timed over short runs (min of many: robust on a loaded machine)
            i_mid, x_mid = n // 2, x0
            t_mid = ts[i_mid]
            per_call = timed_interleaved({
                "hand": lambda: [torch.addcmul(Co_l[i_mid] * net(x_mid, labels[i_mid]), A_l[i_mid], x_mid)
                                 for _ in range(20)],
                "adapter": lambda: [ode.drift(t_mid, x_mid) for _ in range(20)]}, 20 * args.reps, lambda: None,
                **_timing(args))
        # what each loop adds to the network calls alone, per step
        over = {row: (r[row] - r["net_only"]) / n for row in r}
        label = f"{name}: {1e6 * r['net_only'] / n:.0f} us/call (w{width} d{depth})"
        for row, ref in (("net_only", None), ("bare_euler", None), ("flowsde_euler", "bare_euler"),
                         ("solve_no_adapter", "bare_euler"), ("flowsde_euler_cold", "bare_euler"), ("bare_em", None),
                         ("flowsde_em", "bare_em"), ("solve_no_adapter_em", "bare_em")):
            ratio = "" if ref is None else f"{r[row] / r[ref]:.3f}"
            print(f"{label:<34}{row:<22}{1e3 * r[row]:>11.3f}{1e6 * r[row] / n:>11.1f}{1e6 * over[row]:>11.1f}"
                  f"{ratio:>8}")
            label = ""
        print(f"{'':<34}{'one drift call: adapter':<34}{1e6 * per_call['adapter'] / 20:>10.1f} us, by hand "
              f"{1e6 * per_call['hand'] / 20:.1f} us: the adapter adds "
              f"{1e6 * (per_call['adapter'] - per_call['hand']) / 20:.1f} us per network call")



def breakdown_part(args):
    """Where the solver's per-step time goes: the bare Euler loop on the ~150 us MLP with one piece
    of per-step work added at a time (a float64 step size; a per-sample finiteness sum of every
    output, as ``flowsde.solve`` did before commit 33fec59), the bare loop with the update as one
    ``addcmul`` and the outputs' sums taken 16 at a time (as ``flowsde.solve`` does now), then
    ``flowsde.solve`` itself on the same drift."""
    if args.device != "cpu":
        return
    f64, B, D, n = torch.float64, args.batch, args.dim, args.steps
    torch.manual_seed(0)
    net = TimeMLP(D, ADAPTER_NETS[0][1], ADAPTER_NETS[0][2]).eval()
    x0 = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    A, C, lab = torch.tensor(0.1), torch.tensor(0.2), torch.full((B,), 0.5)
    ts = flowsde.grids.uniform(1.0, 1e-3, n).to(f64)
    dts32 = [(ts[i + 1] - ts[i]).float() for i in range(n)]

    def drift(t, x):
        return torch.addcmul(C * net(x, lab), A, x)

    def bare():
        x = x0
        for i in range(n):
            x = x + dts32[i] * drift(None, x)
        return x

    def bare_h64():
        x = x0
        for i in range(n):
            x = x + (ts[i + 1] - ts[i]) * drift(None, x)
        return x

    def bare_h64_sums():
        x, sums = x0, []
        for i in range(n):
            d = drift(None, x)
            sums.append(d.reshape(B, -1).sum(1, dtype=f64))
            x = x + (ts[i + 1] - ts[i]) * d
        bool(torch.isfinite(torch.stack(sums)).all())
        return x

    def bare_grouped_sums():  # the check flowsde does now: outputs kept, reduced 16 at a time
        x, pending, sums = x0, [], []
        for i in range(n):
            d = drift(None, x)
            pending.append(d)
            if len(pending) == 16:
                sums.append(torch.stack(pending).sum(2, dtype=f64))
                pending = []
            x = torch.addcmul(x, dts32[i], d)
        if pending:
            sums.append(torch.stack(pending).sum(2, dtype=f64))
        bool(torch.isfinite(torch.cat(sums)).all())
        return x

    ode = flowsde.ODE(drift, time_dtype=f64)

    def solve():
        return flowsde.solve(ode, x0, ts, method="euler").x

    with torch.no_grad():
        r = timed_interleaved({"bare Euler loop (float32 steps)": bare, "+ float64 step h = t1 - t0": bare_h64,
                               "+ per-sample finiteness sums": bare_h64_sums,
                               "bare, addcmul, sums 16 at a time": bare_grouped_sums,
                               "flowsde.solve, same drift": solve},
                              args.reps, lambda: None, **_timing(args))
    print(f"\n== solver breakdown: Euler, {n} steps, MLP w{ADAPTER_NETS[0][1]} d{ADAPTER_NETS[0][2]}, batch {B}; "
          f"times: {_timing_words(args)}")
    base = None
    for k, v in r.items():
        base = v if base is None else base
        print(f"{k:<40}{1e6 * v / n:>10.1f} us/step{1e6 * (v - base) / n:>+10.1f}")


if __name__ == "__main__":
    main()
