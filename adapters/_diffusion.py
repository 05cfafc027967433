"""``Diffusion``: a network of any parameterization under any schedule, as core problems.

With ``x_t = alpha x_0 + sigma eps`` (data at ``t = 0``) every prediction is an
exact affine function of the others (DESIGN.md; flow_matching ``path/affine.py``):

    score = -eps/sigma,   x0 = (x - sigma eps)/alpha,   v = alpha eps - sigma x0  (alpha^2 + sigma^2 = 1),
    velocity u = alpha' x0 + sigma' eps = f x - g^2/2 score,

and from a velocity, with ``D = alpha sigma' - alpha' sigma`` (flow_matching
``AffineProbPath.velocity_to_epsilon``):

    eps = (alpha u - alpha' x)/D,   x0 = (sigma' x - sigma u)/D.

The beta-family (DESIGN.md; Song et al. 2021, Karras et al. 2022 eq. 6) all share the marginals p_t:

    reverse:  dx = [f x - (1+beta)/2 g^2 score] dt + sqrt(beta) g dW   (solve with decreasing ts),
    forward:  dx = [f x - (1-beta)/2 g^2 score] dt + sqrt(beta) g dW   (increasing ts),

written here as ``u -/+ beta/2 g^2 score`` so that each drift costs one network call.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from flowsde import ODE, SDE, InputError

from ._prior import GaussianPrior
from .schedules import Schedule

__all__ = ["Diffusion", "PREDICTIONS"]

PREDICTIONS = ("eps", "score", "x0", "v", "velocity")
BetaLike = Union[float, int, Callable[[torch.Tensor], Union[torch.Tensor, float]]]


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return c.reshape((-1,) + (1,) * (x.dim() - 1))


class _Pred:
    """One network call at (t, x) and the exact conversions derived from it (lazily)."""

    def __init__(self, dif: "Diffusion", t, x: torch.Tensor):
        self.dif = dif
        sched = dif.schedule
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
            raise InputError(f"Diffusion: x must be a floating tensor of shape (B, *event), got "
                             f"{type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}.")
        B = x.shape[0]
        if not isinstance(t, torch.Tensor):
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                t = torch.tensor(float(t), dtype=x.dtype, device=x.device)
            else:
                raise InputError(f"Diffusion: t must be a 0-dim or (B,) tensor or a number, got {type(t).__name__}.")
        if not (t.dim() == 0 or (t.dim() == 1 and t.shape[0] == B)):
            raise InputError(f"Diffusion: t must be 0-dim or of shape (B,) = ({B},), got shape {tuple(t.shape)}.")
        self.t = t
        self.x = x
        self.wd = dif.dtype or x.dtype  # working dtype of the schedule math
        tb = t.to(device=x.device, dtype=self.wd)
        self.tb = tb.expand(B) if t.dim() == 0 else tb
        out = dif.net(x, sched.net_time(self.tb).to(x.dtype))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"Diffusion: net(x, t) returned {got} for x of shape {tuple(x.shape)}; a "
                             f"{dif.prediction!r}-prediction network must return the shape of x.")
        self.o = out.to(self.wd)
        self.xw = x.to(self.wd)
        self._c = {}

    # coefficients, (B, 1, ..., 1), computed on demand
    def c(self, name: str) -> torch.Tensor:
        if name not in self._c:
            self._c[name] = _bc(getattr(self.dif.schedule, name)(self.tb), self.xw)
        return self._c[name]

    def check(self, what: str, divides_alpha: bool = False) -> None:
        self.dif._check_t(self.t, what, divides_alpha)

    def out(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(self.x.dtype)

    # -- the two canonical quantities ----------------------------------------------------
    def eps(self) -> torch.Tensor:
        p, x, o = self.dif.prediction, self.xw, self.o
        if p == "eps":
            return o
        self.check("eps")
        if p == "score":
            return -self.c("sigma") * o
        if p == "x0":
            return (x - self.c("alpha") * o) / self.c("sigma")
        if p == "v":
            return self.c("sigma") * x + self.c("alpha") * o
        a, s, da, ds = self.c("alpha"), self.c("sigma"), self.c("d_alpha"), self.c("d_sigma")
        return (a * o - da * x) / (a * ds - da * s)

    def x0(self) -> torch.Tensor:
        p, x, o = self.dif.prediction, self.xw, self.o
        if p == "x0":
            return o
        if p in ("eps", "score"):
            self.check("x0", divides_alpha=True)
            return (x - self.c("sigma") * self.eps()) / self.c("alpha")
        self.check("x0")
        if p == "v":
            return self.c("alpha") * x - self.c("sigma") * o
        a, s, da, ds = self.c("alpha"), self.c("sigma"), self.c("d_alpha"), self.c("d_sigma")
        return (ds * x - s * o) / (a * ds - da * s)

    def score(self) -> torch.Tensor:
        if self.dif.prediction == "score":
            return self.o
        self.check("score")
        return -self.eps() / self.c("sigma")

    def velocity(self) -> torch.Tensor:
        p, x = self.dif.prediction, self.xw
        if p == "velocity":
            return self.o
        if p in ("eps", "score"):
            # u = f x + (sigma' - f sigma) eps  (= f x - g^2/2 score)
            self.check("velocity", divides_alpha=True)
            f = self.c("d_alpha") / self.c("alpha")
            return f * x + (self.c("d_sigma") - f * self.c("sigma")) * self.eps()
        self.check("velocity")
        return self.c("d_alpha") * self.x0() + self.c("d_sigma") * self.eps()

    def v(self) -> torch.Tensor:
        if self.dif.prediction == "v":
            return self.o
        self.check("v", divides_alpha=self.dif.prediction in ("eps", "score"))
        return self.c("alpha") * self.eps() - self.c("sigma") * self.x0()


class Diffusion:
    """A network ``net(x, t)`` of one parameterization under a noise schedule.

    Arguments:
        net: ``net(x, t) -> Tensor`` with ``x`` of shape ``(B, *event)`` and ``t`` a ``(B,)``
            tensor: ``schedule.net_time(t)``, the schedule's own time (for
            :class:`~flowsde.adapters.schedules.Discrete`, the configured step label).
            Returns the shape of ``x``.
        schedule: a :class:`~flowsde.adapters.schedules.Schedule`.
        prediction: what ``net`` predicts: ``"eps"`` (noise), ``"score"``
            (``grad_x log p_t``), ``"x0"`` (denoised data), ``"v"``
            (``alpha eps - sigma x0``, Salimans & Ho 2022; variance-preserving schedules only)
            or ``"velocity"`` (``dx_t/dt`` of the path, flow matching).
        dtype: ``None`` (schedule math in the dtype of ``x``) or e.g. ``torch.float64``:
            coefficients and conversions in that dtype, the result cast back to ``x.dtype``.
            The network is always called with ``x`` as given.
        check_t: range check of ``t`` for conversions: ``"auto"`` (when ``t`` is on the CPU,
            where it costs no device sync), ``True`` (always), ``False`` (never).

    Raises:
        InputError: unknown prediction, ``"v"`` on a schedule with ``alpha^2 + sigma^2 != 1``, a
            non-callable net, a bad schedule / dtype / check_t; at call time, ``t`` outside
            ``[t_min, t_max]`` for a conversion, or a net output of the wrong shape.
    """

    def __init__(self, net: Callable, schedule: Schedule, prediction: str = "eps", *,
                 dtype: Optional[torch.dtype] = None, check_t: Union[bool, str] = "auto"):
        if not callable(net):
            raise InputError(f"Diffusion(net=...): net must be callable net(x, t), got {type(net).__name__}.")
        if not isinstance(schedule, Schedule):
            raise InputError(f"Diffusion(schedule=...): expected a flowsde.adapters.schedules.Schedule, got "
                             f"{type(schedule).__name__}.")
        if prediction not in PREDICTIONS:
            raise InputError(f"Diffusion(prediction={prediction!r}): must be one of {PREDICTIONS}.")
        if prediction == "v" and not schedule.variance_preserving:
            raise InputError(f"Diffusion(prediction='v'): v = alpha eps - sigma x0 is only a parameterization when "
                             f"alpha^2 + sigma^2 = 1, which {schedule!r} does not satisfy. Use a variance-preserving "
                             "schedule (VP, Cosine, Discrete) or convert the network's output to eps/x0 yourself.")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InputError(f"Diffusion(dtype={dtype!r}): must be None or a floating torch.dtype.")
        if check_t not in (True, False, "auto"):
            raise InputError(f"Diffusion(check_t={check_t!r}): must be True, False or 'auto'.")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.dtype = dtype
        self.check_t = check_t
        t_lo, t_hi = float(schedule.t_min), float(schedule.t_max)
        self._range = (t_lo, t_hi)
        self._alpha_zero_at_tmax = float(schedule.alpha(torch.tensor(t_hi, dtype=torch.float64))) <= 0.0

    def __repr__(self) -> str:
        return f"Diffusion(net={getattr(self.net, '__name__', self.net)!r}, schedule={self.schedule!r}, " \
               f"prediction={self.prediction!r})"

    # -- guards ----------------------------------------------------------------------------
    def _check_t(self, t: torch.Tensor, what: str, divides_alpha: bool) -> None:
        if self.check_t is False or (self.check_t == "auto" and t.device.type != "cpu"):
            return
        lo, hi = self._range
        # bounds compared in t's own dtype (a float32 grid ending at float32(t_min) passes)
        lo_t = torch.tensor(lo, dtype=t.dtype)
        hi_t = torch.tensor(hi, dtype=t.dtype)
        tc = t.detach()
        bad = (tc < lo_t) | (tc > hi_t)
        if divides_alpha and self._alpha_zero_at_tmax:
            bad = bad | (tc >= hi_t)
        if bool(bad.any()):
            tv = tc.reshape(-1)[bad.reshape(-1)][0].item()
            why = (f"alpha(t_max) = 0, so the {what} of a {self.prediction!r} model needs t < t_max"
                   if lo <= tv <= hi else "outside the range where the conversion is defined")
            raise InputError(f"Diffusion.{what}: t = {tv!r} is {why}: the valid range of {self.schedule!r} is "
                             f"[t_min, t_max] = [{lo!r}, {hi!r}] (sigma(t) = 0 or alpha(t) = 0 at the ends). "
                             f"Keep the time grid inside it, e.g. stop the sampler at t_min.")

    # -- conversions -----------------------------------------------------------------------
    def score(self, t, x: torch.Tensor) -> torch.Tensor:
        """``grad_x log p_t(x) = -eps/sigma``; shape of ``x``."""
        p = _Pred(self, t, x)
        return p.out(p.score())

    def eps(self, t, x: torch.Tensor) -> torch.Tensor:
        """``E[eps | x_t = x] = -sigma score``; shape of ``x``."""
        p = _Pred(self, t, x)
        return p.out(p.eps())

    def x0(self, t, x: torch.Tensor) -> torch.Tensor:
        """``E[x_0 | x_t = x] = (x - sigma eps)/alpha`` (the denoiser); shape of ``x``."""
        p = _Pred(self, t, x)
        return p.out(p.x0())

    def v(self, t, x: torch.Tensor) -> torch.Tensor:
        """``v = alpha eps - sigma x0`` (variance-preserving schedules only); shape of ``x``."""
        if not self.schedule.variance_preserving:
            raise InputError(f"Diffusion.v: v-prediction is undefined on {self.schedule!r} (alpha^2 + sigma^2 != 1).")
        p = _Pred(self, t, x)
        return p.out(p.v())

    def velocity(self, t, x: torch.Tensor) -> torch.Tensor:
        """PF-ODE velocity ``u = alpha' x0 + sigma' eps = f x - g^2/2 score``; shape of ``x``."""
        p = _Pred(self, t, x)
        return p.out(p.velocity())

    # -- problems --------------------------------------------------------------------------
    def _beta_fn(self, beta: BetaLike, name: str) -> Callable:
        if callable(beta):
            def fn(tb):
                b = beta(tb)
                b = torch.as_tensor(b, dtype=tb.dtype, device=tb.device)
                if b.dim() > 1 or (b.dim() == 1 and b.shape[0] != tb.shape[0]):
                    raise InputError(f"Diffusion.{name}: beta(t) must return a number, 0-dim or (B,) tensor; "
                                     f"got shape {tuple(b.shape)} for t of shape {tuple(tb.shape)}.")
                if b.device.type == "cpu" and bool((b < 0).any()):
                    raise InputError(f"Diffusion.{name}: beta(t) must be >= 0; got {b.min().item()!r}.")
                return b
            return fn
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise InputError(f"Diffusion.{name}(beta={beta!r}): beta must be a finite number >= 0 or a function "
                             "beta(t) >= 0.")
        return float(beta)

    def _sde(self, beta: BetaLike, sign: float, name: str) -> SDE:
        bf = self._beta_fn(beta, name)

        if sign > 0 and not callable(bf) and bf == 1.0:
            # beta = 1 forward: the noising SDE dx = f x dt + g dW itself, no network needed
            def drift(t, x):
                wd = self.dtype or x.dtype
                tb = t.to(wd).expand(x.shape[0]) if t.dim() == 0 else t.to(wd)
                return (_bc(self.schedule.f(tb), x) * x.to(wd)).to(x.dtype)

            return SDE(drift, self._diffusion_fn(bf), noise_type="scalar", score=self.score)

        def drift(t, x):
            p = _Pred(self, t, x)
            u = p.velocity()
            b = bf(p.tb) if callable(bf) else bf
            if not callable(bf) and b == 0.0:
                return p.out(u)
            if self._alpha_zero_at_tmax:
                p.check(f"{name} drift (g^2 is infinite where alpha = 0)", divides_alpha=True)
            corr = (_bc(b, p.xw) if isinstance(b, torch.Tensor) and b.dim() == 1 else b) * p.c("g2") * p.score()
            return p.out(u + sign * 0.5 * corr)

        return SDE(drift, self._diffusion_fn(bf), noise_type="scalar", score=self.score)

    def _diffusion_fn(self, bf) -> Callable:
        def diffusion(t, x):
            wd = self.dtype or x.dtype
            tb = t.to(wd).expand(x.shape[0]) if t.dim() == 0 else t.to(wd)
            b = bf(tb) if callable(bf) else bf
            g = torch.sqrt(b * self.schedule.g2(tb))
            return _bc(g, x).to(x.dtype)

        return diffusion

    def reverse_sde(self, beta: BetaLike = 1.0) -> SDE:
        """The reverse-time family ``dx = [f x - (1+beta)/2 g^2 score] dt + sqrt(beta) g dW``.

        Solve it with *decreasing* ``ts`` (``T -> t_min``): a backward Euler-Maruyama step with
        ``|dt|`` is exactly this SDE with a backward Brownian motion. ``beta = 1`` is
        Anderson's reverse SDE (score_sde ``sde.reverse``), ``beta = 0`` the PF-ODE with a
        zero diffusion. ``beta``: a number ``>= 0`` or ``beta(t) -> (B,) tensor or number``
        (``t`` a ``(B,)`` tensor). EDM's ``beta(t)`` (Karras et al. eq. 6, alpha = 1,
        sigma = t) is the same family: ``beta_here(t) = 2 beta_EDM(t) sigma(t)^2 / g(t)^2``.
        """
        return self._sde(beta, -1.0, "reverse_sde")

    def forward_sde(self, beta: BetaLike = 1.0) -> SDE:
        """The forward-time family ``dx = [f x - (1-beta)/2 g^2 score] dt + sqrt(beta) g dW``
        (solve with increasing ``ts``); ``beta = 1`` is the noising SDE ``dx = f x dt + g dW``, whose
        drift is computed without calling the network."""
        return self._sde(beta, +1.0, "forward_sde")

    def pf_ode(self) -> ODE:
        """The probability-flow ODE ``dx/dt = f x - g^2/2 score = alpha' x0 + sigma' eps`` (one net call)."""
        return ODE(self.velocity, score=self.score)

    def prior(self) -> GaussianPrior:
        """``N(0, sigma(T)^2 I)`` at ``T = schedule.t_max`` (see :class:`GaussianPrior`)."""
        T = torch.tensor(float(self.schedule.t_max), dtype=torch.float64)
        return GaussianPrior(float(self.schedule.sigma(T)))

    def log_likelihood(self, x: torch.Tensor, **kw):
        """Exact ``log p_0(x)`` under the PF-ODE; see :func:`flowsde.adapters._likelihood.log_likelihood`."""
        from ._likelihood import log_likelihood

        return log_likelihood(self, x, **kw)
