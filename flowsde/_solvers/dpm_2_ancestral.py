"""DPM-Solver-2 with ancestral noise (k-diffusion ``sample_dpm_2_ancestral``), on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha`` (k-diffusion's ``x`` and
``sigma``): the ancestral split ``(r_down, r_up)`` of the step ``r0 -> r1`` (see
:mod:`euler_ancestral`), a DPM-Solver-2 step of ``dy/dr = (y - D)/r`` from ``r0`` to ``r_down`` with
its midpoint at ``r_mid = sqrt(r0 r_down)`` (the midpoint in ``log r``, see :mod:`dpm_2`), then fresh
noise back up to ``r1``:

    d  = (y - D(r0, y))/r0,        y2 = y + (r_mid - r0) d,
    d2 = (y2 - D(r_mid, y2))/r_mid,   y1 = y + (r_down - r0) d2 + s_noise r_up z,     x1 = alpha1 y1.

``eta = sqrt(beta)`` of ``reverse_sde(beta)`` (k-diffusion's default ``eta = 1`` is ``beta = 1``);
``s_noise`` scales the fresh noise (k-diffusion's ``s_noise``; 1 keeps the marginals).

Order 2 in the deterministic limit (``beta = 0``, where it is ``dpm_2``), weak order 1; 2 NFE per
step. A step with ``r_down = 0`` (the step to zero noise) is an Euler step (1 NFE, ``= D`` up to
round-off) without noise, as k-diffusion: ``2n - 1`` evaluations for a grid ending at zero noise.
The model is evaluated at ``t_from_ratio(r_mid)``, so the problem must carry that map.

Reference: Lu et al. (2022), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps", arXiv:2206.00927; Karras et al. (2022), arXiv:2206.00364 (``r``);
k-diffusion 0.1.1 ``sample_dpm_2_ancestral``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, ancestral_stages, denoise, scale, two_stage_nfe, unscale


def check_s_noise(owner: str, s_noise) -> float:
    """``s_noise`` as a float: a finite number ``>= 0`` (k-diffusion's noise multiplier)."""
    ok = isinstance(s_noise, (int, float)) and not isinstance(s_noise, bool)
    if not (ok and math.isfinite(s_noise) and s_noise >= 0):
        raise InputError(f"{owner}(s_noise={s_noise!r}): s_noise must be a finite number >= 0 (1 keeps the "
                         "marginals; k-diffusion's s_noise).")
    return float(s_noise)


@dataclass
class DPM2AncestralState(SamplerState):
    steps: list  #: per step ``(r_down, r_up, r_mid)``, ``r_mid = None`` for the Euler step to ``r_down = 0``
    a_mid: list  #: alpha at the midpoints
    t_mid: torch.Tensor  #: their times (float64, on the solve's device)


class DPM2Ancestral(SemiLinearSolver):
    """Arguments:
        eta: optional, the peer's ``eta``; it must agree with the problem's ``beta`` (``eta = sqrt(beta)``).
        s_noise: multiplier of the fresh noise (default 1).
    """

    name = "dpm_2_ancestral"
    order = 2
    weak_order = 1.0
    solves_ode = False
    noise_types = ("scalar",)
    scaled = True
    needs_t_from_ratio = True
    eta_name = "sqrt"
    evals_per_step = 2

    def __init__(self, eta: Optional[float] = None, s_noise: float = 1.0):
        self._set_eta(eta)
        self.s_noise = check_s_noise("DPM2Ancestral", s_noise)

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        return two_stage_nfe(steps, to_zero_noise)

    def prepare(self, problem, host, eta) -> DPM2AncestralState:
        def stage(r0, r_down):
            # exp(lerp(log r0, log r_down, 1/2)), written as torch.lerp evaluates it at weight 1/2 (as dpm_2)
            r_mid = math.exp(math.log(r_down) - (math.log(r_down) - math.log(r0)) * 0.5)
            return r_mid, r_mid

        steps, mids = ancestral_stages(host, eta, stage)
        t_mid = host.times(problem, mids, self.name)
        return DPM2AncestralState(host, eta, steps, problem.alpha(t_mid).tolist(), t_mid.to(host.device))

    def step(self, problem, x, t0, t1, h, i, noise, state: DPM2AncestralState):
        g = state.host
        r0 = g.r[i]
        r_down, r_up, r_mid = state.steps[i]
        y = unscale(x, g.a[i])
        d = (y - denoise(problem, t0, x)) / r0
        if r_mid is None:  # Euler to r_down = 0, no noise (k-diffusion's)
            return scale(g.a[i + 1], y + d * (r_down - r0)), state
        y2 = y + d * (r_mid - r0)
        d2 = (y2 - denoise(problem, state.t_mid[i], scale(state.a_mid[i], y2))) / r_mid
        y = y + d2 * (r_down - r0)
        if state.eta:
            y = y + noise.randn_like(x) * (self.s_noise * r_up)
        return scale(g.a[i + 1], y), state

    def __repr__(self) -> str:
        eta = "" if self.eta is None else f"eta={self.eta!r}, "
        return f"DPM2Ancestral({eta}s_noise={self.s_noise!r})"
