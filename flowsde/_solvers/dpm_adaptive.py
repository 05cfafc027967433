"""Adaptive DPM-Solver-12 / DPM-Solver-23 (Lu et al. 2022, Algorithm 4; k-diffusion
``sample_dpm_adaptive``), on any schedule.

In the scaled state ``y = x/alpha``, ``lam = -log(sigma/alpha)``, from ``lam(grid[0])`` to
``lam(grid[-1])``: each try takes a step ``h`` from ``s`` to ``min(s + h, lam_end)`` with the pair of
DPM-Solver steps of :mod:`dpm_fast` (``order = 3``: DPM-Solver-2 with ``r1 = 1/3`` and DPM-Solver-3,
sharing their evaluations, 3 NFE per try; ``order = 2``: DPM-Solver-1 and -2, 2 NFE), and measures

    delta = max(atol, rtol max(|y_low|, |y_prev|)),     E = ||(y_low - y_high)/delta||_2 / sqrt(numel(y)),

``y_prev`` the last accepted low-order solution. The norm is over the **whole batch** (``numel`` of
the batch), as k-diffusion's: a sample's steps depend on the other samples, the one documented
exception to batch independence (docs/samplers.md). The step is accepted when the PID factor (below)
is at least ``accept_safety``; the state moves to ``y_high`` (plus the ancestral noise on
``reverse_sde(beta)``, ``eta = sqrt(beta)``, as in :mod:`dpm_fast`), and every try, accepted or not,
costs ``order`` evaluations. The loop ends within ``1e-5`` of ``lam_end`` in ``lam``, as k-diffusion's.

Step-size control: k-diffusion's ``PIDStepSizeController`` (Söderlind's digital filter with an
``arctan`` limiter, a different controller from the embedded Runge-Kutta solvers' PI controller of
:mod:`flowsde._solvers.controller`): with ``e_k = 1/(E_k + 1e-8)`` and ``k = order`` (1.5 with noise),

    h <- h (1 + atan(f - 1)),   f = e_n^{(p + i + d)/k} e_{n-1}^{-(p + 2d)/k} e_{n-2}^{d/k},

``p, i, d = pcoeff, icoeff, dcoeff`` (default the I controller ``0, 1, 0``). Defaults are k-diffusion's:
``order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0, icoeff=1, dcoeff=0, accept_safety=0.81``.
``max_steps`` (tries, default 10000; k-diffusion has none) ends a solve that does not reach the end
with :attr:`flowsde.Status.MAX_STEPS`.

Orders: the pair is of orders ``(order - 1, order)``: the high-order solution has global order 3 (2)
in ``h``; the steps follow ``rtol``/``atol``, so no order is fitted on it (the DPM-Solver-3 step's
order is, through ``dpm_fast``).

Reference: Lu, Zhou, Bao, Chen, Li, Zhu (2022), "DPM-Solver", arXiv:2206.00927, Section 4 and
Algorithm 4; k-diffusion 0.1.1 ``DPMSolver.dpm_solver_adaptive`` and ``PIDStepSizeController``.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .._errors import InputError, SolveError
from .._solution import Status
from .base import Solver
from .dpm_2_ancestral import check_s_noise
from .dpm_fast import DPMSolverSteps, _DPMSolverChecks, end_points, finish
from .sampler import raw_problem, scale, unscale


class PIDStepSize:
    """k-diffusion's ``PIDStepSizeController`` (Python floats): ``propose(error) -> accept`` updates ``h``."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float,
                 eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list = []

    def propose(self, error: float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


def _real(owner, name, v, *, positive=False, allow_zero=True):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (positive and v == 0) or (not allow_zero and v == 0):
        need = "> 0" if positive or not allow_zero else ">= 0"
        raise InputError(f"{owner}({name}={v!r}): {name} must be a finite number {need}.")
    return float(v)


class DPMAdaptive(Solver):
    """Arguments (k-diffusion's names and defaults):
        order: 3 (DPM-Solver-23) or 2 (DPM-Solver-12).
        rtol, atol: the tolerances of the error norm (``atol`` in the units of the scaled state).
        h_init: the first step in ``lam``.
        pcoeff, icoeff, dcoeff: the PID coefficients.
        accept_safety: a try is accepted when its step factor is at least this.
        eta: optional, the peer's ``eta``; it must agree with the problem's ``beta`` (``eta = sqrt(beta)``).
        s_noise: multiplier of the noise (default 1).
        max_steps: the budget of tries (flowsde's; k-diffusion loops without one).
    """

    name = "dpm_adaptive"
    order = 3
    adaptive = True
    noise_types = ("scalar",)

    def __init__(self, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
                 eta: Optional[float] = None, s_noise: float = 1.0, max_steps: int = 10000):
        if order not in (2, 3) or isinstance(order, bool):
            raise InputError(f"DPMAdaptive(order={order!r}): order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23).")
        self.order = int(order)
        own = "DPMAdaptive"
        self.rtol = _real(own, "rtol", rtol)
        self.atol = _real(own, "atol", atol)
        if self.rtol == 0 and self.atol == 0:
            raise InputError(f"{own}(rtol=0, atol=0): at least one tolerance must be > 0.")
        self.h_init = _real(own, "h_init", abs(h_init) if isinstance(h_init, numbers.Real) else h_init, positive=True)
        for nm, v in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff)):
            if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)):
                raise InputError(f"{own}({nm}={v!r}): {nm} must be a finite number.")
        self.pcoeff, self.icoeff, self.dcoeff = float(pcoeff), float(icoeff), float(dcoeff)
        self.accept_safety = _real(own, "accept_safety", accept_safety)
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
            raise InputError(f"{own}(max_steps={max_steps!r}): max_steps must be an int >= 1.")
        self.max_steps = int(max_steps)
        self.checks = _DPMSolverChecks(self.name, eta)
        self.eta = self.checks.eta
        self.s_noise = check_s_noise(own, s_noise)

    def check_problem(self, problem) -> None:
        self.checks.check_problem(problem)

    def solve(self, checked, x, grid, *, noise=None, save_all=False, progress=False):
        host = self.checks.host(checked, grid)
        eta = self.checks._eta_for(raw_problem(checked))
        dpm = DPMSolverSteps(checked, self.name)
        lam_start, lam_end = end_points(host)
        pid = PIDStepSize(self.h_init, self.pcoeff, self.icoeff, self.dcoeff, 1.5 if eta else self.order,
                          self.accept_safety)
        s = lam_start
        y = unscale(x, host.a[0])
        y_prev = y
        steps = accepted = rejected = 0
        errors, hs = [], []
        while s < lam_end - 1e-5:
            if steps >= self.max_steps:
                break
            t = min(lam_end, s + pid.h)
            t_to, r_up = dpm.ancestral(s, t, lam_end, eta)
            eps = dpm.eps(y, s)
            if self.order == 2:
                y_low = dpm.step1(y, s, t_to, eps)
                y_high, _ = dpm.step2(y, s, t_to, eps)
            else:
                y_low, eps_r1 = dpm.step2(y, s, t_to, eps, r1=1 / 3)
                y_high = dpm.step3(y, s, t_to, eps, eps_r1=eps_r1)
            delta = torch.clamp_min(self.rtol * torch.maximum(y_low.abs(), y_prev.abs()), self.atol)
            error = float(torch.linalg.norm((y_low - y_high) / delta)) / y.numel() ** 0.5
            errors.append(error)
            if pid.propose(error):
                y_prev = y_low
                y = y_high
                if eta:
                    y = y + (r_up * self.s_noise) * noise.randn_like(x)
                s = t
                accepted += 1
            else:
                rejected += 1
            hs.append(pid.h)
            steps += 1
        a_end = host.a[-1] if s == lam_end else dpm.point(s)[1]
        x1 = scale(a_end, y)
        reached = not s < lam_end - 1e-5
        sol = finish(checked, self.name, x, x1, grid, save_all, steps=steps, accepted=accepted, rejected=rejected,
                     stats=dict(mode="batch", lam_final=s, errors=errors, h=hs, rtol=self.rtol, atol=self.atol))
        if not reached:
            if checked.throw:
                raise SolveError(
                    f"method='dpm_adaptive' used its max_steps={self.max_steps} tries and stopped at lam = {s!r} "
                    f"before lam_end = {lam_end!r}; try increasing max_steps or loosening rtol/atol.",
                    step=steps, samples=list(range(x.shape[0])))
            sol.status = torch.where(sol.status == int(Status.SUCCESS), int(Status.MAX_STEPS), sol.status)
            sol.t_final = torch.where(sol.status == int(Status.MAX_STEPS), dpm.point(s)[2], sol.t_final)
        return sol

    def __repr__(self) -> str:
        eta = "" if self.eta is None else f", eta={self.eta!r}"
        return (f"DPMAdaptive(order={self.order}, rtol={self.rtol!r}, atol={self.atol!r}, h_init={self.h_init!r}, "
                f"pcoeff={self.pcoeff!r}, icoeff={self.icoeff!r}, dcoeff={self.dcoeff!r}, "
                f"accept_safety={self.accept_safety!r}{eta}, s_noise={self.s_noise!r}, max_steps={self.max_steps})")
