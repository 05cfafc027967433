"""Validation done before and during a solve (docs/design.md, "Errors").

Shapes, dtypes and devices are host-side metadata and are checked on every
call at no cost. Finiteness needs the values: instead of a host sync per
call, each function output is kept (a reference, no copy) until 16 of them,
or about 2**16 elements, are pending; then they are reduced together on the
device (one stack and one per-sample float64 sum: two kernels per 16 outputs
instead of one per output; NaN and Inf propagate through a sum, and a float32
output cannot overflow a float64 sum). Every 256 outputs those sums are folded,
still on the device, into one ``(B,)`` tensor holding each sample's first
non-finite output (so memory stays ``O(B)`` plus the bounded pending outputs),
which is inspected once, at the end of the solve. A one-element output on the
CPU (a scalar diffusion) is read as a Python float at once (no kernel; on the
CPU there is no device to sync with). An output changed in place after it was
returned (its version counter moved: a function writing every output into one
buffer) is checked as it is then, and from then on each output is reduced at
once.

It gives each sample's status (``Status.NON_FINITE`` where any of its outputs,
or its final state, is not finite) and, with ``throw=True``, an error naming
the first failing function, step, time and samples.

A fixed-step solve with ``throw=True``, or any on the CPU, defers all this (``defer=True``): the
outputs get their host-side checks only, and the one sync at the end reads the
final state's finiteness (a NaN or Inf in an output the solver uses reaches the
state through its arithmetic: ``x + h NaN`` is NaN, ``0 * Inf`` is NaN). Only when
that fails does :func:`flowsde.solve` replay the solve from its initial ``x``, with the same
noise and every output checked as above, to name the failure. A success then
costs nothing per step.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from ._errors import InputError, SolveError
from ._problem import ODE, SDE, broadcast_diffusion
from ._solution import Status

#: pending outputs are reduced to per-sample sums every this many outputs ...
_GROUP = 16
#: ... or as soon as they hold this many elements (the memory they keep alive stays bounded: kept
#: outputs evict the network's weights from the CPU caches; 16 and 2**16 measured cheaper than 32
#: and 2**18 on the 150 us MLP of benchmarks/bench_overhead.py, docs/benchmarks.md);
_GROUP_ELEMS = 1 << 16
#: the sums are folded into one (B,) tensor every this many outputs
_FOLD_EVERY = 256
#: "no failure" in the (B,) tensor of first failing records (any index is smaller)
_NONE = 1 << 62


#: state dtypes the solvers refuse: a state accumulated over many steps in them loses the
#: increments (float16 has an 11-bit significand: 1 + 1e-4 == 1) and overflows at 65504.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_device(t: torch.Tensor, name: str) -> None:
    """Refuse tensors on the ``meta`` device (shapes without values: nothing to solve)."""
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        raise InputError(
            f"{name}: is on the 'meta' device, which carries shapes but no values, so there is nothing to "
            f"compute; create it on a real device (e.g. {name}.to_empty(device='cpu') and fill it, or build it "
            "with device='cpu' / 'cuda')."
        )


def check_state(x, name: str = "x") -> None:
    """``x`` must be a finite float32/float64 tensor ``(B, *event_shape)`` with ``B >= 1``
    on a real device."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor of shape (B, *event_shape), got {type(x).__name__}.")
    check_device(x, name)
    if not x.is_floating_point():
        raise InputError(f"{name}: dtype {x.dtype} is not floating point; use float32 or float64.")
    if x.dtype in HALF_DTYPES:
        raise InputError(
            f"{name}: dtype {x.dtype} is too coarse for the solver's state (its increments round away and it "
            f"overflows early); solve in float32 or float64 ({name}.float()). The network may still run in half "
            "precision inside your function: cast x to half there and its output back to x.dtype."
        )
    if x.dim() == 0:
        raise InputError(
            f"{name}: got a 0-dim tensor ({x.item()!r}), which looks like a time, not a state; the state is "
            "batch-first (B, *event_shape). Did you swap the arguments? The state comes before the times: "
            "solve(problem, x, grid), problem functions f(t, x)."
        )
    if x.shape[0] == 0:
        raise InputError(f"{name}: expected a batch-first tensor (B, *event_shape) with B >= 1, got shape "
                         f"{tuple(x.shape)}.")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise InputError(f"{name}: contains NaN/Inf in samples {bad[:10]}{' ...' if len(bad) > 10 else ''}.")


