"""Euler–Maruyama for Itô SDEs. Strong order 0.5 (1 for additive noise), weak order 1;
1 NFE per step.

    x1 = x0 + f(t0, x0) (t1 - t0) + g(t0, x0) dW,      dW ~ N(0, |t1 - t0|)

A backward step (``t1 < t0``) uses ``|t1 - t0|`` for the Brownian increment
(reverse-time SDEs with a backward Brownian motion). On an ODE it is Euler.

With additive noise (``g`` independent of ``x``) the Milstein correction
``g g'`` vanishes, so Euler–Maruyama *is* Milstein there and its strong order
is 1 (Kloeden & Platen 1992, sec. 10.3); ``strong_orders`` records it.
"""

from __future__ import annotations

import torch

from .base import Solver


class EulerMaruyama(Solver):
    name = "euler_maruyama"
    order = 1
    strong_order = 0.5
    strong_orders = {"scalar": 0.5, "diagonal": 0.5, "additive": 1.0}
    weak_order = 1.0
    noise_types = ("scalar", "diagonal")

    def step(self, problem, t0, t1, x, noise, last, state):
        h = state["h"] if "h" in state else t1 - t0
        x1 = torch.addcmul(x, h, problem.drift(t0, x))  # x + h f: one kernel
        if problem.is_sde:
            g = problem.diffusion(t0, x)
            sqrt_h = state["sqrt_h"] if "sqrt_h" in state else h.abs().sqrt()
            x1 = torch.addcmul(x1, g, noise.dW(t0, t1, sqrt_h, x))
        return x1
