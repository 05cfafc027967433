"""The exact trace of the likelihood: one pass over B x D replicated inputs against per-batch VJPs.

For each network and batch size ``B``, one evaluation of ``(u, div u)`` (``flowsde._divergence``,
what ``log_likelihood(trace="exact")`` calls at every step), after its first call, timed against
the anchor: one forward and one backward of the drift over ``B x D`` inputs (``x`` replicated ``D``
times, a random cotangent; nothing else).

* ``replicated``: one forward and one backward over the ``D`` replicas (``method="replicated"``);
* ``today``: the path before the replicated pass (``method="vmap"``: the ``D`` VJPs of one evaluation
  batched by vmap, or one at a time, ``loop``, where vmap fails, as on the UNet);
* ``auto``: the default, and the method it chose on its first call (``vmap`` where it works, else the
  faster of ``replicated`` and ``loop`` as timed on that call);
* ``fwd B``: one evaluation of the drift alone, for scale.

``max diff``: the largest difference of the three traces, relative to the largest trace.

Networks: ``unet``, a random-init diffusers ``UNet2DModel`` (1x8x8, channels 32/64, one layer per
block, ``DownBlock2D``/``UpBlock2D``) wrapped by ``flowsde.adapters.from_diffusers`` with a default
``DDPMScheduler()``; ``mlp``, the shipped ``digits-eps`` network (``flowsde.models.load``). The drift is
the PF-ODE's at mid-span; ``x`` standard normal; float32. Times are the median over
``--repeats`` on ``--threads`` CPU threads; the ratios are to the anchor of the same row.

    python benchmarks/bench_divergence.py                     # about 2 min on one CPU thread
    python benchmarks/bench_divergence.py --nets mlp --batch 64 256 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde.models as fm
from flowsde._internal import Divergence, exact_cotangents
from flowsde.adapters import from_diffusers


def unet_diffusion():
    """A random-init ``UNet2DModel`` at 1x8x8 under diffusers' default DDPM schedule."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    unet.requires_grad_(False)
    return from_diffusers(unet, DDPMScheduler()), (1, 8, 8)


def mlp_diffusion():
    return fm.load("digits-eps"), fm.info("digits-eps").event_shape


NETS = {"unet": unet_diffusion, "mlp": mlp_diffusion}


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def anchor(drift, t, x):
    """One forward and one backward of the drift over ``x`` replicated ``D`` times (``D B`` inputs)."""
    D = math.prod(x.shape[1:])
    xr = x.repeat((D,) + (1,) * (x.dim() - 1)).requires_grad_(True)
    with torch.enable_grad():
        u = drift(t, xr)
        torch.autograd.grad(u, xr, torch.ones_like(u))


def row(name, B, D, args, drift, t, x):
    """Times and ratios of one network at one batch size; the largest difference of the methods' traces."""
    divs = {m: Divergence(exact_cotangents(x, args.max_bytes), True, method=m) for m in ("replicated", "vmap", "auto")}
    outs = {m: dv(drift, t, x)[1] for m, dv in divs.items()}  # the first calls: decide, measure the chunk
    ref = outs["vmap"]
    diff = max(float((d - ref).abs().max() / ref.abs().max()) for d in outs.values())
    a = timed(lambda: anchor(drift, t, x), args.repeats)
    with torch.no_grad():
        f = timed(lambda: drift(t, x), args.repeats)
    r = {m: timed(lambda: dv(drift, t, x), args.repeats if m != "vmap" else args.vmap_repeats)
         for m, dv in divs.items()}
    today, auto = divs["vmap"].mode, divs["auto"].mode
    print(f"{name:5s} {B:5d} {D * B:7d} {1e3 * a:10.1f} {1e3 * f:9.2f} "
          f"{1e3 * r['replicated']:11.1f} {r['replicated'] / a:7.2f} "
          f"{1e3 * r['vmap']:10.1f} {today:>6s} {r['vmap'] / a:7.2f} "
          f"{1e3 * r['auto']:9.1f} {auto:>10s} {r['auto'] / a:7.2f} {r['vmap'] / r['auto']:8.1f}x "
          f"{divs['replicated'].chunk:6d} {diff:9.1e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["unet", "mlp"])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vmap-repeats", type=int, default=1, help="repeats of today's path (slow where vmap fails)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-bytes", type=int, default=2**30, help="the chunks' memory budget (exact_max_bytes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.float32
    print(f"## exact trace, one evaluation of (u, div u), float32, {args.threads} thread(s), median of "
          f"{args.repeats}; ratios to the anchor (forward + backward over B x D inputs)")
    print(f"{'net':5s} {'B':>5s} {'B x D':>7s} {'anchor ms':>10s} {'fwd B ms':>9s} {'replicated':>11s} "
          f"{'/anchor':>7s} {'today ms':>10s} {'':>6s} {'/anchor':>7s} {'auto ms':>9s} {'chose':>10s} "
          f"{'/anchor':>7s} {'today/auto':>9s} {'chunk':>6s} {'max diff':>9s}")
    for name in args.nets:
        dif, event = NETS[name]()
        ode = dif.pf_ode()
        lo, hi = float(dif.schedule.t_min), float(dif.schedule.t_max)
        t = torch.tensor(0.5 * (lo + hi), dtype=torch.float64)
        D = math.prod(event)
        for B in args.batch:
            x = torch.randn((B,) + tuple(event), generator=torch.Generator().manual_seed(B), dtype=dtype)
            row(name, B, D, args, ode.drift, t, x)


if __name__ == "__main__":
    main()
