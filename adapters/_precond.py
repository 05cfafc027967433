"""The k-diffusion / EDM denoiser convention and EDM's preconditioning.

A *denoiser* in the k-diffusion convention is ``D(x, sigma)``: ``x`` is the
*scaled* state (Karras et al.'s ``x / s(t)``, here ``x_t / alpha(t)``),
``sigma`` the EDM noise level ``sigma(t) / alpha(t)`` (0-dim or ``(B,)``),
and ``D`` returns the denoised ``x0`` estimate, the shape of ``x``. The
probability-flow ODE in that variable is schedule-free (EDM eq. 3 with
``s = 1``):

    dx/dsigma = (x - D(x, sigma)) / sigma.

This module converts both ways (:func:`from_denoiser`, :func:`to_denoiser`)
and holds EDM's preconditioning tables (NVlabs/edm ``training/networks.py``)
that turn a raw network ``F`` into a denoiser:

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch

from flowsde import InputError
from flowsde._internal import batch_broadcast, check_positive

from ._diffusion import Diffusion
from flowsde._internal import ROUNDING
from ._inputs import check_call, check_net
from .schedules import EDM

__all__ = ["Denoiser", "from_denoiser", "to_denoiser", "Precond", "EDMPrecond", "VPPrecond", "VEPrecond"]


def _sigma_tensor(sigma, x: torch.Tensor, name: str) -> torch.Tensor:
    """Validate a noise level argument (shape only: no host sync) and put it on x's dtype/device."""
    if not isinstance(sigma, torch.Tensor):
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            return torch.as_tensor(float(sigma), dtype=x.dtype, device=x.device)
        raise InputError(f"{name}: sigma must be a number, a 0-dim or a (B,) tensor, got {type(sigma).__name__}.")
    if sigma.dim() > 1 or (sigma.dim() == 1 and sigma.shape[0] != x.shape[0]):
        raise InputError(
            f"{name}: sigma has shape {tuple(sigma.shape)} for x of shape {tuple(x.shape)}; "
            "expected 0-dim or (B,) with B = x.shape[0]."
        )
    return sigma.to(dtype=x.dtype, device=x.device)


