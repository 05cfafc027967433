"""DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): the third-order multistep
extension of :mod:`dpmpp_2m_sde`, on any schedule.

With ``lam = log(alpha/sigma)``, ``h = lam1 - lam0``, ``h_eta = (1 + eta) h``, ``eta`` the family's
``beta`` (``reverse_sde(beta)``), ``D``, ``D_1``, ``D_2`` the data predictions of this and the two
previous steps and ``h_1``, ``h_2`` their steps:

    x1 = (s1/s0) e^{-eta h} x + a1 (1 - e^{-h_eta}) D + a1 (phi_2 d1 - phi_3 d2) + s1 sqrt(1 - e^{-2 eta h}) z,
    r0 = h_1/h, r1 = h_2/h,  d1_0 = (D - D_1)/r0,  d1_1 = (D_1 - D_2)/r1,
    d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1),  d2 = (d1_0 - d1_1)/(r0 + r1),
    phi_2 = (e^{-h_eta} - 1)/h_eta + 1,  phi_3 = phi_2/h_eta - 1/2,

with ``a1 phi_2 (D - D_1)/r0`` alone on the second step and no correction on the first.

Order 2 in the deterministic limit (``beta = 0``; the first-order first step limits the global
order to 2, measured), weak order 1; 1 NFE per step. The step to zero noise returns ``a1 D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .sampler import SamplerState, SemiLinearSolver, denoise, scale


@dataclass
class DPMpp3MSDEState(SamplerState):
    coef: list  #: per step ``(cx, cd, w0, w1, cz)`` (``None`` for a step to zero noise)
    d_1: Optional[torch.Tensor] = None  #: the data predictions of the previous step ...
    d_2: Optional[torch.Tensor] = None  #: ... and of the one before


class DPMpp3MSDE(SemiLinearSolver):
    name = "dpmpp_3m_sde"
    order = 2
    weak_order = 1.0
    solves_ode = False
    noise_types = ("scalar",)
    eta_name = "beta"

    def __init__(self, eta: Optional[float] = None):
        """``eta``: optional, the peer's eta; it must agree with the problem's beta (see the module)."""
        self._set_eta(eta)

    def prepare(self, problem, host, eta) -> DPMpp3MSDEState:
        coef = []
        for i in range(host.steps):
            if host.to_zero(i):
                coef.append(None)
                continue
            h = host.h(i)
            h_eta = h * (eta + 1.0)
            a1, s1 = host.a[i + 1], host.s[i + 1]
            phi_2 = math.expm1(-h_eta) / h_eta + 1.0
            phi_3 = phi_2 / h_eta - 0.5
            # weights of (D - D_1) and (D_1 - D_2) in a1 (phi_2 d1 - phi_3 d2)
            if i >= 2:
                r0, r1 = host.h(i - 1) / h, host.h(i - 2) / h
                w0 = (1.0 + r0 / (r0 + r1)) / r0 * phi_2 - phi_3 / ((r0 + r1) * r0)
                w1 = -(r0 / (r0 + r1)) / r1 * phi_2 + phi_3 / ((r0 + r1) * r1)
            elif i == 1:
                w0, w1 = phi_2 / (host.h(i - 1) / h), 0.0
            else:
                w0 = w1 = 0.0
            cz = s1 * math.sqrt(-math.expm1(-2.0 * h * eta)) if eta else 0.0
            coef.append((s1 / host.s[i] * math.exp(-eta * h), a1 * -math.expm1(-h_eta), a1 * w0, a1 * w1, cz))
        return DPMpp3MSDEState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMpp3MSDEState):
        g, d_1, d_2 = state.host, state.d_1, state.d_2
        d = denoise(problem, t0, x)
        new = DPMpp3MSDEState(g, state.eta, state.coef, d, d_1)
        if g.to_zero(i):
            return scale(g.a[i + 1], d), new
        cx, cd, w0, w1, cz = state.coef[i]
        x1 = cx * x + cd * d
        if d_1 is not None and w0:
            x1 = x1 + w0 * (d - d_1)
        if d_2 is not None and w1:
            x1 = x1 + w1 * (d_1 - d_2)
        if cz:
            x1 = x1 + cz * noise.randn_like(x)
        return x1, new
