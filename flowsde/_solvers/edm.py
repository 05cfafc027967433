"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2; NVlabs/edm ``generate.py``
``edm_sampler``), on any semi-linear problem.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha`` (EDM's ``x`` and ``t``),
where the probability-flow ODE is ``dy/dr = (y - D)/r``, step ``i`` from ``r_i`` to ``r_{i+1}``:

    gamma_i = min(s_churn/N, sqrt(2) - 1)  if s_tmin <= r_i <= s_tmax  else 0,
    r^ = r_i + gamma_i r_i,   y^ = y_i + sqrt(r^^2 - r_i^2) s_noise z,
    d = (y^ - D(r^, y^))/r^,   y_{i+1} = y^ + (r_{i+1} - r^) d,
    if r_{i+1} > 0:  d' = (y_{i+1} - D(r_{i+1}, y_{i+1}))/r_{i+1},   y_{i+1} = y^ + (r_{i+1} - r^)(d + d')/2.

``N`` is EDM's: the number of positive noise levels of the grid (``len(grid) - 1`` when it ends at
zero noise, ``len(grid)`` otherwise, so that a grid stopped before zero churns as the full one).
The network sees the churned pair ``(y^, r^)`` (diffusers #8549 evaluated it before the noise
was added). With ``s_churn > 0`` one normal draw is taken every step, also where ``gamma = 0``
(as NVlabs/edm and k-diffusion), so per-sample generator streams line up with theirs; with
``s_churn = 0`` nothing is drawn and this is Algorithm 1 (Heun).

Order 2 without churn (Heun); 2 NFE per step. The last step to zero noise is EDM's Euler step
(``last_step="euler"``, 1 NFE: ``2N - 1`` for the solve) or, with ``last_step="denoise"``, returns
``D(r_{N-1}, y)`` without churn (1 NFE). The churned sampler is EDM's algorithm, not an exact
discretization of the reverse SDE family (``docs/edm-stochastic-sampler.md``). The model is
evaluated at ``t_from_ratio(r^)``, so a problem with churn must carry that map; EDM-time problems
(``alpha = 1``, ``sigma = t``, :func:`flowsde.adapters.edm_ode`) keep every operation EDM's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale, unscale

LAST_STEPS = ("euler", "denoise")


@dataclass
class EDMChurnState(SamplerState):
    hat: dict  #: step -> ``(r^, t^, alpha(t^))`` where the churn moves the noise level
    gammas: list  #: EDM's ``gamma_i`` of every step
    draw: list  #: whether step ``i`` draws a normal sample
    denoise_last: int  #: the index of a last step that returns ``D`` (``last_step="denoise"``), else -1


def _number(name, v, *, allow_inf=False):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    if not (ok and (allow_inf or math.isfinite(v)) and v >= 0):
        raise InputError(f"EDMChurn({name}={v!r}): {name} must be a number >= 0{'' if not allow_inf else ' (inf allowed)'}.")
    return float(v)


class EDMChurn(SemiLinearSolver):
    """Arguments:
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (defaults: none; ``s_tmax`` may be ``inf``).
        last_step: ``"euler"`` (EDM) or ``"denoise"`` for a step to zero noise.
        round_sigma: optional ``r -> r`` applied to ``r^`` (NVlabs/edm's ``net.round_sigma``).
    """

    name = "edm"
    order = 2
    scaled = True
    evals_per_step = 2

    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 last_step: str = "euler", round_sigma: Optional[Callable] = None):
        self.s_churn = _number("s_churn", s_churn)
        self.s_tmin = _number("s_tmin", s_tmin)
        self.s_tmax = _number("s_tmax", s_tmax, allow_inf=True)
        self.s_noise = _number("s_noise", s_noise)
        if last_step not in LAST_STEPS:
            raise InputError(f"EDMChurn(last_step={last_step!r}): must be one of {LAST_STEPS}.")
        if round_sigma is not None and not callable(round_sigma):
            raise InputError(f"EDMChurn(round_sigma=...): must be callable r -> r or None, got "
                             f"{type(round_sigma).__name__}.")
        self.last_step = last_step
        self.round_sigma = round_sigma
        self.needs_t_from_ratio = self.s_churn > 0

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        """``2n``; ``2n - 1`` on a grid ending at zero noise (EDM's: the last step is Euler)."""
        return 2 * int(steps) - (1 if to_zero_noise and steps > 0 else 0)

    def gammas(self, ratios) -> list:
        """EDM's ``gamma_i`` for the grid's noise levels ``ratios`` (Python floats, ``sigma/alpha``)."""
        N = sum(1 for r in ratios if r > 0)
        g_max = min(self.s_churn / N, math.sqrt(2) - 1) if self.s_churn > 0 else 0.0
        return [g_max if self.s_tmin <= r <= self.s_tmax else 0.0 for r in ratios[:-1]]

    def prepare(self, problem, host, eta) -> EDMChurnState:
        n = host.steps
        denoise_last = self.last_step == "denoise" and host.to_zero(n - 1)
        gammas = self.gammas(host.r)
        if denoise_last:
            gammas[-1] = 0.0
        hats = []
        for i in range(n):
            r = host.r[i]
            r_hat = r + gammas[i] * r
            if self.round_sigma is not None and gammas[i] > 0:
                r_hat = float(self.round_sigma(torch.tensor(r_hat, dtype=torch.float64)))
            hats.append(r_hat)
        churned = [i for i in range(n) if hats[i] != host.r[i]]
        t_hat = host.times(problem, [hats[i] for i in churned], self.name) if churned else None
        a_hat = problem.alpha(t_hat).tolist() if churned else []
        t_hat = t_hat.to(host.device) if churned else None
        return EDMChurnState(
            host, eta,
            hat={i: (hats[i], t_hat[k], a_hat[k]) for k, i in enumerate(churned)},
            gammas=gammas,
            draw=[self.s_churn > 0 and not (denoise_last and i == n - 1) for i in range(n)],
            denoise_last=n - 1 if denoise_last else -1,
        )

    def step(self, problem, x, t0, t1, h, i, noise, state: EDMChurnState):
        g = state.host
        r0, r1, a1 = g.r[i], g.r[i + 1], g.a[i + 1]
        y = unscale(x, g.a[i])
        if i == state.denoise_last:
            return scale(a1, denoise(problem, t0, x)), state
        z = noise.randn_like(x) if state.draw[i] else None
        if i in state.hat:
            r_hat, t_hat, a_hat = state.hat[i]
            y_hat = y + math.sqrt(r_hat ** 2 - r0 ** 2) * self.s_noise * z
            d = (y_hat - denoise(problem, t_hat, scale(a_hat, y_hat))) / r_hat
        else:
            r_hat, y_hat = r0, y
            d = (y_hat - denoise(problem, t0, x)) / r_hat
        y1 = y_hat + (r1 - r_hat) * d
        if r1 > 0:
            d2 = (y1 - denoise(problem, t1, scale(a1, y1))) / r1
            y1 = y_hat + (r1 - r_hat) * (0.5 * d + 0.5 * d2)
        return scale(a1, y1), state

    def __repr__(self) -> str:
        return (f"EDMChurn(s_churn={self.s_churn!r}, s_tmin={self.s_tmin!r}, s_tmax={self.s_tmax!r}, "
                f"s_noise={self.s_noise!r}, last_step={self.last_step!r})")
