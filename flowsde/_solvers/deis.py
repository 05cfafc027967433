"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"), the
multistep ``logrho`` variant of diffusers' ``DEISMultistepScheduler`` (its defaults: order 2,
``lower_order_final=True``).

DEIS integrates the probability-flow ODE in the scaled state ``x/alpha`` against the noise level
``rho = sigma/alpha``, with the noise prediction ``eps_j = (x_j - a_j D(t_j, x_j))/s_j`` interpolated
by a polynomial in ``log rho`` through the last ``q`` grid points (``rho_i > rho_{i-1} > ...`` going
back):

    x_{i+1} = a_{i+1} (x_i/a_i + sum_{k<q} c_k eps_{i-k}),   c_k = int_{rho_i}^{rho_{i+1}} L_k(log rho) d rho,

``L_k`` the Lagrange basis polynomial of node ``log rho_{i-k}``, integrated in closed form (diffusers'
``ind_fn``). ``q = 1`` is DDIM: ``c_0 = rho_{i+1} - rho_i``. ``q = min(order, i + 1)``; with
``lower_order_final`` and fewer than 15 steps (diffusers' rule) the last step has ``q = 1`` and the one
before ``q <= 2``. All weights depend on the grid only and are computed once per solve.

Order 2 for ``order = 2`` (the default) and for ``order = 3`` (its first-order first step caps the
global order at 2, measured); 1 for ``order = 1``. 1 NFE per step. diffusers' grids end at the first
training step (``sigma_min``); a step to zero noise (``rho = 0``) uses the integrals' limit
(``rho log^k rho -> 0``); with ``q = 1`` it returns ``a1 D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale

#: diffusers applies lower_order_final only to grids of fewer steps than this
LOWER_ORDER_FINAL_BELOW = 15


def _ind2(t: float, b: float, c: float) -> float:
    """``int (log t - log c)/(log b - log c) dt`` (diffusers' ``ind_fn``, order 2); 0 at ``t = 0``."""
    if t == 0.0:
        return 0.0
    return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


def _ind3(t: float, b: float, c: float, d: float) -> float:
    """``int (log t - log c)(log t - log d)/((log b - log c)(log b - log d)) dt`` (``ind_fn``, order 3)."""
    if t == 0.0:
        return 0.0
    lt, lc, ld = math.log(t), math.log(c), math.log(d)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt ** 2 - 2 * lt + 2)
    return num / ((math.log(b) - lc) * (math.log(b) - ld))


def deis_weights(r: list, i: int, q: int) -> list:
    """``[c_0, .., c_{q-1}]`` of the step from ``rho_i = r[i]`` to ``r[i + 1]`` (module docstring)."""
    rt, r0 = r[i + 1], r[i]
    if q == 1:
        return [rt - r0]
    if q == 2:
        r1 = r[i - 1]
        return [_ind2(rt, r0, r1) - _ind2(r0, r0, r1), _ind2(rt, r1, r0) - _ind2(r0, r1, r0)]
    r1, r2 = r[i - 1], r[i - 2]
    return [_ind3(rt, r0, r1, r2) - _ind3(r0, r0, r1, r2), _ind3(rt, r1, r2, r0) - _ind3(r0, r1, r2, r0),
            _ind3(rt, r2, r0, r1) - _ind3(r0, r2, r0, r1)]


def multistep_orders(n: int, order: int, lower_order_final: bool) -> list:
    """diffusers' order per step of a multistep scheduler (``DEISMultistepScheduler``,
    ``DPMSolverMultistepScheduler``): warm-up ``min(order, i + 1)``; with ``lower_order_final`` and
    ``n < 15`` the last step is first order and the one before at most second order."""
    short = lower_order_final and n < LOWER_ORDER_FINAL_BELOW
    out = []
    for i in range(n):
        q = min(order, i + 1)
        if short and i == n - 1:
            q = 1
        elif short and i == n - 2:
            q = min(q, 2)
        out.append(q)
    return out


@dataclass
class DEISState(SamplerState):
    coef: list  #: per step ``(cx, [w_0, .., w_{q-1}])``: ``x1 = cx x + sum_k w_k eps_{i-k}``
    hist: tuple = ()  #: the noise predictions ``eps_{i-1}, eps_{i-2}, ..`` (newest first)


class DEIS(SemiLinearSolver):
    name = "deis"
    scaled = True  # works in x/alpha: alpha > 0 at every grid point

    def __init__(self, order: int = 2, lower_order_final: bool = True):
        """``order``: DEIS's ``solver_order`` (1, 2 or 3); ``lower_order_final``: diffusers' rule (module)."""
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
            raise InputError(f"DEIS(order={order!r}): order must be 1, 2 or 3 (diffusers' default is 2).")
        self.deis_order = order
        self.lower_order_final = bool(lower_order_final)
        self.order = min(order, 2)

    def prepare(self, problem, host, eta) -> DEISState:
        n = host.steps
        coef = []
        for i, q in enumerate(multistep_orders(n, self.deis_order, self.lower_order_final)):
            a1 = host.a[i + 1]
            coef.append((a1 / host.a[i], [a1 * c for c in deis_weights(host.r, i, q)]))
        return DEISState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DEISState):
        g = state.host
        d = denoise(problem, t0, x)
        if g.to_zero(i) and len(state.coef[i][1]) == 1:
            return scale(g.a[i + 1], d), state
        eps = (x - g.a[i] * d) / g.s[i]
        hist = (eps,) + state.hist
        cx, ws = state.coef[i]
        x1 = cx * x
        for w, e in zip(ws, hist):
            x1 = x1 + w * e
        return x1, DEISState(g, state.eta, state.coef, hist[:self.deis_order - 1])

    def __repr__(self) -> str:
        return f"DEIS(order={self.deis_order}, lower_order_final={self.lower_order_final})"
