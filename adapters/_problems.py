"""The adapters' semi-linear problems: what ``Diffusion.pf_ode()`` / ``reverse_sde(beta)`` return,
and the EDM-time problem of a k-diffusion / EDM denoiser.

A :class:`~flowsde.adapters.Diffusion` knows its schedule (``alpha``, ``sigma``, their
derivatives, the inverse noise map) and its data prediction ``x0(t, x)`` whatever the network
predicts, so its problems carry the structure the samplers of ``docs/samplers.md`` use
(:class:`flowsde.SemiLinearODE` / :class:`flowsde.SemiLinearSDE`). The drift, diffusion, eps and
score stay the Diffusion's own (one network call each, in the network's parameterization), so
every other solver sees exactly the problems it saw before. What a problem keeps per grid time
is its own (the memos of its drift and diffusion, made by ``Diffusion.reverse_sde`` /
``forward_sde`` for that problem alone) or the Diffusion's (its conversions, determined by the
immutable Diffusion); see ``adapters/_diffusion.py``.
"""

from __future__ import annotations

from typing import Optional

import torch

from flowsde import InputError, SemiLinearODE, SemiLinearSDE

__all__ = ["semilinear_ode", "semilinear_sde"]

F64 = torch.float64


def _structure(diffusion) -> dict:
    sched = diffusion.schedule
    return dict(alpha=sched.alpha, sigma=sched.sigma, d_alpha=sched.d_alpha, d_sigma=sched.d_sigma,
                t_from_ratio=sched.t_from_sigma_ratio, eps=diffusion.eps)


def semilinear_ode(diffusion) -> SemiLinearODE:
    """``Diffusion.pf_ode()``: ``dx/dt = u(t, x)`` (the Diffusion's velocity) with the structure
    ``alpha``, ``sigma`` (the schedule's) and ``denoise = diffusion.x0``."""
    return SemiLinearODE(diffusion.x0, drift=diffusion.velocity, score=diffusion.score, time_dtype=F64,
                         **_structure(diffusion))


def semilinear_sde(diffusion, sde, beta) -> SemiLinearSDE:
    """``Diffusion.reverse_sde(beta)``: the Diffusion's reverse-time SDE ``sde`` (its drift and
    diffusion, validated ``beta``) with the structure attached."""
    return SemiLinearSDE(diffusion.x0, beta=beta, drift=sde.drift, diffusion=sde.diffusion, score=diffusion.score,
                         noise_type=sde.noise_type, direction=getattr(sde, "direction", None) or "reverse",
                         time_dtype=getattr(sde, "time_dtype", None), **_structure(diffusion))
