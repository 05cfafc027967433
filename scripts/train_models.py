"""Train the shipped models and write their weights into the package (seeded, CPU, one thread).

    python scripts/train_models.py                      # all models, defaults of flowsde.models._train.DEFAULTS
    python scripts/train_models.py digits-eps --steps 2000 --out /tmp/w   # one model, elsewhere

The weights go to ``models/weights/<name>.safetensors`` (package data) unless ``--out DIR``.
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
    from flowsde.models import _train, digits, names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=None, help=f"which models (default: all of {names()})")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--ema", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=0,
                   help="leave the last N training digits out and report their ELBO (tuning; shipped: 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="directory for the weights (default: the package's weights/)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    todo = a.models or names()
    unknown = [m for m in todo if m not in names()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {names()}")
    out_dir = a.out or os.path.join(os.path.dirname(os.path.abspath(_train.__file__)), "weights")
    os.makedirs(out_dir, exist_ok=True)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {platform.system()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    for name in todo:
        path = os.path.join(out_dir, f"{name}.safetensors")
        r = _train.train(name, steps=a.steps, batch_size=a.batch_size, lr=a.lr, width=a.width, depth=a.depth,
                         ema=a.ema, seed=a.seed, holdout=a.holdout, out=path)
        print(f"{name}: {r['config']}  final loss {r['final_loss']:.4f} nats/dim  wall {r['wall_s']:.0f} s  -> {path}")
        if a.holdout and name.startswith("digits"):
            g = torch.Generator().manual_seed(1234)
            xv = _train.dequantize_digits(digits("train")[-a.holdout:].to(torch.float32), generator=g)
            e = _train.elbo_nats(r["diffusion"], xv, n_lambda=32, generator=g)
            bpd = _train.nats_to_bpd(e)
            print(f"{name}: holdout ELBO {float(bpd.mean()):.4f} +- {float(bpd.std()) / math.sqrt(len(bpd)):.4f} bits/dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
