"""Fine-tune the shipped digits-eps model by exact maximum likelihood (seeded, CPU; issue 23, item 4).

    python scripts/finetune_nll.py                                  # 15 minutes of training, evaluation before/after
    python scripts/finetune_nll.py --steps 200 --mix 1.0 --out /tmp/digits-eps-mle.safetensors

The loss is the negative exact log-likelihood of the probability-flow ODE (``Diffusion.log_likelihood``,
nats/dim), optionally plus ``--mix`` times the model's training loss (the ELBO's diffusion term,
``models/_train.py``), on the digits the shipped model was trained on (``digits("train")`` less its last
``--holdout`` = 200, as ``scripts/train_models.py``), each batch dequantized afresh. Its gradient is the
continuous adjoint of ``flowsde.log_likelihood(adjoint=True)`` (``docs/likelihood.md``, "Gradients"): the
trace by Hutchinson's estimator with ``--probes`` probes (FFJORD's training recipe; ``--trace exact`` for the
exact trace), the forward a single solve at the loose ``--bpd-tol`` (``error_estimate="embedded"``), steps
shared by the batch (``per_sample=False``). Adam, an EMA of the iterates, gradient-norm clipping; training
stops after ``--steps`` steps or ``--minutes`` of wall time, whichever comes first. The network runs in
``eval()`` mode throughout (no dropout: the ODE's drift must be deterministic).

Evaluation (paired): the exact-trace bits/dim of the held-out test digits (all 297) under the shipped and
the fine-tuned model, both on the *same* dequantized digits (``torch.Generator().manual_seed(--eval-seed)``)
and at ``--eval-bpd-tol`` (global error control, per sample); printed: both means, the mean per-digit
difference (after - before), its standard error ``std(d)/sqrt(n)`` and ``z = mean(d)/SE``. The 200 held-out
training digits are evaluated the same way (validation). ``--out PATH`` writes the fine-tuned weights
(``models`` format: safetensors with the config in the metadata) only when given.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

BASE = "digits-eps"


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning recipe (the defaults are the command line's)."""

    steps: Optional[int] = None  # at most this many steps (None: until the wall-clock budget)
    minutes: Optional[float] = 15.0  # wall-clock training budget (None: --steps only)
    batch_size: int = 64
    lr: float = 1e-4
    mix: float = 0.0  # weight of the denoising (ELBO diffusion term) loss beside the NLL
    trace: str = "hutchinson"
    probes: int = 1
    bpd_tol: float = 1e-2  # the training forward's tolerance (embedded: one solve)
    grad_tol: float = 0.1  # the adjoint's relative gradient accuracy
    checkpoints: int = 2
    ema: float = 0.99  # 0: keep the last iterate
    clip: float = 1.0  # gradient-norm clipping (0: none)
    holdout: int = 200  # the last N training digits, which the shipped model did not see

    def check(self) -> None:
        from flowsde import InputError

        if self.steps is None and self.minutes is None:
            raise InputError("FinetuneConfig: give steps or minutes (or both); both None would never stop.")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise InputError(f"FinetuneConfig(steps={self.steps!r}): a non-negative int.")
        for name in ("batch_size", "probes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"FinetuneConfig({name}={getattr(self, name)!r}): a positive int.")
        for name in ("lr", "bpd_tol", "grad_tol"):
            if not getattr(self, name) > 0:
                raise InputError(f"FinetuneConfig({name}={getattr(self, name)!r}): must be > 0.")
        if not (self.mix >= 0 and self.clip >= 0 and 0 <= self.ema < 1):
            raise InputError(f"FinetuneConfig: mix={self.mix!r} and clip={self.clip!r} must be >= 0 and "
                             f"ema={self.ema!r} in [0, 1).")
        if self.trace not in ("hutchinson", "exact"):
            raise InputError(f"FinetuneConfig(trace={self.trace!r}): 'hutchinson' or 'exact'.")


def trainable_copy(diffusion):
    """A ``Diffusion`` around a deep copy of ``diffusion``'s network with gradients on and dropout off
    (``eval()``); the shipped object (whose parameters ``models.load`` froze) is left as it is."""
    from flowsde.adapters import Diffusion

    net = copy.deepcopy(diffusion.net).requires_grad_(True).eval()
    return Diffusion(net, diffusion.schedule, prediction=diffusion.prediction)


def frozen_copy(diffusion):
    """A ``Diffusion`` around a frozen deep copy (parameters without gradients, ``eval()``)."""
    from flowsde.adapters import Diffusion

    net = copy.deepcopy(diffusion.net).requires_grad_(False).eval()
    return Diffusion(net, diffusion.schedule, prediction=diffusion.prediction)


def nll_loss(diffusion, x: torch.Tensor, config: FinetuneConfig, generator: torch.Generator):
    """``(-mean logp / D, result)``: the negative log-likelihood of the dequantized batch ``x`` (nats/dim),
    differentiable in the network's parameters by the continuous adjoint."""
    from flowsde import models as M

    params = tuple(p for p in diffusion.net.parameters() if p.requires_grad)
    r = diffusion.log_likelihood(x, levels=M.DIGITS_LEVELS, data_range=M.DIGITS_RANGE, dequantize=False,
                                 trace=config.trace, probes=config.probes, bpd_tol=config.bpd_tol,
                                 error_estimate="embedded", per_sample=False, generator=generator, adjoint=True,
                                 params=params, grad_tol=config.grad_tol, checkpoints=config.checkpoints)
    return -r.logp.mean() / x[0].numel(), r


def training_digits(holdout: int) -> torch.Tensor:
    """The training digits the shipped model saw: ``digits("train")`` less its last ``holdout``."""
    from flowsde import models as M

    x = M.digits("train").to(torch.float32)
    return x[:-holdout] if holdout else x


def finetune(diffusion, config: FinetuneConfig = FinetuneConfig(), *, generator: int = 0, log=print) -> dict:
    """Fine-tune a copy of ``diffusion`` (not modified) by exact NLL (+ ``mix`` x the denoising loss).

    Returns a dict: ``diffusion`` (the fine-tuned model, frozen: the EMA weights if ``ema > 0``), ``steps``,
    ``wall_s`` (training only), ``losses`` (per step: total, NLL and denoising terms, nats/dim; the gradient
    norm before clipping), ``config``, ``seed``.
    """
    from flowsde import models as M

    config.check()
    torch.manual_seed(generator)
    gen = torch.Generator().manual_seed(generator)
    work = trainable_copy(diffusion)
    net = work.net
    ema = copy.deepcopy(net).requires_grad_(False) if config.ema > 0 else None
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    data = training_digits(config.holdout)
    losses, step, t0 = [], 0, time.perf_counter()
    budget = None if config.minutes is None else 60.0 * config.minutes
    while (config.steps is None or step < config.steps) and (budget is None or time.perf_counter() - t0 < budget):
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen)
        x = M.dequantize_digits(data[idx], generator=gen)
        nll, _ = nll_loss(work, x, config, gen)
        den = M.denoising_loss(work, x, generator=gen) if config.mix > 0 else torch.zeros((), dtype=nll.dtype)
        loss = nll + config.mix * den.to(nll.dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip if config.clip > 0 else float("inf")))
        value = float(loss.detach())
        if not (math.isfinite(value) and math.isfinite(norm)):
            raise FloatingPointError(f"finetune: step {step}: loss {value}, gradient norm {norm}; lower --lr.")
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - config.ema)
        losses.append((value, float(nll.detach()), float(den.detach()), norm))
        step += 1
        if log is not None and (step % 10 == 0 or step == 1):
            recent = losses[-10:]
            mean = lambda j: sum(r[j] for r in recent) / len(recent)  # noqa: E731
            log(f"step {step}: loss {mean(0):.4f} (NLL {mean(1):.4f}, denoising {mean(2):.4f}) nats/dim, "
                f"|grad| {mean(3):.3g}, {time.perf_counter() - t0:.0f} s")
    wall = time.perf_counter() - t0
    if ema is not None:
        net = ema
    from flowsde.adapters import Diffusion

    tuned = frozen_copy(Diffusion(net, work.schedule, prediction=work.prediction))
    return dict(diffusion=tuned, steps=step, wall_s=wall, losses=losses, config=dataclasses.asdict(config),
                seed=generator)


