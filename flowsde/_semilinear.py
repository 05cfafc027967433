"""Semi-linear problems: the structure that exponential integrators solve exactly in part.

Under a linear forward process ``x_t = alpha(t) x_0 + sigma(t) eps`` (any pair of
positive functions; the core does not know what a schedule is) the
probability-flow ODE is a linear term plus a nonlinear term that a network gives,
the *data prediction* ``D(t, x) = E[x_0 | x_t = x]``:

    dx/dt = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) D(t, x).

In the half log-SNR ``lambda = log(alpha/sigma)`` (increasing as noise goes down)
the linear part integrates exactly (variation of constants):

    x_t = (sigma_t/sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D dlambda,

and with ``D`` frozen at ``D_s`` this is ``(sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D_s``,
``h = lambda_t - lambda_s``: DDIM, the first-order DPM-Solver++ step. The reverse-time
SDE family of the same marginals (``beta >= 0``, backward Brownian motion)

    dx = [(sigma'/sigma) x + (alpha' - alpha sigma'/sigma) D - beta lambda' (x - alpha D)] dt
         + sqrt(beta) g dW,      g^2 = -2 sigma^2 lambda',

has, for constant ``beta`` and frozen ``D``, the exact step

    x_t = (sigma_t/sigma_s) e^{-beta h} x_s + alpha_t (1 - e^{-(1+beta) h}) D_s
          + sigma_t sqrt(1 - e^{-2 beta h}) z,      z ~ N(0, I),

the step of DPM-Solver++ SDE (``eta = beta``) and, for ``beta = 1``, DDPM's ancestral
step. Higher-order methods (DPM-Solver++(2M), UniPC, ...) replace the frozen ``D`` by
polynomials in ``lambda`` through earlier or intermediate evaluations.

References:
    Lu, Zhou, Bao, Chen, Li, Zhu (2022). DPM-Solver: a fast ODE solver for diffusion
    probabilistic model sampling in around 10 steps. NeurIPS.
    Lu, Zhou, Bao, Chen, Li, Zhu (2022b). DPM-Solver++: fast solver for guided sampling of
    diffusion probabilistic models. arXiv:2211.01095.
    Zhao, Bai, Rao, Zhou, Lu (2023). UniPC: a unified predictor-corrector framework for
    fast sampling of diffusion models. NeurIPS.

:class:`SemiLinearODE` and :class:`SemiLinearSDE` are subclasses of :class:`flowsde.ODE`
and :class:`flowsde.SDE`: every solver of the core solves them through ``drift`` /
``diffusion``; the samplers of ``docs/samplers.md`` use the structure (``alpha``,
``sigma``, ``denoise``) instead.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Union

import torch

from ._errors import InputError
from ._problem import ODE, SDE

__all__ = ["SemiLinear", "SemiLinearODE", "SemiLinearSDE"]

F64 = torch.float64
TimeFn = Callable[[torch.Tensor], torch.Tensor]
Callable2 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-dim or ``(B,)`` coefficient, broadcastable against ``x`` and in its dtype."""
    c = c.to(dtype=x.dtype, device=x.device)
    return c if c.dim() == 0 else c.reshape((-1,) + (1,) * (x.dim() - 1))


def _check_callable(cls: str, name: str, f, required: bool = True) -> None:
    if f is None and not required:
        return
    if not callable(f):
        raise InputError(f"{cls}({name}=...): {name} must be callable, got {type(f).__name__}.")


