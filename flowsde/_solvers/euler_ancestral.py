"""Euler ancestral sampling (k-diffusion ``sample_euler_ancestral``; diffusers
``EulerAncestralDiscreteScheduler``), on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha`` (k-diffusion's ``x`` and
``sigma``), one step from ``r0`` to ``r1``:

    r_up = min(r1, eta r1 sqrt(1 - r1^2/r0^2)),   r_down = sqrt(r1^2 - r_up^2),
    y1 = y + (r_down - r0) (y - D)/r0 + r_up z,       x1 = alpha1 y1,

an Euler step of ``dy/dr = (y - D)/r`` down to ``r_down`` and fresh noise back up to ``r1``. The noise
is the problem's: ``reverse_sde(beta)`` gives ``eta = sqrt(beta)`` (k-diffusion's default ``eta = 1``
is ``beta = 1``, DDPM's posterior variance in the continuum); ``beta = 0`` is Euler in ``r``.

Order 1 in the deterministic limit (``beta = 0``), weak order 1; 1 NFE per step. The step to zero
noise is the Euler step ``y + (0 - r0)(y - D)/r0`` (equal to ``D`` up to round-off), with no noise,
as k-diffusion. Needs ``alpha > 0`` on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .sampler import SamplerState, SemiLinearSolver, ancestral_step, denoise


@dataclass
class EulerAncestralState(SamplerState):
    coef: list  #: per step ``(cx, cd, cz)``: ``x1 = cx x + cd D + cz z``


class EulerAncestral(SemiLinearSolver):
    name = "euler_ancestral"
    order = 1
    weak_order = 1.0
    solves_ode = False
    noise_types = ("scalar",)
    scaled = True
    eta_name = "sqrt"

    def __init__(self, eta: Optional[float] = None):
        """``eta``: optional, the peer's eta; it must agree with the problem's beta (see the module)."""
        self._set_eta(eta)

    def prepare(self, problem, host, eta) -> EulerAncestralState:
        coef = []
        for i in range(host.steps):
            r0, a0, a1 = host.r[i], host.a[i], host.a[i + 1]
            r_down, r_up = ancestral_step(r0, host.r[i + 1], eta)
            # x1 = a1 (y + (r_down - r0)(y - D)/r0 + r_up z), y = x/a0, as one combination of x and D
            q = r_down / r0
            coef.append((a1 * q / a0, a1 * (1.0 - q), a1 * r_up))
        return EulerAncestralState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: EulerAncestralState):
        cx, cd, cz = state.coef[i]
        x1 = cx * x + cd * denoise(problem, t0, x)
        if state.host.r[i + 1] > 0 and state.eta:
            x1 = x1 + cz * noise.randn_like(x)
        return x1, state
