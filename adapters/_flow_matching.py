"""Bridge from the flow-matching convention (facebookresearch/flow_matching).

There, time ``s`` runs from noise (``s = 0``) to data (``s = 1``):
``x_s = alpha_s x1 + sigma_s x0`` with ``x1`` data and ``x0`` noise, and the
network predicts the velocity ``u(x, s) = alpha'_s x1 + sigma'_s x0`` towards
the data. flowsde puts data at ``t = 0``; at the boundary

    t = 1 - s,   alpha(t) = alpha_s,   sigma(t) = sigma_s,
    velocity(x, t) = dx/dt = -u(x, 1 - t),

and nothing inside the core knows about the other convention (docs/design.md, "Conventions").
``CondOTScheduler`` (``alpha_s = s``, ``sigma_s = 1 - s``) becomes
:class:`~flowsde.adapters.schedules.Linear`. No import of flow_matching is
needed: its schedulers are duck-typed (``scheduler(s)`` returning an object
with ``alpha_t, sigma_t, d_alpha_t, d_sigma_t``; ``snr_inverse`` if present).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import torch

from flowsde import InputError

from ._diffusion import Diffusion
from ._inputs import check_call, check_net
from ._schedule import Schedule, _as_tensor
from .schedules import Linear

__all__ = ["from_flow_matching", "to_flow_matching", "FlowMatchingSchedule"]


@dataclasses.dataclass(frozen=True, eq=False)
class FlowMatchingSchedule(Schedule):
    """A flow_matching ``Scheduler`` in flowsde's time: ``alpha(t) = alpha_{1-t}``,
    ``sigma(t) = sigma_{1-t}``, ``d_alpha(t) = -alpha'_{1-t}``, ``d_sigma(t) = -sigma'_{1-t}``.

    ``t_from_log_snr`` uses the scheduler's ``snr_inverse`` (``snr = alpha/sigma``) when it has
    one, else bisection on ``[0, 1]`` (the log-SNR must be monotone, as for every
    flow_matching scheduler). ``t_min`` / ``t_max`` default to ``1e-5`` / ``1``
    (``t = 1`` is pure noise, ``s = 0``).
    """

    scheduler: Any = None
    t_min: float = 1e-5
    t_max: float = 1.0

    def __post_init__(self):
        if not callable(self.scheduler):
            raise InputError(f"FlowMatchingSchedule: scheduler must be a flow_matching Scheduler (callable s -> "
                             f"SchedulerOutput), got {type(self.scheduler).__name__}.")
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise InputError(f"FlowMatchingSchedule: need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}.")
        out = self.scheduler(torch.tensor([0.5], dtype=torch.float64))
        missing = [k for k in ("alpha_t", "sigma_t", "d_alpha_t", "d_sigma_t") if not hasattr(out, k)]
        if missing:
            raise InputError(f"FlowMatchingSchedule: scheduler(s) must return an object with alpha_t, sigma_t, "
                             f"d_alpha_t, d_sigma_t (flow_matching's SchedulerOutput); missing {missing}.")

    def _out(self, t):
        t = _as_tensor(t)
        return self.scheduler(1 - t)

    def alpha(self, t):
        return self._out(t).alpha_t

    def sigma(self, t):
        return self._out(t).sigma_t

    def d_alpha(self, t):
        return -self._out(t).d_alpha_t

    def d_sigma(self, t):
        return -self._out(t).d_sigma_t

    def t_from_log_snr(self, lam):
        lam = _as_tensor(lam)
        inv = getattr(self.scheduler, "snr_inverse", None)
        if callable(inv):
            try:
                return 1 - inv(torch.exp(0.5 * lam))
            except NotImplementedError:
                pass
        # bisection on t in [0, 1] for log_snr(t) = lam (log_snr decreasing in t); 60 halvings
        # reach float64 resolution of [0, 1].
        lo = torch.zeros_like(lam, dtype=torch.float64)
        hi = torch.ones_like(lam, dtype=torch.float64)
        target = lam.to(torch.float64)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # still too little noise: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)


def _time_map(velocity_net: Callable):
    def net(x, t):
        t = _as_tensor(t)
        return -velocity_net(x, 1 - t)

    net.__name__ = f"flowsde_from_flow_matching({getattr(velocity_net, '__name__', type(velocity_net).__name__)})"
    return net


def from_flow_matching(velocity_net: Callable, path: Union[str, Any] = "cond_ot", **schedule_kw):
    """A flow-matching velocity model as a :class:`~flowsde.adapters.Diffusion`
    (``prediction="velocity"``), so it gets a score, eps, x0, the whole SDE family,
    the PF-ODE and the likelihood.

    Arguments:
        velocity_net: ``u(x, s)`` in the flow_matching convention (``x`` ``(B, *event)``, ``s``
            a ``(B,)`` tensor, noise at ``s = 0``, data at ``s = 1``; flow_matching's
            ``ModelWrapper`` and ``ODESolver`` call it so). Extra inputs: close over them.
        path: ``"cond_ot"`` (flow_matching's ``CondOTScheduler``, ``AffineProbPath``:
            ``x_s = s x1 + (1 - s) x0``) gives the ``Linear`` schedule; a flow_matching
            ``Scheduler`` instance gives a :class:`FlowMatchingSchedule`.
        schedule_kw: ``t_min`` / ``t_max`` of the resulting schedule (flowsde time).

    The network is called at ``s = 1 - t`` and its output negated (a velocity towards the
    data in ``s`` is one away from it in ``t``).
    """
    if not callable(velocity_net):
        raise InputError(f"from_flow_matching: velocity_net must be callable u(x, s), got "
                         f"{type(velocity_net).__name__}.")
    check_net(velocity_net, "from_flow_matching(velocity_net=...)", order="velocity_net(x, s)")
    if isinstance(path, str):
        if path not in ("cond_ot", "linear", "rectified_flow"):
            raise InputError(f"from_flow_matching: path={path!r}; use 'cond_ot' or a flow_matching Scheduler "
                             "instance (CosineScheduler(), PolynomialConvexScheduler(n), ...).")
        schedule = Linear(**schedule_kw)
    else:
        schedule = FlowMatchingSchedule(path, **schedule_kw)
    return Diffusion(_time_map(velocity_net), schedule, prediction="velocity")


def to_flow_matching(diffusion) -> Callable:
    """Any :class:`~flowsde.adapters.Diffusion` with a schedule on ``[0, 1]`` as a
    flow_matching velocity model ``u(x, s) = -diffusion.velocity(1 - s, x)`` (noise at
    ``s = 0``; usable by flow_matching's ``ODESolver`` from ``s = 1 - t_max``)."""
    sched = getattr(diffusion, "schedule", None)
    if sched is None or not callable(getattr(diffusion, "velocity", None)):
        raise InputError(f"to_flow_matching: expected a flowsde.adapters.Diffusion, got {type(diffusion).__name__}.")
    if not (0.0 <= sched.t_min and sched.t_max <= 1.0):
        raise InputError(f"to_flow_matching: the schedule's time range [{sched.t_min}, {sched.t_max}] is not inside "
                         "[0, 1], so s = 1 - t is not a flow-matching time; use a schedule on [0, 1] "
                         "(Linear, VP, Cosine, Discrete).")

    def u(x, s):
        check_call("to_flow_matching: u", s, x, order="(x, s)")
        s = _as_tensor(s)
        return -diffusion.velocity(1 - s, x)

    return u