class SemiLinear:
    """The semi-linear structure shared by :class:`SemiLinearODE` and :class:`SemiLinearSDE`.

    Attributes and methods (``t`` a float64 0-dim or ``(B,)`` tensor):
        alpha(t), sigma(t), d_alpha(t), d_sigma(t): the coefficients of
            ``x_t = alpha x_0 + sigma eps`` and their time derivatives (float64 callables).
        half_log_snr(t): ``lambda = log(alpha) - log(sigma)`` (``+inf`` where ``sigma = 0``,
            ``-inf`` where ``alpha = 0``).
        ratio(t): ``sigma/alpha``, the noise level of the scaled state ``x/alpha`` (EDM's and
            k-diffusion's ``sigma``).
        t_from_ratio(r): the time at which ``sigma/alpha = r`` (optional; the samplers that
            evaluate the model between grid points need it).
        denoise(t, x): the data prediction ``D(t, x)``, shape of ``x``.
        eps(t, x): the noise prediction ``(x - alpha D)/sigma`` (or the one given).
    """

    is_semilinear = True

    def _init_structure(self, cls, denoise, alpha, sigma, d_alpha, d_sigma, t_from_ratio, eps):
        _check_callable(cls, "denoise", denoise)
        for name, f in (("alpha", alpha), ("sigma", sigma), ("d_alpha", d_alpha), ("d_sigma", d_sigma)):
            _check_callable(cls, name, f)
        _check_callable(cls, "t_from_ratio", t_from_ratio, required=False)
        _check_callable(cls, "eps", eps, required=False)
        self._denoise = denoise
        self._alpha, self._sigma, self._d_alpha, self._d_sigma = alpha, sigma, d_alpha, d_sigma
        self._t_from_ratio = t_from_ratio
        self._eps = eps

    # -- coefficients (float64) -----------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._alpha(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self._sigma(t)

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._d_alpha(t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self._d_sigma(t)

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log alpha - log sigma`` (DPM-Solver's ``lambda``; half the log-SNR)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def ratio(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma/alpha``: the noise level of the scaled state ``x/alpha``."""
        return self.sigma(t) / self.alpha(t)

    @property
    def has_t_from_ratio(self) -> bool:
        return self._t_from_ratio is not None

    def t_from_ratio(self, r: torch.Tensor) -> torch.Tensor:
        """The time ``t`` with ``sigma(t)/alpha(t) = r``."""
        if self._t_from_ratio is None:
            raise InputError(
                f"{type(self).__name__}.t_from_ratio: this problem has no inverse noise map; build it with "
                "t_from_ratio=... (the time at which sigma/alpha = r; adapters' problems carry it)."
            )
        return self._t_from_ratio(r)

    # -- the network ----------------------------------------------------------------------
    def denoise(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``D(t, x) = E[x_0 | x_t = x]``; shape of ``x``."""
        return self._denoise(t, x)

    def eps(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``E[eps | x_t = x] = (x - alpha D)/sigma``; shape of ``x``."""
        if self._eps is not None:
            return self._eps(t, x)
        t64 = t.to(F64)
        return (x - _bc(self.alpha(t64), x) * self.denoise(t, x)) / _bc(self.sigma(t64), x)

    # -- derived functions of the core problem --------------------------------------------
    def _pf_drift(self, t: torch.Tensor, x: torch.Tensor, d: Optional[torch.Tensor] = None) -> torch.Tensor:
        t64 = t.to(F64)
        a, s, da, ds = self.alpha(t64), self.sigma(t64), self.d_alpha(t64), self.d_sigma(t64)
        d = self.denoise(t, x) if d is None else d
        return _bc(ds / s, x) * x + _bc(da - a * ds / s, x) * d

    def _score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t64 = t.to(F64)
        a, s = self.alpha(t64), self.sigma(t64)
        return -(x - _bc(a, x) * self.denoise(t, x)) / _bc(s * s, x)


class SemiLinearODE(SemiLinear, ODE):
    """The probability-flow ODE of ``x_t = alpha x_0 + sigma eps`` with its semi-linear structure:

        dx/dt = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) D(t, x).

    Arguments:
        denoise: ``D(t, x) -> Tensor``, the data prediction ``E[x_0 | x_t = x]`` (shape of ``x``).
        alpha, sigma, d_alpha, d_sigma: float64 callables of ``t`` (0-dim or ``(B,)``
            tensors): the coefficients and their time derivatives.
        t_from_ratio: optional inverse ``r -> t`` of ``sigma/alpha`` (needed by ``dpm_2``,
            ``dpmpp_2s_ancestral``, ``edm``, which evaluate the model between grid points).
        drift: optional ``f(t, x)`` to use instead of the one derived from ``denoise`` (e.g. a
            velocity network's own output); it must be this ODE's right-hand side.
        eps: optional noise prediction to use instead of ``(x - alpha D)/sigma``.
        score: optional marginal score (default ``-(x - alpha D)/sigma^2``).
        direction, time_dtype: as :class:`flowsde.ODE`.

    The samplers of ``docs/samplers.md`` (``ddim``, ``dpmpp_2m``, ``unipc``, ...) use the
    structure; every other solver uses ``drift``.
    """

    def __init__(self, denoise: Callable2, *, alpha: TimeFn, sigma: TimeFn, d_alpha: TimeFn, d_sigma: TimeFn,
                 t_from_ratio: Optional[TimeFn] = None, drift: Optional[Callable2] = None,
                 eps: Optional[Callable2] = None, score: Optional[Callable2] = None, **kw):
        self._init_structure("SemiLinearODE", denoise, alpha, sigma, d_alpha, d_sigma, t_from_ratio, eps)
        super().__init__(self._pf_drift if drift is None else drift,
                         score=self._score if score is None else score, **kw)


BetaLike = Union[float, int, Callable[[torch.Tensor], torch.Tensor]]


class SemiLinearSDE(SemiLinear, SDE):
    """The reverse-time SDE family of ``x_t = alpha x_0 + sigma eps`` with its semi-linear structure
    (solve it with decreasing times; backward Brownian motion):

        dx = [(sigma'/sigma) x + (alpha' - alpha sigma'/sigma) D - beta lambda' (x - alpha D)] dt
             + sqrt(beta) g dW,

    ``lambda = log(alpha/sigma)``, ``g^2 = -2 sigma^2 lambda'``: the family
    ``dx = [f x - (1 + beta)/2 g^2 score] dt + sqrt(beta) g dW`` written with ``D``. Every member
    has the marginals of the forward process; ``beta = 0`` is the probability-flow ODE,
    ``beta = 1`` Anderson's reverse SDE.

    Arguments:
        denoise, alpha, sigma, d_alpha, d_sigma, t_from_ratio, eps, score: as :class:`SemiLinearODE`.
        beta: a number ``>= 0`` or ``beta(t)`` (float64 ``(B,)`` -> number or tensor). The
            stochastic samplers (``ddim``, ``euler_ancestral``, ``dpmpp_2m_sde`` ...) need a number.
        drift, diffusion: optional replacements for the derived ``f`` and ``g`` (they must be
            this SDE's).
        noise_type, direction, time_dtype: as :class:`flowsde.SDE` (``direction`` defaults to
            ``"reverse"``).
    """

    def __init__(self, denoise: Callable2, *, alpha: TimeFn, sigma: TimeFn, d_alpha: TimeFn, d_sigma: TimeFn,
                 beta: BetaLike = 1.0, t_from_ratio: Optional[TimeFn] = None, drift: Optional[Callable2] = None,
                 diffusion: Optional[Callable2] = None, eps: Optional[Callable2] = None,
                 score: Optional[Callable2] = None, **kw):
        self._init_structure("SemiLinearSDE", denoise, alpha, sigma, d_alpha, d_sigma, t_from_ratio, eps)
        if callable(beta):
            self._beta = beta
        elif isinstance(beta, numbers.Real) and not isinstance(beta, bool) and math.isfinite(beta) and beta >= 0:
            self._beta = float(beta)
        else:
            raise InputError(f"SemiLinearSDE(beta={beta!r}): beta must be a finite number >= 0 or a function "
                             "beta(t) >= 0.")
        kw.setdefault("direction", "reverse")
        super().__init__(self._rev_drift if drift is None else drift,
                         self._rev_diffusion if diffusion is None else diffusion,
                         score=self._score if score is None else score, **kw)

    @property
    def beta(self) -> BetaLike:
        """The family's ``beta``: a float, or the function given."""
        return self._beta

    def _beta_at(self, t64: torch.Tensor) -> torch.Tensor:
        b = self._beta(t64) if callable(self._beta) else self._beta
        return torch.as_tensor(b, dtype=F64, device=t64.device)

    def _rev_drift(self, t, x):
        t64 = t.to(F64)
        a, s, da, ds = self.alpha(t64), self.sigma(t64), self.d_alpha(t64), self.d_sigma(t64)
        d = self.denoise(t, x)
        lam_dot = da / a - ds / s
        return self._pf_drift(t, x, d) - _bc(self._beta_at(t64) * lam_dot, x) * (x - _bc(a, x) * d)

    def _rev_diffusion(self, t, x):
        t64 = t.to(F64)
        a, s, da, ds = self.alpha(t64), self.sigma(t64), self.d_alpha(t64), self.d_sigma(t64)
        g2 = 2 * s * (ds - da * s / a)
        g = torch.sqrt(self._beta_at(t64) * g2)
        return _bc(g.expand(x.shape[0]) if g.dim() == 0 else g, x)
