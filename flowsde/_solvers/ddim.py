"""DDIM (Song, Meng, Ermon 2021) on any schedule: the first-order exponential integrator.

With ``D = D(t0, x)`` and ``eps = (x - a0 D)/s0`` (``a``, ``s``: alpha, sigma at the step's ends),

    x1 = a1 D + sqrt(s1^2 - c^2) eps + c z,      c = eta s1 sqrt(1 - e^{-2h}),  h = lam1 - lam0,

``lam = log(alpha/sigma)``, ``z ~ N(0, I)``. ``c`` is DDIM's ``sigma_t(eta)``
(``eta sqrt((1 - abar')/(1 - abar)) sqrt(1 - abar/abar')`` for ``alpha^2 = abar``). ``eta = 0`` is
the first-order DPM-Solver(++) step of the probability-flow ODE, ``x1 = (s1/s0) x + a1 (1 - e^{-h}) D``;
``eta = 1`` is DDPM's ancestral step. In the continuum, DDIM with ``eta`` discretizes the reverse-time
family with ``beta = eta^2``, which is where ``eta`` comes from here: ``pf_ode()`` gives ``eta = 0``,
``reverse_sde(beta)`` gives ``eta = sqrt(beta)`` (``beta <= 1``).

Order 1 (ODE), weak order 1 (SDE); 1 NFE per step. A step to zero noise (``s1 = 0``, diffusers'
``alpha_bar = 1``) returns ``a1 D``, as diffusers' ``DDIMScheduler`` (``set_alpha_to_one``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale


@dataclass
class DDIMState(SamplerState):
    coef: list  #: per step ``(cx, cd, c)``: ``x1 = cx x + cd D + c z``


class DDIM(SemiLinearSolver):
    name = "ddim"
    order = 1
    weak_order = 1.0
    noise_types = ("scalar",)
    eta_name = "sqrt"

    def __init__(self, eta: Optional[float] = None):
        """``eta``: optional, the peer's eta; it must agree with the problem's beta (see the module)."""
        self._set_eta(eta)

    def prepare(self, problem, host, eta) -> DDIMState:
        if eta > 1:
            raise InputError(f"method={self.name!r}: eta = sqrt(beta) = {eta!r} > 1 has no DDIM step (its noise "
                             "would exceed sigma); solve reverse_sde(beta) with beta <= 1.")
        coef = []
        for i in range(host.steps):
            a0, s0, a1, s1 = host.a[i], host.s[i], host.a[i + 1], host.s[i + 1]
            c = eta * s1 * math.sqrt(-math.expm1(-2 * host.h(i))) if eta else 0.0
            c_eps = math.sqrt(max(s1 * s1 - c * c, 0.0))
            # x1 = a1 D + c_eps (x - a0 D)/s0 + c z, as one linear combination of x and D
            coef.append((c_eps / s0, a1 - c_eps * a0 / s0, c))
        return DDIMState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DDIMState):
        g = state.host
        d = denoise(problem, t0, x)
        if g.to_zero(i):
            return scale(g.a[i + 1], d), state
        cx, cd, c = state.coef[i]
        x1 = cx * x + cd * d
        if c > 0:
            x1 = x1 + c * noise.randn_like(x)
        return x1, state
