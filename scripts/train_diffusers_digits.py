"""Train the shipped diffusers model ``digits-unet`` and save it as a diffusers pipeline folder.

    python scripts/train_diffusers_digits.py                       # writes models/weights/digits-unet/
    python scripts/train_diffusers_digits.py --out /tmp/unet --steps 200   # a shorter run elsewhere

What it trains: ``diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
block_out_channels=(32, 64), down/up blocks DownBlock2D/UpBlock2D, norm_num_groups=8)``, an
eps-prediction network under ``diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")``
(diffusers' defaults otherwise: betas 1e-4..0.02, ``prediction_type="epsilon"``), with the DDPM objective
``|| eps - unet(x_t, k) ||^2`` (mean over pixels) at a training index ``k``:

* ``--timesteps continuous`` (the default, the shipped weights): ``k`` uniform on ``[0, N - 1]``, fractional,
  and ``x_t = alpha(t) x0 + sigma(t) eps`` from the continuous interpretation of the same table that flowsde
  integrates (``flowsde.adapters.schedules.Discrete``, ``t = (k + 1)/N``: log-SNR linear between the steps;
  at an integer ``k`` this is exactly ``scheduler.add_noise``). The PF-ODE visits fractional indices;
  trained there, the network is smooth in ``k``.
* ``--timesteps integer``: diffusers' own objective, ``k`` uniform on the 1000 integers and
  ``x_t = scheduler.add_noise(x0, eps, k)``. Between the integers such a network oscillates with the top
  frequency of its sinusoidal time embedding (period ``2 pi`` steps, about 1 % of ``eps``), which a
  likelihood's adaptive solve must resolve: thousands of NFE (``docs/likelihood.md``, "diffusers models").

``--max-freq`` (default 0.05 radians per step; 0 keeps all): the network reads only the time-embedding features
of frequency at most this: the columns of ``time_embedding.linear_1`` that read the faster sinusoids (diffusers'
``get_timestep_embedding``: frequency ``10000^(-i/16)`` for feature pair ``i``; pairs 0..5, 1 down to 0.056
radians per step) are zero at initialization and after every optimizer step. The architecture and the folder
are diffusers' own (the columns are stored, as zeros); what changes is that ``eps`` cannot oscillate between the
steps faster than 0.032 radians per step, about 5 periods over the 1000 steps. Continuous indices alone do not
remove the oscillation of the fast features (1000 steps of training: its amplitude falls from 1 % to 0.4 %).

Data: the 1500 digits of ``flowsde.models.digits("train")`` (the split, the range ``(-1, 1)`` and the
17 levels of the other digits models), dequantized afresh at every step
(``flowsde.models.dequantize_digits``), shaped ``(B, 1, 8, 8)``. Optimizer AdamW (lr 1e-3, 200 warm-up
steps, cosine decay to 0), batch 64, an exponential moving average (0.999) of the weights is saved.

Reproducible: seed 0 fixes torch's global RNG and the one generator all draws come from; a fixed number
of optimizer steps (``--steps``, default 1000, batch 64), one torch thread (``--threads``; on the shared
2-core development machine two threads spent about 12x the CPU time a step, 1.2 s against 0.10 s).
Expected runtime: about 0.09 s a step; the shipped weights (the defaults) took 84 s of wall time on the
2-core development machine, one other job running.

It writes ``DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)`` (safetensors):
``out/model_index.json``, ``out/scheduler/scheduler_config.json``, ``out/unet/config.json`` and
``out/unet/diffusion_pytorch_model.safetensors`` (2.6 MB, float32), and prints the held-out eps-MSE of the
297 test digits at a few training indices.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import torch

UNET_CONFIG = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                   norm_num_groups=8)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "models", "weights", "digits-unet")
EVAL_INDICES = (10, 100, 300, 600, 900)


def time_feature_mask(unet, max_freq: float) -> torch.Tensor:
    """``(in_features,)`` bool: which inputs of ``unet.time_embedding.linear_1`` read a sinusoid of frequency at
    most ``max_freq`` radians per step (all where ``max_freq <= 0``); diffusers' embedding is
    ``[cos(f_i k), sin(f_i k)]`` (``flip_sin_to_cos``) or ``[sin, cos]``, ``f_i = 10000^(-i / (half - shift))``."""
    tp = unet.time_proj
    half = tp.num_channels // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - tp.downscale_freq_shift))
    keep = (f <= max_freq) if max_freq > 0 else torch.ones(half, dtype=torch.bool)
    return torch.cat([keep, keep])


def mask_time_features(unet, mask: torch.Tensor) -> None:
    """Zero the columns of ``unet.time_embedding.linear_1`` that :func:`time_feature_mask` leaves out."""
    with torch.no_grad():
        unet.time_embedding.linear_1.weight[:, ~mask] = 0


def heldout_mse(unet, scheduler, x0: torch.Tensor, indices=EVAL_INDICES, seed: int = 1234) -> dict:
    """Mean eps-MSE per pixel of ``unet`` on ``x0`` ``(N, 1, 8, 8)`` at each training index (seeded noise)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for k in indices:
            eps = torch.randn(x0.shape, generator=g)
            t = torch.full((x0.shape[0],), k, dtype=torch.long)
            xt = scheduler.add_noise(x0, eps, t)
            out[k] = float((unet(xt, t).sample - eps).square().mean())
    return out


