"""DPM-Solver++(2M) SDE (Lu et al. 2022b; k-diffusion ``sample_dpmpp_2m_sde``): the multistep
exponential integrator of the reverse-time SDE family.

With ``lam = log(alpha/sigma)``, ``h = lam1 - lam0``, ``D = D(t0, x)``, ``eta`` the family's
``beta`` (``reverse_sde(beta)``; k-diffusion's default ``eta = 1`` is ``beta = 1``):

    x1 = (s1/s0) e^{-eta h} x + a1 (1 - e^{-(1+eta) h}) D + a1 c (D - D_prev)/r + s1 sqrt(1 - e^{-2 eta h}) z,

``r = h_prev/h``, ``c = (1 - e^{-(1+eta) h})/2`` (``solver_type="midpoint"``, the default) or
``c = (1 - e^{-(1+eta) h})/(-(1+eta) h) + 1`` (``"heun"``); no ``D_prev`` term on the first step.
The first two terms are the exact step of the family with ``D`` frozen (``flowsde.SemiLinearSDE``).

Order 2 in the deterministic limit (``beta = 0``, where it is DPM-Solver++(2M)), weak order 1;
1 NFE per step. The step to zero noise returns ``a1 D`` (k-diffusion's "denoising step").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale

SOLVER_TYPES = ("midpoint", "heun")


@dataclass
class DPMpp2MSDEState(SamplerState):
    coef: list  #: per step ``(cx, cd, corr, cz)`` (``None`` for a step to zero noise)
    prev: Optional[torch.Tensor] = None  #: the previous step's data prediction


class DPMpp2MSDE(SemiLinearSolver):
    name = "dpmpp_2m_sde"
    order = 2
    weak_order = 1.0
    solves_ode = False
    noise_types = ("scalar",)
    eta_name = "beta"

    def __init__(self, solver_type: str = "midpoint", eta=None):
        self._set_eta(eta)
        if solver_type not in SOLVER_TYPES:
            raise InputError(f"DPMpp2MSDE(solver_type={solver_type!r}): must be one of {SOLVER_TYPES}.")
        self.solver_type = solver_type

    def prepare(self, problem, host, eta) -> DPMpp2MSDEState:
        coef = []
        for i in range(host.steps):
            h = host.h(i)
            if host.to_zero(i):
                coef.append(None)
                continue
            a1, s1 = host.a[i + 1], host.s[i + 1]
            one_minus = -math.expm1(-h - eta * h)
            cx = s1 / host.s[i] * math.exp(-eta * h)
            c = 0.5 * one_minus if self.solver_type == "midpoint" else one_minus / (-h - eta * h) + 1.0
            corr = 0.0 if i == 0 else a1 * c * h / host.h(i - 1)
            cz = s1 * math.sqrt(-math.expm1(-2.0 * eta * h)) if eta else 0.0
            coef.append((cx, a1 * one_minus, corr, cz))
        return DPMpp2MSDEState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMpp2MSDEState):
        g, prev = state.host, state.prev
        d = denoise(problem, t0, x)
        new = DPMpp2MSDEState(g, state.eta, state.coef, d)
        if g.to_zero(i):
            return scale(g.a[i + 1], d), new
        cx, cd, corr, cz = state.coef[i]
        x1 = cx * x + cd * d
        if prev is not None:
            x1 = x1 + corr * (d - prev)
        if cz:
            x1 = x1 + cz * noise.randn_like(x)
        return x1, new

    def __repr__(self) -> str:
        eta = "" if self.eta is None else f", eta={self.eta!r}"
        return f"DPMpp2MSDE(solver_type={self.solver_type!r}{eta})"
