"""The adapters' semi-linear problems: what ``Diffusion.pf_ode()`` / ``reverse_sde(beta)`` return,
and the EDM-time problem of a k-diffusion / EDM denoiser.

A :class:`~flowsde.adapters.Diffusion` knows its schedule (``alpha``, ``sigma``, their
derivatives, the inverse noise map) and its data prediction ``x0(t, x)`` whatever the network
predicts, so its problems carry the structure the samplers of ``docs/samplers.md`` use
(:class:`flowsde.SemiLinearODE` / :class:`flowsde.SemiLinearSDE`). The drift, diffusion, eps and
score stay the Diffusion's own (one network call each, in the network's parameterization), so
every other solver sees exactly the problems it saw before.
"""

from __future__ import annotations

from typing import Optional

import torch

from flowsde import InputError, SemiLinearODE, SemiLinearSDE

__all__ = ["semilinear_ode", "semilinear_sde", "edm_ode"]

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


def _identity(t):
    return torch.as_tensor(t).clone()


def _one(t):
    return torch.ones_like(torch.as_tensor(t))


def _zero(t):
    return torch.zeros_like(torch.as_tensor(t))


def edm_ode(model, *, dtype: Optional[torch.dtype] = None, model_dtype: Optional[torch.dtype] = None
            ) -> SemiLinearODE:
    """The probability-flow ODE in EDM time (``alpha = 1``, ``sigma = t``: the state is EDM's scaled
    ``x``, the time its noise level) of a denoiser, for the samplers of ``docs/samplers.md`` and
    EDM's (``flowsde.EDM``): ``dx/dt = (x - D(x, t))/t``.

    Arguments:
        model: a :class:`~flowsde.adapters.Diffusion` (its :class:`~flowsde.adapters.Denoiser`,
            any schedule), a :class:`~flowsde.adapters.Denoiser`, or a k-diffusion / EDM denoiser
            ``model(x, sigma) -> x0`` (``sigma`` a ``(B,)`` tensor).
        dtype: cast the model's output to this dtype (default: the state's).
        model_dtype: call the model in this dtype (default: the state's); ``sigma`` is given in it.

    Returns:
        :class:`flowsde.SemiLinearODE` with ``time_dtype=float64``; solve it on a decreasing
        grid of noise levels, e.g. ``flowsde.grids.edm(0.002, 80, n=18)`` (ending at 0), from
        ``x = latents * sigma_max``.
    """
    from ._precond import Denoiser

    if isinstance(model, Denoiser):
        D = model._eval
    elif hasattr(model, "schedule") and callable(getattr(model, "x0", None)):
        D = Denoiser(model)._eval
    elif callable(model):
        D = model
    else:
        raise InputError(f"edm_ode: expected a flowsde.adapters.Diffusion, a Denoiser or a denoiser "
                         f"model(x, sigma), got {type(model).__name__}.")
    for name, v in (("dtype", dtype), ("model_dtype", model_dtype)):
        if v is not None and not (isinstance(v, torch.dtype) and v.is_floating_point):
            raise InputError(f"edm_ode({name}={v!r}): must be None or a floating torch.dtype.")

    def denoise(t, x):
        md = model_dtype or x.dtype
        sig = t.to(md).expand(x.shape[0]).contiguous() if t.dim() == 0 else t.to(md)
        out = D(x.to(md), sig)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"edm_ode: the model returned {got} for x of shape {tuple(x.shape)} at sigma = "
                             f"{float(t.reshape(-1)[0])!r}; it must return the shape of x.")
        return out.to(dtype or x.dtype)

    return SemiLinearODE(denoise, alpha=_one, sigma=_identity, d_alpha=_zero, d_sigma=_one,
                         t_from_ratio=_identity, time_dtype=F64)