def check_grid(grid, x: torch.Tensor, name: str = "grid", *, direction: Optional[str] = None) -> torch.Tensor:
    """Validate a 1-D strictly monotone grid; return it in float64 on x's device.

    ``direction`` (a problem's): ``"forward"`` needs an increasing grid,
    ``"reverse"`` a decreasing one, ``None`` either.
    """
    if not isinstance(grid, torch.Tensor):
        try:
            grid = torch.as_tensor(grid, dtype=torch.float64)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{name}: expected a 1-D tensor of times, got {type(grid).__name__}.") from e
    check_device(grid, name)
    if grid.dim() != 1:
        swap = (" It looks like the state: did you swap the arguments? solve(problem, x, grid) takes the state "
                "first." if grid.dim() >= 2 and x.dim() == 1 else "")
        raise InputError(f"{name}: expected a 1-D tensor of times, got shape {tuple(grid.shape)}.{swap}")
    if grid.numel() < 2:
        raise InputError(f"{name}: needs at least 2 times (start and end), got {grid.numel()}.")
    if grid.is_complex() or grid.dtype == torch.bool:
        raise InputError(f"{name}: expected real times, got dtype {grid.dtype}.")
    host = grid.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(host).all()):
        raise InputError(f"{name}: contains NaN/Inf: {host.tolist()[:10]}.")
    d = host[1:] - host[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        i = int(((d <= 0) if d[0] > 0 else (d >= 0)).nonzero()[0])
        raise InputError(
            f"{name}: times must be strictly increasing or strictly decreasing; "
            f"grid[{i}] = {host[i].item()!r}, grid[{i + 1}] = {host[i + 1].item()!r} break the order."
        )
    increasing = bool(d[0] > 0)
    a, b = host[0].item(), host[-1].item()
    if direction == "forward" and not increasing:
        raise InputError(
            f"{name}: this problem runs forward in time (direction='forward') but grid decreases from {a!r} to "
            f"{b!r}; solve it on an increasing grid, e.g. flowsde.grids.uniform({b!r}, {a!r}, steps)."
        )
    if direction == "reverse" and increasing:
        raise InputError(
            f"{name}: this problem runs backward in time (direction='reverse', e.g. a reverse-time SDE) but grid "
            f"increases from {a!r} to {b!r}; solve it on a decreasing grid, e.g. flowsde.grids.uniform({b!r}, "
            f"{a!r}, steps)."
        )
    # a copy the solve owns (the user's tensor is never aliased by the solve's views)
    return grid.detach().to(device=x.device, dtype=torch.float64, copy=True).contiguous()


class CheckedProblem:
    """Wraps a problem for a solver: casts ``t`` for the user's functions, checks every
    output's shape, dtype and device, and keeps per-sample finiteness sums on the device.

    The fixed-step driver sets ``.step`` before each step (a Python int) so a failure
    names it. ``t`` is given in float64 (the solve's time) and cast to the state dtype
    right before the user's function, unless the problem has ``time_dtype=torch.float64``.
    The grid is cast once: ``.times`` are the grid's 0-dim float64 views, which the driver
    passes as each step's ``t0 = times[i]``, ``t1 = times[i + 1]``; a time that is one of
    the two views of the current step ``i`` gets the cast grid time of that index, any
    other time (a stage between grid points, an adaptive method's) is cast on the fly.

    Arguments:
        problem, x, grid: the user's problem, the initial state and the solve's float64 grid.
        throw: failures raise :class:`flowsde.SolveError` (else: per-sample status).
        defer: host-side checks only; :meth:`finish` reads the final state's finiteness.
        group: pending outputs are reduced to per-sample sums every this many outputs
            (default ``_GROUP = 16``; or as soon as they hold ``2**16`` elements).
        fold_every: the sums are folded into the ``(B,)`` record of first failures every
            this many outputs (default ``_FOLD_EVERY = 256``).
    """

    def __init__(self, problem, x: torch.Tensor, grid: torch.Tensor, throw: bool = True, defer: bool = False, *,
                 group: int = _GROUP, fold_every: int = _FOLD_EVERY):
        for name, v in (("group", group), ("fold_every", fold_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"CheckedProblem: {name} must be an int >= 1, got {v!r}.")
        self.problem = problem
        self.noise_type = problem.noise_type
        self.is_sde = problem.is_sde
        self.has_score = getattr(problem, "has_score", False)
        self.shape = tuple(x.shape)
        self._size = x.shape  # torch.Size: compared without building a tuple per call
        self.dtype = x.dtype
        self.device = x.device
        self.grid = grid
        self.throw = bool(throw)
        # defer: outputs get their host-side checks only; finish() reads the final state's finiteness
        # and returns None on a failure, for the caller to replay the solve without defer
        self.defer = bool(defer)
        tdt = getattr(problem, "time_dtype", None)
        self.time_dtype = torch.float64 if tdt == torch.float64 else x.dtype
        # The grid's views (the fixed-step loop passes them as t0, t1) and, once per solve, their
        # cast: the times of step i are looked up by index instead of cast at every call.
        self.times = grid.unbind(0)
        self._ts_cast = None if self.time_dtype == torch.float64 else grid.to(self.time_dtype).unbind(0)
        self._last_step = grid.shape[0] - 2
        # the user's functions, bound once (one attribute lookup less per call)
        # (the problem's own functions where its methods only forward to them)
        plain = isinstance(problem, ODE)
        self._drift = problem._drift if plain and type(problem).drift is ODE.drift else problem.drift
        # a plain SDE's diffusion unwrapped (one frame less per call), its output broadcast in diffusion()
        self._raw_diffusion = plain and problem.is_sde and type(problem).diffusion is SDE.diffusion
        self._diffusion = problem._diffusion if self._raw_diffusion else getattr(problem, "diffusion", None)
        self._score = (problem._score if plain and type(problem).score is ODE.score and problem._score is not None
                       else getattr(problem, "score", None))
        self.step = 0
        self.nfe = 0
        self._records: List[Tuple[str, int, torch.Tensor]] = []  # name, step, t of every checked output
        # Outputs not yet reduced: (record index, (B, n) detached view, its version); their element
        # count; one-element CPU outputs found non-finite (record indices); reduced sums not yet
        # folded: (record indices, (m, B) float64) and their row count.
        self._fold_every = fold_every
        self._group = min(group, fold_every)
        self._pending: list = []
        self._pending_state_shaped = True  # every pending output has the state's shape
        self._pending_elems = 0
        self._bad_scalars: list = []
        self._sums: list = []
        self._last: dict = {}  # name -> (its last output, version)
        self._n_sums = 0
        self._cpu = x.device.type == "cpu"
        self._device_index = x.get_device()  # -1 on the CPU: compared without building a torch.device
        self._first_bad: Optional[torch.Tensor] = None  # (B,) first non-finite record per sample, _NONE: none

    def time(self, t):
        """``t`` as the user's functions receive it (the state dtype, or float64): the grid's
        cast time where ``t`` is ``times[i]`` or ``times[i + 1]`` of the current step ``i``."""
        if self._ts_cast is None or not isinstance(t, torch.Tensor):
            return t
        i = self.step
        if 0 <= i <= self._last_step:
            times = self.times
            if t is times[i]:
                return self._ts_cast[i]
            if t is times[i + 1]:
                return self._ts_cast[i + 1]
        return t.to(self.time_dtype)

    def _check(self, name, t, out, allow_broadcast=False):
        # The common case first, in a few attribute reads: a plain tensor of x's dtype, shape and
        # device, without gradient (this runs once per function output).
        # (A 0-dim diffusion is common too.)
        if (type(out) is torch.Tensor and out.dtype is self.dtype
                and (out.shape == self._size or (allow_broadcast and not out.dim()))
                and not out.requires_grad and out.get_device() == self._device_index and not out.is_meta):
            o = out
        else:
            o = self._check_general(name, t, out, allow_broadcast)
        if self.defer:
            return out
        if o.shape != self._size:
            if o.numel() == 1 and self._cpu:  # a scalar diffusion: a Python float (no kernel, no device to sync)
                self._records.append((name, self.step, t))
                if not math.isfinite(o.item()):
                    self._bad_scalars.append(len(self._records) - 1)
                return out
            self._pending_state_shaped = False
        rec = self._records
        rec.append((name, self.step, t))
        ver = o._version
        # A function that writes its outputs into one buffer changes its previous output in place:
        # from then on every output is reduced at once (the earlier one is checked as it is now).
        prev = self._last.get(name)
        if prev is not None and prev[0]._version != prev[1]:
            self._group = 1
        self._last[name] = (o, ver)
        self._pending.append((len(rec) - 1, o, ver))
        self._pending_elems += o.numel()
        if len(self._pending) >= self._group or self._pending_elems >= _GROUP_ELEMS:
            self._reduce()
        return out

    def _check_general(self, name, t, out, allow_broadcast):
        """:meth:`_check` beyond the common case: the errors; returns the output, detached where it
        carries gradient (a broadcast diffusion has another shape)."""
        if not isinstance(out, torch.Tensor):
            raise InputError(f"{name} returned {type(out).__name__} at step {self.step}; it must return a torch.Tensor.")
        if out.dtype != self.dtype:
            raise InputError(
                f"{name} returned dtype {out.dtype} at step {self.step} (t = {_fmt_t(t)}) but x has dtype "
                f"{self.dtype}; make the function keep the dtype of x (or cast x)."
            )
        if out.device != self.device:
            raise InputError(
                f"{name} returned a tensor on {out.device} at step {self.step} but x is on {self.device}."
            )
        if not allow_broadcast and out.shape != self._size:
            raise InputError(
                f"{name} returned shape {tuple(out.shape)} at step {self.step} (t = {_fmt_t(t)}) for x of shape "
                f"{self.shape}; it must return the shape of x."
            )
        return out.detach() if out.requires_grad else out

    def _reduce(self) -> None:
        """The pending outputs to per-sample float64 sums: one stack and one sum per output width
        (device ops only, no sync)."""
        pending, B = self._pending, self.shape[0]
        if any(o._version != ver for _, o, ver in pending):  # changed in place since returned: checked
            self._group = 1  # as it is now, and from now on each output is reduced at once
        if not pending:
            items = []
        elif self._pending_state_shaped:  # the common case: every output has the state's shape
            items = [[(k, o) for k, o, _ in pending]]
        else:
            groups: dict = {}
            for k, o, _ in pending:
                # (B, n): a scalar diffusion on a device is one value for every sample
                o = o.reshape(1, 1).expand(B, 1) if o.numel() == 1 else o.reshape(B, -1)
                groups.setdefault(o.shape[1], []).append((k, o))
            items = groups.values()
        for group in items:
            vals = torch.stack([o for _, o in group]).reshape(len(group), B, -1)  # (m, B, n)
            self._sums.append(([k for k, _ in group], vals.sum(2, dtype=torch.float64)))
            self._n_sums += len(group)
        pending.clear()
        self._pending_elems = 0
        self._pending_state_shaped = True
        if self._n_sums >= self._fold_every:
            self._fold()

    def _fold(self) -> None:
        """Fold the reduced sums into ``_first_bad`` (device ops only, no sync): memory stays
        ``O(B)``, plus the bounded pending outputs, however long the solve."""
        first = None  # (B,) first failing record per sample in this chunk, _NONE where none
        if self._sums:
            ks = [k for idx, _ in self._sums for k in idx]
            sums = self._sums[0][1] if len(self._sums) == 1 else torch.cat([v for _, v in self._sums])  # (m, B)
            if ks == list(range(ks[0], ks[0] + len(ks))):  # consecutive records: a kernel, not a copy
                rec = torch.arange(ks[0], ks[-1] + 1, device=sums.device)
            else:
                rec = _to_device(ks, sums.device)
            first = torch.where(torch.isfinite(sums), _NONE, rec[:, None]).amin(0)
            self._sums.clear()
            self._n_sums = 0
        if self._bad_scalars:  # every sample fails at the first non-finite scalar output
            k0 = min(self._bad_scalars)
            first = (torch.full((self.shape[0],), k0, dtype=torch.int64, device=self.device) if first is None
                     else first.clamp_max(k0))
            self._bad_scalars.clear()
        if first is not None:
            self._first_bad = first if self._first_bad is None else torch.minimum(self._first_bad, first)

    def drift(self, t, x):
        self.nfe += 1
        return self._check("drift", t, self._drift(t if self._ts_cast is None else self.time(t), x))

    def diffusion(self, t, x):
        g = self._diffusion(t if self._ts_cast is None else self.time(t), x)
        if g is None:
            return None
        if self._raw_diffusion:
            g = broadcast_diffusion(g, x, self.noise_type)
        return self._check("diffusion", t, g, allow_broadcast=True)

    def score(self, t, x):
        self.nfe += 1
        return self._check("score", t, self._score(t if self._ts_cast is None else self.time(t), x))

    def denoise(self, t, x):
        """A semi-linear problem's data prediction ``D(t, x)`` (``flowsde.SemiLinearODE``):
        one network evaluation, checked as the drift is."""
        self.nfe += 1
        return self._check("denoise", t, self.problem.denoise(t if self._ts_cast is None else self.time(t), x))

    def finish(self, x: torch.Tensor, grid: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Per-sample ``(status, t_final)`` of a fixed-step solve ending in state ``x``.

        A sample is ``NON_FINITE`` when one of its function outputs or its final state is
        not finite; its ``t_final`` is the start of the step where that was first seen
        (``grid[-1]`` when only the final state is). Without ``throw`` nothing syncs with the
        host; with ``throw`` one sync decides (a success then needs nothing more), and a
        failure raises :class:`SolveError`. With ``defer`` the one sync reads the final
        state alone and a failure returns ``None``: the caller replays the solve without
        ``defer`` to name it.
        """
        B = self.shape[0]
        if self.defer:
            return _success(x, grid) if bool(torch.isfinite(x.detach()).all()) else None
        self._reduce()
        self._fold()
        if self.throw:  # the solve's one host sync decides; a success needs no per-sample bookkeeping
            ok = torch.isfinite(x.detach()).all()
            if self._first_bad is not None:
                ok = ok & (self._first_bad == _NONE).all()
            if bool(ok):
                return _success(x, grid)
        bad_x = ~torch.isfinite(x.detach()).reshape(B, -1).all(1)
        t_end = grid[-1].expand(B)
        if self._first_bad is not None:
            first = torch.where(self._first_bad == _NONE, -1, self._first_bad)
            bad_calls = first >= 0
            steps = _to_device([r[1] for r in self._records], x.device)
            t_fail = grid[steps[first.clamp_min(0)].clamp_max(grid.shape[0] - 1)]
            t_final = torch.where(bad_calls, t_fail, t_end)
            bad_any = bad_calls | bad_x
        else:
            first, bad_any, t_final = None, bad_x, t_end.clone()
        status = torch.where(bad_any, int(Status.NON_FINITE), int(Status.SUCCESS)).to(torch.int64)
        if self.throw and bool(bad_any.any()):  # the solve's one host sync
            self._raise(first, bad_x)
        return status, t_final

    def _raise(self, first: Optional[torch.Tensor], bad_x: torch.Tensor) -> None:
        if first is not None and bool((first >= 0).any()):
            k = int(first[first >= 0].min())  # the earliest non-finite output of the solve
            name, step, t = self._records[k]
            samples = (first == k).nonzero().flatten().tolist()
            raise SolveError(
                f"{name} returned NaN/Inf at step {step} (t = {_fmt_t(t)}) in sample{_plural(samples)} "
                f"{_list(samples)}. Check the model/function near that time (a singular point such as "
                "sigma = 0?), use float64, or use smaller steps; pass throw=False to get the result with "
                "per-sample status.",
                step=step, t=_float_t(t), samples=samples,
            )
        samples = bad_x.nonzero().flatten().tolist()
        raise SolveError(
            f"the state became non-finite (overflow) in sample{_plural(samples)} {_list(samples)} although every "
            "function output was finite; use float64 or smaller steps (throw=False returns the result with "
            "per-sample status).", step=self.step, samples=samples)


def _success(x: torch.Tensor, ts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(status, t_final)`` of a solve whose every sample succeeded."""
    B = x.shape[0]
    return torch.full((B,), int(Status.SUCCESS), dtype=torch.int64, device=x.device), ts[-1].expand(B).clone()


def _to_device(values: list, device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device`` without a blocking copy (pinned memory, asynchronous)."""
    t = torch.tensor(values, dtype=torch.int64)
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _plural(xs) -> str:
    return "s" if len(xs) != 1 else ""


def _list(xs) -> str:
    return f"{xs[:10]}{' ...' if len(xs) > 10 else ''}" if len(xs) != 1 else str(xs[0])


def _float_t(t):
    if isinstance(t, torch.Tensor):
        return float(t.reshape(-1)[0])
    return float(t) if t is not None else None


def _fmt_t(t):
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            return f"{float(t):.6g}"
        return f"{float(t.reshape(-1)[0]):.6g}..."
    return f"{t:.6g}" if isinstance(t, float) and math.isfinite(t) else repr(t)
