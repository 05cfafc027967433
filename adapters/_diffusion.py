"""``Diffusion``: a network of any parameterization under any schedule, as core problems.

With ``x_t = alpha x_0 + sigma eps`` (data at ``t = 0``) every prediction is an
exact affine function of the others (docs/design.md, "Conventions"; flow_matching ``path/affine.py``):

    score = -eps/sigma,   x0 = (x - sigma eps)/alpha,   v = alpha eps - sigma x0  (alpha^2 + sigma^2 = 1),
    velocity u = alpha' x0 + sigma' eps = f x - g^2/2 score,

and from a velocity, with ``D = alpha sigma' - alpha' sigma`` (flow_matching
``AffineProbPath.velocity_to_epsilon``):

    eps = (alpha u - alpha' x)/D,   x0 = (sigma' x - sigma u)/D.

The beta-family (docs/design.md, "The Itô / beta family"; Song et al. 2021, Karras et al. 2022
eq. 6) all share the marginals p_t:

    reverse:  dx = [f x - (1+beta)/2 g^2 score] dt + sqrt(beta) g dW   (solve on a decreasing grid),
    forward:  dx = [f x - (1-beta)/2 g^2 score] dt + sqrt(beta) g dW   (an increasing grid),

written here as ``u -/+ beta/2 g^2 score`` so that each drift costs one network call.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Union

import torch

from flowsde import ODE, SDE, InputError, SemiLinearSDE
from flowsde._internal import ROUNDING, batch_broadcast, rounding_slack

from ._inputs import check_call, check_net, swapped_output_hint
from ._likelihood import log_likelihood as _log_likelihood
from ._prior import GaussianPrior
from ._problems import semilinear_ode, semilinear_sde
from .schedules import Schedule

__all__ = ["Diffusion", "PREDICTIONS"]

PREDICTIONS = ("eps", "score", "x0", "v", "velocity")
BetaLike = Union[float, int, Callable[[torch.Tensor], Union[torch.Tensor, float]]]


_F64 = torch.float64
_CACHE_SIZE = 4096
_FOUR = ("alpha", "sigma", "d_alpha", "d_sigma")


class _Coef:
    """The schedule's coefficients at one time, computed on demand in float64 from the float64
    time and cast once to the working dtype; kept per time value by :class:`Diffusion` when the
    time is a 0-dim CPU tensor (a grid point), so a repeated time costs no schedule arithmetic.

    For such a time (``scalar``) the schedule is evaluated once per coefficient and the
    conversion formulas run on Python floats (float64, no tensor dispatch); otherwise on the
    ``(B,)`` or device tensor as given.

    ``bad``: ``None`` or the message tail of a time outside ``[t_min, t_max]`` (beyond rounding);
    ``at_end``: ``t >= t_max`` where ``alpha(t_max) = 0`` (``None`` when unknown: device time, unchecked).
    """

    __slots__ = ("sched", "t", "wd", "device", "bad", "at_end", "vals", "scalar")

    def __init__(self, sched, t64: torch.Tensor, wd, device, bad, at_end, scalar: bool = False):
        self.sched, self.t, self.wd, self.device = sched, t64, wd, device
        self.bad, self.at_end, self.scalar = bad, at_end, scalar
        self.vals = {}

    def cached(self, key, fn):
        """``fn()`` once per key (per time value when this object is kept by the Diffusion)."""
        v = self.vals.get(key)
        if v is None:
            v = self.vals[key] = fn()
        return v

    def raw(self, name: str):
        """Schedule coefficient ``name`` at ``t`` in float64: a Python float for a scalar time, else a tensor.
        ``alpha, sigma, d_alpha, d_sigma`` come from one ``schedule.coefficients(t)`` call."""
        key = ("raw", name)
        v = self.vals.get(key)
        if v is None:
            if name in _FOUR:
                for n, c in zip(_FOUR, self.sched.coefficients(self.t)):
                    self.vals[("raw", n)] = float(c) if self.scalar else c
                return self.vals[key]
            c = getattr(self.sched, name)(self.t)
            v = self.vals[key] = float(c) if self.scalar else c
        return v

    def tensor(self, v) -> torch.Tensor:
        """A float64 value (float or tensor) in the working dtype, on the state's device."""
        if isinstance(v, float):
            return torch.tensor(v, dtype=self.wd, device=self.device)
        return v.to(device=self.device, dtype=self.wd)

    def get(self, name: str) -> torch.Tensor:
        """Schedule coefficient ``name`` in the working dtype, on the state's device."""
        return self.cached(name, lambda: self.tensor(self.raw(name)))

    def affine64(self, pred: str, target: str):
        """``(A, C)`` of ``target = A x + C o`` for a ``pred`` network (see :func:`_convert`), float64."""
        def build():
            units = ((1.0, 0.0), (0.0, 1.0))
            try:
                return tuple(_convert(pred, target, x, o, self.raw) for x, o in units)
            except ZeroDivisionError:  # Python floats raise where IEEE arithmetic gives inf / nan
                def c(n):
                    return torch.as_tensor(self.raw(n), dtype=_F64)
                return tuple(float(_convert(pred, target, torch.tensor(x, dtype=_F64), torch.tensor(o, dtype=_F64),
                                            c)) for x, o in units)
        return self.cached(("affine64", pred, target), build)

    def affine(self, pred: str, target: str):
        """:meth:`affine64` cast once to the working dtype, on the state's device."""
        return self.cached(("affine", pred, target), lambda: tuple(self.tensor(v) for v in self.affine64(pred, target)))

    def label(self, dtype, B: int) -> torch.Tensor:
        """The network's time ``net_time(t)`` as a ``(B,)`` tensor, cast once to the state's dtype
        (an expanded view for a 0-dim time: it cannot be written in place)."""
        key = ("label", dtype, B)
        v = self.vals.get(key)
        if v is None:
            v = torch.as_tensor(self.sched.net_time(self.t)).to(device=self.device, dtype=dtype)
            v = self.vals[key] = v.expand(B) if v.dim() == 0 else v
        return v


