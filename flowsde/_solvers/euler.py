"""Explicit Euler for ODEs: ``x1 = x0 + (t1 - t0) f(t0, x0)``. Global order 1; 1 NFE per step."""

from __future__ import annotations

import torch

from .base import Solver


class Euler(Solver):
    name = "euler"
    order = 1

    def step(self, problem, x, t0, t1, h, i, noise, state):
        return torch.addcmul(x, h, problem.drift(t0, x)), state  # x + h f: one kernel
