"""Explicit Euler for ODEs: ``x1 = x0 + (t1 - t0) f(t0, x0)``. Global order 1; 1 NFE per step."""

from __future__ import annotations

from .base import Solver


class Euler(Solver):
    name = "euler"
    order = 1

    def step(self, problem, t0, t1, x, noise, last, state):
        return x + self.step_size(t0, t1, state) * problem.drift(t0, x)
