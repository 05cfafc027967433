"""Step-size control of the embedded Runge-Kutta solvers: the error norm, the initial step, the PI controller.

Error ratio per sample ``b`` and state component ``c`` (the state is a tuple; the
likelihood uses ``(x, L)`` with ``L`` the log-density channels)::

    w = atol + rtol max(|y|, |y_1|),    r_bc = RMS(err / w)  (or max|err / w| for "max" components,
                                                          max|err / atol| for "abs" components)
    r_b = max_c r_bc

A sample's step is accepted when ``r_b <= 1``. Step-size update: Hairer's PI controller of
``dopri5.f`` (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4; Gustafsson's PI controller;
diffrax's ``PIDController`` with ``dcoeff = 0``)::

    h_new = h clip(safety r_n^(-alpha) r_{n-1}^beta, dfactor, ifactor)     (no increase after a rejection)
    alpha = 1 / (q + 1) - 0.75 beta                                       (q: the embedded order)

with ``safety = 0.9``, ``dfactor = 0.2``, ``ifactor = 10``, ``beta = 0.04`` (``alpha = 0.17`` for
Dormand-Prince, ``q = 4``), ``r_{n-1}`` the ratio of the last accepted step (initialised to 1e-4
as in ``dopri5.f``). ``beta = 0`` is the I controller ``r^(-1/(q+1))`` (torchdiffeq's).
Initial step: Hairer's rule (*Solving ODEs I*, II.4, as torchdiffeq's ``_select_initial_step``),
one extra evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from .._errors import InputError

State = Tuple[torch.Tensor, ...]
NORMS = ("rms", "max", "abs")
F64 = torch.float64


def _reduce(q: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample norm of ``q`` (``(B, n)``), float64: max for ``"max"``/``"abs"``, else RMS."""
    rc = q.abs().amax(1) if kind in ("max", "abs") else q.square().mean(1).sqrt()
    return rc.to(F64)


@dataclass(frozen=True)
class ErrorNorm:
    """How a step's error is measured, per component of the tuple state.

    Attributes:
        kinds: per component ``"rms"``, ``"max"`` (max norm, mixed tolerance) or ``"abs"`` (max norm,
            absolute tolerance ``atol`` only).
        tols: per component ``(rtol, atol)``.
    """

    kinds: Tuple[str, ...]
    tols: Tuple[Tuple[float, float], ...]

    @classmethod
    def of(cls, n: int, rtol: float, atol: float, norms: Optional[Sequence[str]] = None,
           tols: Optional[Sequence[Tuple[float, float]]] = None) -> "ErrorNorm":
        """``n`` components: ``norms`` (default RMS each) and ``tols`` (default ``(rtol, atol)`` each)."""
        return cls(tuple(norms) if norms is not None else ("rms",) * n,
                   tuple(tols) if tols is not None else ((rtol, atol),) * n)

    def ratio(self, err: State, y0: State, y1: State) -> torch.Tensor:
        """``max_c norm_c(err / (atol_c + rtol_c max(|y0|, |y1|)))``, float64 ``(B,)``; non-finite where the
        error or the state is (``torch.maximum`` propagates NaN)."""
        r = None
        for e, a, b, kind, (rtol, atol) in zip(err, y0, y1, self.kinds, self.tols):
            if kind == "abs":  # absolute control: |err| <= atol (quantities measured in absolute units)
                q = (e / atol).reshape(e.shape[0], -1)
            else:
                w = atol + rtol * torch.maximum(a.abs(), b.abs())
                q = (e / w).reshape(e.shape[0], -1)
            rc = _reduce(q, kind)
            r = rc if r is None else torch.maximum(r, rc)
        return r

    def scale(self, y: State) -> State:
        """The weights ``atol + rtol |y|`` (``atol`` for ``"abs"`` components) of Hairer's initial step."""
        return tuple(torch.full_like(v, at) if kind == "abs" else at + rt * v.abs()
                     for v, kind, (rt, at) in zip(y, self.kinds, self.tols))

    def scaled_norm(self, y: State, scale: State) -> torch.Tensor:
        """``max_c norm_c(y / scale)``, float64 ``(B,)``."""
        r = None
        for v, s, kind in zip(y, scale, self.kinds):
            rc = _reduce((v / s).reshape(v.shape[0], -1), kind)
            r = rc if r is None else torch.maximum(r, rc)
        return r


