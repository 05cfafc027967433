"""Empirical convergence orders of SDE and ODE solvers.

Method (diffrax ``test/helpers.py`` / ``test_sde1.py``): nested uniform grids
with ``2^level`` steps over ``[t0, t1]`` (either direction), compared with a
reference at the times of the coarsest grid.

* ``kind="strong"``: every level and the reference are driven by the *same*
  :class:`flowsde.BrownianPath` (one independent path per row of ``x``); the
  reference is the same method on ``2^ref_level`` steps (or ``exact``), and

      err = sqrt( mean over paths of max over save times of |x_h - x_ref|^2 ).

* ``kind="weak"``: ``err = |mean phi(x_h(t1)) - E phi|`` with ``E phi`` either
  ``exact`` (a number) or the mean of ``phi`` over the fine reference driven by
  the same paths (coupling cancels most Monte Carlo noise: the estimator's
  variance is that of ``phi(x_h) - phi(x_ref)``, not of ``phi``). ``phi``
  defaults to ``|x|^2``.
* ``kind="ode"``: deterministic; err as for ``"strong"`` over the batch.

The order is the least-squares slope of ``log err`` on ``log h``, with a
Student-t confidence interval from the regression's standard error: :func:`fit_order`,
which also fits errors measured some other way (exact moments, a norm of the user's choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from flowsde import BrownianPath, InputError, solve
from flowsde._internal import as_seed
from flowsde import grids as _grids

__all__ = ["convergence_order", "fit_order", "OrderResult"]

KINDS = ("strong", "weak", "ode")


@dataclass
class OrderResult:
    """Outcome of :func:`convergence_order` and :func:`fit_order`.

    Attributes:
        order: fitted slope of ``log err`` on ``log h``.
        ci: ``(low, high)`` confidence interval of the slope.
        confidence: its level.
        step_sizes: ``|t1 - t0| / 2^level`` per level (numpy array).
        errors: the errors per level (numpy array).
        kind, method: what was measured (``None`` from :func:`fit_order`).
    """

    order: float
    ci: tuple
    confidence: float
    step_sizes: np.ndarray
    errors: np.ndarray
    kind: Optional[str] = None
    method: Optional[str] = None

    def __repr__(self) -> str:
        what = "order" if self.kind is None else f"{self.kind} order"
        what += "" if self.method is None else f" of {self.method}"
        return (f"OrderResult({what}: {self.order:.3f}, "
                f"{100 * self.confidence:.0f}% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}], "
                f"errors={np.array2string(self.errors, precision=3)})")


def fit_order(step_sizes: Sequence[float], errors: Sequence[float], *, confidence: float = 0.95) -> OrderResult:
    """The order of convergence that errors measured at several step sizes show.

    The least-squares slope of ``log errors`` on ``log step_sizes`` and its Student-t
    confidence interval (from the regression's standard error, ``len - 2`` degrees of
    freedom): the fit :func:`convergence_order` makes, for errors measured another way
    (against exact moments, in a norm of one's choice).

    Arguments:
        step_sizes: the step sizes ``h`` (positive, finite, at least 3 distinct values).
        errors: the error at each step size (positive, finite).
        confidence: level of the slope's confidence interval, in ``(0, 1)``.

    Returns:
        :class:`OrderResult` with ``kind`` and ``method`` ``None``.

    Raises:
        InputError: lengths differ, fewer than 3 distinct step sizes, a value that is not
            positive and finite, or a confidence outside ``(0, 1)``.
    """
    try:
        hs = np.asarray(step_sizes, dtype=np.float64).reshape(-1)
        errs = np.asarray(errors, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(f"fit_order: step_sizes and errors must be sequences of numbers ({e}).") from e
    if hs.shape != errs.shape:
        raise InputError(f"fit_order: {hs.size} step sizes but {errs.size} errors.")
    if len(np.unique(hs)) < 3:
        raise InputError(f"fit_order: need at least 3 distinct step sizes (for a confidence interval on the "
                         f"slope), got {hs.tolist()}.")
    for what, v in (("step_sizes", hs), ("errors", errs)):
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise InputError(f"fit_order: {what} {v.tolist()} must be positive and finite (nothing to regress "
                             "on a log scale otherwise).")
    if not 0 < confidence < 1:
        raise InputError(f"fit_order: confidence={confidence!r} must be in (0, 1).")
    slope, ci = _fit(hs, errs, confidence)
    return OrderResult(order=slope, ci=ci, confidence=float(confidence), step_sizes=hs, errors=errs)


def _fit(hs, errs, confidence):
    from scipy import stats

    x, y = np.log(hs), np.log(errs)
    n = len(x)
    A = np.vstack([x, np.ones(n)]).T
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    slope = float(coef[0])
    resid = y - A @ coef
    sxx = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 2))
    return slope, (slope - q * se, slope + q * se)


def convergence_order(
    problem,
    x: torch.Tensor,
    t_span: Sequence[float],
    *,
    method="euler_maruyama",
    kind: str = "strong",
    levels: Sequence[int] = (3, 4, 5, 6, 7),
    ref_level: Optional[int] = None,
    exact: Union[None, float, Callable] = None,
    phi: Optional[Callable] = None,
    generator=0,
    confidence: float = 0.95,
) -> OrderResult:
    """Measure a solver's empirical order on ``problem``.

    Arguments:
        problem: a :class:`flowsde.SDE` (``kind="strong"`` / ``"weak"``) or any problem
            for ``kind="ode"``.
        x: ``(B, *event)`` initial states: ``B`` independent paths (SDE) or ``B``
            initial points (ODE).
        t_span: ``(t0, t1)``, the time span (``t1 < t0`` solves backward in time).
        method: a ``method=`` name or solver instance for :func:`flowsde.solve`.
        kind: ``"strong"``, ``"weak"`` or ``"ode"``.
        levels: grid levels (``2^level`` steps each), at least 3, increasing.
        ref_level: level of the reference solve (default ``max(levels) + 3``);
            ignored when ``exact`` is given.
        exact: strong/ode: ``exact(grid) -> (len(grid), *x.shape)``, the exact solution at
            the save times ``grid`` (a float64 1-D tensor); weak: the number ``E phi(x(t1))``.
        phi: weak test function ``phi(x) -> (B,)`` (default ``|x|^2`` over event dims).
        generator: the Brownian path every level shares: an int seed (default 0) or a
            ``torch.Generator`` (a path is built from it), or a :class:`flowsde.BrownianPath`
            over ``[t0, t1]`` with shape ``x.shape`` (e.g. the one an ``exact`` solution reads
            ``W(t)`` from).
        confidence: level of the slope's confidence interval.

    Returns:
        :class:`OrderResult` (``.order``, ``.ci``, ``.errors``, ``.step_sizes``).

    Raises:
        InputError: bad arguments; an error that is zero or non-finite at some level
            (nothing to regress: the method is exact there, or it diverged).
    """
    t0, t1, levels, ref_level = _check_order_call(problem, x, t_span, kind, levels, ref_level, exact, confidence)
    phi = phi if phi is not None else (lambda x: (x * x).reshape(x.shape[0], -1).sum(1))
    top = max(levels) if exact is not None else ref_level
    path = None if kind == "ode" else _shared_path(generator, method, x, t0, t1, top)

    def run(level):
        ts = _grids.uniform(float(t0), float(t1), 2 ** level, dtype=x.dtype, device=x.device)
        sol = solve(problem, x, ts, method=method, generator=path, save_all=(kind != "weak"))
        return (sol.xs if kind != "weak" else sol.x).detach()

    stride0 = 2 ** levels[0]
    save_ts = _grids.uniform(float(t0), float(t1), stride0, dtype=torch.float64)
    if kind == "weak":
        target = float(exact) if exact is not None else float(phi(run(ref_level)).mean())
    elif exact is not None:
        ref = exact(save_ts)
        if tuple(ref.shape) != (stride0 + 1,) + tuple(x.shape):
            raise InputError(f"exact(grid) returned shape {tuple(ref.shape)}, expected "
                             f"{(stride0 + 1,) + tuple(x.shape)}.")
    else:
        ref = run(ref_level)[:: 2 ** (ref_level - levels[0])]

    errs = []
    for lvl in levels:
        out = run(lvl)
        if kind == "weak":
            errs.append(abs(float(phi(out).mean()) - target))
        else:
            sq = ((out[:: 2 ** (lvl - levels[0])] - ref.to(out)) ** 2).reshape(stride0 + 1, x.shape[0], -1).sum(-1)
            errs.append(math.sqrt(float(sq.max(0).values.mean())))
    errs = np.asarray(errs)
    if not (np.isfinite(errs).all() and (errs > 0).all()):
        raise InputError(f"errors {errs.tolist()} at levels {levels} include zero or non-finite values; the "
                         "method is exact on this problem (nothing to regress) or it diverged.")
    hs = abs(float(t1) - float(t0)) / 2.0 ** np.asarray(levels, dtype=np.float64)
    res = fit_order(hs, errs, confidence=confidence)
    res.kind = kind
    res.method = method if isinstance(method, str) else getattr(method, "name", type(method).__name__)
    return res


def _check_order_call(problem, x, t_span, kind, levels, ref_level, exact, confidence):
    """``(t0, t1, levels, ref_level)`` of a :func:`convergence_order` call, or an ``InputError``."""
    try:
        t0, t1 = (float(v) for v in t_span)
    except (TypeError, ValueError) as e:
        raise InputError(f"t_span: expected (t0, t1), got {t_span!r}.") from e
    if kind not in KINDS:
        raise InputError(f"kind={kind!r}: must be one of {KINDS}.")
    levels = [int(v) for v in levels]
    if len(levels) < 3 or sorted(set(levels)) != levels or levels[0] < 0:
        raise InputError(f"levels={levels}: need at least 3 distinct increasing levels >= 0 (for a confidence "
                         "interval on the slope).")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise InputError(f"x: expected a tensor (B, *event), got {type(x).__name__}.")
    if t0 == t1:
        raise InputError(f"t0 = t1 = {t0}: the span must be non-empty.")
    if kind in ("strong", "weak") and not getattr(problem, "is_sde", False):
        raise InputError(f"kind={kind!r} needs a flowsde.SDE; use kind='ode' for an ODE.")
    if not 0 < confidence < 1:
        raise InputError(f"confidence={confidence!r}: must be in (0, 1).")
    if kind == "weak" and exact is not None and not isinstance(exact, (int, float)):
        raise InputError("exact: for kind='weak' give the number E phi(x(t1)).")
    if kind != "weak" and exact is not None and not callable(exact):
        raise InputError("exact: for kind='strong'/'ode' give a callable exact(grid) -> (len(grid), *x.shape).")
    ref_level = max(levels) + 3 if ref_level is None else int(ref_level)
    if exact is None and ref_level <= max(levels):
        raise InputError(f"ref_level={ref_level} must exceed max(levels)={max(levels)}.")
    return t0, t1, levels, ref_level


def _shared_path(generator, method, x, t0: float, t1: float, top: int) -> BrownianPath:
    """The one Brownian path every level of an SDE order fit sees: the caller's, or one seeded by
    ``generator`` whose tree resolves below the finest step (``2^-(top + 4)`` of the span)."""
    if isinstance(generator, BrownianPath):
        if tuple(generator.shape) != tuple(x.shape):
            raise InputError(f"generator: expected a flowsde.BrownianPath with shape {tuple(x.shape)}, got "
                             f"{generator!r}.")
        return generator
    seed = as_seed(generator, "convergence_order")
    levy = bool(getattr(method, "needs_levy_area", False) or method == "srk")
    return BrownianPath(t0, t1, x.shape, dtype=x.dtype, device=x.device, generator=seed,
                        tol=abs(t1 - t0) * 2.0 ** -(top + 4), levy_area=levy)
