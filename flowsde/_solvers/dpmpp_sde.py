"""DPM-Solver++ (stochastic) (k-diffusion ``sample_dpmpp_sde``), on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha``, ``lam = -log r``. One step
from ``lam0`` to ``lam1`` (``h = lam1 - lam0``) with an intermediate point ``lam_s = lam0 + r1 h``
(``r1 = 1/2`` by default, k-diffusion's ``r``), each half an ancestral DPM-Solver++(1) step
(the split ``(r_down, r_up)`` of :func:`ancestral_step`):

    stage 1:  (d1, u1) = split(r0, r_s),   y2 = (d1/r0) y - expm1(-(lam_d1 - lam0)) D(r0, y) + s_noise u1 z1,
    stage 2:  (d2, u2) = split(r0, r1),    D' = (1 - 1/(2 r1)) D(r0, y) + 1/(2 r1) D(r_s, y2),
              y1 = (d2/r0) y - expm1(-(lam_d2 - lam0)) D' + s_noise u2 z2,               x1 = alpha1 y1,

with ``lam_d = -log d``. The two normals are Brownian increments over overlapping intervals, as
k-diffusion's ``BrownianTreeNoiseSampler``: ``z1 = W[t0, t_s]/sqrt|t_s - t0|`` and
``z2 = W[t0, t1]/sqrt|t1 - t0|`` with ``W[t0, t1] = W[t0, t_s] + W[t_s, t1]``, read from the solve's
noise source (``noise.dW``: a :class:`flowsde.BrownianPath` or independent normal increments), on the
problem's time axis (k-diffusion's tree runs in ``r``, which is ``t`` for the EDM schedule; for other
schedules each ``z`` has the same law, their correlation is taken in ``t``).

``eta = sqrt(beta)`` of ``reverse_sde(beta)`` (k-diffusion's default ``eta = 1`` is ``beta = 1``);
``s_noise`` scales the noise (1 keeps the marginals).

Order 2 in the deterministic limit (``beta = 0``: a single-step DPM-Solver++(2S)-type step; any
``0 < r1 <= 1``), weak order 1; 2 NFE per step. The step to zero noise is an Euler step (1 NFE,
``= D`` up to round-off) without noise, as k-diffusion: ``2n - 1`` evaluations for a grid ending at
zero noise. Needs ``t_from_ratio``.

Reference: Lu et al. (2022b), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", arXiv:2211.01095; k-diffusion 0.1.1 ``sample_dpmpp_sde``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .dpm_2_ancestral import check_s_noise
from .sampler import SamplerState, SemiLinearSolver, ancestral_step, denoise, scale, two_stage_nfe, unscale


def _half_step(r0: float, r_to: float, eta: float):
    """``(c_y, c_d, r_up)`` of an ancestral DPM-Solver++(1) step from ``r0`` towards ``r_to``:
    ``y' = c_y y + c_d D + r_up z`` (``c_y = r_down/r0``, ``c_d = -expm1(lam0 - lam_down)``)."""
    r_down, r_up = ancestral_step(r0, r_to, eta)
    if r_down == 0:  # lam_down = inf: the step lands on D
        return 0.0, 1.0, r_up
    lam0, lam_down = -math.log(r0), -math.log(r_down)
    return math.exp(-lam_down) / math.exp(-lam0), -math.expm1(lam0 - lam_down), r_up


@dataclass
class DPMppSDEState(SamplerState):
    coef: list  #: per step ``(stage1, stage2)``, :func:`_half_step` triples; ``None``: the Euler step to zero noise
    a_mid: list  #: alpha at the intermediate points
    t_mid: torch.Tensor  #: their times (float64, on the solve's device)
    sq: list  #: per step ``(sqrt|t_s - t0|, sqrt|t1 - t_s|, sqrt|t1 - t0|)``: the increments' scales


class DPMppSDE(SemiLinearSolver):
    """Arguments:
        eta: optional, the peer's ``eta``; it must agree with the problem's ``beta`` (``eta = sqrt(beta)``).
        s_noise: multiplier of the noise (default 1).
        r1: the intermediate point's fraction of the step in ``lam`` (k-diffusion's ``r``; ``0 < r1 <= 1``,
            default 1/2).
    """

    name = "dpmpp_sde"
    order = 2
    weak_order = 1.0
    solves_ode = False
    noise_types = ("scalar",)
    scaled = True
    needs_t_from_ratio = True
    eta_name = "sqrt"
    evals_per_step = 2

    def __init__(self, eta: Optional[float] = None, s_noise: float = 1.0, r1: float = 0.5):
        self._set_eta(eta)
        self.s_noise = check_s_noise("DPMppSDE", s_noise)
        if not (isinstance(r1, (int, float)) and not isinstance(r1, bool) and 0 < r1 <= 1):
            raise InputError(f"DPMppSDE(r1={r1!r}): r1 (k-diffusion's r) must be a number in (0, 1].")
        self.r1 = float(r1)

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        return two_stage_nfe(steps, to_zero_noise)

    def prepare(self, problem, host, eta) -> DPMppSDEState:
        coef, mids = [], []
        for i in range(host.steps):
            r0 = host.r[i]
            if host.to_zero(i):
                coef.append(None)
                mids.append(r0)
                continue
            lam0, lam1 = -math.log(r0), -math.log(host.r[i + 1])
            r_s = math.exp(-(lam0 + (lam1 - lam0) * self.r1))
            coef.append((_half_step(r0, r_s, eta), _half_step(r0, host.r[i + 1], eta)))
            mids.append(r_s)
        t_mid = host.times(problem, mids, self.name)
        ts = t_mid.tolist()
        sq = [(math.sqrt(abs(ts[i] - host.t[i])), math.sqrt(abs(host.t[i + 1] - ts[i])),
               math.sqrt(abs(host.t[i + 1] - host.t[i]))) for i in range(host.steps)]
        return DPMppSDEState(host, eta, coef, problem.alpha(t_mid).tolist(), t_mid.to(host.device), sq)

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMppSDEState):
        g = state.host
        r0 = g.r[i]
        y = unscale(x, g.a[i])
        d = denoise(problem, t0, x)
        if state.coef[i] is None:  # Euler to zero noise, no noise (k-diffusion's)
            return scale(g.a[i + 1], y + (y - d) / r0 * (g.r[i + 1] - r0)), state
        (cy1, cd1, up1), (cy2, cd2, up2) = state.coef[i]
        t_s = state.t_mid[i]
        y2 = cy1 * y + cd1 * d
        if state.eta:
            sq_s, sq_rest, sq_1 = state.sq[i]
            w_s = noise.dW(t0, t_s, sq_s, x)  # W over [t0, t_s], then the rest of the step
            w_1 = w_s + noise.dW(t_s, t1, sq_rest, x) if sq_rest > 0 else w_s  # r1 = 1: t_s = t1
            y2 = y2 + (w_s / sq_s) * (self.s_noise * up1)
        d2 = denoise(problem, t_s, scale(state.a_mid[i], y2))
        fac = 1 / (2 * self.r1)
        y = cy2 * y + cd2 * ((1 - fac) * d + fac * d2)
        if state.eta:
            y = y + (w_1 / sq_1) * (self.s_noise * up2)
        return scale(g.a[i + 1], y), state

    def __repr__(self) -> str:
        eta = "" if self.eta is None else f"eta={self.eta!r}, "
        return f"DPMppSDE({eta}s_noise={self.s_noise!r}, r1={self.r1!r})"
