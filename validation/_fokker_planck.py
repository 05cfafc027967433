"""Fokker–Planck residuals: does an SDE transport a given density?

For an Itô SDE ``dx = f(t, x) dt + g(t, x) dW`` with diagonal (or scalar,
i.e. ``g`` times the identity) noise and independent Brownian coordinates,
the marginal density obeys (seed 003, Fokker–Planck–Kolmogorov)

    d/dt p = -sum_i d_i (f_i p) + 1/2 sum_i d_i^2 (G_i p),     G_i = g_i^2,

and an ODE the continuity equation (``G = 0``). Divided by ``p``, with
``l = log p``, the equation reads ``LHS = sum of terms`` with

    LHS = d_t l
    T1 = -sum_i d_i f_i                     T2 = -sum_i f_i d_i l
    T3 = 1/2 sum_i d_i^2 G_i                T4 = sum_i d_i G_i d_i l
    T5 = 1/2 sum_i G_i (d_i^2 l + (d_i l)^2)

Every derivative is exact (autograd; one backward pass per coordinate for the
divergence and the Hessian diagonal, so this is for small ``D``). The
*relative residual* at a point is

    r = |LHS - (T1 + ... + T5)| / (|LHS| + |T1| + ... + |T5| + tiny)

which is scale-free (multiplying ``p``'s time or space units, the drift or the
noise by a constant leaves it unchanged) and lies in ``[0, 1]``: float64
round-off gives ~1e-12, and an SDE with the wrong marginals gives O(1) values
wherever the wrong term matters.

Reverse time. A reverse-time SDE (``dx = f dt + g dW`` integrated from ``T``
down with a backward Brownian motion, as ``Diffusion.reverse_sde(beta)``) is
the forward-time process ``y(s) = x(T - s)``:

    dy = -f(T - s, y) ds + g(T - s, y) dW_s,     q(s, y) = p(T - s, y),

so it is checked as that forward SDE against ``q``
(:func:`reverse_time_sde`, or ``direction="reverse"`` here, which does this
conversion and reports times in the original ``t``). Equivalently,
``d_t p = -div(f p) - 1/2 div div (G p)`` in ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

from flowsde import ODE, SDE, InputError

__all__ = ["fokker_planck_residual", "assert_fokker_planck", "reverse_time_sde", "FokkerPlanckResult"]

DIRECTIONS = ("forward", "reverse")


@dataclass
class FokkerPlanckResult:
    """The pieces of the residual at each point, all ``(B,)``.

    Attributes:
        residual: the relative residual ``r``.
        lhs: ``d_t log p``.
        rhs: the sum of the terms.
        terms: dict ``{"div_f", "f_grad", "d2G", "dG_grad", "G_hess"}`` (T1..T5).
    """

    residual: torch.Tensor
    lhs: torch.Tensor
    rhs: torch.Tensor
    terms: dict


def reverse_time_sde(problem: ODE, T: float) -> ODE:
    """The process ``y(s) = x(T - s)`` of a problem solved with decreasing times from ``T``.

    ``dy = -f(T - s, y) ds + g(T - s, y) dW_s`` (a backward Brownian motion has the
    law of a forward one, so ``g`` keeps its sign). Returns an :class:`flowsde.SDE`
    (or :class:`flowsde.ODE`) in ``s``; its marginal at ``s`` is the original's at
    ``t = T - s``, i.e. ``log q(s, y) = log p(T - s, y)`` (see
    :func:`reverse_time_log_prob`).
    """
    _check_problem(problem)
    T = float(T)

    def drift(s, y):
        return -problem.drift(T - s, y)

    score = (lambda s, y: problem.score(T - s, y)) if problem.has_score else None
    # s = T - t runs the other way: a reverse-time problem becomes a forward-time one in s
    direction = {"forward": "reverse", "reverse": "forward"}.get(getattr(problem, "direction", None))
    kw = dict(score=score, direction=direction, time_dtype=getattr(problem, "time_dtype", None))
    if not problem.is_sde:
        return ODE(drift, **kw)
    return SDE(drift, lambda s, y: problem.diffusion(T - s, y), noise_type=problem.noise_type, **kw)


def reverse_time_log_prob(log_prob: Callable, T: float) -> Callable:
    """``log q(s, y) = log p(T - s, y)``, the log-density of :func:`reverse_time_sde`'s process."""
    T = float(T)
    return lambda s, y: log_prob(T - s, y)


