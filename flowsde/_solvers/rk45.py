"""Adaptive Dormand–Prince 5(4) (``method="rk45"`` / ``"dopri5"``) with per-sample status.

One step from ``(t, y)`` with step ``h`` (``s = +1`` or ``-1`` the direction of time)::

    k_i = f(t + s c_i h, y + s h sum_j a_ij k_j),      i = 1..7   (k_7 = f(t + s h, y_1): FSAL)
    y_1 = y + s h sum_i b_i k_i                         (5th order, b_i = a_7i)
    err = s h sum_i (b_i - b*_i) k_i                    (difference to the embedded 4th order)

Error ratio per sample ``b`` and state component ``c`` (the state is a tuple; the
likelihood uses ``(x, L)`` with ``L`` the log-density channels)::

    w = atol + rtol max(|y|, |y_1|),    r_bc = RMS(err / w)  (or max|err / w| for "max" components,
                                                          max|err / atol| for "abs" components)
    r_b = max_c r_bc

A sample's step is accepted when ``r_b <= 1``. Step-size update: Hairer's PI
controller of ``dopri5.f`` (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4;
Gustafsson's PI controller)::

    h_new = h clip(safety r_n^(-0.17) r_{n-1}^(0.04), dfactor, ifactor)     (no increase after a rejection)

with ``safety = 0.9``, ``dfactor = 0.2``, ``ifactor = 10``, ``r_{n-1}`` the ratio of the
last accepted step (initialised to 1e-4 as in ``dopri5.f``). Initial step: Hairer's rule
(*Solving ODEs I*, II.4, as torchdiffeq ``_select_initial_step``), one extra evaluation.

Two error-control modes:

* ``per_sample=True`` (torchode): every sample has its own time and step size;
  the network is evaluated on the whole batch at per-sample times ``t`` of shape
  ``(B,)``; finished or failed samples take zero-length steps.
* ``per_sample=False`` (torchdiffeq; the default): one step size for the batch, accepted
  when the *largest* per-sample ratio is ``<= 1`` (torchdiffeq takes the RMS over the
  whole batch, which lets one sample's error hide behind the others'). The function gets
  a 0-dim ``t``, as torchdiffeq's ``f(t, y)``.

Every stage time and the initial-step probe lie inside the integration span.

Outputs at the requested ``ts`` are hit exactly: the step is clipped to land on the
next output time (no interpolation error; costs a few steps when many outputs are
asked for). Without ``save_all`` only ``ts[-1]`` is a target.

Host syncs: one per step (the "is any sample still running" check, which also
feeds the progress bar); none per stage. Time is carried in float64 whatever the
state dtype (as torchdiffeq) and cast to the state dtype for ``f``.

Failures are per sample: a non-finite error ratio (NaN/Inf in the state or in ``f``)
sets ``Status.NON_FINITE``, exhausting ``max_steps`` sets ``Status.MAX_STEPS``, a step
size below the float64 resolution of ``t`` sets ``Status.DT_MIN``; the sample is
frozen at its last finite state (so it cannot poison the rest of the batch) and
``t_final`` records the time it reached. ``throw=True`` (default) then raises
:class:`flowsde.SolveError` naming the sample, time, step size and step.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch

from .._errors import InputError, SolveError
from .._solution import Solution, Status
from .base import Solver

# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = _A[6] + (0.0,)
_B_STAR = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - bs for b, bs in zip(_B, _B_STAR))

#: default error-control mode: batch-shared steps, measured more accurate per NFE (and cheaper per
#: step) than per-sample steps on benchmarks/bench_likelihood.py (docs/benchmarks.md)
DEFAULT_PER_SAMPLE = False

State = Tuple[torch.Tensor, ...]


def _lincomb(y: State, h: torch.Tensor, coeffs: Sequence[float], ks: Sequence[State]) -> State:
    """``y + h sum_j coeffs_j k_j`` componentwise; ``h`` is ``(B,)``, broadcast per component.

    One kernel per term (``acc += a k`` into the first term's fresh product) and one for the update
    (``addcmul``), instead of a product and a sum per term."""
    out = []
    h_of = {}  # h in each component's dtype, cast once
    for c, yc in enumerate(y):
        acc = None
        for a, k in zip(coeffs, ks):
            if a == 0.0:
                continue
            acc = k[c] * a if acc is None else acc.add_(k[c], alpha=a)
        if acc is None:
            out.append(yc)
            continue
        hc = h_of.get(yc.dtype)
        if hc is None:
            hc = h_of[yc.dtype] = h.to(yc.dtype)
        out.append(torch.addcmul(yc, hc.reshape((-1,) + (1,) * (yc.dim() - 1)), acc))
    return tuple(out)


def _ratio(err: State, y0: State, y1: State, tols: Sequence[Tuple[float, float]], norms: Sequence[str]) -> torch.Tensor:
    """Per-sample error ratio ``max_c norm_c(err / (atol_c + rtol_c max(|y0|, |y1|)))``, float64 ``(B,)``."""
    r = None
    for e, a, b, kind, (rtol, atol) in zip(err, y0, y1, norms, tols):
        if kind == "abs":  # absolute control: |err| <= atol (for quantities measured in absolute units)
            q = (e / atol).reshape(e.shape[0], -1)
        else:
            w = atol + rtol * torch.maximum(a.abs(), b.abs())
            q = (e / w).reshape(e.shape[0], -1)
        rc = q.abs().amax(1) if kind in ("max", "abs") else q.square().mean(1).sqrt()
        rc = rc.to(torch.float64)
        r = rc if r is None else torch.maximum(r, rc)
    # torch.maximum propagates NaN, so a non-finite component makes r non-finite.
    return r


def _where(mask: torch.Tensor, a: State, b: State) -> State:
    return tuple(torch.where(mask.reshape((-1,) + (1,) * (x.dim() - 1)), x, y) for x, y in zip(a, b))


def _scaled_norm(y: State, scale: State, norms) -> torch.Tensor:
    r = None
    for v, s, kind in zip(y, scale, norms):
        q = (v / s).reshape(v.shape[0], -1)
        rc = (q.abs().amax(1) if kind in ("max", "abs") else q.square().mean(1).sqrt()).to(torch.float64)
        r = rc if r is None else torch.maximum(r, rc)
    return r


def dopri5(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    ts: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    per_sample: bool,
    max_steps: int,
    norms: Optional[Sequence[str]] = None,
    tols: Optional[Sequence[Tuple[float, float]]] = None,
    save_all: bool = False,
    first_step: Optional[float] = None,
    safety: float = 0.9,
    ifactor: float = 10.0,
    dfactor: float = 0.2,
    pi: Tuple[float, float] = (0.17, 0.04),
    progress: bool = False,
    desc: str = "flowsde rk45",
) -> dict:
    """Integrate ``dy/dt = func(t, y)`` for a tuple state of batch-first tensors.

    Arguments:
        func: ``func(t, y) -> dy/dt`` with ``t`` a float64 tensor, 0-dim in batch mode (one time for the
            batch, as torchdiffeq's ``f(t, y)``) and ``(B,)`` in per-sample mode, and ``y`` a tuple of
            tensors ``(B, ...)``; returns a tuple of the same shapes.
        y0: the initial tuple state (never modified).
        ts: 1-D strictly monotone float64 output times; ``ts[0]`` is the start.
        norms: per component ``"rms"`` (default), ``"max"`` (max norm, mixed tolerance) or ``"abs"``
            (max norm, absolute tolerance ``atol`` only) error norm.
        tols: per component ``(rtol, atol)`` (default ``(rtol, atol)`` for every component).

    Returns:
        a dict with ``y`` (final tuple), ``ys`` (list over components of ``(len(ts), B, ...)``
        or ``None``), ``status``, ``t_final``, ``h`` (last step size), ``n_acc``, ``n_rej``
        (per-sample int64), ``n_iter`` (loop iterations), ``calls`` (calls of ``func``), ``calls_per_sample``
        (``(B,)`` int64 on the device: the evaluations each sample took while it ran: the first ``k1``,
        Hairer's initial-step probe (unless ``first_step`` is given) and 6 per step, accepted, rejected
        or the one that failed; FSAL reuses ``k1``. With batch-shared steps every sample that did not
        fail has ``calls``), ``err_sum``
        (per component: for ``"abs"`` components the sum over accepted steps of the embedded error
        estimate ``err``, shape of the component, float64; ``None`` for the others).
    """
    B = y0[0].shape[0]
    dev = y0[0].device
    norms = tuple(norms) if norms is not None else ("rms",) * len(y0)
    tols = tuple(tols) if tols is not None else ((rtol, atol),) * len(y0)
    ts = ts.to(device=dev, dtype=torch.float64)
    n_out = ts.shape[0]
    t_start = float(ts[0])
    t_end = float(ts[-1])
    direction = 1.0 if t_end > t_start else -1.0
    span = abs(t_end - t_start)
    f64 = dict(dtype=torch.float64, device=dev)
    calls = 0

    def f(t, y):
        nonlocal calls
        calls += 1
        if not per_sample:
            # one time for the batch: the running samples' (a failed sample, frozen behind them, takes
            # zero-length steps whose stage values are discarded)
            t = (direction * t).amax() * direction
        return func(t, y)

    t = torch.full((B,), t_start, **f64)
    y = y0
    k1 = f(t, y)
    scale0 = tuple(torch.full_like(v, at) if kind == "abs" else at + rt * v.abs()
                   for v, kind, (rt, at) in zip(y, norms, tols))
    t_min_span, t_max_span = min(t_start, t_end), max(t_start, t_end)

    # Initial step: Hairer, Nørsett & Wanner, Solving ODEs I, II.4 (torchdiffeq _select_initial_step).
    if first_step is not None:
        h = torch.full((B,), float(first_step), **f64)
    else:
        d0 = _scaled_norm(y, scale0, norms)
        d1 = _scaled_norm(k1, scale0, norms)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
        h0 = torch.nan_to_num(h0, nan=1e-6, posinf=1e-6).clamp(max=span)
        if not per_sample:
            h0 = h0.amin().expand(B)
        y_probe = _lincomb(y, direction * h0, (1.0,), (k1,))
        # the probe stays inside the span: t_start + direction h0 can round past t_end when h0 = span
        k_probe = f(torch.clamp(t + direction * h0, t_min_span, t_max_span), y_probe)
        d2 = _scaled_norm(tuple(a - b for a, b in zip(k_probe, k1)), scale0, norms) / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax.clamp_min(1e-300)) ** 0.2)
        h = torch.minimum(100 * h0, h1)
        h = torch.nan_to_num(h, nan=1e-6, posinf=span)
    h = h.clamp(max=span)
    if not per_sample:
        h = h.amin().expand(B).clone()

    status = torch.zeros(B, dtype=torch.int64, device=dev)
    running = torch.ones(B, dtype=torch.bool, device=dev)
    # per-sample evaluation count, kept on the device (no sync): k1 and the probe so far, then 6 per step
    calls_per_sample = torch.full((B,), calls, dtype=torch.int64, device=dev)
    n_acc = torch.zeros(B, dtype=torch.int64, device=dev)
    n_rej = torch.zeros(B, dtype=torch.int64, device=dev)
    r_prev = torch.full((B,), 1e-4, **f64)
    ar = torch.arange(B, device=dev)
    if save_all:
        out_idx = torch.ones(B, dtype=torch.int64, device=dev)
        ys = [torch.zeros((n_out,) + tuple(v.shape), dtype=v.dtype, device=dev) for v in y]
        for buf, v in zip(ys, y):
            buf[0] = v
    else:
        out_idx = torch.full((B,), n_out - 1, dtype=torch.int64, device=dev)
        ys = None
    # the float64 resolution of t: below this a step does not move time
    tiny = 8 * torch.finfo(torch.float64).eps * max(abs(t_start), abs(t_end), span)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=span, desc=desc, leave=False,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| |t - t0| = {n:.4g}/{total:.4g} [{elapsed}<{remaining}]")
        done_so_far = 0.0
    err_sum = [torch.zeros(v.shape, **f64) if kind == "abs" else None for v, kind in zip(y, norms)]
    n_iter = 0
    while True:
        target = ts[out_idx]
        remaining = (target - t).abs()
        h_eff = torch.where(running, torch.minimum(h, remaining), torch.zeros_like(h))
        sh = direction * h_eff
        ks = [k1]
        # stage times stay inside [t, target]: t + c h can round past the end time (c = 1), where
        # a model may be undefined (sigma = 0, or a schedule's range check)
        t_lo, t_hi = torch.minimum(t, target), torch.maximum(t, target)
        for i in range(1, 7):
            yi = _lincomb(y, sh, _A[i], ks)
            ks.append(f(torch.clamp(t + _C[i] * sh, t_lo, t_hi), yi))
        calls_per_sample += 6 * running.to(torch.int64)  # the stages of a step of the samples still running
        y1 = _lincomb(y, sh, _B, ks[:6])  # b_7 = 0: y1 uses k1..k6
        err = _lincomb(tuple(torch.zeros_like(v) for v in y), sh, _E, ks)
        r = _ratio(err, y, y1, tols, norms)

        finite = torch.isfinite(r)
        new_fail = running & ~finite
        if not per_sample:
            r_shared = torch.where(running & finite, r, torch.zeros_like(r)).amax()
            r = r_shared.expand(B)
        accept = running & finite & (r <= 1.0)
        reject = running & finite & ~accept
        for c, e in enumerate(err):
            if err_sum[c] is not None:
                err_sum[c] = err_sum[c] + torch.where(accept.reshape((-1,) + (1,) * (e.dim() - 1)), e, 0.0)
        y = _where(accept, y1, y)
        k1 = _where(accept, ks[6], k1)
        t_new = t + sh
        landed = accept & ((h_eff >= remaining) | ((target - t_new).abs() <= tiny))
        t = torch.where(landed, target, torch.where(accept, t_new, t))
        n_acc += accept.to(torch.int64)
        n_rej += reject.to(torch.int64)
        if save_all:
            for buf, v in zip(ys, y):
                cur = buf[out_idx, ar]
                m = landed.reshape((-1,) + (1,) * (v.dim() - 1))
                buf[out_idx, ar] = torch.where(m, v, cur)
        finished = landed & (out_idx == n_out - 1)
        out_idx = torch.where(landed & ~finished, out_idx + 1, out_idx)

        # PI controller (dopri5.f): safety r^-0.17 r_prev^0.04, in [dfactor, ifactor]; <= 1 after a rejection.
        rc = r.clamp_min(1e-10)
        fac = (safety * rc.pow(-pi[0]) * r_prev.pow(pi[1])).clamp(dfactor, ifactor)
        fac = torch.where(accept, fac, fac.clamp(max=1.0))
        h_next = torch.where(running & finite, h_eff * fac, h)
        # a step clipped onto an output time should not shrink the next one
        h = torch.where(landed & ~finished, torch.maximum(h_next, h), h_next)
        r_prev = torch.where(accept, rc.clamp_min(1e-4), r_prev)

        status = torch.where(new_fail, torch.full_like(status, int(Status.NON_FINITE)), status)
        steps = n_acc + n_rej
        over = running & finite & ~finished & (steps >= max_steps)
        status = torch.where(over, torch.full_like(status, int(Status.MAX_STEPS)), status)
        small = running & finite & ~finished & ~over & (h < tiny)
        status = torch.where(small, torch.full_like(status, int(Status.DT_MIN)), status)
        running = running & ~new_fail & ~finished & ~over & ~small
        # a stopped sample takes zero-length steps from its last finite state: keep NaN out of its stages
        k1 = _where(running, k1, tuple(torch.zeros_like(v) for v in k1))
        n_iter += 1

        if bar is not None:
            any_running, reached = torch.stack([
                running.any().to(torch.float64),
                torch.where(running, (t - t_start).abs(), torch.full_like(t, span)).amin(),
            ]).tolist()  # the step's one host sync
            bar.update(max(0.0, reached - done_so_far))
            done_so_far = max(done_so_far, reached)
        else:
            any_running = bool(running.any())  # the step's one host sync
        if not any_running:
            break
    if bar is not None:
        bar.close()
    return dict(y=y, ys=ys, status=status, t_final=t, h=h, n_acc=n_acc, n_rej=n_rej, n_iter=n_iter, calls=calls,
                calls_per_sample=calls_per_sample, err_sum=err_sum)


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


class RK45(Solver):
    """Adaptive Dormand–Prince 5(4); see the module docstring for the algorithm.

    Arguments:
        rtol, atol: relative and absolute tolerances (> 0).
        per_sample: per-sample step sizes (``True``, torchode's mode) or one step size
            for the batch (``False``, torchdiffeq's mode). Also accepts
            ``mode="per_sample"|"batch"``. Default: :data:`DEFAULT_PER_SAMPLE`
            (the faster one at equal accuracy in ``benchmarks/bench_likelihood.py``).
        max_steps: step budget per sample (accepted + rejected).
        first_step: initial step size (default: Hairer's rule).
        safety, ifactor, dfactor: controller constants.

    Reference: Dormand & Prince (1980); Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4.
    """

    name = "rk45"
    order = 5
    adaptive = True
    solves_ode = True
    noise_types: tuple = ()

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, *, per_sample: Optional[bool] = None,
                 mode: Optional[str] = None, max_steps: int = 10_000,
                 first_step: Optional[float] = None, safety: float = 0.9, ifactor: float = 10.0,
                 dfactor: float = 0.2):
        for name, v in (("rtol", rtol), ("atol", atol)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
                raise InputError(f"RK45: {name} must be a finite number > 0, got {v!r}.")
        if mode is not None:
            if mode not in ("per_sample", "batch"):
                raise InputError(f"RK45: mode must be 'per_sample' or 'batch', got {mode!r}.")
            if per_sample is not None and per_sample != (mode == "per_sample"):
                raise InputError(f"RK45: per_sample={per_sample} contradicts mode={mode!r}.")
            per_sample = mode == "per_sample"
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise InputError(f"RK45: max_steps must be a positive int, got {max_steps!r}.")
        if first_step is not None and not (isinstance(first_step, (int, float)) and first_step > 0):
            raise InputError(f"RK45: first_step must be a number > 0 or None, got {first_step!r}.")
        if not (0 < safety <= 1 and 0 < dfactor < 1 < ifactor):
            raise InputError(f"RK45: need 0 < safety <= 1 and 0 < dfactor < 1 < ifactor, got safety={safety}, "
                             f"dfactor={dfactor}, ifactor={ifactor}.")
        self.rtol, self.atol = float(rtol), float(atol)
        self.per_sample = DEFAULT_PER_SAMPLE if per_sample is None else bool(per_sample)
        self.max_steps = max_steps
        self.first_step = first_step
        self.safety, self.ifactor, self.dfactor = float(safety), float(ifactor), float(dfactor)

    @property
    def mode(self) -> str:
        return "per_sample" if self.per_sample else "batch"

    def integrate(self, func, y0: State, ts: torch.Tensor, *, norms=None, tols=None, save_all=False, progress=False,
                  desc="flowsde rk45") -> dict:
        """The raw integrator on a tuple state (see :func:`dopri5`), with this solver's options."""
        return dopri5(func, y0, ts, rtol=self.rtol, atol=self.atol, per_sample=self.per_sample,
                      max_steps=self.max_steps, norms=norms, tols=tols, save_all=save_all, first_step=self.first_step,
                      safety=self.safety, ifactor=self.ifactor, dfactor=self.dfactor, progress=progress,
                      desc=desc)

    def raise_on_failure(self, out: dict, what: str = "rk45") -> None:
        msg = failure_message(out["status"], out["t_final"], out["h"], out["n_acc"] + out["n_rej"], what)
        if msg is not None:
            text, step, t = msg
            raise SolveError(text, step=step, t=t)

    def solve(self, checked, x0, ts, *, noise=None, save_all=False, progress=False) -> Solution:
        dtype = x0.dtype
        check_tolerances(self.rtol, self.atol, dtype, where="RK45")
        first = [True]

        def func(t, y):
            if first[0]:  # shape/dtype/device checks on the first call
                first[0] = False
                return (checked.drift(t, y[0]),)
            checked.nfe += 1
            return (checked.problem.drift(checked.time(t), y[0]),)

        out = self.integrate(func, (x0,), ts.to(torch.float64), save_all=save_all, progress=progress)
        if checked.throw:  # solve(..., throw=...)
            self.raise_on_failure(out)
        return Solution(
            x=out["y"][0],
            nfe=checked.nfe,
            steps=out["n_iter"],
            accepted=int(out["n_acc"].max()),
            rejected=int(out["n_rej"].max()),
            status=out["status"],
            t_final=out["t_final"],  # float64, as the fixed-step loop
            method=self.name,
            grid=ts if save_all else None,
            xs=out["ys"][0] if save_all else None,
            stats=dict(mode=self.mode, accepted_per_sample=out["n_acc"], rejected_per_sample=out["n_rej"],
                       nfe_per_sample=out["calls_per_sample"], h_last=out["h"], rtol=self.rtol, atol=self.atol),
        )

    def __repr__(self) -> str:
        return (f"RK45(rtol={self.rtol:g}, atol={self.atol:g}, mode={self.mode!r}, max_steps={self.max_steps})")
