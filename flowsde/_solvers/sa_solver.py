"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models"), the stochastic Adams predictor-corrector of diffusers' ``SASolverScheduler`` in data
prediction (its defaults: predictor and corrector order 2, ``lower_order_final=True``).

It solves the reverse-time family ``dx = [f x - (1 + tau^2)/2 g^2 score] dt + tau g dW``: flowsde's
``reverse_sde(beta)`` with ``tau = sqrt(beta)``, ``beta`` a number or a function ``beta(t)`` read at
the start of each step (called once per solve, on the grid's float64 times) (diffusers' ``tau_func`` of the step's timestep; its default, ``tau = 1`` on
timesteps 200..800 and 0 elsewhere, is ``beta(t) = 1`` for ``201/N <= t <= 801/N`` on
``from_diffusers``' time ``t = (k + 1)/N``); ``pf_ode()`` is ``tau = 0``. With ``lam = log(alpha/sigma)``,
``m_j = D(t_j, x_j)`` and ``z_j ~ N(0, I)``, the SA-Predictor of order ``p`` from ``t_i`` is

    x_{i+1} = e^{-tau^2 h} (s_{i+1}/s_i) x_i + sum_{k<p} b_k m_{i-k} + s_{i+1} sqrt(1 - e^{-2 tau^2 h}) z_i,
    b_k = (1 + tau^2) s_{i+1} e^{-tau^2 lam_{i+1}} int_{lam_i}^{lam_{i+1}} e^{(1 + tau^2) l} L_k(l) dl,

``h = lam_{i+1} - lam_i``, ``L_k`` the Lagrange basis polynomial of node ``lam_{i-k}`` (the integrals
in closed form, the polynomials expanded in powers of ``lam``, as the peer computes them). After the
model is evaluated at the predicted ``x_{i+1}``, the SA-Corrector of order ``c`` recomputes it from
``x_i`` with the same formula on the nodes ``lam_{i+1}, lam_i, ...`` (``m_{i+1}`` included, no extra
evaluation) and the same ``z_i``; the last state is the predictor's. Order 2 of either adds the peer's
``O(h^3)`` modification of the first two weights. The orders follow the peer: warm-up ``p <= i + 1``,
``c <= i + 2``, and with ``lower_order_final`` ``p <= n - i``, ``c <= n - i + 1``. One normal draw per
step on an SDE, used by the step's predictor and the next step's corrector, whatever ``tau`` (as the
peer draws, so that the same generator gives the same run); none on an ODE. All weights depend on
the grid only and are computed once per solve, in float64 on the host.

Order ``min(corrector_order, 2)`` in the deterministic limit (``beta = 0``; the corrected first-order
first step caps it at 2, measured for the predictor/corrector orders 1/1, 1/2, 2/1, 2/2, 3/2, 3/3),
weak order 1; 1 NFE per step.
diffusers' grids end at the first training step (``sigma_min``); a step to zero noise returns
``a1 m`` (the peer's weights are not finite there).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .sampler import F64, SamplerState, SemiLinearSolver, denoise, scale


def _exp_integral(k: int, a: float, b: float, tau2: float) -> float:
    """``int_a^b e^{(1 + tau^2) l} l^k dl`` for ``k <= 3`` (the peer's closed forms)."""
    s = 1.0 + tau2
    B, A = s * b, s * a
    E = math.exp(-(B - A))
    if k == 0:
        return math.exp(B) * (1 - E) / s
    if k == 1:
        return math.exp(B) * ((B - 1) - (A - 1) * E) / s ** 2
    if k == 2:
        return math.exp(B) * ((B ** 2 - 2 * B + 2) - (A ** 2 - 2 * A + 2) * E) / s ** 3
    return math.exp(B) * ((B ** 3 - 3 * B ** 2 + 6 * B - 6) - (A ** 3 - 3 * A ** 2 + 6 * A - 6) * E) / s ** 4


def _lagrange(nodes: list) -> list:
    """Per node, the coefficients (highest power first) of its Lagrange basis polynomial."""
    out = []
    for i, li in enumerate(nodes):
        others = [lj for j, lj in enumerate(nodes) if j != i]
        den = 1.0
        for lj in others:
            den = den * (li - lj)
        if len(others) == 0:
            out.append([1.0])
        elif len(others) == 1:
            out.append([1 / den, -others[0] / den])
        elif len(others) == 2:
            l1, l2 = others
            out.append([1 / den, (-l1 - l2) / den, l1 * l2 / den])
        else:
            l1, l2, l3 = others
            out.append([1 / den, (-l1 - l2 - l3) / den, (l1 * l2 + l1 * l3 + l2 * l3) / den, (-l1 * l2 * l3) / den])
    return out


def sa_weights(q: int, a: float, b: float, nodes: list, tau2: float, s1: float, corrector: bool,
               lam_prev: Optional[float] = None) -> list:
    """The weights ``b_k`` of ``m`` at ``nodes`` (newest first) for a step over ``[a, b]`` in ``lam``."""
    lag = _lagrange(nodes)
    gc = [sum(lag[i][j] * _exp_integral(q - 1 - j, a, b, tau2) for j in range(q)) for i in range(q)]
    if q == 2:  # the peer's O(h^3) modification of order 2
        h, s = b - a, 1.0 + tau2
        if corrector:
            add = math.exp(s * b) * (h / 2 - (h * s - 1 + math.exp(s * (-h))) / (s ** 2 * h))
        else:
            add = math.exp(s * b) * (h ** 2 / 2 - (h * s - 1 + math.exp(s * (-h))) / s ** 2) / (a - lam_prev)
        gc[0] += add
        gc[1] -= add
    f = (1 + tau2) * s1 * math.exp(-tau2 * b)
    return [f * g for g in gc]


@dataclass
class SASolverState(SamplerState):
    pred: list  #: per step ``(cx, [weights of m_i, m_{i-1}, ..], cz)`` (``None`` for a step to zero noise)
    corr: list  #: per step ``(cx, [weights of m_i, m_{i-1}, ..], cz)`` correcting ``x_i`` from ``x_{i-1}``
    draw: bool  #: whether the solve draws noise (an SDE)
    hist: tuple = ()  #: the data predictions ``m_{i-1}, m_{i-2}, ..`` (newest first)
    x_prev: Optional[torch.Tensor] = None  #: the previous (corrected) state
    z_prev: Optional[torch.Tensor] = None  #: the previous step's draw


def _check_order(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4:
        raise InputError(f"SASolver({name}={v!r}): must be 1, 2, 3 or 4 (diffusers' default is 2).")
    return v


class SASolver(SemiLinearSolver):
    name = "sa_solver"
    weak_order = 1.0
    noise_types = ("scalar",)
    eta_name = "sqrt"

    def __init__(self, predictor_order: int = 2, corrector_order: int = 2, lower_order_final: bool = True):
        """``predictor_order``, ``corrector_order`` (1 to 4) and ``lower_order_final``: diffusers' (module)."""
        self.predictor_order = _check_order("predictor_order", predictor_order)
        self.corrector_order = _check_order("corrector_order", corrector_order)
        self.lower_order_final = bool(lower_order_final)
        self.order = min(self.corrector_order, 2)
        self._keep = max(self.predictor_order, self.corrector_order - 1)

    def _eta_for(self, problem) -> float:
        """``tau`` comes from the problem's ``beta``, a number or a function of ``t`` (checked in :meth:`prepare`)."""
        if not problem.is_sde:
            return 0.0
        beta = problem.beta
        if callable(beta):
            return math.nan
        if not isinstance(beta, numbers.Real):
            raise InputError(f"method={self.name!r}: beta must be a number or a function beta(t); got {beta!r}.")
        return math.sqrt(beta)

    def _taus2(self, problem, host) -> list:
        """``tau^2 = beta`` at every grid time (one call of ``beta`` on the float64 grid)."""
        n = host.steps + 1
        if not problem.is_sde:
            return [0.0] * n
        beta = problem.beta
        if not callable(beta):
            return [float(beta)] * n
        th = torch.tensor(host.t, dtype=F64)
        b = torch.as_tensor(beta(th), dtype=F64).to("cpu")
        if b.dim() > 1 or (b.dim() == 1 and b.shape[0] != n):
            raise InputError(f"method={self.name!r}: beta(t) must return a number or a tensor of t's shape {(n,)}; "
                             f"got shape {tuple(b.shape)} for the grid's {n} times.")
        b = b.expand(th.shape)
        bad = ~(torch.isfinite(b) & (b >= 0))
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise InputError(f"method={self.name!r}: beta(grid[{k}] = {host.t[k]!r}) = {b[k].item()!r}; beta must be "
                             "finite and >= 0.")
        return b.tolist()

    def _orders(self, n: int) -> list:
        out = []
        for i in range(n):
            p, c = self.predictor_order, self.corrector_order
            if self.lower_order_final:
                p, c = min(p, n - i), min(c, n - i + 1)
            warm = min(i, self._keep)
            out.append((min(p, warm + 1), min(c, warm + 2)))
        return out

    def prepare(self, problem, host, eta) -> SASolverState:
        if host.a[0] == 0.0:
            raise InputError(f"method={self.name!r}: alpha(grid[0]) = 0 (lam = -inf), where SA-Solver's weights are "
                             "not finite; start the grid slightly inside the schedule (e.g. t_max - 1e-3).")
        n, lam, s = host.steps, host.lam, host.s
        tau2 = self._taus2(problem, host)
        orders = self._orders(n)
        pred, corr = [], [None]
        for i, (p, c) in enumerate(orders):
            h, t2 = host.h(i), tau2[i]
            if host.to_zero(i):
                pred.append(None)
            else:
                ws = sa_weights(p, lam[i], lam[i + 1], [lam[i - k] for k in range(p)], t2, s[i + 1], False,
                                lam[i - 1] if p == 2 else None)
                pred.append((math.exp(-t2 * h) * (s[i + 1] / s[i]), ws,
                             s[i + 1] * math.sqrt(1 - math.exp(-2 * t2 * h))))
            if i + 1 < n:  # the corrector of x_{i+1}, with this step's order c, tau and draw
                ws = sa_weights(c, lam[i], lam[i + 1], [lam[i + 1 - k] for k in range(c)], t2, s[i + 1], True)
                corr.append((math.exp(-t2 * h) * (s[i + 1] / s[i]), ws,
                             s[i + 1] * math.sqrt(1 - math.exp(-2 * t2 * h))))
        return SASolverState(host, eta, pred, corr, bool(problem.is_sde))

    def step(self, problem, x, t0, t1, h, i, noise, state: SASolverState):
        g = state.host
        d = denoise(problem, t0, x)
        hist = state.hist
        if i > 0:
            cx, ws, cz = state.corr[i]
            x = cx * state.x_prev + ws[0] * d
            for w, m in zip(ws[1:], hist):
                x = x + w * m
            if cz:
                x = x + cz * state.z_prev
        hist = (d,) + hist[:self._keep - 1]
        if state.pred[i] is None:
            return scale(g.a[i + 1], d), state
        z = noise.randn_like(x) if state.draw else None
        cx, ws, cz = state.pred[i]
        x1 = cx * x
        for w, m in zip(ws, hist):
            x1 = x1 + w * m
        if cz:
            x1 = x1 + cz * z
        return x1, SASolverState(g, state.eta, state.pred, state.corr, state.draw, hist, x, z)

    def __repr__(self) -> str:
        return (f"SASolver(predictor_order={self.predictor_order}, corrector_order={self.corrector_order}, "
                f"lower_order_final={self.lower_order_final})")