def _check_problem(problem):
    if not isinstance(problem, ODE):
        raise InputError(f"expected a flowsde.SDE or flowsde.ODE, got {type(problem).__name__}; wrap your "
                         "functions as flowsde.SDE(drift, diffusion).")


def _grad(out, inp):
    """d(out.sum())/d inp with graph kept; zeros when ``out`` does not depend on ``inp``."""
    if not out.requires_grad:
        return torch.zeros_like(inp)
    g = torch.autograd.grad(out.sum(), inp, create_graph=True, allow_unused=True)[0]
    return torch.zeros_like(inp) if g is None else g


def fokker_planck_terms(problem: ODE, log_prob: Callable, t, x: torch.Tensor, *,
                        direction: str = "forward") -> FokkerPlanckResult:
    """Like :func:`fokker_planck_residual` but returns every term (for diagnostics)."""
    _check_problem(problem)
    if direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}: must be one of {DIRECTIONS}.")
    if not callable(log_prob):
        raise InputError(f"log_prob must be callable log_prob(t, x) -> (B,), got {type(log_prob).__name__}.")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise InputError(f"x: expected a floating tensor (B, *event), got {getattr(x, 'shape', type(x))}.")
    B = x.shape[0]
    shape = tuple(x.shape)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(B)
    if tuple(t.shape) != (B,):
        raise InputError(f"t: expected a number, 0-dim or ({B},) tensor, got shape {tuple(t.shape)}.")
    if direction == "reverse":
        # y(s) = x(T - s) with any T: take T = 0, s = -t (the residual does not depend on T).
        problem = reverse_time_sde(problem, 0.0)
        log_prob = reverse_time_log_prob(log_prob, 0.0)
        t = -t
    tt = t.detach().clone().requires_grad_(True)
    xf = x.detach().reshape(B, -1).clone().requires_grad_(True)
    D = xf.shape[1]
    xs = xf.reshape(shape)

    lp = log_prob(tt, xs)
    if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (B,):
        raise InputError(f"log_prob(t, x) must return a (B,) = ({B},) tensor (summed over event dims), got "
                         f"{tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__}.")
    if not lp.requires_grad:
        raise InputError("log_prob(t, x) is not differentiable: its output does not depend on t and x through "
                         "autograd (no .detach(), .item(), numpy or in-place ops inside it).")
    dl_dt = torch.autograd.grad(lp.sum(), tt, create_graph=True, allow_unused=True)[0]
    if dl_dt is None:
        dl_dt = torch.zeros_like(tt)
    gl = _grad(lp, xf)  # (B, D)
    hl = torch.stack([_grad(gl[:, i], xf)[:, i] for i in range(D)], 1)  # Hessian diagonal

    f = problem.drift(tt, xs)
    if not isinstance(f, torch.Tensor) or tuple(f.shape) != shape:
        raise InputError(f"drift returned shape {getattr(f, 'shape', type(f))}, expected {shape}.")
    f = f.reshape(B, D)
    div_f = torch.stack([_grad(f[:, i], xf)[:, i] for i in range(D)], 1).sum(1)
    terms = {"div_f": -div_f, "f_grad": -(f * gl).sum(1)}
    zero = torch.zeros_like(div_f)
    if problem.is_sde:
        G = problem.diffusion(tt, xs)
        G = (G * G).expand(shape).reshape(B, D)
        dG = torch.stack([_grad(G[:, i], xf)[:, i] for i in range(D)], 1)
        d2G = torch.stack([_grad(dG[:, i], xf)[:, i] for i in range(D)], 1)
        terms["d2G"] = 0.5 * d2G.sum(1)
        terms["dG_grad"] = (dG * gl).sum(1)
        terms["G_hess"] = 0.5 * (G * (hl + gl * gl)).sum(1)
    else:
        terms.update(d2G=zero, dG_grad=zero, G_hess=zero)
    rhs = sum(terms.values())
    scale = dl_dt.abs() + sum(v.abs() for v in terms.values()) + torch.finfo(x.dtype).tiny
    res = (dl_dt - rhs).abs() / scale
    detach = {k: v.detach() for k, v in terms.items()}
    return FokkerPlanckResult(residual=res.detach(), lhs=dl_dt.detach(), rhs=rhs.detach(), terms=detach)


