"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2; k-diffusion ``sample_dpmpp_2m``; diffusers
``DPMSolverMultistepScheduler`` with its defaults: order 2, ``dpmsolver++``, ``midpoint``).

With ``lam = log(alpha/sigma)``, ``h = lam1 - lam0``, ``D = D(t0, x)`` and the previous step's
``D_prev`` and ``h_prev``:

    D' = (1 + 1/(2 r)) D - 1/(2 r) D_prev,   r = h_prev/h      (D' = D on the first step),
    x1 = (s1/s0) x + a1 (1 - e^{-h}) D'.

Order 2 (the first, first-order step costs one order of local accuracy, not of global order);
1 NFE per step. The step to zero noise is first order and returns ``a1 D`` exactly (k-diffusion and
diffusers with ``final_sigmas_type="zero"`` do the same). A grid may start at ``alpha = 0``.
"""

from __future__ import annotations

import math

from .sampler import SemiLinearSolver, denoise, scale


class DPMpp2M(SemiLinearSolver):
    name = "dpmpp_2m"
    order = 2

    def prepare(self, problem, grid, state):
        coef = []
        for i in range(grid.steps):
            if grid.to_zero(i):
                coef.append(None)
                continue
            h = grid.h(i)
            w = 0.0 if i == 0 else 1.0 / (2.0 * (grid.h(i - 1) / h))
            coef.append((grid.s[i + 1] / grid.s[i], grid.a[i + 1] * -math.expm1(-h), w))
        state["coef"] = coef
        state["prev"] = None

    def step(self, problem, t0, t1, x, noise, last, state):
        g, i = state["grid"], state["i"]
        d = denoise(problem, t0, x)
        prev, state["prev"] = state["prev"], d
        if g.to_zero(i):
            return scale(g.a[i + 1], d)
        cx, cd, w = state["coef"][i]
        if prev is not None and w != 0.0:
            d = (1.0 + w) * d - w * prev
        return cx * x + cd * d
