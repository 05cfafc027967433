"""Adaptive embedded Runge-Kutta solvers with per-sample status: ``rk45`` (Dormand-Prince 5(4)) and kin.

:class:`EmbeddedRK` integrates with any pair of :mod:`flowsde._solvers.runge_kutta` (its
Butcher tableau and the generic step), measures the error and picks steps with
:mod:`flowsde._solvers.controller` (the error norm, Hairer's initial step, the PI controller),
and owns the loop below. :class:`RK45` (``method="rk45"`` / ``"dopri5"``) is Dormand-Prince
5(4); :class:`Bosh3` (Bogacki-Shampine 3(2)) and :class:`Tsit5` (Tsitouras 5(4)) are the same
loop with another tableau.

Two error-control modes:

* ``per_sample=True`` (torchode): every sample has its own time and step size;
  the network is evaluated on the whole batch at per-sample times ``t`` of shape
  ``(B,)``; finished or failed samples take zero-length steps.
* ``per_sample=False`` (torchdiffeq; the default): one step size for the batch, accepted
  when the *largest* per-sample ratio is ``<= 1`` (torchdiffeq takes the RMS over the
  whole batch, which lets one sample's error hide behind the others'). The function gets
  a 0-dim ``t``, as torchdiffeq's ``f(t, y)``.

Every stage time and the initial-step probe lie inside the integration span.

Outputs at the requested ``grid`` times are hit exactly: the step is clipped to land on the
next output time (no interpolation error; costs a few steps when many outputs are
asked for). Without ``save_all`` only ``grid[-1]`` is a target.

Host syncs: one per step (the "is any sample still running" check, which also
feeds the progress bar); none per stage. Time is carried in float64 whatever the state
dtype (as torchdiffeq) and cast to the state dtype for ``f``.

Failures are per sample: a non-finite error ratio (NaN/Inf in the state or in ``f``)
sets ``Status.NON_FINITE``, exhausting ``max_steps`` sets ``Status.MAX_STEPS``, a step
size below the float64 resolution of ``t`` sets ``Status.DT_MIN``; the sample is
frozen at its last finite state (so it cannot poison the rest of the batch) and
``t_final`` records the time it reached. ``throw=True`` (default) then raises
:class:`flowsde.SolveError` naming the sample, time, step size and step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .._errors import InputError, SolveError
from .._solution import Solution, Status
from .base import Solver
from .controller import ErrorNorm, PIController, initial_step
from .runge_kutta import BOSH3, DOPRI5, TSIT5, ButcherTableau, rk_step

#: default error-control mode: batch-shared steps, measured more accurate per NFE (and cheaper per
#: step) than per-sample steps on benchmarks/bench_likelihood.py (docs/benchmarks.md)
DEFAULT_PER_SAMPLE = False

State = Tuple[torch.Tensor, ...]
F64 = torch.float64


@dataclass
class Integration:
    """What an adaptive engine's ``integrate`` returns (:class:`EmbeddedRK`, and torchdiffeq's bridge).

    Attributes:
        y: the final tuple state (each sample's last accepted state).
        ys: per component ``(len(grid), B, ...)`` (``save_all``), else ``None``.
        status, t_final: per-sample :class:`flowsde.Status` and time reached (float64).
        h: ``(B,)`` float64, the last step size (NaN where the engine does not report it).
        accepted, rejected: ``(B,)`` int64 per-sample step counts (-1: not reported).
        steps: loop iterations (-1: not reported).
        calls: evaluations of ``func`` (calls on the batch).
        calls_per_sample: ``(B,)`` int64 on the device, the evaluations each sample took while it ran
            (the first ``k1``, the initial-step probe unless ``first_step`` is given, and the
            tableau's evaluations per step, accepted, rejected or the one that failed). With
            batch-shared steps every sample that did not fail has ``calls``. ``None``: not counted.
        err_sum: per component, for ``"abs"`` components the sum over accepted steps of the embedded
            error estimate (the component's shape, float64); ``None`` for the others.
        near_start: ``(B,)`` int64, the steps (accepted or rejected) each sample took from a time within
            ``near_start`` of the start (``integrate(near_start=...)``), else ``None``.
    """

    y: State
    ys: Optional[List[torch.Tensor]]
    status: torch.Tensor
    t_final: torch.Tensor
    h: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    steps: int
    calls: int
    calls_per_sample: Optional[torch.Tensor]
    err_sum: List[Optional[torch.Tensor]]
    near_start: Optional[torch.Tensor] = None


def _bcast(mask: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1,) + (1,) * (v.dim() - 1))


def _where(mask: torch.Tensor, a: State, b: State) -> State:
    return tuple(torch.where(_bcast(mask, x), x, y) for x, y in zip(a, b))


@dataclass
class _Loop:
    """The per-sample tensors the adaptive loop carries from step to step (all ``(B,)`` but ``y``, ``k1``)."""

    t: torch.Tensor  # float64 time reached
    y: State
    k1: State  # f(t, y): the next step's first stage
    h: torch.Tensor  # float64 proposed step size (unsigned)
    r_prev: torch.Tensor  # the controller's state
    status: torch.Tensor
    running: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    calls_per_sample: torch.Tensor
    out_idx: torch.Tensor  # index into the grid of each sample's next output time
    ys: Optional[List[torch.Tensor]]
    err_sum: List[Optional[torch.Tensor]]
    near_start: Optional[torch.Tensor] = None  # steps taken within ``near`` of the start (a diagnostic)
    steps: int = 0


class _Integrator:
    """One adaptive solve of ``dy/dt = func(t, y)`` by ``solver`` (its tableau, controller and options)."""

    def __init__(self, solver: "EmbeddedRK", func: Callable[[torch.Tensor, State], State], grid: torch.Tensor,
                 norm: ErrorNorm, near: Optional[float] = None):
        self.solver, self.func, self.norm, self.near = solver, func, norm, near
        self.tableau, self.controller, self.per_sample = solver.tableau, solver.controller, solver.per_sample
        self.grid = grid
        self.t_start, self.t_end = float(grid[0]), float(grid[-1])  # the solve's two host syncs before the loop
        self.direction = 1.0 if self.t_end > self.t_start else -1.0
        self.span = abs(self.t_end - self.t_start)
        self.t_range = (min(self.t_start, self.t_end), max(self.t_start, self.t_end))
        # the float64 resolution of t: below this a step does not move time
        self.tiny = 8 * torch.finfo(F64).eps * max(abs(self.t_start), abs(self.t_end), self.span)
        self.calls = 0

    def f(self, t: torch.Tensor, y: State) -> State:
        self.calls += 1
        if not self.per_sample:
            # one time for the batch: the running samples' (a failed sample, frozen behind them, takes
            # zero-length steps whose stage values are discarded)
            t = (self.direction * t).amax() * self.direction
        return self.func(t, y)

    def start(self, y0: State, save_all: bool) -> _Loop:
        """The first evaluation, the initial step and the counters."""
        B, dev = y0[0].shape[0], y0[0].device
        t = torch.full((B,), self.t_start, dtype=F64, device=dev)
        k1 = self.f(t, y0)
        if self.solver.first_step is not None:
            h = torch.full((B,), float(self.solver.first_step), dtype=F64, device=dev)
        else:
            h = initial_step(self.f, t, y0, k1, norm=self.norm, error_order=self.tableau.error_order,
                             direction=self.direction, t_range=self.t_range, per_sample=self.per_sample)
        h = h.clamp(max=self.span)
        if not self.per_sample:
            h = h.amin().expand(B).clone()
        n_out = self.grid.shape[0]
        self.samples = torch.arange(B, device=dev)
        if save_all:
            out_idx = torch.ones(B, dtype=torch.int64, device=dev)
            ys = [torch.zeros((n_out,) + tuple(v.shape), dtype=v.dtype, device=dev) for v in y0]
            for buf, v in zip(ys, y0):
                buf[0] = v
        else:
            out_idx, ys = torch.full((B,), n_out - 1, dtype=torch.int64, device=dev), None
        zeros = torch.zeros(B, dtype=torch.int64, device=dev)
        return _Loop(
            t=t, y=y0, k1=k1, h=h, r_prev=self.controller.init(B, dev), status=zeros.clone(),
            running=torch.ones(B, dtype=torch.bool, device=dev), accepted=zeros.clone(), rejected=zeros.clone(),
            # per-sample evaluation count, kept on the device (no sync): k1 and the probe so far
            calls_per_sample=torch.full((B,), self.calls, dtype=torch.int64, device=dev), out_idx=out_idx, ys=ys,
            err_sum=[torch.zeros(v.shape, dtype=F64, device=dev) if kind == "abs" else None
                     for v, kind in zip(y0, self.norm.kinds)],
            near_start=None if self.near is None else zeros.clone())

    def step(self, s: _Loop) -> None:
        """One iteration for the whole batch: a step of every running sample, accepted or rejected."""
        target = self.grid[s.out_idx]
        remaining = (target - s.t).abs()
        if s.near_start is not None:
            s.near_start += (s.running & ((s.t - self.t_start).abs() < self.near)).to(torch.int64)
        h_eff = torch.where(s.running, torch.minimum(s.h, remaining), torch.zeros_like(s.h))
        sh = self.direction * h_eff
        y1, err, k_end = rk_step(self.tableau, self.f, s.t, s.y, s.k1, sh, torch.minimum(s.t, target),
                                 torch.maximum(s.t, target))
        # the evaluations of a step of the samples still running
        s.calls_per_sample += self.tableau.evals_per_step * s.running.to(torch.int64)
        r = self.norm.ratio(err, s.y, y1)
        finite = torch.isfinite(r)
        new_fail = s.running & ~finite
        if not self.per_sample:
            r = torch.where(s.running & finite, r, torch.zeros_like(r)).amax().expand(r.shape[0])
        accept = s.running & finite & (r <= 1.0)
        for c, e in enumerate(err):
            if s.err_sum[c] is not None:
                s.err_sum[c] = s.err_sum[c] + torch.where(_bcast(accept, e), e, 0.0)
        s.y = _where(accept, y1, s.y)
        s.k1 = _where(accept, k_end, s.k1)
        landed, finished = self._advance(s, accept, sh, h_eff, target, remaining)
        s.rejected += (s.running & finite & ~accept).to(torch.int64)

        fac, s.r_prev = self.controller.factor(r, s.r_prev, accept, self.tableau.error_order)
        h_next = torch.where(s.running & finite, h_eff * fac, s.h)
        # a step clipped onto an output time should not shrink the next one
        s.h = torch.where(landed & ~finished, torch.maximum(h_next, s.h), h_next)
        self._stop(s, new_fail, finite, finished)
        s.steps += 1

    def _advance(self, s: _Loop, accept, sh, h_eff, target, remaining):
        """Move the accepted samples' time (exactly onto an output time they reach), save the outputs and
        count; returns ``(landed, finished)``."""
        t_new = s.t + sh
        landed = accept & ((h_eff >= remaining) | ((target - t_new).abs() <= self.tiny))
        s.t = torch.where(landed, target, torch.where(accept, t_new, s.t))
        s.accepted += accept.to(torch.int64)
        if s.ys is not None:
            for buf, v in zip(s.ys, s.y):
                cur = buf[s.out_idx, self.samples]
                buf[s.out_idx, self.samples] = torch.where(_bcast(landed, v), v, cur)
        finished = landed & (s.out_idx == self.grid.shape[0] - 1)
        s.out_idx = torch.where(landed & ~finished, s.out_idx + 1, s.out_idx)
        return landed, finished

    def _stop(self, s: _Loop, new_fail, finite, finished) -> None:
        """Per-sample stopping: a non-finite ratio, ``max_steps`` exhausted, a step below the time's resolution."""
        s.status = torch.where(new_fail, torch.full_like(s.status, int(Status.NON_FINITE)), s.status)
        over = s.running & finite & ~finished & (s.accepted + s.rejected >= self.solver.max_steps)
        s.status = torch.where(over, torch.full_like(s.status, int(Status.MAX_STEPS)), s.status)
        small = s.running & finite & ~finished & ~over & (s.h < self.tiny)
        s.status = torch.where(small, torch.full_like(s.status, int(Status.DT_MIN)), s.status)
        s.running = s.running & ~new_fail & ~finished & ~over & ~small
        # a stopped sample takes zero-length steps from its last finite state: keep NaN out of its stages
        s.k1 = _where(s.running, s.k1, tuple(torch.zeros_like(v) for v in s.k1))

    def result(self, s: _Loop) -> Integration:
        return Integration(y=s.y, ys=s.ys, status=s.status, t_final=s.t, h=s.h, accepted=s.accepted,
                           rejected=s.rejected, steps=s.steps, calls=self.calls,
                           calls_per_sample=s.calls_per_sample, err_sum=s.err_sum, near_start=s.near_start)


class _Progress:
    """The loop's one host sync per step ("is any sample still running?"), feeding a tqdm bar if asked."""

    def __init__(self, progress: bool, span: float, t_start: float, desc: str):
        self.bar, self.span, self.t_start, self.done = None, span, t_start, 0.0
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=span, desc=desc, leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| |t - t0| = {n:.4g}/{total:.4g} "
                                       "[{elapsed}<{remaining}]")

    def any_running(self, s: _Loop) -> bool:
        if self.bar is None:
            return bool(s.running.any())  # the step's one host sync
        any_running, reached = torch.stack([
            s.running.any().to(F64),
            torch.where(s.running, (s.t - self.t_start).abs(), torch.full_like(s.t, self.span)).amin(),
        ]).tolist()  # the step's one host sync
        self.bar.update(max(0.0, reached - self.done))
        self.done = max(self.done, reached)
        return bool(any_running)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_tolerances(rtol: float, atol: float, dtype: torch.dtype, *, where: str) -> None:
    """Refuse tolerances that ``dtype`` cannot meet: ``rtol`` and ``atol`` both below its resolution (the
    error estimate is then round-off, and ``atol + rtol |y|`` can underflow to 0)."""
    eps = torch.finfo(dtype).eps
    if rtol < eps and atol < eps:
        raise InputError(f"{where}: rtol={rtol:g} and atol={atol:g} are below what {dtype} can meet (its resolution "
                         f"is {eps:.3g}: a relative error below that is round-off); use rtol >= {10 * eps:.0e}, or "
                         "float64 for tighter tolerances.")


def failure_message(status: torch.Tensor, t_final: torch.Tensor, h: torch.Tensor, steps: torch.Tensor,
                    what: str = "rk45") -> Optional[Tuple[str, int, float]]:
    """A message for the first failed sample (or ``None``), with its step index and time."""
    bad = (status != int(Status.SUCCESS)).nonzero().flatten().tolist()
    if not bad:
        return None
    i = bad[0]
    code = Status(int(status[i]))
    tf, hi, si = float(t_final[i]), float(h[i]), int(steps[i])
    more = f" ({len(bad)} samples failed: {bad[:10]}{' ...' if len(bad) > 10 else ''})"
    if code == Status.MAX_STEPS:
        why = (f"exhausted max_steps = {si} at t = {tf:.6g} with step size {hi:.3g}; increase max_steps "
               "or loosen rtol/atol")
    elif code == Status.NON_FINITE:
        why = (f"got NaN/Inf from the function or state in step {si}, t = {tf:.6g} (step size {hi:.3g}: the "
               f"failing evaluation lay in [t, t + h]); check the model near that time, or use float64")
    else:
        why = (f"step size fell to {hi:.3g} at t = {tf:.6g}, step {si}: the problem is stiff or singular "
               "there")
    return f"{what}: sample {i} {why}{more}. Pass throw=False to get the partial result with per-sample status.", \
        si, tf


def _check_options(where: str, rtol, atol, max_steps, first_step) -> None:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
            raise InputError(f"{where}: {name} must be a finite number > 0, got {v!r}.")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise InputError(f"{where}: max_steps must be a positive int, got {max_steps!r}.")
    if first_step is not None and not (isinstance(first_step, (int, float)) and first_step > 0):
        raise InputError(f"{where}: first_step must be a number > 0 or None, got {first_step!r}.")


def _per_sample(where: str, per_sample: Optional[bool], mode: Optional[str]) -> bool:
    if mode is not None:
        if mode not in ("per_sample", "batch"):
            raise InputError(f"{where}: mode must be 'per_sample' or 'batch', got {mode!r}.")
        if per_sample is not None and per_sample != (mode == "per_sample"):
            raise InputError(f"{where}: per_sample={per_sample} contradicts mode={mode!r}.")
        per_sample = mode == "per_sample"
    return DEFAULT_PER_SAMPLE if per_sample is None else bool(per_sample)


class EmbeddedRK(Solver):
    """An adaptive embedded Runge-Kutta solver; a subclass names its :class:`ButcherTableau` (module docstring).

    Arguments:
        rtol, atol: relative and absolute tolerances (> 0).
        per_sample: per-sample step sizes (``True``, torchode's mode) or one step size
            for the batch (``False``, torchdiffeq's mode). Also accepts
            ``mode="per_sample"|"batch"``. Default: :data:`DEFAULT_PER_SAMPLE`
            (the faster one at equal accuracy in ``benchmarks/bench_likelihood.py``).
        max_steps: step budget per sample (accepted + rejected).
        first_step: initial step size (default: Hairer's rule).
        safety, ifactor, dfactor, beta: the PI controller's constants
            (:class:`flowsde._solvers.controller.PIController`; ``beta=0``: the I controller).
    """

    tableau: ButcherTableau = DOPRI5
    name = "embedded_rk"
    order = DOPRI5.order
    adaptive = True
    solves_ode = True
    noise_types: tuple = ()

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, *, per_sample: Optional[bool] = None,
                 mode: Optional[str] = None, max_steps: int = 10_000, first_step: Optional[float] = None,
                 safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2, beta: float = 0.04):
        # 10 parameters: torchdiffeq's options (rtol, atol, first_step, safety, ifactor, dfactor), by name
        where = type(self).__name__
        _check_options(where, rtol, atol, max_steps, first_step)
        self.rtol, self.atol = float(rtol), float(atol)
        self.per_sample = _per_sample(where, per_sample, mode)
        self.max_steps = max_steps
        self.first_step = first_step
        self.controller = PIController(float(safety), float(ifactor), float(dfactor), float(beta))
        self.controller.check(self.tableau.error_order, where)

    @property
    def mode(self) -> str:
        return "per_sample" if self.per_sample else "batch"

    @property
    def safety(self) -> float:
        return self.controller.safety

    @property
    def ifactor(self) -> float:
        return self.controller.ifactor

    @property
    def dfactor(self) -> float:
        return self.controller.dfactor

    def with_tolerances(self, rtol: float, atol: float) -> "EmbeddedRK":
        """A copy with other tolerances (the mode, step budget and controller kept)."""
        _check_options(type(self).__name__, rtol, atol, self.max_steps, self.first_step)
        new = copy.copy(self)
        new.rtol, new.atol = float(rtol), float(atol)
        return new

    def integrate(self, func: Callable[[torch.Tensor, State], State], y0: State, grid: torch.Tensor, *,
                  norms: Optional[Sequence[str]] = None, tols: Optional[Sequence[Tuple[float, float]]] = None,
                  save_all: bool = False, progress: bool = False, desc: Optional[str] = None,
                  near_start: Optional[float] = None) -> Integration:
        """Integrate ``dy/dt = func(t, y)`` for a tuple state of batch-first tensors.

        Arguments:
            func: ``func(t, y) -> dy/dt`` with ``t`` a float64 tensor, 0-dim in batch mode (one time for the
                batch, as torchdiffeq's ``f(t, y)``) and ``(B,)`` in per-sample mode, and ``y`` a tuple of
                tensors ``(B, ...)``; returns a tuple of the same shapes.
            y0: the initial tuple state (never modified).
            grid: 1-D strictly monotone output times; ``grid[0]`` is the start.
            norms: per component ``"rms"`` (default), ``"max"`` (max norm, mixed tolerance) or ``"abs"``
                (max norm, absolute tolerance ``atol`` only) error norm.
            tols: per component ``(rtol, atol)`` (default ``(rtol, atol)`` for every component).
            near_start: count each sample's steps taken from within this distance of ``grid[0]``
                (``Integration.near_start``; the likelihood's diagnosis of a rough data end).
        """
        grid = grid.to(device=y0[0].device, dtype=F64)
        run = _Integrator(self, func, grid, ErrorNorm.of(len(y0), self.rtol, self.atol, norms, tols), near_start)
        s = run.start(tuple(y0), save_all)
        bar = _Progress(progress, run.span, run.t_start, desc or f"flowsde {self.name}")
        try:
            while True:
                run.step(s)
                if not bar.any_running(s):
                    break
        finally:
            bar.close()
        return run.result(s)

    def raise_on_failure(self, out: Integration, what: Optional[str] = None) -> None:
        msg = failure_message(out.status, out.t_final, out.h, out.accepted + out.rejected, what or self.name)
        if msg is not None:
            text, step, t = msg
            raise SolveError(text, step=step, t=t)

    def solve(self, checked, x, grid, *, noise=None, save_all=False, progress=False) -> Solution:
        check_tolerances(self.rtol, self.atol, x.dtype, where=type(self).__name__)
        first = [True]

        def func(t, y):
            if first[0]:  # shape/dtype/device checks on the first call
                first[0] = False
                return (checked.drift(t, y[0]),)
            checked.nfe += 1
            return (checked.problem.drift(checked.time(t), y[0]),)

        out = self.integrate(func, (x,), grid.to(F64), save_all=save_all, progress=progress)
        if checked.throw:  # solve(..., throw=...)
            self.raise_on_failure(out)
        return Solution(
            x=out.y[0],
            nfe=checked.nfe,
            steps=out.steps,
            accepted=int(out.accepted.max()),
            rejected=int(out.rejected.max()),
            status=out.status,
            t_final=out.t_final,  # float64, as the fixed-step loop
            method=self.name,
            grid=grid if save_all else None,
            xs=out.ys[0] if save_all else None,
            stats=dict(mode=self.mode, accepted_per_sample=out.accepted, rejected_per_sample=out.rejected,
                       nfe_per_sample=out.calls_per_sample, h_last=out.h, rtol=self.rtol, atol=self.atol),
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rtol={self.rtol:g}, atol={self.atol:g}, mode={self.mode!r}, "
                f"max_steps={self.max_steps})")


class RK45(EmbeddedRK):
    """Adaptive Dormand-Prince 5(4), FSAL (6 evaluations per step); options of :class:`EmbeddedRK`.

    Reference: Dormand & Prince (1980); Hairer, Norsett & Wanner, *Solving ODEs I*, II.4.
    """

    tableau = DOPRI5
    name = "rk45"
    order = DOPRI5.order


class Bosh3(EmbeddedRK):
    """Adaptive Bogacki-Shampine 3(2), FSAL (3 evaluations per step; torchdiffeq's ``bosh3``, scipy's
    ``RK23``); options of :class:`EmbeddedRK`. Reference: Bogacki & Shampine (1989)."""

    tableau = BOSH3
    name = "bosh3"
    order = BOSH3.order


class Tsit5(EmbeddedRK):
    """Adaptive Tsitouras 5(4), FSAL (6 evaluations per step; diffrax's and OrdinaryDiffEq.jl's ``Tsit5``);
    options of :class:`EmbeddedRK`. Reference: Tsitouras (2011)."""

    tableau = TSIT5
    name = "tsit5"
    order = TSIT5.order


#: the embedded Runge-Kutta solvers by ``method=`` name
EMBEDDED_RK = {"rk45": RK45, "dopri5": RK45, "bosh3": Bosh3, "tsit5": Tsit5}