def _check_out(name: str, out, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise InputError(f"{name} returned {type(out).__name__}; it must return a tensor the shape of x.")
    if tuple(out.shape) != tuple(x.shape):
        raise InputError(f"{name} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
                         "it must return the shape of x.")
    return out


class Denoiser:
    """Any :class:`~flowsde.adapters.Diffusion` seen as a k-diffusion / EDM denoiser ``D(x, sigma)``.

    With the schedule's ``alpha``, ``sigma`` and ``r = sigma(t) / alpha(t)``
    (EDM's sigma; the map NVlabs/edm's ``ablation_sampler`` uses for VP and VE, ``D(x/s; sigma)``):

        t = schedule.t_from_sigma_ratio(r),
        D(x, r) = diffusion.x0(t, alpha(t) x),

    where ``x`` is the scaled state ``x_t / alpha(t)``. ``x``: ``(B, *event)``;
    ``sigma``: a number, 0-dim or ``(B,)``; returns ``(B, *event)``. The time is computed in
    float64 whatever the dtype of ``x``.

    **Outside the range.** Peers' adaptive solvers evaluate the model past the end of
    their span: torchdiffeq's ``dopri5`` (k-diffusion's ``log_likelihood``) takes its last step
    beyond ``sigma_max`` and interpolates back (up to 1.5x ``sigma_max`` measured on a VP model,
    ``docs/bridges.md``). A ``sigma`` within a factor ``outside`` of the range,
    ``[sigma_min / outside, sigma_max * outside]``, is therefore accepted and evaluated at the
    nearest end of the range (the schedule's coefficients clamped there: ``t = t_min`` or
    ``t_max``); only a value beyond that band is refused. ``outside=1`` accepts rounding only.
    ``outside=math.inf`` accepts every ``sigma > 0``: beyond ``sigma_max`` the denoiser is continued
    by its value at ``sigma_max`` (``D(x, sigma) = D(x, sigma_max)``, nearly the data mean there), so
    the ODE ``dx/dsigma = (x - D)/sigma`` stays continuous and bounded past the end of the span and
    an adaptive peer's overshooting stages (k-diffusion's ``log_likelihood`` at its loose tolerances:
    up to 2.6-3.0x ``sigma_max`` on the shipped digits-eps model at ``rtol = atol = 1e-2``) only shape
    the last step, which the peer interpolates back to ``sigma_max``; use it for that call
    (``docs/bridges.md``).

    Attributes:
        sigma_min, sigma_max: the EDM-sigma range, ``r(t_min)`` and ``r(t_max)``
            (``inf`` where ``alpha(t_max) = 0``), as NVlabs/edm nets expose them.
        outside: the accepted factor beyond the range (see above).
        diffusion, schedule: what it wraps.
    """

    def __init__(self, diffusion, *, outside: float = 2.0):
        schedule = getattr(diffusion, "schedule", None)
        if schedule is None or not callable(getattr(diffusion, "x0", None)):
            raise InputError(
                f"to_denoiser: expected a flowsde.adapters.Diffusion (with .schedule and .x0), got "
                f"{type(diffusion).__name__}."
            )
        if not (isinstance(outside, numbers.Real) and not isinstance(outside, bool) and outside == math.inf) and \
                check_positive("outside", outside, where="to_denoiser") < 1:
            raise InputError(f"to_denoiser: outside must be >= 1 (a factor beyond the range), or math.inf (any sigma "
                             f"> 0, evaluated at the nearest end), got {outside!r}.")
        self.diffusion = diffusion
        self.schedule = schedule
        self.outside = float(outside)
        tt = torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64)
        a, s = schedule.alpha(tt), schedule.sigma(tt)
        self.sigma_min = float(s[0] / a[0])
        self.sigma_max = float(s[1] / a[1]) if float(a[1]) > 0 else math.inf

    def round_sigma(self, sigma):
        """Identity (NVlabs/edm's ``round_sigma`` for continuous nets)."""
        return torch.as_tensor(sigma)

    def time(self, sigma: torch.Tensor) -> torch.Tensor:
        """Schedule time of EDM sigma ``r`` (float64), with ``r`` clamped to ``[sigma_min, sigma_max]``
        and ``t`` to ``[t_min, t_max]`` (guards round-off of the inverse map at the ends)."""
        r = torch.as_tensor(sigma).to(torch.float64).clamp(self.sigma_min, self.sigma_max)
        return self.schedule.t_from_sigma_ratio(r).clamp(self.schedule.t_min, self.schedule.t_max)

    def _eval(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D(x, sigma)`` without range validation (for samplers that validated their grid)."""
        t = self.time(sigma)
        a = self.schedule.alpha(t).to(device=x.device, dtype=x.dtype)
        return self.diffusion.x0(t, batch_broadcast(a, x) * x)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        check_call("Denoiser", sigma, x, order="(x, sigma)")
        sigma = _sigma_tensor(sigma, x, "Denoiser")
        s64 = sigma.detach().to(torch.float64)
        lo = self.sigma_min / self.outside * (1 - ROUNDING)
        hi = self.sigma_max * self.outside * (1 + ROUNDING)
        mn, mx = (float(v) for v in torch.aminmax(s64))  # one host read per call, at the user-facing boundary
        if not (lo <= mn and mx <= hi and mn > 0):  # sigma = 0 is out of range whatever outside is (outside=inf)
            bad = mn if not lo <= mn else mx
            raise InputError(
                f"Denoiser: sigma = {bad!r} is outside the schedule's range [sigma_min, sigma_max] = "
                f"[{self.sigma_min!r}, {self.sigma_max!r}] (r = sigma/alpha over [t_min, t_max]) by more than the "
                f"accepted factor outside = {self.outside:g} (within it, the model is evaluated at the nearest "
                "end). Pick sigma_min/sigma_max inside the range, or pass to_denoiser(..., outside=...) if a "
                "peer's solver needs more room."
            )
        return _check_out("Denoiser", self._eval(x, sigma), x)

    def __repr__(self) -> str:
        return f"Denoiser({self.diffusion!r}, sigma in [{self.sigma_min:g}, {self.sigma_max:g}])"


def to_denoiser(diffusion, *, outside: float = 2.0) -> Denoiser:
    """Expose a :class:`~flowsde.adapters.Diffusion` as a k-diffusion denoiser
    ``model(x, sigma)`` (see :class:`Denoiser`), so k-diffusion samplers, its
    ``log_likelihood`` and NVlabs/edm's ``edm_sampler`` run on it unchanged (after
    ``x *= sigmas[0]``). ``outside``: a ``sigma`` within this factor beyond
    ``[sigma_min, sigma_max]`` is evaluated at the nearest end (peers' adaptive stages);
    further out it is refused. ``outside=math.inf``: any ``sigma > 0`` (what k-diffusion's
    ``log_likelihood`` needs at ``rtol = atol = 1e-2``; see :class:`Denoiser`)."""
    return Denoiser(diffusion, outside=outside)


def from_denoiser(model: Callable, *, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
    """Wrap a k-diffusion / EDM denoiser ``model(x, sigma) -> x0`` as a
    :class:`~flowsde.adapters.Diffusion` with ``prediction="x0"`` under the
    :class:`~flowsde.adapters.schedules.EDM` schedule (``alpha = 1``,
    ``sigma = t``, so ``t`` *is* the denoiser's sigma).

    ``sigma_min`` / ``sigma_max`` (the schedule's ``t_min`` / ``t_max``)
    default to the model's own ``sigma_min`` / ``sigma_max`` attributes when
    they are positive and finite (NVlabs/edm nets carry them; ``EDMPrecond``'s
    are ``0`` and ``inf``), else to EDM's 0.002 and 80.
    """
    if not callable(model):
        raise InputError(f"from_denoiser: model must be callable model(x, sigma), got {type(model).__name__}.")
    check_net(model, "from_denoiser(model=...)", order="model(x, sigma)")

    def _default(given, attr, fallback):
        if given is not None:
            return float(given)
        v = getattr(model, attr, None)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return fallback
        return v if (math.isfinite(v) and v > 0) else fallback

    lo = _default(sigma_min, "sigma_min", 0.002)
    hi = _default(sigma_max, "sigma_max", 80.0)
    if not (0 < lo < hi < math.inf):
        raise InputError(f"from_denoiser: need 0 < sigma_min < sigma_max < inf, got {lo} and {hi}.")
    def net(x, t):
        return model(x, t)

    return Diffusion(net, EDM(sigma_min=lo, sigma_max=hi), prediction="x0")


class Precond:
    """A raw network ``F(x_in, c_noise)`` made a denoiser by EDM's preconditioning
    (Karras et al. 2022, Table 1; NVlabs/edm ``training/networks.py``):

        D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),

    ``x``: ``(B, *event)`` (scaled state); ``sigma``: number, 0-dim or ``(B,)``;
    ``F`` gets ``c_noise`` as a ``(B,)`` tensor and returns the shape of ``x``.
    Subclasses define :meth:`coefficients`. Unlike NVlabs/edm, nothing is cast
    to float32: the arithmetic follows ``x``'s dtype (cast ``F`` yourself).
    Use :meth:`diffusion` for a :class:`~flowsde.adapters.Diffusion`.
    """

    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __init__(self, F: Callable):
        if not callable(F):
            raise InputError(f"{type(self).__name__}(F=...): F must be callable F(x, c_noise), got {type(F).__name__}.")
        check_net(F, f"{type(self).__name__}(F=...)", order="F(x, c_noise)")
        self.F = F

    def coefficients(self, sigma: torch.Tensor):
        """``(c_skip, c_out, c_in, c_noise)``, each the shape of ``sigma``."""
        raise NotImplementedError(f"{type(self).__name__} must implement coefficients(sigma).")

    def round_sigma(self, sigma):
        """Identity (continuous nets), as NVlabs/edm."""
        return torch.as_tensor(sigma)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        check_call(type(self).__name__, sigma, x, order="(x, sigma)")
        sigma = _sigma_tensor(sigma, x, type(self).__name__)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_noise = c_noise.expand(x.shape[0]) if c_noise.dim() == 0 else c_noise
        Fx = _check_out(f"{type(self).__name__}: F", self.F(batch_broadcast(c_in, x) * x, c_noise), x)
        return batch_broadcast(c_skip, x) * x + batch_broadcast(c_out, x) * Fx

    def diffusion(self, *, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        """This denoiser as a ``Diffusion`` over the ``EDM`` schedule (see :func:`from_denoiser`)."""
        return from_denoiser(self, sigma_min=sigma_min, sigma_max=sigma_max)


class EDMPrecond(Precond):
    """EDM's preconditioning (NVlabs/edm ``EDMPrecond``; Karras et al. 2022, eq. 7 and Table 1):

        c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,

    with ``sd = sigma_data`` (0.5). ``c_skip``, ``c_out`` make the training
    target of ``F`` unit-variance for data of standard deviation ``sd``.
    """

    def __init__(self, F: Callable, *, sigma_data: float = 0.5, sigma_min: float = 0.0,
                 sigma_max: float = math.inf):
        super().__init__(F)
        check_positive("sigma_data", sigma_data, where="EDMPrecond")
        if not (0 <= sigma_min < sigma_max):
            raise InputError(f"EDMPrecond: need 0 <= sigma_min < sigma_max, got {sigma_min!r} and {sigma_max!r}.")
        self.sigma_data = float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def sigma_from_noise(self, c_noise):
        """Inverse of ``c_noise``: ``sigma = exp(4 c_noise)``."""
        return (4 * c_noise).exp()


class VPPrecond(Precond):
    """Variance-preserving preconditioning (NVlabs/edm ``VPPrecond``; Song et al.'s VP SDE):

        c_skip = 1,  c_out = -sigma,  c_in = 1 / sqrt(sigma^2 + 1),
        c_noise = (M - 1) sigma^-1(sigma),

    with ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` and
    ``sigma^-1(s) = (sqrt(beta_min^2 + 2 beta_d ln(1 + s^2)) - beta_min) / beta_d``.
    ``F`` is then an eps network of the VP schedule with ``beta_max = beta_min + beta_d``,
    evaluated at label ``(M - 1) t``. ``sigma_min = sigma(epsilon_t)``, ``sigma_max = sigma(1)``.
    """

    def __init__(self, F: Callable, *, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5):
        super().__init__(F)
        for k, v in (("beta_d", beta_d), ("M", M), ("epsilon_t", epsilon_t)):
            check_positive(k, v, where="VPPrecond")
        if not (math.isfinite(beta_min) and beta_min >= 0):
            raise InputError(f"VPPrecond: beta_min must be finite and >= 0, got {beta_min!r}.")
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), M, float(epsilon_t)
        self.sigma_min = float(self.sigma(torch.tensor(self.epsilon_t, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise

    def sigma_from_noise(self, c_noise):
        """Inverse of ``c_noise``: ``sigma((c_noise) / (M - 1))``."""
        return self.sigma(c_noise / (self.M - 1))


class VEPrecond(Precond):
    """Variance-exploding preconditioning (NVlabs/edm ``VEPrecond``; Song et al.'s VE SDE):

        c_skip = 1,  c_out = sigma,  c_in = 1,  c_noise = ln(sigma / 2),

    so ``F = sigma * score`` (``-eps``); defaults ``sigma_min = 0.02``, ``sigma_max = 100``.
    """

    def __init__(self, F: Callable, *, sigma_min: float = 0.02, sigma_max: float = 100.0):
        super().__init__(F)
        if not (0 < sigma_min < sigma_max < math.inf):
            raise InputError(f"VEPrecond: need 0 < sigma_min < sigma_max < inf, got {sigma_min} and {sigma_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = sigma
        c_in = torch.ones_like(sigma)
        c_noise = (0.5 * sigma).log()
        return c_skip, c_out, c_in, c_noise

    def sigma_from_noise(self, c_noise):
        """Inverse of ``c_noise``: ``sigma = 2 exp(c_noise)``."""
        return 2 * c_noise.exp()
