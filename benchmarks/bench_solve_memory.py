"""Peak memory of a sampling solve with and without the autograd graph (``solve(grad=...)``).

The case that motivated ``grad=``: Heun, 200 steps, a 4096 x 4 batch through
a small MLP (4 -> 256 -> 256 -> 4), CPU. Memory is the process's resident set, sampled every
millisecond by a thread during the solve, minus its value at the start.

    python benchmarks/bench_solve_memory.py
"""

from __future__ import annotations

import os
import threading
import time

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.SiLU(), torch.nn.Linear(256, 256), torch.nn.SiLU(),
                              torch.nn.Linear(256, 4))
    x0 = torch.randn(4096, 4)
    ode = flowsde.ODE(lambda t, x: net(x))
    ts = flowsde.grids.uniform(1.0, 0.0, 200)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def peak_above_start(fn):
        peak, stop = [0], [False]

        def monitor():
            while not stop[0]:
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)

        base = rss()
        th = threading.Thread(target=monitor)
        th.start()
        out = fn()
        stop[0] = True
        th.join()
        return (max(peak[0], rss()) - base) / 2 ** 20, out

    peak_above_start(lambda: flowsde.solve(ode, x0, ts, method="heun"))  # warm-up
    for grad in (False, True, False):
        mib, sol = peak_above_start(lambda: flowsde.solve(ode, x0, ts, method="heun", grad=grad))
        print(f"grad={grad!s:5}  peak {mib:7.0f} MiB above the start   Solution.x.grad_fn: {sol.x.grad_fn}")


if __name__ == "__main__":
    main()
