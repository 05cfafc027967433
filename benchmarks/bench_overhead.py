"""Per-step overhead of ``flowsde.solve`` against hand-written loops on the same function.

Anchors, side by side in one run (ratios = flowsde time / anchor time):

* k-diffusion's ``sample_heun`` (crowsonkb/k-diffusion ``sampling.py``, re-derived
  here with ``s_churn = 0``: it draws ``randn_like`` every step even when
  ``gamma = 0``, and takes a Euler last step to sigma = 0), and the same loop
  without that draw ("bare Heun");
* a bare Euler–Maruyama loop.

flowsde runs the same grid with ``Heun(final_euler=True)`` (NFE 2N - 1) and
``euler_maruyama``, with ``throw`` on (default) and off.

    python benchmarks/bench_overhead.py            # CPU, tiny MLP
    python benchmarks/bench_overhead.py --device cuda --width 4096 --depth 8   # a larger net on GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import flowsde


def make_mlp(d, width, depth, device, dtype):
    layers = [torch.nn.Linear(d + 1, width), torch.nn.SiLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.SiLU()]
    layers += [torch.nn.Linear(width, d)]
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()


def timed_interleaved(fns: dict, reps, sync):
    """Median wall time of each function, measured round-robin so that load changes on the
    machine hit every variant alike."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    sync()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-step overhead, not BLAS)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
    heun = flowsde.Heun(final_euler=True)

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
        # Same answers first: the comparison is of equal work.
        a = kdiff_heun()
        b = flowsde.solve(ode, x0, sigmas, method=heun).x
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4), (a - b).abs().max()
        assert torch.equal(bare_em(), fl_em(True))
        r = timed_interleaved({
            "kdiff_heun": lambda: kdiff_heun(True),
            "bare_heun": lambda: kdiff_heun(False),
            "flowsde_heun": lambda: flowsde.solve(ode, x0, sigmas, method=heun),
            "flowsde_heun_nocheck": lambda: flowsde.solve(ode, x0, sigmas, method=heun, throw=False),
            "bare_em": bare_em,
            "flowsde_em": lambda: fl_em(True),
            "flowsde_em_nocheck": lambda: fl_em(False),
        }, args.reps, sync)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device={dev} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"batch={args.batch}, dim={args.dim}, MLP width={args.width} depth={args.depth}, steps={args.steps}")
    print(f"{'loop':<24}{'ms / solve':>12}{'us / step':>12}{'ratio':>10}")
    rows = [("kdiff_heun", None), ("bare_heun", None), ("flowsde_heun", "kdiff_heun"),
            ("flowsde_heun", "bare_heun"), ("flowsde_heun_nocheck", "bare_heun"),
            ("bare_em", None), ("flowsde_em", "bare_em"), ("flowsde_em_nocheck", "bare_em")]
    for k, ref in rows:
        label = k if ref is None else f"{k} / {ref}"
        ratio = "" if ref is None else f"{r[k] / r[ref]:.3f}"
        print(f"{label:<40}{1e3 * r[k]:>10.3f}{1e6 * r[k] / args.steps:>10.1f}{ratio:>10}")


if __name__ == "__main__":
    main()
