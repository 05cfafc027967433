"""k-diffusion's ``sample_dpm_2`` (a DPM-Solver-2 step in the scaled variable, without churn),
on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha``, ``dy/dr = (y - D)/r``; one
step from ``r0`` to ``r1`` with the midpoint ``r_mid = sqrt(r0 r1)`` (the midpoint in ``log r``):

    d  = (y - D(r0, y))/r0,     y2 = y + (r_mid - r0) d,
    d2 = (y2 - D(r_mid, y2))/r_mid,   y1 = y + (r1 - r0) d2,      x1 = alpha1 y1.

Order 2; 2 NFE per step. The step to zero noise is an Euler step (1 NFE, ``= D`` up to
round-off), as k-diffusion: a solve of ``n`` steps ending at zero noise costs ``2n - 1``.
The model is evaluated at ``t_from_ratio(r_mid)``, so the problem must carry that map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .sampler import SamplerState, SemiLinearSolver, denoise, scale, unscale


@dataclass
class DPM2State(SamplerState):
    mid: list  #: the midpoint noise level ``r_mid`` of every step
    a_mid: list  #: alpha there
    t_mid: torch.Tensor  #: the time there (float64, on the solve's device)


class DPM2(SemiLinearSolver):
    name = "dpm_2"
    order = 2
    scaled = True
    needs_t_from_ratio = True
    evals_per_step = 2

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        """``2n``; ``2n - 1`` on a grid ending at zero noise (k-diffusion's: the last step is Euler)."""
        return 2 * int(steps) - (1 if to_zero_noise and steps > 0 else 0)

    def prepare(self, problem, host, eta) -> DPM2State:
        # exp(lerp(log r0, log r1, 1/2)), written as torch.lerp evaluates it at weight 1/2
        mid = [math.exp(math.log(host.r[i + 1]) - (math.log(host.r[i + 1]) - math.log(host.r[i])) * 0.5)
               if not host.to_zero(i) else host.r[i] for i in range(host.steps)]
        t_mid = host.times(problem, mid, self.name)
        return DPM2State(host, eta, mid, problem.alpha(t_mid).tolist(), t_mid.to(host.device))

    def step(self, problem, x, t0, t1, h, i, noise, state: DPM2State):
        g = state.host
        r0, r1 = g.r[i], g.r[i + 1]
        y = unscale(x, g.a[i])
        d = (y - denoise(problem, t0, x)) / r0
        if g.to_zero(i):
            return scale(g.a[i + 1], y + d * (r1 - r0)), state
        r_mid, a_mid = state.mid[i], state.a_mid[i]
        y2 = y + d * (r_mid - r0)
        d2 = (y2 - denoise(problem, state.t_mid[i], scale(a_mid, y2))) / r_mid
        return scale(g.a[i + 1], y + d2 * (r1 - r0)), state