def main(argv=None) -> int:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from flowsde.adapters.schedules import Discrete
    from flowsde.models import dequantize_digits, digits

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timesteps", choices=("continuous", "integer"), default="continuous",
                   help="training indices: uniform on [0, N-1] (continuous, the shipped weights) or on the integers")
    p.add_argument("--max-freq", type=float, default=0.05,
                   help="radians per step: the time-embedding features above it are masked out (0: none)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (the shipped weights: 1; another count may change the last bits)")
    p.add_argument("--out", default=DEFAULT_OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    unet = UNet2DModel(**UNET_CONFIG)
    mask = time_feature_mask(unet, a.max_freq)
    mask_time_features(unet, mask)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr)
    xtr = digits("train").to(torch.float32)
    xte = digits("test").to(torch.float32).reshape(-1, 1, 8, 8)
    N = scheduler.config.num_train_timesteps
    table = Discrete(scheduler.alphas_cumprod)  # the continuous interpretation flowsde integrates
    warm = min(200, a.steps // 10)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{sum(q.numel() for q in unet.parameters())} parameters, {a.steps} steps of batch {a.batch_size}",
          flush=True)
    print(f"held-out eps-MSE of the untrained network: {heldout_mse(unet.eval(), scheduler, xte)}; "
          f"of the predictor 0: 1.0", flush=True)
    unet.train()
    t0, run = time.perf_counter(), []
    for i in range(a.steps):
        lr = a.lr * (i + 1) / warm if i < warm else \
            a.lr * 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, a.steps - warm)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, xtr.shape[0], (a.batch_size,), generator=gen)
        x0 = dequantize_digits(xtr[idx], generator=gen).reshape(-1, 1, 8, 8)
        eps = torch.randn(x0.shape, generator=gen)
        if a.timesteps == "integer":
            k = torch.randint(0, N, (a.batch_size,), generator=gen)
            xt = scheduler.add_noise(x0, eps, k)
        else:
            k = (N - 1) * torch.rand(a.batch_size, generator=gen, dtype=torch.float64)
            tc = table.t_from_index(k)
            xt = (table.alpha(tc)[:, None, None, None] * x0 + table.sigma(tc)[:, None, None, None] * eps).float()
            k = k.float()
        loss = (unet(xt, k).sample - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mask_time_features(unet, mask)
        with torch.no_grad():
            decay = min(a.ema, (1 + i) / (10 + i))  # EMA warm-up (diffusers' EMAModel)
            for pe, q in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(q, 1 - decay)
        run.append(float(loss.detach()))
        if (i + 1) % a.log_every == 0 or i + 1 == a.steps:
            m = sum(run[-a.log_every:]) / len(run[-a.log_every:])
            print(f"step {i + 1}/{a.steps}  loss {m:.4f}  lr {lr:.2e}  {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    ema.eval()
    mse = heldout_mse(ema, scheduler, xte)
    print(f"trained {a.steps} steps in {wall:.0f} s; held-out eps-MSE (EMA) per index {mse}; "
          f"mean {sum(mse.values()) / len(mse):.4f}", flush=True)
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(a.out, safe_serialization=True)
    print(f"wrote {os.path.abspath(a.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
