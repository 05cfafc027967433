"""Heun's method (explicit trapezoid) for ODEs. Global order 2; 2 NFE per step.

    d  = f(t0, x0)
    x' = x0 + h d
    x1 = x0 + h (d + f(t1, x')) / 2,          h = t1 - t0

This is the step of Karras et al. (2022), Algorithm 1 (NVlabs/edm
``edm_sampler`` with ``s_churn = 0``) on a given grid. With
``final_euler=True`` the last step of a solve is a plain Euler step, as EDM
does when the grid ends at sigma = 0 (where the drift is singular): a solve
of N steps then costs 2N - 1 evaluations.
"""

from __future__ import annotations

import torch

from .base import Solver


class Heun(Solver):
    name = "heun"
    order = 2
    evals_per_step = 2

    def __init__(self, final_euler: bool = False):
        self.final_euler = bool(final_euler)

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        """``2 N``, or ``2 N - 1`` with ``final_euler``."""
        n = 2 * int(steps)
        return n - 1 if self.final_euler and steps > 0 else n

    def init_state(self, problem, x0, ts) -> dict:
        # h / 2 for every step, once per solve (in the state's dtype, as the loop's h)
        return {"half_h": ((ts[1:] - ts[:-1]).to(x0.dtype) * 0.5).unbind(0)}

    def step(self, problem, t0, t1, x, noise, last, state):
        h = state["h"] if "h" in state else t1 - t0
        d = problem.drift(t0, x)
        x_pred = torch.addcmul(x, h, d)  # x + h d: one kernel
        if last and self.final_euler:
            return x_pred
        half = state["half_h"][state["i"]] if "half_h" in state else 0.5 * h
        return torch.addcmul(x, half, d + problem.drift(t1, x_pred))

    def __repr__(self) -> str:
        return f"Heun(final_euler={self.final_euler})"
