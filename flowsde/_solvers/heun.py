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

from dataclasses import dataclass

import torch

from .base import Solver, step_sizes


@dataclass(frozen=True)
class HeunState:
    """Per solve: ``h / 2`` of every step (0-dim tensors in the state's dtype, rounded as ``h``)
    and the index of the last step."""

    half_h: tuple
    last: int


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

    def init(self, problem, x, grid) -> HeunState:
        # h / 2 for every step, once per solve (in the state's dtype, as the loop's h)
        return HeunState(half_h=(step_sizes(grid, x.dtype) * 0.5).unbind(0), last=grid.shape[0] - 2)

    def step(self, problem, x, t0, t1, h, i, noise, state: HeunState):
        d = problem.drift(t0, x)
        x_pred = torch.addcmul(x, h, d)  # x + h d: one kernel
        if self.final_euler and i == state.last:
            return x_pred, state
        return torch.addcmul(x, state.half_h[i], d + problem.drift(t1, x_pred)), state

    def __repr__(self) -> str:
        return f"Heun(final_euler={self.final_euler})"
