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
from dataclasses import dataclass
from typing import Optional

import torch

from .sampler import SamplerState, SemiLinearSolver, denoise, scale


@dataclass
class DPMpp2MState(SamplerState):
    coef: list  #: per step ``(cx, cd, w)`` (``None`` for a step to zero noise)
    prev: Optional[torch.Tensor] = None  #: the previous step's data prediction


class DPMpp2M(SemiLinearSolver):
    name = "dpmpp_2m"
    order = 2

    def prepare(self, problem, host, eta) -> DPMpp2MState:
        coef = []
        for i in range(host.steps):
            if host.to_zero(i):
                coef.append(None)
                continue
            h = host.h(i)
            w = 0.0 if i == 0 else 1.0 / (2.0 * (host.h(i - 1) / h))
            coef.append((host.s[i + 1] / host.s[i], host.a[i + 1] * -math.expm1(-h), w))
        return DPMpp2MState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMpp2MState):
        g, prev = state.host, state.prev
        d = denoise(problem, t0, x)
        new = DPMpp2MState(g, state.eta, state.coef, d)
        if g.to_zero(i):
            return scale(g.a[i + 1], d), new
        cx, cd, w = state.coef[i]
        if prev is not None and w != 0.0:
            d = (1.0 + w) * d - w * prev
        return cx * x + cd * d, new
