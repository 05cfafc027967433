"""DPM-Solver-Fast (Lu et al. 2022, Algorithm "DPM-Solver-fast"; k-diffusion ``sample_dpm_fast``):
DPM-Solver-3 steps uniform in ``lam``, a budget of network evaluations, on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha`` (k-diffusion's ``x`` and
``sigma``), ``lam = -log r``, ``eps(y, lam) = (y - D)/r`` and ``h = lam1 - lam0``, the DPM-Solver steps
(Lu et al. 2022, Algorithms 1 and 2; ``e(u) = expm1(u)``, ``r(lam) = e^{-lam}``):

    order 1:  y1 = y - r(lam1) e(h) eps(y, lam0)
    order 2:  u  = y - r(s) e(r1 h) eps,   s = lam0 + r1 h   (r1 = 1/2)
              y1 = y - r(lam1) e(h) eps - r(lam1)/(2 r1) e(h) (eps(u, s) - eps)
    order 3:  s1 = lam0 + h/3, s2 = lam0 + 2h/3,   u1 = y - r(s1) e(h/3) eps,
              u2 = y - r(s2) e(2h/3) eps - 2 r(s2) (e(2h/3)/(2h/3) - 1) (eps(u1, s1) - eps),
              y1 = y - r(lam1) e(h) eps - 3/2 r(lam1) (e(h)/h - 1) (eps(u2, s2) - eps).

DPM-Solver-fast spends ``nfe`` evaluations over ``m = floor(nfe/3) + 1`` steps uniform in ``lam`` from
``grid[0]`` to ``grid[-1]``: orders ``3, ..., 3, 2, 1`` when ``3 | nfe``, else ``3, ..., 3, nfe mod 3``.
The grid gives the two end points only (``grid = [t_max, t_min]``, both at ``sigma > 0``); the method
chooses its own steps, so it is run as an adaptive-family solver (``Solution.steps`` = ``m``).

Noise: on ``reverse_sde(beta)``, ``eta = sqrt(beta)`` (k-diffusion's ``eta``, default 0: the
probability-flow ODE): each step goes down to the ancestral ``r_down`` (clamped to the end) and adds
``s_noise sqrt(r1^2 - r_down^2) z``.

Orders: the DPM-Solver-k step has local order ``k + 1``; globally ``nfe mod 3 == 2`` (last step of order
2) gives order 3, the other budgets order 2 (their last step is of order 1; ``order = 3`` is the
attribute, the budgets of order 2 are stated here). Deterministic at ``beta = 0``; weak order 1 with
noise is not claimed (``weak_order = None``).

Reference: Lu, Zhou, Bao, Chen, Li, Zhu (2022), "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps", NeurIPS, arXiv:2206.00927; k-diffusion 0.1.1
``DPMSolver.dpm_solver_fast``.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .._errors import InputError
from .._solution import Solution
from .base import Solver
from .dpm_2_ancestral import check_s_noise
from .sampler import F64, HostGrid, SemiLinearSolver, ancestral_step, denoise, raw_problem, scale, unscale


class _DPMSolverChecks(SemiLinearSolver):
    """The semi-linear checks (problem, ``beta`` -> ``eta``, grid) of ``dpm_fast`` / ``dpm_adaptive``,
    which choose their own steps and so are adaptive-family solvers, not :class:`SemiLinearSolver`\\ s."""

    scaled = True
    needs_t_from_ratio = True
    eta_name = "sqrt"
    noise_types = ("scalar",)

    def __init__(self, name: str, eta: Optional[float]):
        self.name = name
        self._set_eta(eta)

    def host(self, problem, grid) -> HostGrid:
        """The end points' coefficients; refuses a grid that is not two times at ``sigma > 0``."""
        if grid.shape[0] != 2:
            raise InputError(
                f"method={self.name!r} takes the two end points of the grid and chooses its own steps; got a grid "
                f"of {grid.shape[0]} times: pass grid=[t_max, t_min] (e.g. torch.tensor([80.0, 0.002]))."
            )
        host = HostGrid(self.name, raw_problem(problem), grid, scaled=True)
        if host.s[-1] == 0:
            raise InputError(
                f"method={self.name!r}: sigma(grid[-1] = {host.t[-1]!r}) = 0; these solvers step in log(sigma/alpha) "
                "and need sigma > 0 at both ends (k-diffusion's sigma_min > 0): end slightly before zero noise."
            )
        return host