def digits_bpd(diffusion, x: torch.Tensor, *, seed: int = 0, bpd_tol: float = 1e-4) -> torch.Tensor:
    """``(N,)`` float64 exact-trace bits/dim of the digits ``x`` (on the 17-level grid), dequantized by
    ``torch.Generator().manual_seed(seed)``: the same noise for every model evaluated with the same seed."""
    from flowsde import models as M

    xq = M.dequantize_digits(x.to(torch.float32), generator=torch.Generator().manual_seed(seed))
    r = frozen_copy(diffusion).log_likelihood(xq, levels=M.DIGITS_LEVELS, data_range=M.DIGITS_RANGE,
                                              dequantize=False, trace="exact", bpd_tol=bpd_tol)
    return r.bpd.to(torch.float64)


def paired(before: torch.Tensor, after: torch.Tensor) -> dict:
    """The paired comparison of two models' per-sample bits/dim: means, ``diff = mean(after - before)``,
    its standard error ``std(after - before) / sqrt(n)`` (ddof 1) and ``z = diff / se``."""
    from flowsde import InputError

    if before.shape != after.shape or before.dim() != 1 or before.numel() < 2:
        raise InputError(f"paired: two (n,) tensors with n >= 2, got {tuple(before.shape)} and "
                         f"{tuple(after.shape)}.")
    b, a = before.to(torch.float64), after.to(torch.float64)
    d = a - b
    n = d.numel()
    se = float(d.std()) / math.sqrt(n)
    diff = float(d.mean())
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return dict(n=n, before=float(b.mean()), before_se=float(b.std()) / math.sqrt(n), after=float(a.mean()),
                after_se=float(a.std()) / math.sqrt(n), diff=diff, se=se, z=z)


