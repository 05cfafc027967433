"""Train the shipped models and write their weights into the package (seeded, CPU, one thread).

    python scripts/train_models.py                      # all its models, with the defaults the shipped weights used
    python scripts/train_models.py digits-eps --steps 2000 --out /tmp/w   # one model, elsewhere

The weights go to ``models/weights/<name>.safetensors`` (package data) unless ``--out DIR``.
Its models: ``digits-eps``, ``digits-velocity`` (flow matching over all of ``t`` in [0, 1]) and ``moons``;
the diffusers model ``digits-unet`` is trained by ``scripts/train_diffusers_digits.py``.
Wall time, final loss and the held-out ELBO are printed; ``docs/models.md`` records them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys

import torch


def main(argv=None) -> int:
    import flowsde.models as M
    from flowsde.models import TrainConfig, digits, elbo_nats, nats_to_bpd, train
    from flowsde.models._train import DEFAULTS

    names = lambda: list(DEFAULTS)  # noqa: E731  (digits-unet: scripts/train_diffusers_digits.py)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=None, help=f"which models (default: all of {names()})")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--ema", type=float, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--inputs", choices=("z", "x"), default=None)
    p.add_argument("--skip", type=int, choices=(0, 1), default=None, help="1: add the Gaussian's prediction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=None,
                   help="leave the last N training digits out as validation and report their ELBO (shipped: 200)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="directory for the weights (default: the package's weights/)")
    p.add_argument("--eval", action="store_true",
                   help="train nothing: bits/dim of the shipped digits models and of the Gaussian on the test split")
    p.add_argument("--limit", type=int, default=None, help="--eval: the first N test digits only")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.eval:
        return evaluate([m for m in (a.models or names()) if m.startswith("digits")], a.limit)
    todo = a.models or names()
    unknown = [m for m in todo if m not in names()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {names()}")
    out_dir = a.out or os.path.dirname(os.path.abspath(M.weights_path(names()[0])))
    os.makedirs(out_dir, exist_ok=True)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {platform.system()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    for name in todo:
        path = os.path.join(out_dir, f"{name}.safetensors")
        config = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, width=a.width, depth=a.depth, ema=a.ema,
                             dropout=a.dropout, weight_decay=a.weight_decay, inputs=a.inputs,
                             skip=None if a.skip is None else bool(a.skip), holdout=a.holdout)
        r = train(name, config, generator=a.seed, out=path)
        unit = "per dim (flow matching)" if r["config"].get("objective") == "flow-matching" else "nats/dim"
        print(f"{name}: {r['config']}  final loss {r['final_loss']:.4f} {unit}  wall {r['wall_s']:.0f} s  -> {path}")
        hold = r["config"]["holdout"]
        if hold and name.startswith("digits"):
            g = torch.Generator().manual_seed(1234)
            xv = M.dequantize_digits(digits("train")[-hold:].to(torch.float32), generator=g)
            e = elbo_nats(r["diffusion"], xv, n_lambda=32, generator=g)
            bpd = nats_to_bpd(e)
            print(f"{name}: validation ELBO {float(bpd.mean()):.4f} +- {float(bpd.std()) / math.sqrt(len(bpd)):.4f} bits/dim")
    return 0


def evaluate(models, limit=None) -> int:
    """Exact-trace bits/dim of the shipped digits models and of the full-covariance Gaussian on the test
    split, under one dequantization (``torch.Generator().manual_seed(0)``), RK45 rtol = atol = 1e-4."""
    import time

    import flowsde
    import flowsde.models as M

    x = M.digits("test")[:limit]
    xq = M.dequantize_digits(x, generator=torch.Generator().manual_seed(0))
    L, R = M.DIGITS_LEVELS, M.DIGITS_RANGE
    gauss = flowsde.bits_per_dim(M.digits_gaussian().log_prob(xq), 64, levels=L, data_range=R)
    n = len(gauss)
    se = lambda v: float(v.std()) / math.sqrt(len(v))  # noqa: E731
    print(f"full-covariance Gaussian: {float(gauss.mean()):.4f} +- {se(gauss):.4f} bits/dim ({n} test digits)")
    for name in models:
        t0 = time.perf_counter()
        res = M.load(name).log_likelihood(xq.float(), rtol=1e-4, atol=1e-4)
        bpd = flowsde.bits_per_dim(res.logp.double(), 64, levels=L, data_range=R)
        d = bpd - gauss
        print(f"{name}: median {float(bpd.median()):.4f}, max {float(bpd.max()):.2f}; mean {float(bpd.mean()):.4f} +- {se(bpd):.4f} bits/dim; paired difference to the Gaussian "
              f"{float(d.mean()):.4f} +- {se(d):.4f}; NFE {res.nfe}; all succeeded: {res.success};"
              f" {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
