"""The schedule base class and the small helpers every schedule module shares.

Kept apart from :mod:`flowsde.adapters.schedules` so that the concrete
schedules (``schedules.py``, ``_discrete.py``) import this module and never
each other: imports inside the adapters run one way (``_schedule`` <-
``_discrete`` <- ``schedules``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from flowsde import InputError

from ._conversions import ScheduleAt  # the maths module imports nothing of the adapters

__all__ = ["Schedule"]

def _as_tensor(t) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            return t.to(torch.get_default_dtype())
        return t
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return torch.tensor(float(t), dtype=torch.float64)
    raise InputError(f"schedule time must be a float tensor or a Python number, got {type(t).__name__}.")


def _logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(x) = -softplus(-x)``, exact to round-off for |x| < 700 (softplus's default
    threshold 20 would truncate ``exp(x)`` terms of size 2e-9). ``F.logsigmoid`` gives the same values
    and is not slower (0.3-0.95x this form's time on torch 2.13's CPU build, docs/adapters.md); this
    form is kept so that the schedules' round-off stays what the peer-equality tests pinned."""
    return -F.softplus(-x, beta=1.0, threshold=700.0)


def _zero(t) -> torch.Tensor:
    """Zeros shaped like ``t`` that stay on ``t``'s autograd graph (derivative 0, not "unused")."""
    t = _as_tensor(t)
    return t * 0


def _one(t) -> torch.Tensor:
    return _zero(t) + 1


def _check_range(cls: str, t_min: float, t_max: float, lo: float, hi: float) -> None:
    if not (isinstance(t_min, (int, float)) and isinstance(t_max, (int, float))):
        raise InputError(f"{cls}: t_min and t_max must be numbers, got {t_min!r}, {t_max!r}.")
    if not (lo <= t_min < t_max <= hi):
        raise InputError(f"{cls}: need {lo:g} <= t_min < t_max <= {hi:g}, got t_min={t_min!r}, t_max={t_max!r}.")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class. Subclasses define ``alpha, sigma, d_alpha, d_sigma``,
    ``t_from_log_snr`` and the attributes ``t_min``, ``t_max``; the rest is
    derived here (and overridden where a simpler closed form exists)."""

    # -- to implement ----------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement alpha(t).")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement sigma(t).")

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement d_alpha(t).")

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement d_sigma(t).")

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement t_from_log_snr(lam).")

    # -- derived ---------------------------------------------------------------------
    def coefficients(self, t: torch.Tensor):
        """``(alpha, sigma, d_alpha, d_sigma)`` at ``t`` in one call (subclasses share the common
        subexpressions; the values are those of the four methods)."""
        t = _as_tensor(t)
        return self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)

    def at(self, t, *, log_snr: bool = True):
        """The schedule at ``t``: a :class:`ScheduleAt` of ``alpha``,
        ``sigma``, ``d_alpha``, ``d_sigma`` (one :meth:`coefficients` call) and ``log_snr``
        (:meth:`log_snr`; ``None`` with ``log_snr=False``), tensors of ``t``'s shape."""
        t = _as_tensor(t)
        return ScheduleAt(*self.coefficients(t), log_snr=self.log_snr(t) if log_snr else None)

    def f(self, t: torch.Tensor) -> torch.Tensor:
        """Forward drift coefficient ``f(t) = d log alpha/dt``."""
        t = _as_tensor(t)
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """Squared forward diffusion ``g^2 = d sigma^2/dt - 2 f sigma^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha)``."""
        t = _as_tensor(t)
        s = self.sigma(t)
        return 2 * s * (self.d_sigma(t) - self.d_alpha(t) / self.alpha(t) * s)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = 2 log(alpha/sigma)`` (decreasing in t; ``+inf`` where sigma = 0)."""
        t = _as_tensor(t)
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def d_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``d lambda/dt = 2 (alpha'/alpha - sigma'/sigma)``."""
        t = _as_tensor(t)
        return 2 * (self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t))

    def sigma_ratio(self, t: torch.Tensor) -> torch.Tensor:
        """``r(t) = sigma/alpha``: EDM's sigma, k-diffusion's ``sigma``."""
        t = _as_tensor(t)
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_ratio(self, r: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_ratio` (``r > 0``): ``t = t_from_log_snr(-2 log r)``."""
        r = _as_tensor(r)
        return self.t_from_log_snr(-2 * torch.log(r))

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time label a network of this schedule is called with (identity here)."""
        return t

    @property
    def variance_preserving(self) -> bool:
        """True when ``alpha^2 + sigma^2 = 1`` for all t (v-prediction is defined)."""
        return False
