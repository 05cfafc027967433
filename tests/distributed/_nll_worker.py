"""A small data-set NLL job for the distributed tests: the exact Gaussian-mixture oracle (VP, eps
prediction, 4 dims) on 8-bit data. Run as ``python -m torch.distributed.run --nproc_per_node N
_nll_worker.py --out FILE.csv ...`` (a process group is initialised when torchrun's ``RANK`` is set)
or imported for the same model and data in the test process.

Exit status: 0 done; 3 a ``NLLError`` (some batches failed, message on stderr); 2 an ``InputError``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

N_SAMPLES = 40
DIM = 4
BITS = 8
BPD_TOL = 1e-3  # the runs test sharding and resume, not accuracy: a quick tolerance


def model_and_data(n: int = N_SAMPLES, *, sleep: float = 0.0, fail_index: int = -1):
    """``(diffusion, data, mixture)``: the exact oracle network and ``n`` samples on the 8-bit grid of [-1, 1].
    ``sleep``: seconds added to every network call (to kill a run mid-way); ``fail_index``: a sample whose
    loading raises (a corrupt record), as a map-style Dataset."""
    from flowsde.adapters import VP, Diffusion
    from flowsde.validation.references import GaussianMixture

    dt = torch.float64
    g = torch.Generator().manual_seed(0)
    means = 0.5 * torch.randn(3, DIM, generator=g, dtype=dt)
    A = torch.randn(3, DIM, DIM, generator=g, dtype=dt) / math.sqrt(DIM)
    covs = 0.05 * A @ A.transpose(1, 2) + 0.02 * torch.eye(DIM, dtype=dt)
    gm = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=dt), means, covs)
    x = gm.sample(n, generator=g).clamp(-1, 1)
    x = -1 + 2 * torch.round((x + 1) / 2 * (2**BITS - 1)) / (2**BITS - 1)
    inner = gm.oracle(VP(), "eps")
    if sleep > 0:
        os.environ["FLOWSDE_TEST_NLL_SLEEP"] = str(sleep)

    def net(x, t):
        # the oracle, slowed down by FLOWSDE_TEST_NLL_SLEEP seconds a call (to kill a run mid-way): read from
        # the environment, so that the slowed and the plain model are one model to dataset_nll's resume
        time.sleep(float(os.environ.get("FLOWSDE_TEST_NLL_SLEEP", "0")))
        return inner(x, t)

    data = x if fail_index < 0 else _FailingDataset(x, fail_index)
    return Diffusion(net, VP(), prediction="eps"), data, gm


class _FailingDataset(torch.utils.data.Dataset):
    def __init__(self, x, bad):
        self.x, self.bad = x, bad

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"record {i} is corrupt")
        return self.x[i], 0


def options(args) -> dict:
    return dict(bits=BITS, batch_size=args.batch_size, generator=args.seed, trace=args.trace, probes=args.probes,
                per_sample=args.per_sample == "on", bpd_tol=BPD_TOL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=N_SAMPLES)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", default="hutchinson")
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--per-sample", choices=("on", "off"), default="off")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--fail-index", type=int, default=-1)
    p.add_argument("--init", choices=("here", "dataset_nll"), default="here",
                   help="who starts the process group under torchrun: this script, or dataset_nll itself")
    p.add_argument("--pid-dir", default=None, help="write this process's id to PID_DIR/rank{RANK}.pid")
    args = p.parse_args(argv)
    if args.pid_dir:
        with open(os.path.join(args.pid_dir, f"rank{os.environ.get('RANK', '0')}.pid"), "w") as f:
            f.write(str(os.getpid()))
    torch.set_num_threads(1)

    import torch.distributed as td

    from flowsde import InputError
    from flowsde.workloads import NLLError, dataset_nll

    if "RANK" in os.environ and args.init == "here":
        td.init_process_group("gloo")
    try:
        dif, data, _ = model_and_data(args.n, sleep=args.sleep, fail_index=args.fail_index)
        try:
            res = dataset_nll(dif, data, out=args.out, **options(args))
        except NLLError as e:
            print(e, file=sys.stderr)
            return 3
        except InputError as e:
            print(e, file=sys.stderr)
            return 2
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"resumed={res.resumed} world={res.world_size}")
            print(res.summary())
        return 0
    finally:
        if td.is_initialized():
            td.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
