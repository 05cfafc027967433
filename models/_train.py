"""Training of the shipped models (``scripts/train_models.py`` is the command line).

Objective: the continuous-time ELBO of a diffusion model, i.e. maximum-likelihood training
(Song et al. 2021, "Maximum likelihood training of score-based diffusion models"; Kingma et
al. 2021, "Variational diffusion models", eq. 17). In the log-SNR ``lambda = log(alpha^2/sigma^2)``
its diffusion term is

    L_diff(x) = 1/2 int_{lambda_lo}^{lambda_hi} E_eps || eps - eps_hat(x_lambda, lambda) ||^2 d lambda,

so drawing ``lambda`` uniformly on ``[lambda_lo, lambda_hi]`` is the importance sampling whose
weight is the constant ``(lambda_hi - lambda_lo)/2`` (VDM's choice for a fixed schedule). The
``lambda`` of a batch are stratified (one per ``1/B`` slice, VDM's low-discrepancy sampler).
Every parameterization is trained through the same ``eps``: the network is wrapped in its
:class:`flowsde.adapters.Diffusion` and ``Diffusion.eps`` converts its output exactly (for the
flow-matching velocity network ``eps = alpha u - alpha' x`` on the Linear path), so the
velocity model is trained on the same likelihood bound. ``lambda_hi = lambda(t_min)``,
``lambda_lo = max(lambda(t_max), -20)`` (below -20 the omitted part of the bound is < 1e-8 nats).

Digits are dequantized afresh at every step (``flowsde.dequantize(..., levels=17)``); the
weights kept are an exponential moving average (EMA) of the iterates.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch

import flowsde
from flowsde import InputError
from flowsde._internal import as_seed

from ._data import DIGITS_LEVELS, DIGITS_RANGE, dequantize_digits, digits, digits_gaussian, toy_data
from ._nets import GaussianResidualMLP
from ._registry import _spec, build, write_weights

__all__ = ["train", "TrainConfig", "elbo_nats", "denoising_loss", "nats_to_bpd", "DEFAULTS"]

LAMBDA_FLOOR = -20.0

# per model: architecture and optimisation defaults (the shipped weights used these)
DEFAULTS: Dict[str, dict] = {
    "digits-eps": dict(kind="eps-vp", width=256, depth=3, dropout=0.2, bound=2.0, gate=True, steps=12000, batch_size=256, lr=1e-3,
                       ema=0.999, holdout=200),
    "digits-velocity": dict(kind="velocity-fm", width=256, depth=3, dropout=0.2, bound=4.0, gate=True, steps=12000, batch_size=256,
                            lr=1e-3, ema=0.999, holdout=200, objective="flow-matching"),
    "moons": dict(kind="eps-vp", width=128, depth=3, skip=False, steps=20000, batch_size=256, lr=1e-3, ema=0.999),
}


def nats_to_bpd(nats: torch.Tensor) -> torch.Tensor:
    """Bits/dim of digits from ``-log p`` (nats per image) of their dequantized version."""
    return flowsde.bits_per_dim(-nats, 64, levels=DIGITS_LEVELS, data_range=DIGITS_RANGE)


def _lambda_range(schedule):
    t = torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64)
    lam = schedule.log_snr(t)
    return max(float(lam[1]), LAMBDA_FLOOR), float(lam[0])


def _noised(schedule, x, lam, eps):
    """``(t, x_t)`` at log-SNR ``lam`` (float64 schedule math, cast to x's dtype)."""
    t = schedule.t_from_log_snr(lam).clamp(schedule.t_min, schedule.t_max)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    return t.to(x.dtype), (a * x.to(torch.float64) + s * eps.to(torch.float64)).to(x.dtype)


def denoising_loss(diffusion, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """The training loss of the shipped eps models, nats per dimension (a 0-dim tensor with a graph).

    The diffusion term of ``-ELBO`` (Kingma et al. 2021, VDM, eq. 17, in log-SNR):
    ``0.5 (lambda_hi - lambda_lo) E ||eps - eps_hat(x_lambda, lambda)||^2 / D``, one ``lambda`` per sample
    stratified over ``[lambda_lo, lambda_hi]`` (the schedule's span, ``lambda_lo`` floored at -20), drawn
    from ``generator`` in the order: a permutation of the strata, their offsets, then ``eps``.

    Arguments:
        diffusion: an eps-prediction :class:`flowsde.adapters.Diffusion` (its network in training).
        x: a batch of data ``(B, *event)``.
        generator: a ``torch.Generator`` (CPU).
    """
    lo, hi = _lambda_range(diffusion.schedule)
    B = x.shape[0]
    u = (torch.randperm(B, generator=generator).to(torch.float64)
         + torch.rand(B, generator=generator, dtype=torch.float64)) / B
    lam = lo + (hi - lo) * u
    eps = torch.randn(x.shape, generator=generator)
    t, xt = _noised(diffusion.schedule, x, lam, eps)
    return 0.5 * (hi - lo) * (eps - diffusion.eps(t, xt)).square().flatten(1).sum(1).mean() / x[0].numel()


def elbo_nats(diffusion, x: torch.Tensor, *, n_lambda: int = 64, generator=None) -> torch.Tensor:
    """``-ELBO`` in nats per sample ``(B,)``, an upper bound on ``-log p(x)`` of continuous data ``x``.

    Prior term ``KL(q(x_lo | x) || N(0, sigma_T^2 I))`` at ``lambda_lo``, the diffusion term with
    ``n_lambda`` stratified ``lambda`` per sample, and the Gaussian decoder
    ``N(x; x_hi/alpha, (sigma/alpha)^2 I)`` at ``lambda_hi`` (VDM, continuous data).
    """
    sch = diffusion.schedule
    lo, hi = _lambda_range(sch)
    B, D = x.shape[0], x[0].numel()
    total = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for j in range(n_lambda):
            u = (j + torch.rand(B, generator=generator, dtype=torch.float64)) / n_lambda
            lam = lo + (hi - lo) * u
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            t, xt = _noised(sch, x, lam, eps)
            err = (eps - diffusion.eps(t, xt)).to(torch.float64).square().sum(1)
            total += 0.5 * (hi - lo) * err / n_lambda
        T = torch.tensor([sch.t_from_log_snr(torch.tensor(lo, dtype=torch.float64))], dtype=torch.float64)
        a1, s1 = float(sch.alpha(T)), float(sch.sigma(T))
        sT = float(diffusion.prior().std) if hasattr(diffusion.prior(), "std") else 1.0
        xd = x.to(torch.float64)
        prior = 0.5 * ((a1**2 * xd.square() + s1**2) / sT**2 - 1 - math.log(s1**2 / sT**2)).sum(1)
        t0 = torch.tensor([sch.t_min], dtype=torch.float64)
        a0, s0 = float(sch.alpha(t0)), float(sch.sigma(t0))
        recon = 0.5 * D * (math.log(2 * math.pi * (s0 / a0) ** 2) + 1)
    return total + prior + recon


def _data_source(name: str, seed: int, holdout: int = 0):
    """``(draw(batch_size, generator) -> batch, (mean, cov) of the Gaussian part)``; ``holdout``: leave the
    last ``holdout`` training digits out (validation while tuning; the Gaussian part then still sees them)."""
    if name.startswith("digits"):
        xtr = digits("train").to(torch.float32)
        if holdout:
            xtr = xtr[:-holdout]
        gauss = digits_gaussian()

        def draw(batch_size, gen):
            idx = torch.randint(0, xtr.shape[0], (batch_size,), generator=gen)
            return dequantize_digits(xtr[idx], generator=gen)

        return draw, (gauss.mean, gauss.covariance_matrix)
    pool = toy_data(name, 200_000, generator=seed + 1).to(torch.float32)

    def draw(batch_size, gen):
        return pool[torch.randint(0, pool.shape[0], (batch_size,), generator=gen)]

    p64 = pool.to(torch.float64)
    return draw, (p64.mean(0), torch.cov(p64.T))


@dataclass(frozen=True)
class TrainConfig:
    """Overrides of a model's training defaults (:data:`DEFAULTS`); ``None`` keeps the default."""

    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    width: Optional[int] = None
    depth: Optional[int] = None
    ema: Optional[float] = None
    dropout: Optional[float] = None
    weight_decay: Optional[float] = None
    inputs: Optional[str] = None
    skip: Optional[bool] = None
    holdout: Optional[int] = None

    def resolve(self, name: str) -> dict:
        """``DEFAULTS[name]`` with the overrides applied."""
        cfg = dict(DEFAULTS[name])
        cfg.update({k: v for k, v in dataclasses.asdict(self).items() if v is not None})
        return cfg


def train(name: str, config: Optional[TrainConfig] = None, *, generator=0, log_every: int = 500, out=None,
          log=print) -> dict:
    """Train the shipped model ``name`` from scratch (seeded) and optionally write its weights.

    Arguments:
        name: one of :func:`flowsde.models.names`.
        config: overrides of the model's defaults (:data:`DEFAULTS`, what the shipped weights used).
        generator: the run's seed (an int, default 0, or a ``torch.Generator`` one is drawn from):
            torch's global RNG, the data draws, the time draws and the noise all derive from it.
        log_every: steps between progress lines (``log(str)``; ``log=None``: silent).
        out: a ``.safetensors`` path to write the EMA network to.

    Returns a dict with the EMA network (``net``), its ``Diffusion`` (``diffusion``), the
    config used, the mean training loss (diffusion term, nats/dim) over the last 10% of steps
    (``final_loss``) and the wall time.
    """
    _spec(name)
    if name not in DEFAULTS:
        raise InputError(f"train({name!r}): a diffusers model, trained by scripts/train_diffusers_digits.py; "
                         f"train() trains {list(DEFAULTS)}.")
    cfg = (config or TrainConfig()).resolve(name)
    holdout = cfg.pop("holdout", 0)
    seed = as_seed(generator, "train")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    draw, (mean, cov) = _data_source(name, seed, holdout)
    net, ema_net, opt = _model(name, cfg, mean, cov)
    run = _Run(name, cfg, net, ema_net, opt, draw, gen, mean.shape[0], holdout)
    t0 = time.perf_counter()
    for i in range(cfg["steps"]):
        run.losses.append(run.step(i))
        if log is not None and ((i + 1) % log_every == 0 or i + 1 == cfg["steps"]):
            log(run.progress(i, log_every, time.perf_counter() - t0))
    wall = time.perf_counter() - t0
    tail = run.losses[-max(1, cfg["steps"] // 10):]
    final = sum(tail) / len(tail)
    ema_net.eval()
    result = dict(net=ema_net, diffusion=build(name, ema_net), config=dict(cfg, holdout=holdout), seed=seed,
                  final_loss=final, wall_s=wall, losses=run.losses)
    if out is not None:
        write_weights(ema_net, out, name=name, seed=seed, steps=cfg["steps"], batch_size=cfg["batch_size"],
                      lr=cfg["lr"], holdout=holdout, ema=cfg["ema"], **{_loss_key(cfg): f"{final:.6f}"},
                      wall_s=f"{wall:.1f}", torch=torch.__version__)
    return result


def _loss_key(cfg: dict) -> str:
    """The metadata key of the final loss: the ELBO's diffusion term in nats/dim, or the flow-matching loss."""
    return "final_loss_fm_per_dim" if cfg.get("objective", "elbo") == "flow-matching" else "final_loss_nats_per_dim"


def _model(name: str, cfg: dict, mean: torch.Tensor, cov: torch.Tensor):
    """The network (its Gaussian part fitted to the data), its EMA copy and the optimizer."""
    net = GaussianResidualMLP(mean.shape[0], kind=cfg["kind"], width=cfg["width"], depth=cfg["depth"],
                              dropout=cfg.get("dropout", 0.0), inputs=cfg.get("inputs", "z"),
                              skip=cfg.get("skip", True), bound=cfg.get("bound", 0.0), gate=cfg.get("gate", False))
    net.set_gaussian(mean, cov)
    ema_net = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    net.train()
    return net, ema_net, opt


class _Run:
    """One training run's state: a step of the stratified-lambda ELBO, the EMA, the progress line."""

    def __init__(self, name, cfg, net, ema_net, opt, draw, gen, D, holdout):
        self.name, self.cfg, self.net, self.ema_net, self.opt = name, cfg, net, ema_net, opt
        self.dif = build(name, net)
        self.draw, self.gen, self.D, self.holdout = draw, gen, D, holdout
        self.warm = min(200, cfg["steps"] // 10)
        self.losses = []

    def lr_at(self, i: int) -> float:
        """Linear warm-up, then cosine decay to 0."""
        lr, warm, steps = self.cfg["lr"], self.warm, self.cfg["steps"]
        if i < warm:
            return lr * (i + 1) / warm
        return lr * 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))

    def step(self, i: int) -> float:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(i)
        x = self.draw(self.cfg["batch_size"], self.gen)
        if self.cfg.get("objective", "elbo") == "flow-matching":
            return self._flow_matching_step(x)
        return self._update(denoising_loss(self.dif, x, generator=self.gen))

    def _update(self, loss: torch.Tensor) -> float:
        """One optimizer step on ``loss`` and the EMA of the weights; the loss as a float."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for pe, p in zip(self.ema_net.parameters(), self.net.parameters()):
                pe.lerp_(p, 1 - self.cfg["ema"])
        return float(loss.detach())

    def _flow_matching_step(self, x: torch.Tensor) -> float:
        """Conditional flow matching (Lipman et al. 2023, eq. 23; rectified flow): ``s ~ U[0, 1]``
        (stratified), ``x_s = s x_0 + (1 - s) eps``, loss ``|| u(x_s, s) - (x_0 - eps) ||^2`` per dim: the
        whole time range, the data end ``s -> 1`` (flowsde ``t = 1 - s -> 0``) included."""
        B, gen = x.shape[0], self.gen
        s = (torch.randperm(B, generator=gen).to(torch.float64) + torch.rand(B, generator=gen, dtype=torch.float64)) / B
        eps = torch.randn(x.shape, generator=gen)
        s = s.to(x.dtype)
        xs = s[:, None] * x + (1 - s[:, None]) * eps
        loss = (self.net(xs, s) - (x - eps)).square().sum(1).mean() / self.D
        return self._update(loss)

    def progress(self, i: int, log_every: int, seconds: float) -> str:
        m = sum(self.losses[-log_every:]) / len(self.losses[-log_every:])
        msg = ""
        if self.holdout and self.name.startswith("digits"):
            self.ema_net.eval()
            vg = torch.Generator().manual_seed(1234)
            xv = dequantize_digits(digits("train")[-self.holdout:].to(torch.float32), generator=vg)
            bpd = nats_to_bpd(elbo_nats(build(self.name, self.ema_net), xv, n_lambda=16, generator=vg))
            msg = f"  holdout ELBO {float(bpd.mean()):.4f} bits/dim"
        unit = "per dim (flow matching)" if self.cfg.get("objective", "elbo") == "flow-matching" else "nats/dim"
        return (f"{self.name}: step {i + 1}/{self.cfg['steps']}  loss {m:.4f} {unit}  lr {self.lr_at(i):.2e}  "
                f"{seconds:.0f} s{msg}")