class DPMSolverSteps:
    """The DPM-Solver-1/2/3 steps in ``lam`` on the checked problem (shared by ``dpm_fast`` and
    ``dpm_adaptive``): the model is evaluated at ``t_from_ratio(e^{-lam})`` in ``x = alpha y``."""

    def __init__(self, checked, name: str):
        self.checked = checked
        self.problem = raw_problem(checked)
        self.name = name
        self.device = checked.device

    def point(self, lam: float):
        """``(r, alpha, t)`` at ``lam``: ``r = e^{-lam}``, ``t = t_from_ratio(r)`` (float64, on the device)."""
        r = math.exp(-lam)
        t = torch.as_tensor(self.problem.t_from_ratio(torch.tensor(r, dtype=F64)), dtype=F64).reshape(())
        if not bool(torch.isfinite(t)):
            raise InputError(f"method={self.name!r}: t_from_ratio({r!r}) = {t.item()!r} is not finite.")
        a = float(torch.as_tensor(self.problem.alpha(t), dtype=F64))
        return r, a, t.to(self.device)

    def eps(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        """``(y - D(t, alpha y))/r`` at ``lam`` (one network evaluation)."""
        r, a, t = self.point(lam)
        return (y - denoise(self.checked, t, scale(a, y))) / r

    @staticmethod
    def step1(y, lam, lam1, eps):
        h = lam1 - lam
        return y - math.exp(-lam1) * math.expm1(h) * eps

    def step2(self, y, lam, lam1, eps, r1=0.5, eps_r1=None):
        """Returns ``(y1, eps_r1)``."""
        h = lam1 - lam
        if eps_r1 is None:
            s1 = lam + r1 * h
            u1 = y - math.exp(-s1) * math.expm1(r1 * h) * eps
            eps_r1 = self.eps(u1, s1)
        sn, e = math.exp(-lam1), math.expm1(h)
        return y - sn * e * eps - sn / (2 * r1) * e * (eps_r1 - eps), eps_r1

    def step3(self, y, lam, lam1, eps, r1=1 / 3, r2=2 / 3, eps_r1=None):
        h = lam1 - lam
        s1, s2 = lam + r1 * h, lam + r2 * h
        if eps_r1 is None:
            u1 = y - math.exp(-s1) * math.expm1(r1 * h) * eps
            eps_r1 = self.eps(u1, s1)
        e2, sig2 = math.expm1(r2 * h), math.exp(-s2)
        u2 = y - sig2 * e2 * eps - sig2 * (r2 / r1) * (e2 / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(u2, s2)
        sn, e = math.exp(-lam1), math.expm1(h)
        return y - sn * e * eps - sn / r2 * (e / h - 1) * (eps_r2 - eps)

    def ancestral(self, lam: float, lam1: float, lam_end: float, eta: float):
        """``(lam_down, r_up)``: k-diffusion's ancestral target in ``lam`` (clamped to the end) and the noise
        to add back up to ``lam1``; ``(lam1, 0)`` without noise."""
        if not eta:
            return lam1, 0.0
        r_down, _ = ancestral_step(math.exp(-lam), math.exp(-lam1), eta)
        lam_down = lam_end if r_down == 0 else min(lam_end, -math.log(r_down))
        return lam_down, (math.exp(-lam1) ** 2 - math.exp(-lam_down) ** 2) ** 0.5


def end_points(host: HostGrid):
    """``lam = -log(sigma/alpha)`` at the grid's two ends, formed as k-diffusion's ``t_fn(sigma)``."""
    return -math.log(host.r[0]), -math.log(host.r[-1])


def check_nfe_budget(owner: str, nfe) -> Optional[int]:
    if nfe is None:
        return None
    if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral) or nfe < 1:
        raise InputError(f"{owner}(nfe={nfe!r}): nfe (k-diffusion's n) must be an int >= 1.")
    return int(nfe)


def fast_orders(nfe: int) -> list:
    """The orders of DPM-Solver-fast's steps for a budget of ``nfe`` evaluations (they sum to ``nfe``)."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


class DPMFast(Solver):
    """Arguments:
        nfe: the budget of network evaluations (k-diffusion's ``n``; required at solve time).
        eta: optional, the peer's ``eta``; it must agree with the problem's ``beta`` (``eta = sqrt(beta)``).
        s_noise: multiplier of the noise (default 1).
    """

    name = "dpm_fast"
    order = 3
    adaptive = True  # chooses its own steps: the grid gives the end points
    noise_types = ("scalar",)

    def __init__(self, nfe: Optional[int] = None, eta: Optional[float] = None, s_noise: float = 1.0):
        self.budget = check_nfe_budget("DPMFast", nfe)
        self.checks = _DPMSolverChecks(self.name, eta)
        self.eta = self.checks.eta
        self.s_noise = check_s_noise("DPMFast", s_noise)

    def check_problem(self, problem) -> None:
        self.checks.check_problem(problem)

    def nfe(self, steps: int = 1, *, to_zero_noise: bool = False) -> int:
        """The budget ``nfe``, whatever the grid (its steps are the method's own)."""
        if self.budget is None:
            raise InputError("DPMFast().nfe(): no budget was given (DPMFast(nfe=...)).")
        return self.budget

    def solve(self, checked, x, grid, *, noise=None, save_all=False, progress=False) -> Solution:
        if self.budget is None:
            raise InputError("method='dpm_fast' needs its budget of network evaluations: solve(..., method='dpm_fast', "
                             "nfe=10) (k-diffusion's n).")
        host = self.checks.host(checked, grid)
        eta = self.checks._eta_for(raw_problem(checked))
        orders = fast_orders(self.budget)
        lam0, lam_end = end_points(host)
        lams = torch.linspace(lam0, lam_end, len(orders) + 1, dtype=F64).tolist()
        lams[-1] = lam_end
        dpm = DPMSolverSteps(checked, self.name)
        y = unscale(x, host.a[0])
        for i in _progress(range(len(orders)), progress, self.name):
            lam, lam1 = lams[i], lams[i + 1]
            lam_to, r_up = dpm.ancestral(lam, lam1, lam_end, eta)
            eps = dpm.eps(y, lam)
            if orders[i] == 1:
                y = dpm.step1(y, lam, lam_to, eps)
            elif orders[i] == 2:
                y, _ = dpm.step2(y, lam, lam_to, eps)
            else:
                y = dpm.step3(y, lam, lam_to, eps)
            if eta:
                y = y + (r_up * self.s_noise) * noise.randn_like(x)
        x1 = scale(host.a[-1], y)
        return finish(checked, self.name, x, x1, grid, save_all, steps=len(orders), accepted=len(orders), rejected=0)

    def __repr__(self) -> str:
        eta = "" if self.eta is None else f", eta={self.eta!r}"
        return f"DPMFast(nfe={self.budget!r}{eta}, s_noise={self.s_noise!r})"


def _progress(steps, progress: bool, name: str):
    if not progress:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=f"flowsde {name}", leave=False)


def finish(checked, name, x0, x1, grid, save_all, *, steps, accepted, rejected, stats=None) -> Solution:
    """The :class:`flowsde.Solution` of a solve from ``grid[0]`` to ``grid[-1]`` (``checked.finish`` gives
    the per-sample status and raises on a failure when ``throw``)."""
    status, t_final = checked.finish(x1, grid)
    return Solution(x=x1, nfe=checked.nfe, steps=steps, accepted=accepted, rejected=rejected, status=status,
                    t_final=t_final, method=name, grid=grid if save_all else None,
                    xs=torch.stack([x0, x1]) if save_all else None, stats=stats or {})
