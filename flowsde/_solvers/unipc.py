"""UniPC (Zhao et al. 2023): the UniP-p predictor with the UniC corrector, B(h) variants bh1/bh2,
in data prediction (diffusers ``UniPCMultistepScheduler`` with ``predict_x0=True``).

With ``lam = log(alpha/sigma)``, ``m_j = D(t_j, x_j)`` the data predictions at the grid points and
``hh = -(lam1 - lam0)``, ``B(h) = e^{hh} - 1`` (bh2, the default) or ``hh`` (bh1), a UniP-q step
from ``t_i`` is

    x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} (e^{hh} - 1) m_i - a_{i+1} B(h) sum_{k<q} rho_k (m_{i-k} - m_i)/r_k,

``r_k = (lam_{i-k} - lam_i)/h``, the ``rho`` solving UniPC's order conditions (``rho = 1/2`` for
``q = 2``). After the model is evaluated at the predicted ``x_{i+1}``, the corrector UniC-q
recomputes ``x_{i+1}`` from ``x_i`` with ``m_{i+1}`` added to the differences (no extra
evaluation); the last state is the predictor's. ``q = min(order, i + 1)``, and with
``lower_order_final`` also ``<= n - i`` (diffusers' default). All weights depend on the grid only
and are computed once per solve.

Order ``min(order + 1, 3)`` with ``lower_order_final=False`` (UniC raises each step by one; the
first-order warm-up step, corrected, caps ``order = 3`` at 3); with ``lower_order_final=True``
(diffusers' default) the final first-order step caps it at 2 (all measured). 1 NFE per step. The step to zero noise is
first order and returns ``a1 m`` exactly, as diffusers with ``final_sigmas_type="zero"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale

VARIANTS = ("bh1", "bh2")


@dataclass
class UniPCState(SamplerState):
    pred: list  #: per step, the predictor's ``(cx, weights of m_i, m_{i-1}, ...)``
    corr: list  #: per step, the corrector's ``(cx, weight of m_i, weights of m_{i-1}, m_{i-2}, ...)``
    hist: tuple = ()  #: the data predictions ``m_{i-1}, m_{i-2}, ...`` (newest first)
    x_prev: Optional[torch.Tensor] = None  #: the previous step's (corrected) state ``x_{i-1}``


def _b_and_R(h: float, rks: list, order: int, variant: str):
    """diffusers' ``R`` (powers of ``rks``) and ``b`` of the UniPC order conditions, data prediction
    (pure Python: the systems are at most 3 x 3 and solved once per step per solve)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = hh if variant == "bh1" else math.expm1(hh)
    rks = list(rks) + [1.0]
    R, b, fact = [], [], 1
    for k in range(1, order + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * fact / B_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return R, b, h_phi_1, B_h


def _solve(A: list, b: list) -> list:
    """``A^{-1} b`` by Gaussian elimination with partial pivoting (``A`` at most 3 x 3)."""
    n = len(b)
    M = [list(A[i]) + [b[i]] for i in range(n)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        M[c], M[p] = M[p], M[c]
        for r in range(c + 1, n):
            f = M[r][c] / M[c][c]
            M[r] = [M[r][k] - f * M[c][k] for k in range(n + 1)]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (M[r][n] - sum(M[r][k] * x[k] for k in range(r + 1, n))) / M[r][r]
    return x


class UniPC(SemiLinearSolver):
    name = "unipc"

    def __init__(self, order: int = 2, variant: str = "bh2", lower_order_final: bool = True):
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
            raise InputError(f"UniPC(order={order!r}): order must be 1, 2 or 3 (diffusers' default is 2).")
        if variant not in VARIANTS:
            raise InputError(f"UniPC(variant={variant!r}): must be one of {VARIANTS}.")
        self.unipc_order = order
        self.variant = variant
        self.lower_order_final = bool(lower_order_final)
        self.order = 2 if self.lower_order_final else min(order + 1, 3)

    def _orders(self, n: int, host) -> list:
        out = []
        for i in range(n):
            q = min(self.unipc_order, i + 1)
            if self.lower_order_final:
                q = min(q, n - i)
            out.append(1 if host.to_zero(i) else q)
        return out

    def prepare(self, problem, host, eta) -> UniPCState:
        if host.a[0] == 0.0:
            raise InputError(f"method={self.name!r}: alpha(grid[0]) = 0; start the grid slightly inside the schedule "
                             "(e.g. t_max - 1e-3): UniPC's order conditions are singular at alpha = 0.")
        n, lam = host.steps, host.lam
        orders = self._orders(n, host)
        pred, corr = [], [None]
        for i in range(n):
            a1 = host.a[i + 1]
            if host.to_zero(i):
                pred.append((0.0, [a1]))
            else:
                q, h = orders[i], host.h(i)
                rks = [(lam[i - k] - lam[i]) / h for k in range(1, q)]
                R, b, h_phi_1, B_h = _b_and_R(h, rks, q, self.variant)
                rho = [0.5] if q == 2 else (_solve([row[:-1] for row in R[:-1]], b[:-1]) if q > 2 else [])
                w = [-a1 * B_h * rho[k - 1] / rks[k - 1] for k in range(1, q)]
                pred.append((host.s[i + 1] / host.s[i], [-a1 * h_phi_1 - sum(w)] + w))
            if i + 1 < n:  # corrector of x_{i+1}, after the model is evaluated there
                q, h = orders[i], host.h(i)
                rks = [(lam[i - k] - lam[i]) / h for k in range(1, q)]
                R, b, h_phi_1, B_h = _b_and_R(h, rks, q, self.variant)
                rc = [0.5] if q == 1 else _solve(R, b)
                w = [-a1 * B_h * rc[k - 1] / rks[k - 1] for k in range(1, q)]
                w_new = -a1 * B_h * rc[-1]
                corr.append((host.s[i + 1] / host.s[i], w_new, [-a1 * h_phi_1 - sum(w) - w_new] + w))
        return UniPCState(host, eta, pred, corr)

    def step(self, problem, x, t0, t1, h, i, noise, state: UniPCState):
        m = denoise(problem, t0, x)
        hist = state.hist
        if i > 0:
            cx, w_new, ws = state.corr[i]
            x = cx * state.x_prev + w_new * m
            for w, mk in zip(ws, hist):
                x = x + w * mk
        hist = (m,) + hist[:self.unipc_order - 1]
        cx, ws = state.pred[i]
        x1 = scale(ws[0], m) if cx == 0.0 else cx * x + ws[0] * m
        for w, mk in zip(ws[1:], hist[1:]):
            x1 = x1 + w * mk
        return x1, UniPCState(state.host, state.eta, state.pred, state.corr, hist, x)

    def __repr__(self) -> str:
        return f"UniPC(order={self.unipc_order}, variant={self.variant!r}, lower_order_final={self.lower_order_final})"
