"""Single-step DPM-Solver++ (Lu et al. 2022a, "DPM-Solver", and 2022b, "DPM-Solver++"), as diffusers'
``DPMSolverSinglestepScheduler`` (its defaults: order 2, ``dpmsolver++``, ``midpoint``).

The grid is cut into groups of ``k`` consecutive steps (``k`` = ``order``); the grid points inside a
group are the intermediate points of one ``k``-stage single-step step from the group's start ``j``.
Step ``i`` of a group (stage ``k_i = i - j + 1``) evaluates ``m_i = D(t_i, x_i)`` and goes from the
group's start ``x_j`` (``lam = log(alpha/sigma)``, ``h = lam_{i+1} - lam_j``):

    k_i = 1:  x_{i+1} = (s_{i+1}/s_j) x_j + a_{i+1} (1 - e^{-h}) m_j                       (DDIM),
    k_i = 2:  ... + a_{i+1} c (m_i - m_j)/r,   r = (lam_i - lam_j)/h,
              c = (1 - e^{-h})/2 (``solver_type="midpoint"``) or phi_2 = (e^{-h} - 1)/h + 1 (``"heun"``),
    k_i = 3:  ... + a_{i+1} phi_2 (m_i - m_j)/r0                       (``"midpoint"``), or
              ... + a_{i+1} phi_2 D1 - a_{i+1} phi_3 D2                (``"heun"``),
              r0 = (lam_i - lam_j)/h, r1 = (lam_{j+1} - lam_j)/h, D1_0 = (m_{j+1} - m_j)/r1,
              D1_1 = (m_i - m_j)/r0, D1 = (r0 D1_0 - r1 D1_1)/(r0 - r1), D2 = 2 (D1_1 - D1_0)/(r0 - r1),
              phi_3 = (e^{-h} - 1 + h)/h^2 - 1/2,

so the state at the group's last point is the ``k``-stage DPM-Solver++ step and the ones inside are
lower-stage estimates. The stages follow diffusers' ``get_order_list``: ``[1, 2, .., order]``
repeated; with ``lower_order_final`` (forced on, as diffusers does, when the steps are not a multiple
of ``order`` or the grid ends at zero noise) the last group is shortened (``[.., 1, 2] + [1]`` for
order 3, ``[.., 1, 1]`` or ``[.., 1]`` for order 2), and a step to zero noise has stage 1 and returns
``a1 m``.

Order 2 for ``order = 2`` (the default) and ``order = 3`` (the shortened last group of a grid whose
steps are not a multiple of 3 caps it at 2; on ``3 m`` steps with ``lower_order_final=False`` it is 3,
measured); 1 for ``order = 1``. 1 NFE per step. A grid may start at ``alpha = 0`` only with
``order = 1`` (the stages' ratios ``r`` are undefined there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale

SOLVER_TYPES = ("midpoint", "heun")


def singlestep_orders(n: int, order: int, lower_order_final: bool, to_zero: bool) -> list:
    """diffusers' ``DPMSolverSinglestepScheduler.get_order_list`` for ``n`` steps, with the rule of its
    ``set_timesteps`` that turns ``lower_order_final`` on when ``n % order != 0`` or the grid ends at zero noise."""
    lower_order_final = lower_order_final or n % order != 0 or to_zero
    if order == 1:
        orders = [1] * n
    elif not lower_order_final:
        orders = [1, 2, 3][:order] * (n // order)
    elif order == 3:
        orders = ([1, 2, 3] * (n // 3 - 1) + [1, 2] + [1] if n % 3 == 0 else
                  [1, 2, 3] * (n // 3) + [1] if n % 3 == 1 else [1, 2, 3] * (n // 3) + [1, 2])
    else:
        orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
    if to_zero:
        orders[-1] = 1
    return orders


@dataclass
class DPMppSingleState(SamplerState):
    coef: list  #: per step ``(cx, [weights of m_j, m_{j+1}, .., m_i])`` (``None`` for a step to zero noise)
    start: Optional[torch.Tensor] = None  #: the state at the group's start ``x_j``
    ms: tuple = ()  #: the data predictions of the group so far, ``m_j, .., m_{i-1}``


class DPMppSingle(SemiLinearSolver):
    name = "dpmpp_single"

    def __init__(self, order: int = 2, solver_type: str = "midpoint", lower_order_final: bool = False):
        """``order``: diffusers' ``solver_order`` (1, 2 or 3); ``solver_type``, ``lower_order_final``: see the module."""
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
            raise InputError(f"DPMppSingle(order={order!r}): order must be 1, 2 or 3 (diffusers' default is 2).")
        if solver_type not in SOLVER_TYPES:
            raise InputError(f"DPMppSingle(solver_type={solver_type!r}): must be one of {SOLVER_TYPES}.")
        self.solver_order = order
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)
        self.order = min(order, 2)

    def prepare(self, problem, host, eta) -> DPMppSingleState:
        n, lam = host.steps, host.lam
        if host.a[0] == 0.0 and self.solver_order > 1:
            raise InputError(f"method={self.name!r}: alpha(grid[0]) = 0, where the stage ratios of order "
                             f"{self.solver_order} are undefined; start the grid slightly inside the schedule "
                             "(e.g. t_max - 1e-3) or use order=1.")
        orders = singlestep_orders(n, self.solver_order, self.lower_order_final, host.to_zero(n - 1))
        coef = []
        for i, k in enumerate(orders):
            if host.to_zero(i):
                coef.append(None)
                continue
            j = i - k + 1
            h = lam[i + 1] - lam[j]
            a1 = host.a[i + 1]
            phi_1 = -math.expm1(-h)
            phi_2 = math.expm1(-h) / h + 1.0
            if k == 1:
                ws = [a1 * phi_1]
            elif k == 2:
                r = (lam[i] - lam[j]) / h
                c = 0.5 * phi_1 if self.solver_type == "midpoint" else phi_2
                ws = [a1 * (phi_1 - c / r), a1 * c / r]
            elif self.solver_type == "midpoint":
                r0 = (lam[i] - lam[j]) / h
                ws = [a1 * (phi_1 - phi_2 / r0), 0.0, a1 * phi_2 / r0]
            else:
                r0, r1 = (lam[i] - lam[j]) / h, (lam[j + 1] - lam[j]) / h
                phi_3 = (math.expm1(-h) + h) / h ** 2 - 0.5
                # D1 and D2 as weights of (m_{j+1} - m_j) and (m_i - m_j)
                d1 = (r0 / r1 / (r0 - r1), -r1 / r0 / (r0 - r1))
                d2 = (-2.0 / r1 / (r0 - r1), 2.0 / r0 / (r0 - r1))
                u = a1 * (phi_2 * d1[0] - phi_3 * d2[0])
                v = a1 * (phi_2 * d1[1] - phi_3 * d2[1])
                ws = [a1 * phi_1 - u - v, u, v]
            coef.append((host.s[i + 1] / host.s[j], ws))
        return DPMppSingleState(host, eta, coef)

    def step(self, problem, x, t0, t1, h, i, noise, state: DPMppSingleState):
        g = state.host
        d = denoise(problem, t0, x)
        c = state.coef[i]
        if c is None:
            return scale(g.a[i + 1], d), state
        cx, ws = c
        if len(ws) == 1:  # a group starts here
            start, ms = x, (d,)
        else:
            start, ms = state.start, state.ms + (d,)
        x1 = cx * start
        for w, m in zip(ws, ms):
            if w:
                x1 = x1 + w * m
        return x1, DPMppSingleState(g, state.eta, state.coef, start, ms)

    def __repr__(self) -> str:
        return (f"DPMppSingle(order={self.solver_order}, solver_type={self.solver_type!r}, "
                f"lower_order_final={self.lower_order_final})")
