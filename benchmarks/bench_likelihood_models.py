"""The likelihood's true error on the shipped trained models, against a tight solve.

For ``digits-eps`` (VP, eps) and ``digits-velocity`` (rectified flow, velocity): the first ``--n``
dequantized test digits (per-sample seeds 0..n-1), exact trace, float64; the reference is the same
call at ``bpd_tol = rtol = atol = 1e-9`` (600-750 NFE). Each setting prints the largest true error
over the batch (bits/dim), the embedded ``solver_error`` estimate beside it, and the NFE.

    python benchmarks/bench_likelihood_models.py          # about 1 min
"""

from __future__ import annotations

import argparse
import math

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
import flowsde.models as fm

SETTINGS = [
    ("defaults (time_warp 1.5)", dict()),
    ("time_warp=1 (in t)", dict(time_warp=1)),
    ("time_warp=2", dict(time_warp=2)),
    ("time='log_snr'", dict(time="log_snr", time_warp=1)),
    ("defaults, error_estimate='resolve'", dict(error_estimate="resolve")),
    ("time_warp=1, error_estimate='resolve'", dict(time_warp=1, error_estimate="resolve")),
    ("bpd_tol=1e-6", dict(bpd_tol=1e-6)),
    ("bpd_tol=1e-6, time_warp=1", dict(bpd_tol=1e-6, time_warp=1)),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="test digits")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = fm.digits("test")[: args.n]
    x = flowsde.dequantize(data, levels=17, data_range=(-1.0, 1.0),
                           generator=flowsde.per_sample_generators(range(args.n))).double()
    D = x[0].numel()
    for name in ("digits-eps", "digits-velocity"):
        dif = fm.load(name, net_dtype=torch.float64)
        ref = dif.log_likelihood(x, bpd_tol=1e-9, rtol=1e-9, atol=1e-9)
        print(f"\n## {name}: {args.n} test digits, exact trace, float64; reference NFE {ref.nfe}")
        print(f"{'setting':40s} {'true error':>11s} {'estimate':>9s} {'NFE':>5s}   (bits/dim, max over the batch)")
        for label, kw in SETTINGS:
            try:
                r = dif.log_likelihood(x, **kw)
            except flowsde.InputError as e:
                print(f"{label:40s} refused: {str(e)[:70]}")
                continue
            err = float((r.logp - ref.logp).abs().max()) / (D * math.log(2))
            print(f"{label:40s} {err:11.2e} {float(r.solver_error_bpd.max()):9.1e} {r.nfe:5d}")


if __name__ == "__main__":
    main()
