"""Noise schedules: ``x_t = alpha(t) x_0 + sigma(t) eps``, data at ``t = 0``.

Every schedule is a small frozen dataclass with closed-form, elementwise,
autograd-differentiable methods on tensors of any shape (dtype and device
follow ``t``):

- ``alpha(t)``, ``sigma(t)`` and their time derivatives ``d_alpha(t)``,
  ``d_sigma(t)``;
- the forward-SDE coefficients ``f(t) = alpha'/alpha`` and
  ``g2(t) = d sigma^2/dt - 2 f sigma^2`` (docs/design.md, "The Itô / beta family");
- ``log_snr(t) = 2 log(alpha/sigma)`` and ``sigma_ratio(t) = sigma/alpha``
  (EDM's sigma; NVlabs/edm writes ``x = s(t) (x_0 + sigma(t) n)``);
- the inverse maps ``t_from_log_snr(lam)`` and ``t_from_sigma_ratio(r)``;
- ``net_time(t)``: the time label handed to the network (identity except for
  :class:`Discrete`, where the convention is configurable).

``t_min`` is the smallest time at which score / eps conversions are defined
(``sigma > 0``), ``t_max = T`` the prior end. The methods themselves are
evaluated at any ``t`` (range checks belong to :class:`~flowsde.adapters.Diffusion`).

References: Song et al. 2021 (score_sde ``sde_lib.py``: VP, subVP, VE),
Nichol & Dhariwal 2021 (cosine), Karras et al. 2022 (EDM), Liu et al. 2022 /
Lipman et al. 2023 (rectified flow / CondOT), Lu et al. 2022 (DPM-Solver
``NoiseScheduleVP('discrete')``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from flowsde import InputError

from ._discrete import Discrete
from flowsde._internal import check_positive

from ._schedule import Schedule, _as_tensor, _check_range, _logsigmoid, _one, _zero

__all__ = ["Schedule", "VP", "Cosine", "SubVP", "VE", "EDM", "Linear", "Discrete"]


# ---------------------------------------------------------------------------------------
# VP family (score_sde sde_lib.VPSDE / subVPSDE): log alpha = -(b1-b0) t^2/4 - b0 t/2
# ---------------------------------------------------------------------------------------


def _vp_log_alpha(t, b0, b1):
    return -0.25 * (b1 - b0) * t**2 - 0.5 * b0 * t


def _vp_t_from_log_alpha(log_alpha, b0, b1):
    """Root t >= 0 of (b1-b0)/4 t^2 + b0/2 t + log_alpha = 0 (cancellation-free form; EDM's sigma^-1)."""
    c = -log_alpha
    a, b = 0.25 * (b1 - b0), 0.5 * b0
    return 2 * c / (b + torch.sqrt(b * b + 4 * a * c))


@dataclasses.dataclass(frozen=True)
class _LinearBeta(Schedule):
    """Shared part of VP and SubVP: linear ``beta(t) = b0 + t (b1 - b0)``, ``log alpha = -int_0^t beta/2``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def __post_init__(self):
        name = type(self).__name__
        if not (isinstance(self.beta_min, (int, float)) and math.isfinite(self.beta_min) and self.beta_min >= 0):
            raise InputError(f"{name}: beta_min must be a finite number >= 0, got {self.beta_min!r}.")
        check_positive("beta_max", self.beta_max, where=name)
        if self.beta_max < self.beta_min:
            raise InputError(f"{name}: need beta_min <= beta_max, got {self.beta_min!r} > {self.beta_max!r}.")
        _check_range(name, self.t_min, self.t_max, 0.0, math.inf)
        if self.t_min <= 0:
            raise InputError(f"{name}: t_min must be > 0 (sigma(0) = 0), got {self.t_min!r}.")

    def beta(self, t):
        t = _as_tensor(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return _vp_log_alpha(_as_tensor(t), self.beta_min, self.beta_max)

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def f(self, t):
        return -0.5 * self.beta(t)


@dataclasses.dataclass(frozen=True)
class VP(_LinearBeta):
    """Variance-preserving, linear ``beta(t) = b0 + t (b1 - b0)`` (score_sde ``VPSDE``; DDPM's limit):

        alpha = exp(-(b1-b0) t^2/4 - b0 t/2),  sigma = sqrt(1 - alpha^2),  f = -beta/2,  g^2 = beta.

    Defaults: ``t_min = 1e-5`` (score_sde's likelihood eps), ``t_max = 1``.
    """

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def d_sigma(self, t):
        # d/dt sqrt(1 - alpha^2) = -alpha alpha'/sigma = beta alpha^2 / (2 sigma)
        return 0.5 * self.beta(t) * torch.exp(2 * self._log_alpha(t)) / self.sigma(t)

    def coefficients(self, t):
        # the four methods above with log alpha and beta computed once
        la, b = self._log_alpha(t), self.beta(t)
        a = torch.exp(la)
        s = torch.sqrt(-torch.expm1(2 * la))
        return a, s, -0.5 * b * a, 0.5 * b * a * a / s

    def g2(self, t):
        return self.beta(t)

    def log_snr(self, t):
        # alpha^2/sigma^2 = 1/expm1(-2 log alpha)
        return -torch.log(torch.expm1(-2 * self._log_alpha(t)))

    def t_from_log_snr(self, lam):
        lam = _as_tensor(lam)
        return _vp_t_from_log_alpha(0.5 * _logsigmoid(lam), self.beta_min, self.beta_max)

    @property
    def variance_preserving(self):
        return True


@dataclasses.dataclass(frozen=True)
class SubVP(_LinearBeta):
    """score_sde's sub-VP: same alpha as :class:`VP`, ``sigma = 1 - alpha^2`` (variance = its square),

        g^2 = beta (1 - exp(-2 b0 t - (b1 - b0) t^2)) = beta (1 - alpha^4).
    """

    def sigma(self, t):
        return -torch.expm1(2 * self._log_alpha(t))

    def d_sigma(self, t):
        return self.beta(t) * torch.exp(2 * self._log_alpha(t))

    def g2(self, t):
        return self.beta(t) * -torch.expm1(4 * self._log_alpha(t))

    def t_from_sigma_ratio(self, r):
        # r = (1 - a^2)/a  =>  a = 2/(r + sqrt(r^2 + 4))
        r = _as_tensor(r)
        a = 2 / (r + torch.sqrt(r * r + 4))
        return _vp_t_from_log_alpha(torch.log(a), self.beta_min, self.beta_max)

    def t_from_log_snr(self, lam):
        return self.t_from_sigma_ratio(torch.exp(-0.5 * _as_tensor(lam)))


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """Nichol & Dhariwal 2021's cosine schedule, continuous (DPM-Solver ``NoiseScheduleVP('cosine')``):

        alpha = cos(phi(t))/cos(phi(0)),  phi(t) = pi/2 (t + s)/(1 + s),  sigma = sqrt(1 - alpha^2).

    ``alpha(1) = 0``, so the default ``t_max = 0.9946`` follows DPM-Solver
    (``NoiseScheduleVP.T`` for cosine), where the schedule is still regular.
    """

    s: float = 0.008
    t_min: float = 1e-5
    t_max: float = 0.9946

    def __post_init__(self):
        check_positive("s", self.s, where="Cosine")
        _check_range("Cosine", self.t_min, self.t_max, 0.0, 1.0)
        if self.t_min <= 0 or self.t_max >= 1:
            raise InputError(f"Cosine: need 0 < t_min < t_max < 1, got t_min={self.t_min!r}, t_max={self.t_max!r}.")

    def _phi(self, t):
        return 0.5 * math.pi * (_as_tensor(t) + self.s) / (1 + self.s)

    def alpha(self, t):
        return torch.cos(self._phi(t)) / math.cos(0.5 * math.pi * self.s / (1 + self.s))

    def sigma(self, t):
        a = self.alpha(t)
        return torch.sqrt((1 - a) * (1 + a))

    def d_alpha(self, t):
        return -torch.sin(self._phi(t)) * (0.5 * math.pi / (1 + self.s)) / math.cos(0.5 * math.pi * self.s / (1 + self.s))

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_log_snr(self, lam):
        a = torch.sqrt(torch.sigmoid(_as_tensor(lam)))
        phi = torch.arccos(a * math.cos(0.5 * math.pi * self.s / (1 + self.s)))
        return phi * (2 * (1 + self.s) / math.pi) - self.s

    @property
    def variance_preserving(self):
        return True


@dataclasses.dataclass(frozen=True)
class VE(Schedule):
    """score_sde's ``VESDE``: ``alpha = 1``, ``sigma = smin (smax/smin)^t``, ``t`` in ``[0, 1]``,

        f = 0,  g^2 = 2 sigma^2 ln(smax/smin).

    ``sigma(0) = sigma_min > 0``, so ``t_min = 0``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self):
        check_positive("sigma_min", self.sigma_min, where="VE")
        check_positive("sigma_max", self.sigma_max, where="VE")
        if self.sigma_min >= self.sigma_max:
            raise InputError(f"VE: need sigma_min < sigma_max, got {self.sigma_min!r} >= {self.sigma_max!r}.")
        _check_range("VE", self.t_min, self.t_max, 0.0, math.inf)

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t):
        return _one(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(_as_tensor(t) * self._log_ratio)

    def d_alpha(self, t):
        return _zero(t)

    def d_sigma(self, t):
        return self.sigma(t) * self._log_ratio

    def f(self, t):
        return _zero(t)

    def g2(self, t):
        return 2 * self._log_ratio * self.sigma(t) ** 2

    def log_snr(self, t):
        return -2 * torch.log(self.sigma(t))

    def t_from_sigma_ratio(self, r):
        return (torch.log(_as_tensor(r)) - math.log(self.sigma_min)) / self._log_ratio

    def t_from_log_snr(self, lam):
        return (-0.5 * _as_tensor(lam) - math.log(self.sigma_min)) / self._log_ratio


@dataclasses.dataclass(frozen=True)
class EDM(Schedule):
    """Karras et al. 2022: ``alpha = 1``, ``sigma = t`` (time *is* the noise level), ``f = 0``, ``g^2 = 2 t``.

    ``t_min = sigma_min``, ``t_max = sigma_max`` (NVlabs/edm defaults 0.002, 80).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self):
        check_positive("sigma_min", self.sigma_min, where="EDM")
        check_positive("sigma_max", self.sigma_max, where="EDM")
        if self.sigma_min >= self.sigma_max:
            raise InputError(f"EDM: need sigma_min < sigma_max, got {self.sigma_min!r} >= {self.sigma_max!r}.")

    @property
    def t_min(self) -> float:
        return float(self.sigma_min)

    @property
    def t_max(self) -> float:
        return float(self.sigma_max)

    def alpha(self, t):
        return _one(t)

    def sigma(self, t):
        return _as_tensor(t).clone()

    def d_alpha(self, t):
        return _zero(t)

    def d_sigma(self, t):
        return _one(t)

    def f(self, t):
        return _zero(t)

    def g2(self, t):
        return 2 * _as_tensor(t)

    def log_snr(self, t):
        return -2 * torch.log(_as_tensor(t))

    def t_from_sigma_ratio(self, r):
        return _as_tensor(r).clone()

    def t_from_log_snr(self, lam):
        return torch.exp(-0.5 * _as_tensor(lam))


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
    """Rectified flow / conditional-OT path: ``alpha = 1 - t``, ``sigma = t`` (t in [0, 1]).

    Flow-matching code that puts noise at 0 and data at 1 uses ``s = 1 - t``.
    ``alpha(1) = 0``: conversions that divide by alpha (``x0`` from eps / score) are
    undefined exactly at ``t = 1``; :class:`~flowsde.adapters.Diffusion` guards this.
    ``t_min = 0`` is allowed (flow_matching integrates a velocity model's likelihood from the
    data end, ``t = 0``): a velocity model's own output and its ``x0`` are defined there, while
    conversions dividing by ``sigma(0) = 0`` (the score) are refused at ``t = 0``.
    """

    t_min: float = 1e-5
    t_max: float = 1.0

    def __post_init__(self):
        _check_range("Linear", self.t_min, self.t_max, 0.0, 1.0)

    def alpha(self, t):
        return 1 - _as_tensor(t)

    def sigma(self, t):
        return _as_tensor(t).clone()

    def d_alpha(self, t):
        return _one(t).neg()

    def d_sigma(self, t):
        return _one(t)

    def t_from_sigma_ratio(self, r):
        r = _as_tensor(r)
        return r / (1 + r)

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-0.5 * _as_tensor(lam))