def nll_gradient(diffusion, x: torch.Tensor, *, seed: int = 0, probes: int = 4, bpd_tol: float = 1e-2) -> torch.Tensor:
    """``(P,)`` float64: the gradient of the mean NLL (nats/dim) of the digits ``x`` with respect to the
    network's parameters (adjoint, Hutchinson with ``probes`` probes), ``x`` dequantized by ``seed``."""
    from flowsde import models as M

    work = trainable_copy(diffusion)
    gen = torch.Generator().manual_seed(seed)
    xq = M.dequantize_digits(x.to(torch.float32), generator=gen)
    loss, _ = nll_loss(work, xq, FinetuneConfig(probes=probes, bpd_tol=bpd_tol), gen)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in work.net.parameters()]).to(torch.float64)


def alignment(diffusion, holdout: int = 200, samples: int = 400, *, seed: int = 0, log=print) -> dict:
    """Whether descending the training digits' NLL lowers held-out NLL, to first order: the cosines between
    the NLL gradients on ``samples`` training digits the model saw and on the two halves of the ``holdout``
    digits it did not (each half's gradient is the direction that lowers that half's NLL)."""
    seen = training_digits(holdout)
    idx = torch.randperm(seen.shape[0], generator=torch.Generator().manual_seed(seed))[:samples]
    fresh = training_digits(0)[-holdout:]
    half = holdout // 2
    g = dict(seen=nll_gradient(diffusion, seen[idx], seed=seed + 1),
             fresh_a=nll_gradient(diffusion, fresh[:half], seed=seed + 2),
             fresh_b=nll_gradient(diffusion, fresh[half:], seed=seed + 3))
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(g[a], g[b], 0))  # noqa: E731
    out = dict(seen_fresh_a=cos("seen", "fresh_a"), seen_fresh_b=cos("seen", "fresh_b"),
               fresh_a_fresh_b=cos("fresh_a", "fresh_b"), norms={k: float(v.norm()) for k, v in g.items()})
    if log is not None:
        log(f"NLL gradient alignment ({samples} seen training digits, 2 x {half} held-out ones): cos(seen, "
            f"held-out A) {out['seen_fresh_a']:+.3f}, cos(seen, held-out B) {out['seen_fresh_b']:+.3f}, "
            f"cos(held-out A, held-out B) {out['fresh_a_fresh_b']:+.3f}; norms {out['norms']}")
    return out


