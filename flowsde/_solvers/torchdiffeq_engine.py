"""torchdiffeq's adaptive solvers as engines of :func:`flowsde.solve` and :func:`flowsde.log_likelihood`.

``flowsde.solvers.TorchDiffEq("dopri5", rtol, atol)`` (or ``method="torchdiffeq:dopri5"``) runs
``torchdiffeq.odeint`` with flowsde's tolerance semantics, passed through its ``rtol``/``atol``
(per tuple component) and ``norm`` options:

* the state ``x``: ``atol + rtol max(|y0|, |y1|)``, RMS over each sample's event;
* a log-density channel (the likelihood): absolute ``|err| <= tol_L`` (``rtol = 0``), max over channels;
* one step for the batch, accepted when the **largest** per-sample ratio is ``<= 1`` (torchdiffeq's
  own norm is the RMS over the whole flattened batch, which lets one sample's error hide behind
  the others': flowsde's batch mode, :mod:`flowsde._solvers.rk45`).

So ``TorchDiffEq("dopri5")`` and ``flowsde.solvers.RK45(per_sample=False)`` control the same quantity with
the same pair and differ only in step-size heuristics (controller, initial step); the test
``test_torchdiffeq_dopri5_agrees_with_rk45`` checks they agree to the tolerance.

torchdiffeq evaluates ``f(t, y)`` with a 0-dim ``t`` (float64 here, cast where the user's function
is called) and returns no per-sample status: a non-finite value marks the samples where it
appeared (``Status.NON_FINITE``), ``max_num_steps`` exhausted marks the running batch
``Status.MAX_STEPS``, a step-size underflow ``Status.DT_MIN``. It reports no embedded error
estimates, so the likelihood's ``solver_error`` is NaN with this engine.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from .._errors import InputError, SolveError
from .._solution import Solution, Status
from .base import Solver
from .controller import ErrorNorm
from .rk45 import Integration, check_tolerances

#: torchdiffeq's adaptive methods and their orders (of the propagated solution)
ORDERS = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


class _Counter:
    """``func`` as torchdiffeq calls it: counts the calls, hands each component over in its own dtype and
    marks the samples whose derivative is not finite (no host sync)."""

    def __init__(self, func, y0):
        self.func, self.calls = func, 0
        self.dtypes = [v.dtype for v in y0]
        self.bad = torch.zeros(y0[0].shape[0], dtype=torch.bool, device=y0[0].device)

    def __call__(self, t, y):
        self.calls += 1
        # torchdiffeq stores a tuple state in one tensor of the promoted dtype (float64 when the
        # log-density channel is): the function sees each component in its own dtype
        out = self.func(t, tuple(v.to(d) for v, d in zip(y, self.dtypes)))
        for v in out:
            self.bad = self.bad | ~torch.isfinite(v.reshape(v.shape[0], -1)).all(1)
        return out


def _batch_norm(kinds, B, scaled):
    """torchdiffeq's ``norm`` option: the scaled errors ``err / (atol + rtol max(|y0|, |y1|))``, one tensor per
    component, to the largest per-sample ratio (:class:`flowsde._solvers.controller.ErrorNorm`'s norms)."""
    r = None
    for v, kind in zip(scaled, kinds):
        q = v.reshape(B, -1)
        rc = q.abs().amax(1) if kind in ("max", "abs") else q.square().mean(1).sqrt()
        rc = rc.to(torch.float64).amax()
        r = rc if r is None else torch.maximum(r, rc)
    return r


def parse_method(name: str) -> "TorchDiffEq":
    """``"torchdiffeq"`` (dopri5) or ``"torchdiffeq:<method>"`` -> :class:`TorchDiffEq`."""
    _, _, m = name.partition(":")
    return TorchDiffEq(m or "dopri5")


class TorchDiffEq(Solver):
    """torchdiffeq's adaptive solvers with flowsde's tolerance semantics (module docstring).

    Arguments:
        method: one of ``dopri5`` (default), ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``.
        rtol, atol: tolerances of the state (> 0), as :class:`flowsde.solvers.RK45`.
        max_steps: torchdiffeq's ``max_num_steps``.
        options: further torchdiffeq options (e.g. ``first_step``, ``safety``, ``ifactor``, ``dfactor``);
            ``norm`` is flowsde's.
    """

    name = "torchdiffeq"
    adaptive = True
    solves_ode = True
    noise_types: tuple = ()
    per_sample = False
    mode = "batch"

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, *, max_steps: int = 10_000,
                 options: Optional[dict] = None):
        if method not in ORDERS:
            raise InputError(f"TorchDiffEq: method={method!r} is not one of torchdiffeq's adaptive methods "
                             f"{sorted(ORDERS)}.")
        for n, v in (("rtol", rtol), ("atol", atol)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not v > 0:
                raise InputError(f"TorchDiffEq: {n} must be a finite number > 0, got {v!r}.")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise InputError(f"TorchDiffEq: max_steps must be a positive int, got {max_steps!r}.")
        options = dict(options or {})
        if "norm" in options:
            raise InputError("TorchDiffEq: options['norm'] is flowsde's (per-sample max of RMS norms); drop it.")
        self.method = method
        self.order = ORDERS[method]
        self.name = f"torchdiffeq:{method}"
        self.rtol, self.atol, self.max_steps, self.options = float(rtol), float(atol), max_steps, options

    def with_options(self, *, rtol: float, atol: float, max_steps: int) -> "TorchDiffEq":
        return TorchDiffEq(self.method, rtol, atol, max_steps=max_steps, options=self.options)

    def integrate(self, func, y0, grid: torch.Tensor, *, norms=None, tols=None, save_all=False, progress=False,
                  desc="", near_start=None) -> Integration:
        """Integrate a tuple state (the interface of :meth:`flowsde._solvers.rk45.EmbeddedRK.integrate`; torchdiffeq
        reports no steps, so ``near_start`` is not counted)."""
        from torchdiffeq import odeint

        B = y0[0].shape[0]
        dev = y0[0].device
        norm = ErrorNorm.of(len(y0), self.rtol, self.atol, norms, tols)
        counter = _Counter(func, y0)
        rt = tuple(0.0 if kind == "abs" else rtol for kind, (rtol, _) in zip(norm.kinds, norm.tols))
        at = tuple(atol for _, atol in norm.tols)
        t = grid.to(device=dev, dtype=torch.float64)  # torchdiffeq's adaptive solvers keep time in float64
        status = torch.zeros(B, dtype=torch.int64, device=dev)
        # step_t: every step lands on the output times, so no stage is evaluated past the end of the span
        # (torchdiffeq otherwise steps past it and interpolates back; a model may be undefined there)
        opts = dict(self.options, norm=functools.partial(_batch_norm, norm.kinds, B), max_num_steps=self.max_steps,
                    step_t=t)
        try:
            ys = odeint(counter, tuple(y0), t, rtol=rt if len(y0) > 1 else rt[0], atol=at if len(y0) > 1 else at[0],
                        method=self.method, options=opts)
            y = tuple(v[-1].to(d) for v, d in zip(ys, counter.dtypes))
            t_final = t[-1].expand(B).clone()
        except AssertionError as e:  # torchdiffeq reports its failures with assert
            msg = str(e)
            code = Status.MAX_STEPS if "max_num_steps" in msg else Status.DT_MIN
            status = torch.full((B,), int(code), dtype=torch.int64, device=dev)
            y, ys, t_final = tuple(y0), None, t[0].expand(B).clone()
        bad = counter.bad
        status = torch.where(bad, torch.full_like(status, int(Status.NON_FINITE)), status)
        if bool(bad.any()) and ys is not None:
            y = tuple(torch.where(bad.reshape((-1,) + (1,) * (v.dim() - 1)), v0, v) for v, v0 in zip(y, y0))
            t_final = torch.where(bad, t[0], t_final)
        n = torch.full((B,), -1, dtype=torch.int64, device=dev)  # torchdiffeq does not report its steps
        return Integration(y=y, ys=[v for v in ys] if (save_all and ys is not None) else None, status=status,
                           t_final=t_final, h=torch.full((B,), float("nan"), dtype=torch.float64, device=dev),
                           accepted=n, rejected=n, steps=-1, calls=counter.calls, calls_per_sample=None,
                           err_sum=[None] * len(y0))

    def raise_on_failure(self, out: Integration, what: str = "torchdiffeq") -> None:
        status = out.status
        failed = (status != int(Status.SUCCESS)).nonzero().flatten().tolist()
        if not failed:
            return
        nonfinite = (status == int(Status.NON_FINITE)).nonzero().flatten().tolist()
        code = Status(int(status[failed[0]]))
        if nonfinite:
            why = (f"got NaN/Inf from the function in samples {nonfinite[:10]}; torchdiffeq takes one step for the "
                   "batch, so the whole batch stopped with them (status NON_FINITE for those, DT_MIN for the others)")
        elif code == Status.MAX_STEPS:
            why = f"exhausted max_steps = {self.max_steps} (torchdiffeq's max_num_steps); increase it or loosen rtol/atol"
        else:
            why = "the step size underflowed (torchdiffeq: 'underflow in dt'): the problem is stiff or singular"
        raise SolveError(f"{what}: {why}. Pass throw=False to get the partial result with per-sample status, or "
                         "use method='rk45' (per-sample failure isolation).", step=None, t=None)

    def solve(self, checked, x, grid, *, noise=None, save_all=False, progress=False) -> Solution:
        check_tolerances(self.rtol, self.atol, x.dtype, where=self.name)
        first = [True]

        def func(t, y):
            if first[0]:
                first[0] = False
                return (checked.drift(t, y[0]),)
            checked.nfe += 1
            return (checked.problem.drift(checked.time(t), y[0]),)

        out = self.integrate(func, (x,), grid.to(torch.float64), save_all=save_all)
        if checked.throw:
            self.raise_on_failure(out, what=self.name)
        return Solution(
            x=out.y[0], nfe=checked.nfe, steps=out.steps, accepted=-1, rejected=-1,
            status=out.status, t_final=out.t_final, method=self.name,
            grid=grid if save_all else None, xs=out.ys[0] if (save_all and out.ys is not None) else None,
            stats=dict(mode="batch", rtol=self.rtol, atol=self.atol, engine="torchdiffeq", method=self.method),
        )

    def __repr__(self) -> str:
        return f"TorchDiffEq({self.method!r}, rtol={self.rtol:g}, atol={self.atol:g}, max_steps={self.max_steps})"


def methods() -> dict:
    """``method=`` names for :func:`flowsde.solve`: ``"torchdiffeq:<name>"`` for each adaptive method."""
    return {f"torchdiffeq:{m}": functools.partial(TorchDiffEq, m) for m in ORDERS}