def initial_step(f: Callable[[torch.Tensor, State], State], t: torch.Tensor, y: State, k1: State, *,
                 norm: ErrorNorm, error_order: int, direction: float, t_range: Tuple[float, float],
                 per_sample: bool) -> torch.Tensor:
    """Hairer's initial step (*Solving ODEs I*, II.4; torchdiffeq ``_select_initial_step``), ``(B,)`` float64.

    ``k1 = f(t, y)``; one more evaluation of ``f`` (the probe, inside ``t_range``). Batch-shared
    steps take the smallest over the batch, as later steps do.
    """
    lo, hi = t_range
    span = hi - lo
    scale0 = norm.scale(y)
    d0 = norm.scaled_norm(y, scale0)
    d1 = norm.scaled_norm(k1, scale0)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = torch.nan_to_num(h0, nan=1e-6, posinf=1e-6).clamp(max=span)
    if not per_sample:
        h0 = h0.amin().expand(h0.shape[0])
    y_probe = tuple(torch.addcmul(v, (direction * h0).to(v.dtype).reshape((-1,) + (1,) * (v.dim() - 1)), k)
                    for v, k in zip(y, k1))
    # the probe stays inside the span: t_start + direction h0 can round past t_end when h0 = span
    k_probe = f(torch.clamp(t + direction * h0, lo, hi), y_probe)
    d2 = norm.scaled_norm(tuple(a - b for a, b in zip(k_probe, k1)), scale0) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                     (0.01 / dmax.clamp_min(1e-300)) ** (1.0 / (error_order + 1)))
    h = torch.minimum(100 * h0, h1)
    return torch.nan_to_num(h, nan=1e-6, posinf=span)


#: ``r_{n-1}`` before the first accepted step (``dopri5.f``'s ``facold``)
R_PREV_INIT = 1e-4


@dataclass(frozen=True)
class PIController:
    """Hairer's PI step-size controller (module docstring); ``beta = 0``: the I controller.

    Attributes:
        safety: ``0 < safety <= 1``.
        ifactor, dfactor: the largest and smallest factor of one update (``0 < dfactor < 1 < ifactor``).
        beta: the exponent of the last accepted ratio (``>= 0``).
    """

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    beta: float = 0.04

    def __post_init__(self):
        vals = (self.safety, self.ifactor, self.dfactor, self.beta)
        if not (all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals) and 0 < self.safety <= 1
                and 0 < self.dfactor < 1 < self.ifactor and self.beta >= 0):
            raise InputError(f"step-size controller: need 0 < safety <= 1, 0 < dfactor < 1 < ifactor and beta >= 0, "
                             f"got safety={self.safety}, dfactor={self.dfactor}, ifactor={self.ifactor}, "
                             f"beta={self.beta}.")

    def alpha(self, error_order: int) -> float:
        """The exponent of the current ratio: ``1 / (q + 1) - 0.75 beta``."""
        return 1 / (error_order + 1) - 0.75 * self.beta

    def check(self, error_order: int, where: str) -> None:
        if not self.alpha(error_order) > 0:
            raise InputError(f"{where}: beta={self.beta} leaves no weight on the current error ratio for an "
                             f"embedded order {error_order} (need beta < {4 / (3 * (error_order + 1)):.3g}).")

    def init(self, batch: int, device) -> torch.Tensor:
        """The controller's state: ``r_{n-1}`` per sample."""
        return torch.full((batch,), R_PREV_INIT, dtype=F64, device=device)

    def factor(self, r: torch.Tensor, r_prev: torch.Tensor, accept: torch.Tensor,
               error_order: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(factor, r_prev')``: the step-size factor for ratios ``r`` (``<= 1`` where the step was
        rejected) and the controller's next state."""
        rc = r.clamp_min(1e-10)
        fac = (self.safety * rc.pow(-self.alpha(error_order)) * r_prev.pow(self.beta)).clamp(self.dfactor,
                                                                                              self.ifactor)
        fac = torch.where(accept, fac, fac.clamp(max=1.0))
        return fac, torch.where(accept, rc.clamp_min(R_PREV_INIT), r_prev)