def describe(what: str, p: dict) -> str:
    return (f"{what} ({p['n']} digits): before {p['before']:.4f} +- {p['before_se']:.4f}, after {p['after']:.4f} "
            f"+- {p['after_se']:.4f} bits/dim; paired difference (after - before) {p['diff']:+.4f} +- {p['se']:.4f} "
            f"(z = {p['z']:+.1f})")


def main(argv=None) -> int:
    from flowsde import models as M
    from flowsde.models._registry import write_weights

    d = FinetuneConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=d.steps, help="at most this many steps (default: until --minutes)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock training budget (0: --steps only)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--mix", type=float, default=d.mix, help="weight of the denoising loss beside the NLL")
    p.add_argument("--trace", choices=("hutchinson", "exact"), default=d.trace)
    p.add_argument("--probes", type=int, default=d.probes)
    p.add_argument("--bpd-tol", type=float, default=d.bpd_tol, help="training forward's tolerance")
    p.add_argument("--grad-tol", type=float, default=d.grad_tol)
    p.add_argument("--checkpoints", type=int, default=d.checkpoints)
    p.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the weights kept (0: the last iterate)")
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping (0: none)")
    p.add_argument("--holdout", type=int, default=d.holdout)
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation's dequantization")
    p.add_argument("--eval-bpd-tol", type=float, default=1e-4)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N test digits only")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads ran the MLP ~100x slower)")
    p.add_argument("--out", default=None, help="write the fine-tuned weights (safetensors) here")
    p.add_argument("--alignment", action="store_true",
                   help="train nothing: cosines of the NLL gradients on seen and held-out training digits")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.alignment:
        alignment(M.load(BASE), a.holdout or 200, seed=a.seed)
        return 0
    config = FinetuneConfig(steps=a.steps, minutes=a.minutes or None, batch_size=a.batch_size, lr=a.lr, mix=a.mix,
                            trace=a.trace, probes=a.probes, bpd_tol=a.bpd_tol, grad_tol=a.grad_tol,
                            checkpoints=a.checkpoints, ema=a.ema, clip=a.clip, holdout=a.holdout)
    config.check()
    print(f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"recipe: {dataclasses.asdict(config)}, seed {a.seed}")
    shipped = M.load(BASE)
    test = M.digits("test")[:a.limit]
    val = M.digits("train")[-a.holdout:] if a.holdout else None
    t = time.perf_counter()
    before = digits_bpd(shipped, test, seed=a.eval_seed, bpd_tol=a.eval_bpd_tol)
    vbefore = None if val is None else digits_bpd(shipped, val, seed=a.eval_seed, bpd_tol=a.eval_bpd_tol)
    print(f"evaluated the shipped model in {time.perf_counter() - t:.0f} s")
    r = finetune(shipped, config, generator=a.seed)
    print(f"trained {r['steps']} steps in {r['wall_s']:.0f} s (load average {os.getloadavg()[0]:.1f})")
    t = time.perf_counter()
    after = digits_bpd(r["diffusion"], test, seed=a.eval_seed, bpd_tol=a.eval_bpd_tol)
    res = paired(before, after)
    if val is not None:
        print(describe("validation: the last {} training digits".format(a.holdout),
                       paired(vbefore, digits_bpd(r["diffusion"], val, seed=a.eval_seed, bpd_tol=a.eval_bpd_tol))))
    print(describe("test", res) + f"; evaluated in {time.perf_counter() - t:.0f} s")
    print(f"test medians: before {float(before.median()):.4f}, after {float(after.median()):.4f}; "
          f"max: before {float(before.max()):.2f}, after {float(after.max()):.2f}")
    if a.out:
        write_weights(r["diffusion"].net, a.out, name=f"{BASE}-mle", base=BASE, seed=a.seed, steps=r["steps"],
                      wall_s=f"{r['wall_s']:.1f}", recipe=json.dumps(dataclasses.asdict(config)),
                      test_bpd_before=f"{res['before']:.6f}", test_bpd_after=f"{res['after']:.6f}",
                      test_paired_diff=f"{res['diff']:.6f}", test_paired_se=f"{res['se']:.6f}",
                      torch=torch.__version__)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
