"""Validation done before and during a solve (the error contract of DESIGN.md).

Shapes, dtypes and devices are host-side metadata and are checked on every
call at no cost. Finiteness needs the values: instead of a host sync per
call, each function output is reduced to one float64 sum on the device
(NaN and Inf propagate through a sum) and the sums are inspected once, at the
end of the solve, where the first non-finite one names the function, step and
time.
"""

from __future__ import annotations

import math

import torch

from ._errors import InputError, SolveError


def check_x0(x0, name: str = "x0") -> None:
    if not isinstance(x0, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor of shape (B, *event_shape), got {type(x0).__name__}.")
    if not x0.is_floating_point():
        raise InputError(f"{name}: dtype {x0.dtype} is not floating point; use float32 or float64.")
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise InputError(f"{name}: expected a batch-first tensor (B, *event_shape) with B >= 1, got shape "
                         f"{tuple(x0.shape)}.")
    finite = torch.isfinite(x0)
    if not bool(finite.all()):
        bad = (~finite).reshape(x0.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise InputError(f"{name}: contains NaN/Inf in samples {bad[:10]}{' ...' if len(bad) > 10 else ''}.")


def check_ts(ts, x0: torch.Tensor, name: str = "ts") -> torch.Tensor:
    """Validate a 1-D strictly monotone grid; return it on x0's device and dtype."""
    if not isinstance(ts, torch.Tensor):
        try:
            ts = torch.as_tensor(ts, dtype=torch.float64)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{name}: expected a 1-D tensor of times, got {type(ts).__name__}.") from e
    if ts.dim() != 1:
        raise InputError(f"{name}: expected a 1-D tensor of times, got shape {tuple(ts.shape)}.")
    if ts.numel() < 2:
        raise InputError(f"{name}: needs at least 2 times (start and end), got {ts.numel()}.")
    host = ts.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(host).all()):
        raise InputError(f"{name}: contains NaN/Inf: {host.tolist()[:10]}.")
    d = host[1:] - host[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        i = int(((d <= 0) if d[0] > 0 else (d >= 0)).nonzero()[0])
        raise InputError(
            f"{name}: times must be strictly increasing or strictly decreasing; "
            f"ts[{i}] = {host[i].item()!r}, ts[{i + 1}] = {host[i + 1].item()!r} break the order."
        )
    return ts.to(device=x0.device, dtype=x0.dtype)


class CheckedProblem:
    """Wraps a problem; checks every output's shape, dtype and device, and records a
    device-side sum of each output so that non-finite values are found after the solve.

    The driver sets ``.step`` before each step (a Python int) so a failure names it.
    """

    def __init__(self, problem, x0: torch.Tensor, ts: torch.Tensor, check_finite: bool = True):
        self.problem = problem
        self.noise = problem.noise
        self.is_sde = problem.is_sde
        self.has_score = getattr(problem, "has_score", False)
        self.shape = tuple(x0.shape)
        self.dtype = x0.dtype
        self.device = x0.device
        self.ts = ts
        self.check_finite = check_finite
        self.step = 0
        self.nfe = 0
        self._records: list = []  # (name, step, t, is_scalar, index into its list)
        self._sums: list = []  # float64 0-dim sums of the non-scalar outputs
        self._scalars: list = []  # one-element outputs, as 0-dim views (dtype of x)

    def _check(self, name, t, out, allow_broadcast=False):
        if not isinstance(out, torch.Tensor):
            raise InputError(f"{name} returned {type(out).__name__} at step {self.step}; it must return a torch.Tensor.")
        if out.dtype != self.dtype:
            raise InputError(
                f"{name} returned dtype {out.dtype} at step {self.step} (t = {_fmt_t(t)}) but x has dtype "
                f"{self.dtype}; make the function keep the dtype of x (or cast x0)."
            )
        if out.device != self.device:
            raise InputError(
                f"{name} returned a tensor on {out.device} at step {self.step} but x is on {self.device}."
            )
        if not allow_broadcast and tuple(out.shape) != self.shape:
            raise InputError(
                f"{name} returned shape {tuple(out.shape)} at step {self.step} (t = {_fmt_t(t)}) for x of shape "
                f"{self.shape}; it must return the shape of x."
            )
        if self.check_finite:
            # A one-element output (a scalar diffusion) is kept as it is: no kernel launched.
            if out.numel() == 1:
                self._records.append((name, self.step, t, True, len(self._scalars)))
                self._scalars.append(out.reshape(()))
            else:
                self._records.append((name, self.step, t, False, len(self._sums)))
                self._sums.append(out.sum(dtype=torch.float64))
        return out

    def drift(self, t, x):
        self.nfe += 1
        return self._check("drift", t, self.problem.drift(t, x))

    def diffusion(self, t, x):
        g = self.problem.diffusion(t, x)
        if g is None:
            return None
        return self._check("diffusion", t, g, allow_broadcast=True)

    def score(self, t, x):
        self.nfe += 1
        return self._check("score", t, self.problem.score(t, x))

    def raise_if_non_finite(self, x: torch.Tensor | None = None) -> None:
        """One host sync: raise :class:`SolveError` naming the first non-finite output."""
        if not self._records:
            return
        flags, sums, scalars = [], None, None
        if self._sums:
            sums = torch.isfinite(torch.stack(self._sums))
            flags.append(sums.all())
        if self._scalars:
            scalars = torch.isfinite(torch.stack(self._scalars))
            flags.append(scalars.all())
        if x is not None:
            flags.append(torch.isfinite(x).all())
        if bool(torch.stack(flags).all()):  # the solve's one host sync
            self._records.clear()
            self._sums.clear()
            self._scalars.clear()
            return
        finite = torch.tensor([bool((scalars if sc else sums)[j]) for (_, _, _, sc, j) in self._records])
        if bool(finite.all()):
            raise SolveError(
                "the state became non-finite (overflow) although every function output was finite; "
                "use float64 or smaller steps.", step=self.step)
        i = int((~finite).nonzero()[0])
        name, step, t, _, _ = self._records[i]
        tf = _fmt_t(t)
        raise SolveError(
            f"{name} returned NaN/Inf at step {step} (t = {tf}). Check the model/function near that time "
            f"(a singular point such as sigma = 0?), use float64, or use smaller steps.",
            step=step, t=float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else t,
        )


def _fmt_t(t):
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            return f"{float(t):.6g}"
        return f"{float(t.reshape(-1)[0]):.6g}..."
    return f"{t:.6g}" if isinstance(t, float) and math.isfinite(t) else repr(t)