def _sqrt(v, dtype, device) -> torch.Tensor:
    """``sqrt(v)`` of a float64 float or tensor, as a tensor of ``dtype`` on ``device``."""
    if isinstance(v, float):
        return torch.tensor(math.sqrt(v), dtype=dtype, device=device)
    return torch.sqrt(torch.as_tensor(v, dtype=_F64)).to(device=device, dtype=dtype)


def _check_output(dif, out, x: torch.Tensor, lab: torch.Tensor, where: str) -> None:
    """Refuse a network output that is not a tensor of the shape of ``x``."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{where}: net(x, t) returned {got} for x of shape {tuple(x.shape)}; a "
                         f"{dif.prediction!r}-prediction network must return the shape of x."
                         + swapped_output_hint(out, lab, x))


class _GridEntry:
    """What :meth:`Diffusion._keep` holds for one grid time and kind."""

    __slots__ = ("dtype", "device", "B", "label", "A", "C")

    def __init__(self, dtype, device: int, B: int, label, A, C):
        self.dtype, self.device, self.B, self.label, self.A, self.C = dtype, device, B, label, A, C


class _Pred:
    """One network call at (t, x) and the exact conversions derived from it (lazily)."""

    __slots__ = ("dif", "x", "xw", "o", "co", "B", "where")

    def __init__(self, dif: "Diffusion", t, x: torch.Tensor, where: str):
        self.dif, self.where = dif, where
        co = self.co = dif._coefs(t, x, where)
        self.B = B = x.shape[0]
        lab = co.label(x.dtype, B)
        out = dif.net(x, lab)
        _check_output(dif, out, x, lab, where)
        self.x = x
        self.o = out if out.dtype == co.wd else out.to(co.wd)
        self.xw = x if x.dtype == co.wd else x.to(co.wd)

    @property
    def tb(self) -> torch.Tensor:
        """The float64 time as a ``(B,)`` tensor (for user callables such as ``beta(t)``)."""
        t = self.co.t
        return t.expand(self.B) if t.dim() == 0 else t

    def out(self, y: torch.Tensor) -> torch.Tensor:
        return y if y.dtype == self.x.dtype else y.to(self.x.dtype)

    def affine(self, target: str):
        """``(A, C)`` with ``target = A x + C o`` (see :func:`_convert`), after the range check."""
        p = self.dif.prediction
        self.dif._refuse(self.co, self.where, p in ("eps", "score") and target in ("x0", "velocity", "v"))
        self.dif._refuse_singular(self.co, self.where, target)
        A, C = self.co.affine(p, target)
        if A.dim():  # per-sample times: (B,) -> (B, 1, ..., 1)
            A, C = batch_broadcast(A, self.xw), batch_broadcast(C, self.xw)
        return A, C

    def get(self, target: str) -> torch.Tensor:
        """``target`` of the network output: the output itself when native (unchecked: the network
        defines its own domain), else ``A x + C o`` with the cached coefficients (2 tensor ops)."""
        if target == self.dif.prediction:
            return self.o
        co = self.co
        if co.scalar:  # a grid time: checks passed and coefficients kept per time value
            key = ("checked", target, self.dif.check_t)
            AC = co.vals.get(key)
            if AC is None:
                AC = co.vals[key] = self.affine(target)
            A, C = AC
        else:
            A, C = self.affine(target)
        return torch.addcmul(C * self.o, A, self.xw)


def _convert(pred: str, target: str, x, o, c):
    """``target`` in (eps, x0, score, velocity, v) from a ``pred``-network's output ``o`` at state ``x``;
    ``c(name)`` gives a schedule coefficient. Every conversion is affine in ``(x, o)``: evaluated at
    ``(x, o) = (1, 0)`` and ``(0, 1)`` it gives the coefficients ``A``, ``C`` of ``target = A x + C o``."""
    if target == pred:
        return o
    if target == "eps":
        if pred == "score":
            return -c("sigma") * o
        if pred == "x0":
            return (x - c("alpha") * o) / c("sigma")
        if pred == "v":
            return c("sigma") * x + c("alpha") * o
        a, s, da, ds = c("alpha"), c("sigma"), c("d_alpha"), c("d_sigma")
        return (a * o - da * x) / (a * ds - da * s)
    if target == "x0":
        if pred in ("eps", "score"):
            return (x - c("sigma") * _convert(pred, "eps", x, o, c)) / c("alpha")
        if pred == "v":
            return c("alpha") * x - c("sigma") * o
        a, s, da, ds = c("alpha"), c("sigma"), c("d_alpha"), c("d_sigma")
        return (ds * x - s * o) / (a * ds - da * s)
    if target == "score":
        return -_convert(pred, "eps", x, o, c) / c("sigma")
    if target == "velocity":
        if pred in ("eps", "score"):
            # u = f x + (sigma' - f sigma) eps  (= f x - g^2/2 score)
            f = c("d_alpha") / c("alpha")
            return f * x + (c("d_sigma") - f * c("sigma")) * _convert(pred, "eps", x, o, c)
        return c("d_alpha") * _convert(pred, "x0", x, o, c) + c("d_sigma") * _convert(pred, "eps", x, o, c)
    if target == "v":
        return c("alpha") * _convert(pred, "eps", x, o, c) - c("sigma") * _convert(pred, "x0", x, o, c)
    raise ValueError(target)


class Diffusion:
    """A network ``net(x, t)`` of one parameterization under a noise schedule.

    Arguments:
        net: ``net(x, t) -> Tensor`` with ``x`` of shape ``(B, *event)`` and ``t`` a ``(B,)``
            tensor: ``schedule.net_time(t)``, the schedule's own time (for
            :class:`~flowsde.adapters.schedules.Discrete`, the configured step label).
            Returns the shape of ``x``. For a 0-dim time that ``t`` tensor is kept with the time's
            coefficients and handed out again at the same time: do not modify it in place.
        schedule: a :class:`~flowsde.adapters.schedules.Schedule`.
        prediction: what ``net`` predicts: ``"eps"`` (noise), ``"score"``
            (``grad_x log p_t``), ``"x0"`` (denoised data), ``"v"``
            (``alpha eps - sigma x0``, Salimans & Ho 2022; variance-preserving schedules only)
            or ``"velocity"`` (``dx_t/dt`` of the path, flow matching).
        compute_dtype: ``None`` (conversions applied in the dtype of ``x``) or e.g. ``torch.float64``:
            applied in that dtype, the result cast back to ``x.dtype``. Coefficients are always
            computed in float64 from the float64 time. The network is called with ``x`` as given.
        check_t: range check of ``t`` for conversions: ``"auto"`` (when ``t`` is on the CPU,
            where it costs no device sync; a device time is only clamped within rounding of
            the bounds), ``True`` (always), ``False`` (never). A time off the range by rounding
            only (:data:`ROUNDING` relative to the bound) is accepted and clamped.

    Time and cost: ``t`` is used in float64 (the problems declare ``time_dtype=torch.float64``)
    and cast once, at the network call. The coefficients of each 0-dim CPU time are computed
    once and kept (see ``docs/adapters.md``, "Guards").

    Raises:
        InputError: unknown prediction, ``"v"`` on a schedule with ``alpha^2 + sigma^2 != 1``, a
            non-callable net, a net with parameters on the meta device or a ``(t, x)`` signature,
            a bad schedule / dtype / check_t; at call time, swapped ``(t, x)``, meta tensors,
            ``t`` outside ``[t_min, t_max]`` beyond rounding for a conversion, or a net output of
            the wrong shape.
    """

    def __init__(self, net: Callable, schedule: Schedule, prediction: str = "eps", *,
                 compute_dtype: Optional[torch.dtype] = None, check_t: Union[bool, str] = "auto"):
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
        if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
            raise InputError(f"Diffusion(compute_dtype={compute_dtype!r}): must be None or a floating torch.dtype.")
        if check_t not in (True, False, "auto"):
            raise InputError(f"Diffusion(check_t={check_t!r}): must be True, False or 'auto'.")
        check_net(net, "Diffusion(net=...)")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.compute_dtype = compute_dtype
        self.check_t = check_t
        t_lo, t_hi = float(schedule.t_min), float(schedule.t_max)
        self._range = (t_lo, t_hi)
        self._slack = rounding_slack(t_lo, t_hi)
        self._alpha_zero_at_tmax = float(schedule.alpha(torch.tensor(t_hi, dtype=_F64))) <= 0.0
        self._cache: dict = {}
        self._grid: dict = {}  # (time value, kind, check_t) -> _GridEntry (see _kept)

    def __repr__(self) -> str:
        return f"Diffusion(net={getattr(self.net, '__name__', self.net)!r}, schedule={self.schedule!r}, " \
               f"prediction={self.prediction!r})"

    # -- time: checks, rounding at the ends, coefficients ---------------------------------
    def _coefs(self, t, x, where: str) -> _Coef:
        """Validate ``(t, x)`` and return the schedule's coefficients at ``t`` (float64 time).

        A 0-dim CPU time (a grid point) is read once as a Python float (no device sync), checked
        against ``[t_min, t_max]`` in float64, and its coefficients are kept per value. Other
        times are checked on the CPU (``check_t="auto"``) or everywhere (``True``) with one
        host read, and otherwise only clamped on the device when within rounding of a bound.
        """
        check_call(where, t, x)
        wd = self.compute_dtype or x.dtype
        if isinstance(t, torch.Tensor):
            if t.dim() == 0 and t.is_cpu and not t.requires_grad:
                tf = t.item()
            else:
                B = x.shape[0]
                if not (t.dim() == 0 or (t.dim() == 1 and t.shape[0] == B)):
                    raise InputError(f"{where}: t must be 0-dim or of shape (B,) = ({B},), got shape "
                                     f"{tuple(t.shape)}.")
                if t.dtype == torch.bool or t.is_complex():
                    raise InputError(f"{where}: t must be a real tensor, got dtype {t.dtype}.")
                return self._tensor_coefs(t, x, wd)
        elif isinstance(t, (int, float)) and not isinstance(t, bool):
            tf = float(t)
        else:
            raise InputError(f"{where}: t must be a number, a 0-dim or a (B,) tensor, got {type(t).__name__}.")
        if not isinstance(tf, float):  # a 0-dim integer / bool tensor
            if isinstance(tf, bool) or not isinstance(tf, int):
                raise InputError(f"{where}: t must be a real number, got {t!r}.")
            tf = float(tf)
        key = (tf, wd, x.get_device())
        co = self._cache.get(key)
        if co is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
                self._grid.clear()
            lo, hi = self._range
            bad, tc = self._classify(tf, tf)
            if bad is None:
                tc = min(max(tf, lo), hi)
            co = self._cache[key] = _Coef(self.schedule, torch.tensor(tc, dtype=_F64), wd, x.device, bad,
                                          self._alpha_zero_at_tmax and tc >= hi, scalar=True)
        return co

    def _classify(self, t_low: float, t_high: float):
        """``(None, _)`` when ``[t_low, t_high]`` lies in the range up to rounding, else
        ``(message, value)`` naming the offending time with all its digits."""
        (lo, hi), (s_lo, s_hi) = self._range, self._slack
        if t_low < lo - s_lo:
            return (f"t = {t_low!r} is below t_min = {lo!r} of {self.schedule!r} by {lo - t_low:.3g}", t_low)
        if t_high > hi + s_hi:
            return (f"t = {t_high!r} is above t_max = {hi!r} of {self.schedule!r} by {t_high - hi:.3g}", t_high)
        if t_low != t_low or t_high != t_high:
            return (f"t is NaN (the range of {self.schedule!r} is [{lo!r}, {hi!r}])", t_low)
        return None, None

    def _tensor_coefs(self, t: torch.Tensor, x: torch.Tensor, wd) -> _Coef:
        t64 = t if t.dtype == _F64 else t.to(_F64)
        (lo, hi), (s_lo, s_hi) = self._range, self._slack
        bad, at_end = None, None
        if self.check_t is True or (self.check_t == "auto" and t.device.type == "cpu"):
            mn, mx = (float(v) for v in torch.aminmax(t64.detach()))  # one host read
            bad, _ = self._classify(mn, mx)
            if bad is None and (mn < lo or mx > hi):
                t64 = t64.clamp(lo, hi)
            at_end = self._alpha_zero_at_tmax and mx >= hi
        elif self.check_t == "auto":  # on a device: no host sync; only times within rounding are clamped
            t64 = torch.where((t64 < lo) & (t64 >= lo - s_lo), lo, t64)
            t64 = torch.where((t64 > hi) & (t64 <= hi + s_hi), hi, t64)
        return _Coef(self.schedule, t64, wd, x.device, bad, at_end)

    def _refuse(self, co: _Coef, what: str, divides_alpha: bool) -> None:
        """Raise for a conversion at a time where it is undefined (unless ``check_t=False``)."""
        if self.check_t is False:
            return
        lo, hi = self._range
        if co.bad is not None:
            raise InputError(
                f"{what}: {co.bad}, more than rounding (a time within {ROUNDING:g} of a bound, relative, is "
                f"clamped onto it). The valid range of the {self.prediction!r} model's conversions is [t_min, t_max] "
                f"= [{lo!r}, {hi!r}] (sigma(t) = 0 or alpha(t) = 0 outside). Keep the time grid inside it: start "
                f"at or below t_max = {hi!r} and end at or above t_min = {lo!r}.")
        if divides_alpha and co.at_end:
            raise InputError(
                f"{what}: at t = t_max = {hi!r}, alpha(t) = 0 for {self.schedule!r} (pure noise), and this conversion "
                f"of a {self.prediction!r} model divides by alpha: the network's output says nothing about x0 "
                f"there. Start the grid just below t_max (e.g. {hi!r} - 1e-3), or use a model predicting "
                "'velocity', 'x0' or 'v', whose conversions are finite at t_max.")

    # -- conversions -----------------------------------------------------------------------
    def _kept(self, kind, t, x: torch.Tensor, where: Optional[str] = None):
        """The answer at a grid time from the entry :meth:`_keep` made (a 0-dim CPU time without
        gradient, seen before, with ``x`` of the dtype, device and batch size it was kept for), or
        ``None`` where there is none: ``A x + C net(x, t)`` (the network call, its output check and two
        tensor ops), the network's output itself (``A = None``), or the diffusion ``C`` (no network).

        The full path (``_coefs``, range and singularity checks, coefficients) ran for this time, kind
        and ``check_t``; what a call can still change (dtype, device, batch, a meta or 0-dim ``x``) is
        compared here (docs/adapters.md, "Guards"). ``where`` names the caller in an error
        (default ``Diffusion.<kind>``)."""
        if type(t) is not torch.Tensor or type(x) is not torch.Tensor or t.dim() or not t.is_cpu or t.requires_grad:
            return None
        e = self._grid.get((t.item(), kind, self.check_t))
        if (e is None or x.dtype is not e.dtype or x.get_device() != e.device or x.is_meta or not x.dim()
                or x.shape[0] != e.B):
            return None
        if e.label is None:  # a diffusion coefficient
            return e.C
        o = self.net(x, e.label)
        if type(o) is not torch.Tensor or o.shape != x.shape:
            _check_output(self, o, x, e.label, where or f"Diffusion.{kind}")
        if o.dtype is not x.dtype:
            o = o.to(x.dtype)
        return o if e.A is None else torch.addcmul(e.C * o, e.A, x)

    def _keep(self, kind, t, x, co: _Coef, A, C, net: bool = True) -> None:
        """Keep ``(label, A, C)`` of a grid time whose full path just succeeded (``A = None``: the
        network's output itself; the conversion is ``A x + C o``; ``net=False``: ``C`` is the answer,
        a diffusion coefficient, and no network time is kept)."""
        if (co.scalar and co.wd == x.dtype and type(t) is torch.Tensor and t.dim() == 0 and t.is_cpu
                and not t.requires_grad and (A is None or A.dim() == 0)):
            label = co.label(x.dtype, x.shape[0]) if net else None
            self._grid[(t.item(), kind, self.check_t)] = _GridEntry(x.dtype, x.get_device(), x.shape[0], label, A, C)

    def _convert(self, target: str, t, x: torch.Tensor, where: Optional[str] = None) -> torch.Tensor:
        y = self._kept(target, t, x, where)
        if y is not None:
            return y
        p = _Pred(self, t, x, where or f"Diffusion.{target}")
        y = p.out(p.get(target))
        if p.co.scalar:
            A, C = (None, None) if target == self.prediction else p.co.vals[("checked", target, self.check_t)]
            self._keep(target, t, x, p.co, A, C)
        return y

    def score(self, t, x: torch.Tensor) -> torch.Tensor:
        """``grad_x log p_t(x) = -eps/sigma``; shape of ``x``."""
        return self._convert("score", t, x)

    def eps(self, t, x: torch.Tensor) -> torch.Tensor:
        """``E[eps | x_t = x] = -sigma score``; shape of ``x``."""
        return self._convert("eps", t, x)

    def x0(self, t, x: torch.Tensor) -> torch.Tensor:
        """``E[x_0 | x_t = x] = (x - sigma eps)/alpha`` (the denoiser); shape of ``x``."""
        return self._convert("x0", t, x)

    def v(self, t, x: torch.Tensor) -> torch.Tensor:
        """``v = alpha eps - sigma x0`` (variance-preserving schedules only); shape of ``x``."""
        if not self.schedule.variance_preserving:
            raise InputError(f"Diffusion.v: v-prediction is undefined on {self.schedule!r} (alpha^2 + sigma^2 != 1).")
        return self._convert("v", t, x)

    def velocity(self, t, x: torch.Tensor) -> torch.Tensor:
        """PF-ODE velocity ``u = alpha' x0 + sigma' eps = f x - g^2/2 score``; shape of ``x``."""
        return self._convert("velocity", t, x)

    # -- problems --------------------------------------------------------------------------
    def _beta_fn(self, beta: BetaLike, name: str, arg: str = "beta") -> Callable:
        if callable(beta):
            def fn(tb):
                b = beta(tb)
                b = torch.as_tensor(b, dtype=tb.dtype, device=tb.device)
                if b.dim() > 1 or (b.dim() == 1 and b.shape[0] != tb.shape[0]):
                    raise InputError(f"Diffusion.{name}: {arg}(t) must return a number, 0-dim or (B,) tensor; "
                                     f"got shape {tuple(b.shape)} for t of shape {tuple(tb.shape)}.")
                if b.device.type == "cpu" and bool((b < 0).any()):
                    raise InputError(f"Diffusion.{name}: {arg}(t) must be >= 0; got {b.min().item()!r}.")
                return b
            return fn
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise InputError(f"Diffusion.{name}({arg}={beta!r}): {arg} must be a finite number >= 0 or a function "
                             f"{arg}(t) >= 0.")
        return float(beta)

    def _sde(self, beta: Optional[BetaLike], sign: float, name: str, diffusion: Optional[BetaLike] = None) -> SDE:
        if beta is not None and diffusion is not None:
            raise InputError(f"Diffusion.{name}: give beta or diffusion, not both (beta(t) = diffusion(t)^2 / g(t)^2).")
        # w2: the squared diffusion coefficient is beta g^2 (by beta) or w^2 (by diffusion=w)
        by_w = diffusion is not None
        bf = self._beta_fn(diffusion if by_w else (1.0 if beta is None else beta), name,
                           "diffusion" if by_w else "beta")
        pred = self.prediction
        where = f"Diffusion.{name}()"
        direction = "reverse" if sign < 0 else "forward"

        def w2(co: _Coef, tb) -> torch.Tensor:
            """``beta g^2`` or ``w^2`` in float64 (0-dim for a constant knob, else ``(B,)``)."""
            b = bf(tb) if callable(bf) else bf
            if by_w:
                return b * b
            self._refuse_infinite_g(co, where, b)
            return b * co.raw("g2")

        if sign > 0 and not by_w and not callable(bf) and bf == 1.0:
            # beta = 1 forward: the noising SDE dx = f x dt + g dW itself, no network needed
            def drift(t, x):
                co = self._coefs(t, x, f"{where}.drift")
                return (batch_broadcast(co.get("f"), x) * (x if x.dtype == co.wd else x.to(co.wd))).to(x.dtype)

            return SDE(drift, self._diffusion_fn(w2, not callable(bf), where), noise_type="scalar", score=self.score,
                       direction=direction, time_dtype=_F64)

        kind = ("sde", name, bf)
        const = not callable(bf)  # a constant knob: the drift's coefficients are kept per grid time
        velocity = not by_w and const and bf == 0.0  # beta = 0: the PF-ODE velocity
        where_drift = f"{where}.drift"

        def drift(t, x):
            if velocity:
                return self._convert("velocity", t, x, where_drift)
            if const:
                y = self._kept(kind, t, x, where_drift)
                if y is not None:
                    return y
            p = _Pred(self, t, x, where_drift)
            co = p.co
            if const:  # the checks passed and A, C were kept for this time value
                AC = co.vals.get(("sde", name, bf, self.check_t))
                if AC is not None:
                    A, C = AC
                    self._keep(kind, t, x, co, A, C)
                    return p.out(torch.addcmul(C * p.o, A, p.xw))
            self._refuse(co, where_drift, divides_alpha=pred in ("eps", "score"))
            self._refuse_singular(co, where_drift, "velocity", "score")

            def combine(k):
                # u + sign/2 w2 score, as A x + C o: one affine map from the two conversions' coefficients
                (Au, Cu), (As, Cs) = co.affine64(pred, "velocity"), co.affine64(pred, "score")
                return Au + k * As, Cu + k * Cs

            if const:
                A, C = co.cached(("sde", name, bf, self.check_t), lambda: tuple(
                    co.tensor(v) for v in combine(sign * 0.5 * w2(co, None))))
            else:
                A, C = (co.tensor(v) for v in combine(sign * 0.5 * w2(co, p.tb)))
            if A.dim():  # per-sample times
                A, C = batch_broadcast(A, p.xw), batch_broadcast(C, p.xw)
            return p.out(torch.addcmul(C * p.o, A, p.xw))

        return SDE(drift, self._diffusion_fn(w2, const, where), noise_type="scalar", score=self.score,
                   direction=direction, time_dtype=_F64)

    def _refuse_singular(self, co: _Coef, where: str, *targets: str) -> None:
        """Refuse a conversion whose coefficients are not finite at a (scalar) time inside the range,
        e.g. a score at ``t = 0`` of a schedule with ``sigma(0) = 0`` (``Linear(t_min=0)``)."""
        if not co.scalar or self.check_t is False:
            return
        for target in targets:
            A, C = co.affine64(self.prediction, target)
            if not (math.isfinite(A) and math.isfinite(C)):
                t = float(co.t)
                raise InputError(
                    f"{where}: the {target} of a {self.prediction!r} model is undefined at t = {t!r}, where "
                    f"alpha(t) = {co.raw('alpha')!r} and sigma(t) = {co.raw('sigma')!r} (the conversion divides "
                    f"by one of them). Keep the grid just off this time (e.g. end a sampler at a small t > 0), or use "
                    f"the model's own prediction ({self.prediction!r}) there.")

    def _refuse_infinite_g(self, co: _Coef, where: str, b) -> None:
        if co.at_end and self.check_t is not False and not (isinstance(b, float) and b == 0.0):
            T = self._range[1]
            raise InputError(
                f"{where}: at t = t_max = {T!r}, alpha(t) = 0 for {self.schedule!r} (pure noise), so "
                "g(t)^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha) is infinite: with beta > 0 the SDE's drift and "
                "diffusion are infinite there. To start from pure noise at t_max, give the diffusion coefficient "
                "itself, which stays finite: reverse_sde(diffusion=w) with w a number or a function w(t) (e.g. "
                "diffusion=lambda t: schedule.sigma(t)); or start the time grid just below t_max.")

    def _diffusion_fn(self, w2, const: bool, where: str) -> Callable:
        kind = ("g", where)

        def diffusion(t, x):
            if const:
                g = self._kept(kind, t, x)
                if g is not None:
                    return g
            co = self._coefs(t, x, f"{where}.diffusion")
            if const:  # kept per time value with the other coefficients
                g = co.cached(("g", where, x.dtype), lambda: _sqrt(w2(co, None), x.dtype, co.device))
                if g.dim() == 0:
                    self._keep(kind, t, x, co, None, g, net=False)
            else:
                tb = co.t.expand(x.shape[0]) if co.t.dim() == 0 else co.t
                g = _sqrt(w2(co, tb), x.dtype, co.device)
            return g if g.dim() == 0 else batch_broadcast(g, x)

        return diffusion

    def reverse_sde(self, beta: Optional[BetaLike] = None, *, diffusion: Optional[BetaLike] = None) -> SemiLinearSDE:
        """The reverse-time family ``dx = [f x - (1+beta)/2 g^2 score] dt + sqrt(beta) g dW``.

        Solve it on a *decreasing* ``grid`` (``T -> t_min``): a backward Euler-Maruyama step with
        ``|dt|`` is exactly this SDE with a backward Brownian motion. ``beta = 1`` (the default) is
        Anderson's reverse SDE (score_sde ``sde.reverse``), ``beta = 0`` the PF-ODE with a
        zero diffusion. ``beta``: a number ``>= 0`` or ``beta(t) -> (B,) tensor or number``
        (``t`` a ``(B,)`` float64 tensor). EDM's ``beta(t)`` (Karras et al. eq. 6, alpha = 1,
        sigma = t) is the same family: ``beta_here(t) = 2 beta_EDM(t) sigma(t)^2 / g(t)^2``.

        ``diffusion``: instead of ``beta``, the diffusion coefficient ``w(t) >= 0`` itself (a number
        or a function of ``t``): ``dx = [u - w^2/2 score] dt + w dW``, the member
        ``beta = w^2/g^2``. It stays finite where ``g`` is not: at ``t_max`` of a schedule with
        ``alpha(t_max) = 0`` (``Linear``: pure noise at ``t = 1``), where every ``beta > 0`` has
        infinite drift and diffusion, so a flow-matching model can start sampling there.

        Returns a :class:`flowsde.SemiLinearSDE` (the exponential-integrator samplers of
        ``docs/samplers.md`` solve it), given ``beta`` or ``diffusion``; with ``diffusion=w`` its
        ``beta`` is ``w(t)^2 / g(t)^2``.
        """
        sde = self._sde(beta, -1.0, "reverse_sde", diffusion)
        if diffusion is not None:
            w, g2 = self._beta_fn(diffusion, "reverse_sde", "diffusion"), self.schedule.g2

            def beta_of_w(t):
                wt = torch.as_tensor(w(t) if callable(w) else w, dtype=_F64, device=t.device)
                return wt * wt / g2(t.to(_F64))

            return semilinear_sde(self, sde, beta_of_w)
        return semilinear_sde(self, sde, 1.0 if beta is None else beta)

    def forward_sde(self, beta: Optional[BetaLike] = None, *, diffusion: Optional[BetaLike] = None) -> SDE:
        """The forward-time family ``dx = [f x - (1-beta)/2 g^2 score] dt + sqrt(beta) g dW``
        (solve on an increasing ``grid``); ``beta = 1`` (the default) is the noising SDE
        ``dx = f x dt + g dW``, whose drift is computed without calling the network.
        ``diffusion=w``: the member ``dx = [u + w^2/2 score] dt + w dW`` (see :meth:`reverse_sde`)."""
        return self._sde(beta, +1.0, "forward_sde", diffusion)

    def pf_ode(self) -> ODE:
        """The probability-flow ODE ``dx/dt = f x - g^2/2 score = alpha' x0 + sigma' eps`` (one net call)."""
        return semilinear_ode(self)

    def prior(self) -> GaussianPrior:
        """``N(0, sigma(T)^2 I)`` at ``T = schedule.t_max`` (see :class:`GaussianPrior`)."""
        T = torch.tensor(float(self.schedule.t_max), dtype=torch.float64)
        return GaussianPrior(float(self.schedule.sigma(T)))

    @functools.wraps(_log_likelihood)  # one definition of the parameters and their documentation
    def log_likelihood(self, x: torch.Tensor, **options):
        return _log_likelihood(self, x, **options)
