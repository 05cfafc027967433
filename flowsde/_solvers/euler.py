"""Explicit Euler for ODEs: ``x1 = x0 + (t1 - t0) f(t0, x0)``. Global order 1; 1 NFE per step."""

from __future__ import annotations

import torch

from .base import Solver


class Euler(Solver):
    name = "euler"
    order = 1

    def step(self, problem, t0, t1, x, noise, last, state):
        h = state["h"] if "h" in state else t1 - t0
        return torch.addcmul(x, h, problem.drift(t0, x))  # x + h f: one kernel
