"""``Diffusion``: a network of any parameterization under any schedule, as core problems.

The maths is in :mod:`._conversions` (``x_t = alpha x_0 + sigma eps``; every prediction an exact
affine function of the others, one named pure function per conversion; flow_matching
``path/affine.py``). The beta-family (docs/design.md, "The Itô / beta family"; Song et al. 2021,
Karras et al. 2022 eq. 6) all share the marginals p_t:

    reverse:  dx = [f x - (1+beta)/2 g^2 score] dt + sqrt(beta) g dW   (solve on a decreasing grid),
    forward:  dx = [f x - (1-beta)/2 g^2 score] dt + sqrt(beta) g dW   (an increasing grid),

written here as ``u -/+ beta/2 g^2 score`` so that each drift costs one network call.

The speed-up sits beside the maths, in two memos whose keys are derived, never written per call site:

- :class:`_Coef`: the schedule at one time (a :class:`ScheduleAt`) and the conversions' affine
  coefficients ``target = A x + C o``, computed once per ``(time value, working dtype, device)`` in
  :attr:`Diffusion._cache`. They depend on nothing else but the schedule and the prediction, which
  are fixed for the life of a ``Diffusion`` (it is immutable: a changed configuration is a new object).
- :class:`_TimeMemo`: what one *function* keeps per grid time -- each conversion of a ``Diffusion``
  (``score``, ``eps``, ``x0``, ``v``, ``velocity``: determined by the ``Diffusion``), and the drift and
  the diffusion of each problem that :meth:`Diffusion.reverse_sde` / :meth:`Diffusion.forward_sde`
  return (each problem owns its memos: its ``beta`` or ``diffusion`` is part of the function, so no
  two problems share an entry). Its key is :meth:`_TimeMemo.key` of ``(t, x)``.

The network is held by reference and nothing is kept on it (its weights may change).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Union

import torch

from flowsde import ODE, SDE, InputError, SemiLinearSDE
from flowsde._internal import ROUNDING, batch_broadcast, rounding_slack

from ._conversions import PREDICTIONS, ScheduleAt, convert
from ._inputs import check_call, check_net, swapped_output_hint
from ._likelihood import log_likelihood as _log_likelihood
from ._prior import GaussianPrior
from ._problems import semilinear_ode, semilinear_sde
from .schedules import Schedule

__all__ = ["Diffusion", "PREDICTIONS"]

BetaLike = Union[float, int, Callable[[torch.Tensor], Union[torch.Tensor, float]]]


_F64 = torch.float64
_CACHE_SIZE = 4096
_FOUR = ("alpha", "sigma", "d_alpha", "d_sigma")
_CONFIG = ("net", "schedule", "prediction", "compute_dtype", "check_t")


class _Coef:
    """The schedule's coefficients at one time, computed on demand in float64 from the float64
    time and cast once to the working dtype; kept per ``(time value, working dtype, device)``
    (:attr:`key`) by :class:`Diffusion` when the time is a 0-dim CPU tensor or a number (a grid
    point), so a repeated time costs no schedule arithmetic. Everything here is a function of the
    schedule, the prediction (fixed per ``Diffusion``) and that key.

    For such a time (``scalar``) the schedule is evaluated once (:attr:`at`, Python floats) and the
    conversion formulas run on Python floats (float64, no tensor dispatch); otherwise on the
    ``(B,)`` or device tensor as given.

    ``bad``: ``None`` or the message tail of a time outside ``[t_min, t_max]`` (beyond rounding);
    ``at_end``: ``t >= t_max`` where ``alpha(t_max) = 0`` (``None`` when unknown: device time, unchecked).
    """

    __slots__ = ("sched", "t", "wd", "device", "bad", "at_end", "vals", "scalar", "key", "_at")

    def __init__(self, sched, t64: torch.Tensor, wd, device, bad, at_end, scalar: bool = False, key=None):
        self.sched, self.t, self.wd, self.device = sched, t64, wd, device
        self.bad, self.at_end, self.scalar, self.key = bad, at_end, scalar, key
        self.vals = {}
        self._at = None

    def cached(self, key, fn):
        """``fn()`` once per key (per time value when this object is kept by the Diffusion)."""
        v = self.vals.get(key)
        if v is None:
            v = self.vals[key] = fn()
        return v

    @property
    def at(self) -> ScheduleAt:
        """The schedule at ``t`` in float64 (one ``schedule.coefficients(t)`` call; Python floats
        for a scalar time, else tensors; no log-SNR: the conversions do not use it)."""
        if self._at is None:
            c = self.sched.coefficients(self.t)
            self._at = ScheduleAt(*(float(v) for v in c)) if self.scalar else ScheduleAt(*c)
        return self._at

    def raw(self, name: str):
        """Schedule coefficient ``name`` at ``t`` in float64: a Python float for a scalar time, else a tensor.
        ``alpha, sigma, d_alpha, d_sigma`` come from :attr:`at`; others (``f``, ``g2``) from the schedule's method."""
        if name in _FOUR:
            return getattr(self.at, name)
        key = ("raw", name)
        v = self.vals.get(key)
        if v is None:
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
        """``(A, C)`` of ``target = A x + C o`` for a ``pred`` network (:func:`convert` at
        ``(x, o) = (1, 0)`` and ``(0, 1)``), float64."""
        def build():
            units = ((1.0, 0.0), (0.0, 1.0))
            try:
                return tuple(convert(pred, target, x, o, self.at) for x, o in units)
            except ZeroDivisionError:  # Python floats raise where IEEE arithmetic gives inf / nan
                at = ScheduleAt(*(torch.as_tensor(self.raw(n), dtype=_F64) for n in _FOUR))
                return tuple(float(convert(pred, target, torch.tensor(x, dtype=_F64), torch.tensor(o, dtype=_F64),
                                           at)) for x, o in units)
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