def fokker_planck_residual(problem: ODE, log_prob: Callable, t, x: torch.Tensor, *,
                           direction: str = "forward") -> torch.Tensor:
    """Pointwise relative Fokker–Planck residual of ``problem`` against ``log_prob``.

    ``r = |d_t l - RHS| / (|d_t l| + sum_j |T_j| + tiny)`` with ``l = log p`` and the
    terms ``T_j`` of the module docstring (``d_t p = -div(f p) + 1/2 div div(g^2 p)``
    divided by ``p``; the continuity equation for an ODE). ``0`` means ``p`` is
    exactly transported; values lie in ``[0, 1]``.

    Arguments:
        problem: a :class:`flowsde.SDE` (scalar or diagonal noise, ``g`` may depend
            on ``x``) or :class:`flowsde.ODE`.
        log_prob: ``log_prob(t, x) -> (B,)``, differentiable in ``t`` and ``x``
            (e.g. ``lambda t, x: mixture.log_prob_t(schedule, t, x)``).
        t: a number, 0-dim or ``(B,)`` tensor (``t`` of ``problem``).
        x: ``(B, *event)`` points; use float64 for tight checks.
        direction: ``"forward"`` (the problem is integrated with increasing ``t``)
            or ``"reverse"`` (integrated with decreasing ``t``, backward Brownian
            motion: checked as :func:`reverse_time_sde`).

    Returns:
        ``(B,)`` residuals (detached).

    Raises:
        InputError: ``log_prob`` not differentiable or not ``(B,)``; bad shapes.
    """
    return fokker_planck_terms(problem, log_prob, t, x, direction=direction).residual


def assert_fokker_planck(problem: ODE, log_prob: Callable, t, x: torch.Tensor, *, tol: float = 1e-6,
                         direction: str = "forward") -> torch.Tensor:
    """Raise ``AssertionError`` if the residual exceeds ``tol`` anywhere; return the residuals.

    The message names the worst point (its ``t`` and ``x``), the residual, the two
    sides of the equation and each term. ``tol = 1e-6`` suits float64 problems
    with exact densities (round-off is ~1e-12).
    """
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise InputError(f"tol={tol!r}: must be a number > 0.")
    ft = fokker_planck_terms(problem, log_prob, t, x, direction=direction)
    res = ft.residual
    i = int(torch.nan_to_num(res, nan=float("inf")).argmax())
    worst = float(res[i])
    if not worst <= tol:  # NaN fails too
        tb = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]) if torch.as_tensor(t).dim() == 0 \
            else torch.as_tensor(t)
        n_bad = int((~(res <= tol)).sum())
        tsign = -1.0 if direction == "reverse" else 1.0
        terms = ", ".join(f"{k}={float(v[i]) * tsign + 0.0:.6g}" for k, v in ft.terms.items())
        raise AssertionError(
            f"Fokker-Planck residual {worst:.3g} > tol {tol:g} at {n_bad}/{res.numel()} points "
            f"({direction} time). Worst point: index {i}, t={float(tb[i]):.6g}, x={x[i].reshape(-1).tolist()}; "
            f"d_t log p = {float(ft.lhs[i]) * tsign:.6g} but the drift/diffusion terms sum to "
            f"{float(ft.rhs[i]) * tsign:.6g} ({terms}; signs in t). The SDE does not transport this density: "
            "check the sign and size of each drift term and the diffusion."
        )
    return res
