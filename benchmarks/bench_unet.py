"""A UNet of realistic size: the solver's overhead beyond the network, sampling and likelihood.

The network is diffusers' ``UNet2DModel`` at 3x32x32 with random weights (``--size ddpm``: the DDPM
CIFAR-10 layout, 35.7 M parameters; ``--size small``: 0.7 M, for a CPU smoke run), float32,
wrapped as ``Diffusion(net, VP(), "eps")``. Meant for a GPU (``--device cuda``); the same script
runs on a CPU with ``--size small``.

Sections:

* ``sampling``: Euler on the PF-ODE, ``--steps`` steps from t = 1 to 1e-3, for each ``--batch``:
  the network calls alone (the floor), a bare loop with precomputed coefficients
  (``bench_overhead.bare_vp_euler``) and ``flowsde.solve``; the solver's overhead beyond the
  network = (time - floor) / floor.
* ``likelihood``: ``bench_scale``'s comparison on one batch (the first ``--batch``) of images in
  [-1, 1]: Hutchinson with one Rademacher probe, a sweep of ``--tol`` (rtol = atol on every channel;
  flowsde ``bpd_tol = tol``), each method against its own float64 solve at ``--ref-tol``:
  flowsde (batch-shared and per-sample steps), torchdiffeq dopri5 on the augmented state, the
  score_sde scipy recipe (host round trip at every evaluation); NFE, time, floor (NFE x one drift +
  VJP), peak memory, and each method's time at the errors flowsde reached.

``--compile MODE`` wraps the network in ``torch.compile(mode=MODE)`` for every loop alike (e.g.
``reduce-overhead``, which captures CUDA graphs on a GPU). Times: wall time, median over
``--repeats``, with ``torch.cuda.synchronize()`` on a GPU.

    python benchmarks/bench_unet.py --device cuda --batch 128 512
    python benchmarks/bench_unet.py --device cuda --batch 128 --compile reduce-overhead
    python benchmarks/bench_unet.py --device cpu --size small --batch 2 --steps 5 --repeats 1 --tol 1e-2 \
        --ref-tol 1e-4 --ref-dtype float32                                               # CPU smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
from flowsde.adapters import VP, Diffusion

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_overhead  # noqa: E402  (the bare loop)
import bench_scale  # noqa: E402  (the likelihood recipes)

SIZES = {
    "ddpm": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "small": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")),
}


class UNetEps(torch.nn.Module):
    """``net(x, t) -> eps``: the UNet's sample, called with the schedule's time scaled to DDPM's labels."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t * 999).sample


def build(size: str, device, compile_mode=None):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **SIZES[size]).to(device).eval()
    net = UNetEps(unet)
    if compile_mode:
        net = torch.compile(net, mode=compile_mode)
    return net, sum(p.numel() for p in unet.parameters())


def timed(fn, repeats, device):
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up), synchronized on a GPU."""
    fn()
    bench_scale._sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        bench_scale._sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def section_sampling(args, net):
    dev, n = torch.device(args.device), args.steps
    sched = VP()
    ts = flowsde.grids.uniform(1.0, 1e-3, n).to(torch.float64)
    dif = Diffusion(net, sched, "eps")
    ode = dif.pf_ode()
    print(f"\n## sampling: Euler on the PF-ODE, {n} steps, float32")
    print(f"{'batch':>6} {'loop':24s} {'ms / step':>10} {'overhead':>9}")
    for B in args.batch:
        k = bench_overhead.vp_loop_constants(sched, ts, B, dev, torch.float32)
        x0 = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)

        def floor():
            for i in range(n):
                net(x0, k["labels"][i])

        loops = {"network calls alone": floor, "bare Euler loop": lambda: bench_overhead.bare_vp_euler(net, x0, k),
                 "flowsde.solve euler": lambda: flowsde.solve(ode, x0, ts, method="euler").x}
        with torch.no_grad():
            err = float((loops["bare Euler loop"]() - loops["flowsde.solve euler"]()).abs().max())
            r = {name: timed(fn, args.repeats, dev) for name, fn in loops.items()}
        base = r["network calls alone"]
        for name, t in r.items():
            over = "" if t is base else f"{(t - base) / base:9.1%}"
            print(f"{B:6d} {name:24s} {1e3 * t / n:10.3f} {over}")
        print(f"{'':6} (flowsde vs bare loop: max |difference| {err:.1e}; ratio {r['flowsde.solve euler'] / r['bare Euler loop']:.3f})")


def section_likelihood(args, net, net64):
    """``bench_scale``'s likelihood comparison (a tolerance sweep, each method against its own tight
    float64 solve, times at equal error) on one batch of images in [-1, 1] under the UNet."""
    dev = torch.device(args.device)
    x = (torch.rand(args.batch[0], 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dev)
    args.sweep = args.tol
    bench_scale.likelihood_comparison(args, Diffusion(net, VP(), "eps"), x, None, d64=Diffusion(net64, VP(), "eps"),
                                      per_dim=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="ddpm")
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tol", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4],
                    help="likelihood: the tolerance sweep (rtol = atol on every channel)")
    ap.add_argument("--ref-tol", type=float, default=1e-6, help="likelihood: the reference's tolerance")
    ap.add_argument("--ref-dtype", choices=("float64", "float32"), default="float64",
                    help="likelihood: the reference's dtype (float32 only for a CPU smoke run: float64 convolutions "
                         "are slow there)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", default=None, metavar="MODE", help="torch.compile(net, mode=MODE) for every loop")
    ap.add_argument("--section", choices=("all", "sampling", "likelihood"), default="all")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(1)  # as bench_scale: its peak-memory probe forks, which intra-op threads can hang
    net, n_params = build(args.size, args.device, args.compile)
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "CPU"
    print(f"# UNet2DModel 3x32x32 ({args.size}, {n_params / 1e6:.1f} M parameters, random weights), {name}, "
          f"torch {torch.__version__}, compile={args.compile}")
    if args.section in ("all", "sampling"):
        section_sampling(args, net)
    if args.section in ("all", "likelihood"):
        args.ref_dtype = getattr(torch, args.ref_dtype)
        net64 = build(args.size, args.device)[0].to(args.ref_dtype)  # the same weights (seed 0), uncompiled
        section_likelihood(args, net, net64)


if __name__ == "__main__":
    main()