class _TimeMemo:
    """What one function keeps per grid time: one conversion of a :class:`Diffusion`, or the drift or
    the diffusion of one problem (each problem makes its own). Two dicts, both bounded:

    - ``coefs``: the function's coefficients after its checks passed, per :meth:`coef_key` (the
      :class:`_Coef` key, i.e. time value, working dtype and device, and the state's dtype);
    - ``fast``: per :meth:`key` (time value, dtype, device, batch size of a 0-dim CPU time without
      gradient and a plain tensor ``x``), ``(label, A, C)``: the answer is ``A x + C net(x, label)``
      (``A = None``: the network's output itself; ``label = None``: ``C``, a diffusion coefficient).

    An entry is made only after the full path (``_coefs``, range and singularity checks,
    coefficients) succeeded for it: a refused time keeps nothing.
    """

    __slots__ = ("fast", "coefs")

    def __init__(self):
        self.fast, self.coefs = {}, {}

    @staticmethod
    def key(t, x):
        """The fast path's key of a call at ``(t, x)``, or ``None`` where the call takes the full path."""
        if (type(t) is not torch.Tensor or type(x) is not torch.Tensor or t.dim() or not t.is_cpu or t.requires_grad
                or x.is_meta or not x.dim()):
            return None
        return (t.item(), x.dtype, x.get_device(), x.shape[0])

    @staticmethod
    def coef_key(co: _Coef, x: torch.Tensor):
        return (co.key, x.dtype)

    def coefficients(self, co: _Coef, x: torch.Tensor, compute: Callable):
        """``compute()`` (checks included) once per :meth:`coef_key` for a scalar time, else every call."""
        if not co.scalar:
            return compute()
        k = (co.key, x.dtype)
        v = self.coefs.get(k)
        if v is None:
            if len(self.coefs) >= _CACHE_SIZE:
                self.coefs.clear()
            v = self.coefs[k] = compute()
        return v

    def keep(self, key, co: _Coef, x: torch.Tensor, A, C, net: bool = True) -> None:
        """Make the fast entry of ``key`` (``None``: none) when the coefficients are the state's dtype
        and shared by the batch (``A`` 0-dim or ``None``)."""
        if key is not None and co.scalar and co.wd == x.dtype and (A is None or A.dim() == 0):
            if len(self.fast) >= _CACHE_SIZE:
                self.fast.clear()
            self.fast[key] = (co.label(x.dtype, x.shape[0]) if net else None, A, C)


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
        """``(A, C)`` with ``target = A x + C o`` (see :func:`convert`), after the range check."""
        p = self.dif.prediction
        self.dif._refuse(self.co, self.where, p in ("eps", "score") and target in ("x0", "velocity", "v"))
        self.dif._refuse_singular(self.co, self.where, target)
        return self.co.affine(p, target)

    def apply(self, A, C) -> torch.Tensor:
        """``A x + C o`` (2 tensor ops), in the state's dtype; ``(B,)`` coefficients broadcast per sample."""
        if A.dim():  # per-sample times: (B,) -> (B, 1, ..., 1)
            A, C = batch_broadcast(A, self.xw), batch_broadcast(C, self.xw)
        return self.out(torch.addcmul(C * self.o, A, self.xw))


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

    Immutable: the five arguments are read-only properties and no attribute can be set after
    construction (``AttributeError``); another configuration is a new ``Diffusion``. ``net`` is held
    by reference: nothing is kept on its weights or dtype, so a trained or converted network is
    seen by the next call.

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
        t_lo, t_hi = float(schedule.t_min), float(schedule.t_max)
        init = functools.partial(object.__setattr__, self)
        init("_config", (net, schedule, prediction, compute_dtype, check_t))
        init("_range", (t_lo, t_hi))
        init("_slack", rounding_slack(t_lo, t_hi))
        init("_alpha_zero_at_tmax", float(schedule.alpha(torch.tensor(t_hi, dtype=_F64))) <= 0.0)
        init("_cache", {})  # (time value, working dtype, device) -> _Coef (see _coefs)
        init("_memos", {target: _TimeMemo() for target in PREDICTIONS})  # one per conversion

    # -- configuration: fixed at construction ----------------------------------------------
    net = property(lambda self: self._config[0], doc="The network, held by reference (nothing is kept on it).")
    schedule = property(lambda self: self._config[1], doc="The :class:`Schedule` (frozen).")
    prediction = property(lambda self: self._config[2], doc="What the network predicts (one of ``PREDICTIONS``).")
    compute_dtype = property(lambda self: self._config[3], doc="``None`` or the dtype of the conversions.")
    check_t = property(lambda self: self._config[4], doc="The time range check: ``True``, ``False`` or ``'auto'``.")

    def __setattr__(self, name, value):
        # The configuration, the kept state and the methods are fixed; a user's own annotation that
        # no answer depends on (e.g. ``event_shape``, read by flowsde.workloads.compare_solvers) may be set.
        if name in _CONFIG or name.startswith("_") or hasattr(type(self), name):
            what = "its configuration" if name in _CONFIG else "its state"
            raise AttributeError(
                f"Diffusion.{name} cannot be set: a Diffusion is immutable after construction ({what} determines "
                f"what it keeps per time). Build a new one instead, e.g. Diffusion(net, schedule, prediction, "
                f"compute_dtype=..., check_t=...) with the {name} you want.")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name in _CONFIG or name.startswith("_") or hasattr(type(self), name):
            self.__setattr__(name, None)
        object.__delattr__(self, name)

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
            lo, hi = self._range
            bad, tc = self._classify(tf, tf)
            if bad is None:
                tc = min(max(tf, lo), hi)
            co = self._cache[key] = _Coef(self.schedule, torch.tensor(tc, dtype=_F64), wd, x.device, bad,
                                          self._alpha_zero_at_tmax and tc >= hi, scalar=True, key=key)
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
    def _fast(self, memo: _TimeMemo, key, x: torch.Tensor, where: Optional[str], target: str = ""):
        """The answer from ``memo``'s fast entry of ``key`` (see :class:`_TimeMemo`), or ``None``:
        ``A x + C net(x, t)`` (the network call, its output check and two tensor ops), the network's
        output itself (``A = None``), or the diffusion ``C`` (no network). ``where`` (default
        ``Diffusion.<target>``) names the caller in an error."""
        e = memo.fast.get(key)
        if e is None:
            return None
        label, A, C = e
        if label is None:  # a diffusion coefficient
            return C
        o = self._config[0](x, label)  # the network (self.net without the property's call)
        if type(o) is not torch.Tensor or o.shape != x.shape:
            _check_output(self, o, x, label, where or f"Diffusion.{target}")
        if o.dtype is not x.dtype:
            o = o.to(x.dtype)
        return o if A is None else torch.addcmul(C * o, A, x)

    def _convert(self, target: str, t, x: torch.Tensor, where: Optional[str] = None) -> torch.Tensor:
        """``target`` at ``(t, x)``: one network call and :func:`convert`'s affine map, with the
        coefficients from the conversion's own :class:`_TimeMemo`. ``where`` names the caller in an
        error (default ``Diffusion.<target>``)."""
        memo = self._memos[target]
        key = memo.key(t, x)
        if key is not None:
            y = self._fast(memo, key, x, where, target)
            if y is not None:
                return y
        p = _Pred(self, t, x, where or f"Diffusion.{target}")
        if target == self.prediction:  # the output itself, unchecked: the network defines its own domain
            memo.keep(key, p.co, x, None, None)
            return p.out(p.o)
        A, C = memo.coefficients(p.co, x, lambda: p.affine(target))
        memo.keep(key, p.co, x, A, C)
        return p.apply(A, C)

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

        const = not callable(bf)  # a constant knob: the drift's coefficients are kept per grid time
        velocity = not by_w and const and bf == 0.0  # beta = 0: the PF-ODE velocity
        where_drift = f"{where}.drift"
        memo = _TimeMemo()  # this problem's own: its beta / diffusion is part of the drift

        def combine(co: _Coef, tb):
            """``u + sign/2 w2 score`` as ``A x + C o``: one affine map from the two conversions' coefficients,
            in the working dtype (after the checks of the time)."""
            self._refuse(co, where_drift, divides_alpha=pred in ("eps", "score"))
            self._refuse_singular(co, where_drift, "velocity", "score")
            k = sign * 0.5 * w2(co, tb)
            (Au, Cu), (As, Cs) = co.affine64(pred, "velocity"), co.affine64(pred, "score")
            return co.tensor(Au + k * As), co.tensor(Cu + k * Cs)

        def drift(t, x):
            if velocity:
                return self._convert("velocity", t, x, where_drift)
            key = memo.key(t, x) if const else None
            if key is not None:
                y = self._fast(memo, key, x, where_drift)
                if y is not None:
                    return y
            p = _Pred(self, t, x, where_drift)
            if const:
                A, C = memo.coefficients(p.co, x, lambda: combine(p.co, None))
                memo.keep(key, p.co, x, A, C)
            else:
                A, C = combine(p.co, p.tb)
            return p.apply(A, C)

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
        """The diffusion coefficient ``sqrt(w2)`` of one problem, with that problem's own :class:`_TimeMemo`."""
        memo = _TimeMemo()

        def diffusion(t, x):
            key = memo.key(t, x) if const else None
            if key is not None:
                g = self._fast(memo, key, x, where)
                if g is not None:
                    return g
            co = self._coefs(t, x, f"{where}.diffusion")
            if const:  # kept per time value by this problem
                g = memo.coefficients(co, x, lambda: _sqrt(w2(co, None), x.dtype, co.device))
                if g.dim() == 0:
                    memo.keep(key, co, x, None, g, net=False)
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
