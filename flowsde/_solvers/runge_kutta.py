"""Embedded explicit Runge-Kutta pairs: a Butcher tableau and one generic step.

A pair is its tableau (torchdiffeq's ``rk_common.py`` and diffrax's ``ButcherTableau`` keep
the same data). One step from ``(t, y)`` with signed step ``sh`` (``s = +1`` or ``-1`` the
direction of time, ``sh = s h``)::

    k_1 = f(t, y)                                       (given: the previous step's last stage with FSAL)
    k_i = f(t + c_i sh, y + sh sum_j a_ij k_j),         i = 2..s
    y_1 = y + sh sum_i b_i k_i                          (order ``order``)
    err = sh sum_i (b_i - b^_i) k_i                     (against the embedded solution, order ``error_order``)

FSAL ("first same as last", Dormand-Prince, Bogacki-Shampine, Tsitouras): the last stage
is evaluated at ``y_1`` itself (``c_s = 1``, ``a_s = b``), so it is the next step's ``k_1``
and a step costs ``s - 1`` evaluations. Without FSAL, ``f(t + sh, y_1)`` is evaluated after
the step (``s`` per step), as torchdiffeq does.

A new pair is a :class:`ButcherTableau` of a few lines (see :data:`BOSH3`) and a subclass of
:class:`flowsde._solvers.rk45.EmbeddedRK` naming it; the error norm, the step-size
controller and the loop are shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Sequence, Tuple

import torch

State = Tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ButcherTableau:
    """The coefficients of an embedded explicit Runge-Kutta pair with ``s`` stages.

    Attributes:
        name: for messages.
        c: the ``s`` nodes, ``c[0] = 0``.
        a: ``s`` rows, row ``i`` with the ``i`` coefficients ``a_i1 .. a_ii-1`` (row 0 empty).
        b: the ``s`` weights of the solution that is propagated (order ``order``).
        b_hat: the ``s`` weights of the embedded solution (order ``error_order``).
        order, error_order: the orders of ``b`` and ``b_hat``; the controller's exponent and
            Hairer's initial step use ``error_order + 1`` (Hairer, Norsett & Wanner, II.4).
        fsal: the last stage is ``f(t + h, y_1)`` (``c[-1] = 1``, ``a[-1] = b[:-1]``, ``b[-1] = 0``).
        b_error: ``b - b_hat``, derived (the error estimate's weights).
    """

    name: str
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    b_hat: Tuple[float, ...]
    order: int
    error_order: int
    fsal: bool
    b_error: Tuple[float, ...] = field(init=False)

    def __post_init__(self):
        s = len(self.c)
        if not (len(self.a) == len(self.b) == len(self.b_hat) == s and self.c[0] == 0.0):
            raise ValueError(f"{self.name}: c, a, b, b_hat need one entry per stage and c[0] = 0.")
        if any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: row i of a must hold i coefficients (explicit method).")
        for i, row in enumerate(self.a):  # consistency: sum_j a_ij = c_i (to the digits given)
            if abs(math.fsum(row) - self.c[i]) > 1e-14:
                raise ValueError(f"{self.name}: row {i} of a does not sum to c_{i}.")
        if abs(math.fsum(self.b) - 1.0) > 1e-14 or abs(math.fsum(self.b_hat) - 1.0) > 1e-14:
            raise ValueError(f"{self.name}: b and b_hat must each sum to 1.")
        if self.fsal and not (self.c[-1] == 1.0 and self.a[-1] == self.b[:-1] and self.b[-1] == 0.0):
            raise ValueError(f"{self.name}: fsal needs c[-1] = 1, a[-1] = b[:-1] and b[-1] = 0.")
        object.__setattr__(self, "b_error", tuple(b - bh for b, bh in zip(self.b, self.b_hat)))

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def evals_per_step(self) -> int:
        """Evaluations of ``f`` per step, accepted or rejected: ``s - 1`` new stages, plus the end
        point without FSAL."""
        return self.stages - 1 if self.fsal else self.stages


# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6.
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
DOPRI5 = ButcherTableau(
    name="Dormand-Prince 5(4)",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DP_B,
    ),
    b=_DP_B + (0.0,),
    b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5,
    error_order=4,
    fsal=True,
)

# Bogacki & Shampine (1989), "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2 (torchdiffeq's bosh3).
BOSH3 = ButcherTableau(
    name="Bogacki-Shampine 3(2)",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    order=3,
    error_order=2,
    fsal=True,
)

# Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Comput. Math. Appl. 62 (the coefficients as diffrax's and OrdinaryDiffEq.jl's Tsit5).
_TS_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
         2.324710524099774)
TSIT5 = ButcherTableau(
    name="Tsitouras 5(4)",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        _TS_B,
    ),
    b=_TS_B + (0.0,),
    b_hat=(0.09468075576583945, 0.009183565540343254, 0.4877705284247616, 1.234297566930479, -2.7077123499835256,
           1.866628418170587, 1 / 66),
    order=5,
    error_order=4,
    fsal=True,
)


def _weighted_sum(coeffs: Sequence[float], ks: Sequence[State], c: int):
    """``sum_j coeffs_j ks_j[c]`` (``None`` when every coefficient is 0): one kernel per term
    (``acc += a k`` into the first term's fresh product), none for the zero coefficients."""
    acc = None
    for a, k in zip(coeffs, ks):
        if a == 0.0:
            continue
        acc = k[c] * a if acc is None else acc.add_(k[c], alpha=a)
    return acc


class _StepSize:
    """The signed step ``sh`` (``(B,)`` float64), cast once per component dtype and shaped to broadcast."""

    def __init__(self, sh: torch.Tensor):
        self.sh = sh
        self._cast: Dict[torch.dtype, torch.Tensor] = {}

    def like(self, v: torch.Tensor) -> torch.Tensor:
        h = self._cast.get(v.dtype)
        if h is None:
            h = self._cast[v.dtype] = self.sh.to(v.dtype)
        return h.reshape((-1,) + (1,) * (v.dim() - 1))


def lincomb(y: State, h: _StepSize, coeffs: Sequence[float], ks: Sequence[State]) -> State:
    """``y + sh sum_j coeffs_j k_j`` componentwise (one ``addcmul`` for the update)."""
    out = []
    for c, yc in enumerate(y):
        acc = _weighted_sum(coeffs, ks, c)
        out.append(yc if acc is None else torch.addcmul(yc, h.like(yc), acc))
    return tuple(out)


def rk_step(tableau: ButcherTableau, f: Callable[[torch.Tensor, State], State], t: torch.Tensor, y: State,
            k1: State, sh: torch.Tensor, t_lo: torch.Tensor, t_hi: torch.Tensor) -> Tuple[State, State, State]:
    """One step of the pair: ``(y_1, err, k_end)``, ``k_end = f(t + sh, y_1)`` (the next step's ``k_1``).

    ``t``, ``sh``, ``t_lo``, ``t_hi`` are float64 ``(B,)``; the stage times ``t + c_i sh`` are
    clamped into ``[t_lo, t_hi]`` (they can round past the end time when ``c_i = 1``, where a
    model may be undefined: ``sigma = 0``, or a schedule's range check).
    """
    h = _StepSize(sh)
    ks = [k1]
    yi = y
    for i in range(1, tableau.stages):
        yi = lincomb(y, h, tableau.a[i], ks)
        ks.append(f(torch.clamp(t + tableau.c[i] * sh, t_lo, t_hi), yi))
    if tableau.fsal:  # the last stage was evaluated at y_1 = y + sh sum b_i k_i
        y1, k_end = yi, ks[-1]
    else:
        y1 = lincomb(y, h, tableau.b, ks)
        k_end = f(torch.clamp(t + sh, t_lo, t_hi), y1)
    err = []
    for c, yc in enumerate(y):
        acc = _weighted_sum(tableau.b_error, ks, c)
        err.append(torch.zeros_like(yc) if acc is None else acc * h.like(yc))
    return y1, tuple(err), k_end
