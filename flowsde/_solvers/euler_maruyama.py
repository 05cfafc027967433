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

from dataclasses import dataclass
from typing import Optional

import torch

from .base import Solver, step_sizes


@dataclass(frozen=True)
class EulerMaruyamaState:
    """Per solve: ``sqrt|h|`` of every step (0-dim tensors in the state's dtype, from the rounded
    ``h``), the scale of the Brownian increments."""

    sqrt_h: tuple


class EulerMaruyama(Solver):
    name = "euler_maruyama"
    order = 1
    strong_order = 0.5
    strong_orders = {"scalar": 0.5, "diagonal": 0.5, "additive": 1.0}
    weak_order = 1.0
    noise_types = ("scalar", "diagonal")

    def init(self, problem, x, grid) -> Optional[EulerMaruyamaState]:
        """``sqrt|h|`` for every step, once per solve, for an SDE; ``None`` for an ODE (Euler)."""
        return EulerMaruyamaState(step_sizes(grid, x.dtype).abs().sqrt().unbind(0)) if problem.is_sde else None

    def step(self, problem, x, t0, t1, h, i, noise, state: Optional[EulerMaruyamaState]):
        x1 = torch.addcmul(x, h, problem.drift(t0, x))  # x + h f: one kernel
        if state is not None:
            g = problem.diffusion(t0, x)
            x1 = torch.addcmul(x1, g, noise.dW(t0, t1, state.sqrt_h[i], x))
        return x1, state
