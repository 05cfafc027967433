"""DPM-Solver++(3M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), the third-order multistep ODE solver of diffusers'
``DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++")``.

With ``lam = log(alpha/sigma)``, ``h = lam1 - lam0``, ``m0, m1, m2`` the data predictions of this and
the two previous grid points, ``r0 = h_1/h``, ``r1 = h_2/h`` (their steps in ``lam``), a third-order
step is

    x1 = (s1/s0) x + a1 (1 - e^{-h}) m0 + a1 phi_2 D1 - a1 phi_3 D2,
    D1_0 = (m0 - m1)/r0,  D1_1 = (m1 - m2)/r1,  D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1)/(r0 + r1),  phi_2 = (e^{-h} - 1)/h + 1,  phi_3 = (e^{-h} - 1 + h)/h^2 - 1/2;

a second-order step is ``x1 = (s1/s0) x + a1 (1 - e^{-h}) m0 + a1 c (m0 - m1)/r0`` with
``c = (1 - e^{-h})/2`` (``solver_type="midpoint"``, diffusers' default) or ``c = phi_2`` (``"heun"``),
a first-order step the DDIM step. The order of step ``i`` is ``min(3, i + 1)``; with
``lower_order_final`` (diffusers' default) and fewer than 15 steps the last step is first order and
the one before at most second order; a step to zero noise is first order and returns ``a1 m0``
(diffusers' ``final_sigmas_type="zero"``). With ``solver_type="heun"`` on a grid of 15 or more steps
not ending at zero noise, this is :mod:`dpmpp_3m_sde` at ``beta = 0``.

Order 2 (the first-order first step caps the global order at 2, measured; the same holds for
diffusers' scheduler); 1 NFE per step. A grid may start at ``alpha = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .deis import multistep_orders
from .sampler import SamplerState, SemiLinearSolver, denoise, scale

SOLVER_TYPES = ("midpoint", "heun")


@dataclass
class DPMpp3MState(SamplerState):
    coef: list  #: per step ``(cx, cd, w0, w1)`` (``None`` for a step to zero noise)
    d_1: Optional[torch.Tensor] = None  #: the data predictions of the previous step ...
    d_2: Optional[torch.Tensor] = None  #: ... and of the one before


class DPMpp3M(SemiLinearSolver):
    name = "dpmpp_3m"
    order = 2

    def __init__(self, solver_type: str = "midpoint", lower_order_final: bool = True):
        """``solver_type``: the form of the second-order steps (module); ``lower_order_final``: diffusers' rule."""
        if solver_type not in SOLVER_TYPES:
            raise InputError(f"DPMpp3M(solver_type={solver_type!r}): must be one of {SOLVER_TYPES}.")
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)

    def prepare(self, problem, host, eta) -> DPMpp3MState:
        coef = []
        for i, q in enumerate(multistep_orders(host.steps, 3, self.lower_order_final)):
            if host.to_zero(i):
                coef.append(None)
                continue
            h = host.h(i)
            a1 = host.a[i + 1]
            phi_1 = -math.expm1(-h)
            phi_2 = math.expm1(-h) / h + 1.0
            # weights of (m0 - m1) and (m1 - m2)
            if q == 3:
                r0, r1 = host.h(i - 1) / h, host.h(i - 2) / h
                phi_3 = (math.expm1(-h) + h) / h ** 2 - 0.5
                w0 = (1.0 + r0 / (r0 + r1)) / r0 * phi_2 - phi_3 / ((r0 + r1) * r0)
                w1 = -(r0 / (r0 + r1)) / r1 * phi_2 + phi_3 / ((r0 + r1) * r1)
            elif q == 2:
                c = 0.5 * phi_1 if self.solver_type == "midpoint" else phi_2
                w0, w1 = c / (host.h(i - 1) / h), 0.0
            else:
                w0 = w1 = 0.0
            coef.append((host.s[i + 1] / host.s[i], a1 * phi_1, a1 * w0, a1 * w1))
        return DPMpp3MState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMpp3MState):
        g, d_1, d_2 = state.host, state.d_1, state.d_2
        d = denoise(problem, t0, x)
        new = DPMpp3MState(g, state.eta, state.coef, d, d_1)
        if g.to_zero(i):
            return scale(g.a[i + 1], d), new
        cx, cd, w0, w1 = state.coef[i]
        x1 = cx * x + cd * d
        if w0:
            x1 = x1 + w0 * (d - d_1)
        if w1:
            x1 = x1 + w1 * (d_1 - d_2)
        return x1, new

    def __repr__(self) -> str:
        return f"DPMpp3M(solver_type={self.solver_type!r}, lower_order_final={self.lower_order_final})"
