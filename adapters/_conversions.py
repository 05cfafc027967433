"""The maths of a diffusion model's parameterizations, on its own: a schedule at one time and the
exact conversions between what a network may predict.

With ``x_t = alpha x_0 + sigma eps`` (data at ``t = 0``; docs/design.md, "Conventions") the five
predictions of :class:`~flowsde.adapters.Diffusion` -- ``eps`` (noise), ``score``
(``grad_x log p_t``), ``x0`` (denoised data), ``v`` (``alpha eps - sigma x0``, variance-preserving
schedules) and ``velocity`` (``u = dx_t/dt = alpha' x0 + sigma' eps``, flow matching) -- are exact
affine functions of each other and of the state ``x``. flow_matching's ``path/affine.py``
(``AffineProbPath``) writes the same maps; the names here follow its ``target_to_epsilon`` style.

Each function is pure and elementwise: ``x`` and the prediction are tensors or Python floats, ``c``
is a :class:`ScheduleAt` (floats or tensors broadcastable to them). Nothing here keeps anything;
the per-time memo of the coefficients that makes a sampler's step cheap lives beside this module,
in ``_diffusion.py``, and evaluates :func:`convert` once per time at ``(x, o) = (1, 0)`` and
``(0, 1)`` (every conversion is affine: ``target = A x + C o``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ScheduleAt", "PREDICTIONS", "convert",
           "score_to_eps", "eps_to_score", "x0_to_eps", "eps_to_x0", "v_to_eps", "v_to_x0", "v_from_eps_x0",
           "velocity_to_eps", "velocity_to_x0", "velocity_from_eps", "velocity_from_x0_eps"]

PREDICTIONS = ("eps", "score", "x0", "v", "velocity")


@dataclasses.dataclass(frozen=True)
class ScheduleAt:
    """A schedule evaluated at one time ``t`` (see :meth:`Schedule.at`):

    - ``alpha``, ``sigma``: ``x_t = alpha x_0 + sigma eps``;
    - ``d_alpha``, ``d_sigma``: their time derivatives ``alpha'``, ``sigma'``;
    - ``log_snr``: ``lambda = 2 log(alpha/sigma)`` (``None`` where not asked for).

    The fields are Python floats or tensors of ``t``'s shape. Derived: :attr:`f` and :attr:`jacobian`.
    """

    alpha: Any
    sigma: Any
    d_alpha: Any
    d_sigma: Any
    log_snr: Any = None

    @property
    def f(self):
        """``f = alpha'/alpha = d log alpha/dt``."""
        return self.d_alpha / self.alpha

    @property
    def jacobian(self):
        """``D = alpha sigma' - alpha' sigma``."""
        return self.alpha * self.d_sigma - self.d_alpha * self.sigma


# -- score <-> eps -------------------------------------------------------------------------------
def score_to_eps(score, c: ScheduleAt):
    """``eps = -sigma score`` (Tweedie: ``score = -E[eps | x_t]/sigma``)."""
    return -c.sigma * score


def eps_to_score(eps, c: ScheduleAt):
    """``score = -eps/sigma``."""
    return -eps / c.sigma


# -- x0 <-> eps ----------------------------------------------------------------------------------
def x0_to_eps(x, x0, c: ScheduleAt):
    """``eps = (x - alpha x0)/sigma`` (from ``x = alpha x0 + sigma eps``)."""
    return (x - c.alpha * x0) / c.sigma


def eps_to_x0(x, eps, c: ScheduleAt):
    """``x0 = (x - sigma eps)/alpha``."""
    return (x - c.sigma * eps) / c.alpha


# -- v (alpha^2 + sigma^2 = 1) -------------------------------------------------------------------
def v_to_eps(x, v, c: ScheduleAt):
    """``eps = sigma x + alpha v`` (with ``v = alpha eps - sigma x0`` and ``alpha^2 + sigma^2 = 1``)."""
    return c.sigma * x + c.alpha * v


def v_to_x0(x, v, c: ScheduleAt):
    """``x0 = alpha x - sigma v`` (``alpha^2 + sigma^2 = 1``)."""
    return c.alpha * x - c.sigma * v


def v_from_eps_x0(eps, x0, c: ScheduleAt):
    """``v = alpha eps - sigma x0`` (Salimans & Ho 2022)."""
    return c.alpha * eps - c.sigma * x0


# -- velocity u = dx_t/dt ------------------------------------------------------------------------
def velocity_to_eps(x, u, c: ScheduleAt):
    """``eps = (alpha u - alpha' x)/D`` with ``D = alpha sigma' - alpha' sigma`` (flow_matching
    ``AffineProbPath.velocity_to_epsilon``)."""
    a, s, da, ds = c.alpha, c.sigma, c.d_alpha, c.d_sigma
    return (a * u - da * x) / (a * ds - da * s)


def velocity_to_x0(x, u, c: ScheduleAt):
    """``x0 = (sigma' x - sigma u)/D`` with ``D = alpha sigma' - alpha' sigma`` (flow_matching
    ``AffineProbPath.velocity_to_target``)."""
    a, s, da, ds = c.alpha, c.sigma, c.d_alpha, c.d_sigma
    return (ds * x - s * u) / (a * ds - da * s)


def velocity_from_eps(x, eps, c: ScheduleAt):
    """``u = f x + (sigma' - f sigma) eps`` with ``f = alpha'/alpha`` (``= f x - g^2/2 score``, the
    probability-flow ODE's drift; ``alpha' x0 + sigma' eps`` with ``x0`` eliminated)."""
    f = c.d_alpha / c.alpha
    return f * x + (c.d_sigma - f * c.sigma) * eps


def velocity_from_x0_eps(x0, eps, c: ScheduleAt):
    """``u = alpha' x0 + sigma' eps`` (the path's time derivative)."""
    return c.d_alpha * x0 + c.d_sigma * eps


# -- any prediction to any -----------------------------------------------------------------------
def convert(pred: str, target: str, x, o, c: ScheduleAt):
    """``target`` from the output ``o`` of a ``pred``-network at state ``x`` (both in
    :data:`PREDICTIONS`), composed from the functions above through ``eps`` (and ``x0``). Affine in
    ``(x, o)``. Raises ``ValueError`` for an unknown name."""
    if pred not in PREDICTIONS:
        raise ValueError(pred)
    if target == pred:
        return o
    if target == "eps":
        if pred == "score":
            return score_to_eps(o, c)
        if pred == "x0":
            return x0_to_eps(x, o, c)
        if pred == "v":
            return v_to_eps(x, o, c)
        return velocity_to_eps(x, o, c)
    if target == "x0":
        if pred in ("eps", "score"):
            return eps_to_x0(x, convert(pred, "eps", x, o, c), c)
        if pred == "v":
            return v_to_x0(x, o, c)
        return velocity_to_x0(x, o, c)
    if target == "score":
        return eps_to_score(convert(pred, "eps", x, o, c), c)
    if target == "velocity":
        if pred in ("eps", "score"):
            return velocity_from_eps(x, convert(pred, "eps", x, o, c), c)
        return velocity_from_x0_eps(convert(pred, "x0", x, o, c), convert(pred, "eps", x, o, c), c)
    if target == "v":
        return v_from_eps_x0(convert(pred, "eps", x, o, c), convert(pred, "x0", x, o, c), c)
    raise ValueError(target)
