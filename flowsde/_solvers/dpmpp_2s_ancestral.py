"""DPM-Solver++(2S) with ancestral noise (k-diffusion ``sample_dpmpp_2s_ancestral``), on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha`` (``lam = -log r``): the
ancestral split ``(r_down, r_up)`` of the step ``r0 -> r1`` (see :mod:`euler_ancestral`), a
single-step second-order DPM-Solver++ step from ``r0`` to ``r_down`` with its intermediate point at
the midpoint in ``lam``, ``r_s = sqrt(r0 r_down)``, then fresh noise back up to ``r1``:

    h = lam_down - lam0,   y2 = (r_s/r0) y - (e^{-h/2} - 1) D(r0, y),
    y1 = (r_down/r0) y - (e^{-h} - 1) D(r_s, y2) + r_up z,       x1 = alpha1 y1.

``eta = sqrt(beta)`` of ``reverse_sde(beta)`` (k-diffusion's default ``eta = 1`` is ``beta = 1``).

Order 2 in the deterministic limit (``beta = 0``), weak order 1; 2 NFE per step. The step to zero
noise (``r_down = 0``) is an Euler step (1 NFE, ``= D`` up to round-off) without noise, as
k-diffusion: ``2n - 1`` evaluations for a grid ending at zero noise. Needs ``t_from_ratio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .sampler import SamplerState, SemiLinearSolver, ancestral_stages, denoise, scale, two_stage_nfe, unscale


@dataclass
class DPMpp2SAncestralState(SamplerState):
    steps: list  #: per step ``(r_down, r_up, c)``, ``c = None`` for the Euler step to zero noise
    a_mid: list  #: alpha at the intermediate points
    t_mid: torch.Tensor  #: their times (float64, on the solve's device)


class DPMpp2SAncestral(SemiLinearSolver):
    name = "dpmpp_2s_ancestral"
    order = 2
    weak_order = 1.0
    solves_ode = False
    noise_types = ("scalar",)
    scaled = True
    needs_t_from_ratio = True
    eta_name = "sqrt"
    evals_per_step = 2

    def __init__(self, eta: Optional[float] = None):
        """``eta``: optional, the peer's eta; it must agree with the problem's beta (see the module)."""
        self._set_eta(eta)

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        return two_stage_nfe(steps, to_zero_noise)

    def prepare(self, problem, host, eta) -> DPMpp2SAncestralState:
        def stage(r0, r_down):
            h = math.log(r0) - math.log(r_down)
            r_s = math.exp(-(-math.log(r0) + 0.5 * h))
            return (r_s / r0, -math.expm1(-0.5 * h), r_down / r0, -math.expm1(-h)), r_s

        steps, mids = ancestral_stages(host, eta, stage)
        t_mid = host.times(problem, mids, self.name)
        return DPMpp2SAncestralState(host, eta, steps, problem.alpha(t_mid).tolist(), t_mid.to(host.device))

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMpp2SAncestralState):
        g = state.host
        r0, r1 = g.r[i], g.r[i + 1]
        r_down, r_up, c = state.steps[i]
        y = unscale(x, g.a[i])
        d = denoise(problem, t0, x)
        if c is None:
            y = y + (y - d) / r0 * (r_down - r0)
        else:
            c_y2, c_d2, c_y, c_d = c
            y2 = c_y2 * y + c_d2 * d
            d2 = denoise(problem, state.t_mid[i], scale(state.a_mid[i], y2))
            y = c_y * y + c_d * d2
        if r1 > 0 and state.eta:
            y = y + noise.randn_like(x) * r_up
        return scale(g.a[i + 1], y), state
