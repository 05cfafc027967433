"""What the samplers of semi-linear problems share (``docs/samplers.md``).

Every one of them (``ddim``, ``dpmpp_2m``, ``unipc``, ``euler_ancestral``, ``edm`` ...)
solves a :class:`flowsde.SemiLinearODE` or :class:`flowsde.SemiLinearSDE` through its
structure: ``alpha(t)``, ``sigma(t)`` and the data prediction ``D(t, x)``. The coefficients
of a step depend on the grid only, so :meth:`SemiLinearSolver.init` computes them once
per solve, in float64 on the host (one transfer of the grid: :class:`HostGrid`), into the
method's state dataclass, and the steps read Python floats: no host-device sync and no
coefficient kernels in the step loop.

Conventions of this module:

* ``a``, ``s``, ``lam``, ``r``: ``alpha``, ``sigma``, ``log(alpha/sigma)`` and
  ``sigma/alpha`` at the grid points;
* a grid runs from noise to data (``lam`` strictly increasing); it may end at zero
  noise (``sigma = 0``, k-diffusion's appended ``sigma = 0``, diffusers'
  ``alpha_bar = 1``), where no method evaluates the model: the step to zero noise
  follows each peer's rule (``docs/samplers.md``);
* the noise of a stochastic sampler is the problem's: a :class:`flowsde.SemiLinearSDE`
  with a constant ``beta`` (each method maps ``beta`` to its peer's ``eta``), none on a
  :class:`flowsde.SemiLinearODE`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from .._errors import InputError
from .base import Solver

F64 = torch.float64


def raw_problem(problem):
    """The user's problem behind the solve's checked wrapper."""
    return getattr(problem, "problem", problem)


def denoise(problem, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``D(t, x)`` through the solve's checked wrapper (``CheckedProblem.denoise``): counted as one
    network evaluation, its shape, dtype, device and finiteness checked as the drift's are."""
    return problem.denoise(t, x)


def ancestral_step(r0: float, r1: float, eta: float):
    """``(r_down, r_up)`` of an ancestral step from noise level ``r0`` to ``r1``
    (k-diffusion ``get_ancestral_step``): ``r_up = min(r1, eta r1 sqrt(1 - r1^2/r0^2))``,
    ``r_down = sqrt(r1^2 - r_up^2)``."""
    if not eta:
        return r1, 0.0
    up = min(r1, eta * (r1 ** 2 * (r0 ** 2 - r1 ** 2) / r0 ** 2) ** 0.5)
    return (r1 ** 2 - up ** 2) ** 0.5, up


def ancestral_stages(host, eta: float, stage):
    """``(steps, mids)`` of a two-stage ancestral sampler (k-diffusion's ``dpm_2_ancestral``,
    ``dpmpp_2s_ancestral``): per step ``(r_down, r_up, coefficients)`` and the intermediate noise level, where
    ``stage(r0, r_down) -> (coefficients, r_mid)``; a step whose ``r_down`` is 0 is an Euler step to zero noise
    (``coefficients = None``, ``r_mid = r0``)."""
    steps, mids = [], []
    for i in range(host.steps):
        r0 = host.r[i]
        r_down, r_up = ancestral_step(r0, host.r[i + 1], eta)
        if r_down == 0:
            steps.append((r_down, r_up, None))
            mids.append(r0)
            continue
        coefficients, r_mid = stage(r0, r_down)
        steps.append((r_down, r_up, coefficients))
        mids.append(r_mid)
    return steps, mids


def two_stage_nfe(steps: int, to_zero_noise: bool) -> int:
    """``2n``; ``2n - 1`` on a grid ending at zero noise (k-diffusion's two-stage samplers: the last step is Euler)."""
    return 2 * int(steps) - (1 if to_zero_noise and steps > 0 else 0)


class HostGrid:
    """Float64 host coefficients of a sampler's grid (lists of Python floats, one entry per time):
    ``t``, ``a`` (alpha), ``s`` (sigma), ``lam`` (``log(alpha/sigma)``), ``r`` (``sigma/alpha``),
    computed and checked once per solve."""

    def __init__(self, name: str, problem, grid: torch.Tensor, *, scaled: bool):
        th = grid.detach().to("cpu", F64)
        a = torch.as_tensor(problem.alpha(th), dtype=F64).expand(th.shape).clone()
        s = torch.as_tensor(problem.sigma(th), dtype=F64).expand(th.shape).clone()
        n = th.shape[0]
        for what, v in (("alpha", a), ("sigma", s)):
            bad = ~(torch.isfinite(v) & (v >= 0))
            if bool(bad.any()):
                k = int(bad.nonzero()[0])
                raise InputError(f"method={name!r}: {what}(grid[{k}] = {th[k].item()!r}) = {v[k].item()!r}; the "
                                 "semi-linear samplers need finite alpha, sigma >= 0 on the grid.")
        if bool((s[:-1] == 0).any()):
            k = int((s[:-1] == 0).nonzero()[0])
            raise InputError(f"method={name!r}: sigma(grid[{k}] = {th[k].item()!r}) = 0 before the end of the grid; "
                             "only the last time may be at zero noise.")
        if bool((a[1:] == 0).any()) or (scaled and bool(a[0] == 0)):
            k = int((a == 0).nonzero()[-1])
            where = ("this method works in the scaled state x/alpha, so every grid point needs alpha > 0; start "
                     "slightly inside the schedule (e.g. t_max - 1e-3)" if scaled else
                     "only the first time may be at alpha = 0 (pure noise)")
            raise InputError(f"method={name!r}: alpha(grid[{k}] = {th[k].item()!r}) = 0: {where}.")
        lam = torch.log(a) - torch.log(s)
        if not bool((lam[1:] > lam[:-1]).all()):
            k = int((lam[1:] <= lam[:-1]).nonzero()[0])
            raise InputError(
                f"method={name!r}: the noise level sigma/alpha must decrease strictly along the grid (these samplers run "
                f"from noise to data), but sigma/alpha is {(s[k] / a[k]).item()!r} at grid[{k}] = {th[k].item()!r} "
                f"and {(s[k + 1] / a[k + 1]).item()!r} at grid[{k + 1}] = {th[k + 1].item()!r}. Use a grid from "
                "t_max down to t_min (or 0)."
            )
        self.steps = n - 1
        self.t = th.tolist()
        self.a = a.tolist()
        self.s = s.tolist()
        self.lam = lam.tolist()
        self.r = (s / a).tolist()  # inf where alpha = 0 (only allowed unscaled, at the start)
        self.device = grid.device

    def h(self, i: int) -> float:
        """``lam[i+1] - lam[i]`` (``inf`` for a step to zero noise or from alpha = 0)."""
        return self.lam[i + 1] - self.lam[i]

    def to_zero(self, i: int) -> bool:
        """Whether step ``i`` ends at zero noise."""
        return self.s[i + 1] == 0.0

    def times(self, problem, ratios, name: str) -> torch.Tensor:
        """Times (on the solve's device, float64) at noise levels ``ratios`` (``sigma/alpha``),
        through ``problem.t_from_ratio``; one transfer for all of them."""
        r = torch.tensor(ratios, dtype=F64)
        t = torch.as_tensor(problem.t_from_ratio(r), dtype=F64).reshape(r.shape)
        if not bool(torch.isfinite(t).all()):
            k = int((~torch.isfinite(t)).nonzero()[0])
            raise InputError(f"method={name!r}: t_from_ratio({ratios[k]!r}) = {t[k].item()!r} is not finite.")
        return t


def scale(c: float, x: torch.Tensor) -> torch.Tensor:
    """``c * x``, without a kernel when ``c == 1`` (``alpha = 1`` problems keep bit-exact states)."""
    return x if c == 1.0 else c * x


def unscale(x: torch.Tensor, c: float) -> torch.Tensor:
    """``x / c``, without a kernel when ``c == 1``."""
    return x if c == 1.0 else x / c


@dataclass
class SamplerState:
    """What every sampler's state holds; a method's state (a subclass) adds its per-solve
    coefficients and, for a multistep method, its history, which a step hands on in a new
    instance (plain dataclasses: built at a fraction of a frozen one's cost, once per step)."""

    host: HostGrid  #: the grid's host coefficients
    eta: float  #: the peer's eta of this solve (0 on an ODE)


class SemiLinearSolver(Solver):
    """Base class of the samplers of :class:`flowsde.SemiLinearODE` / :class:`flowsde.SemiLinearSDE`.

    Class attributes (besides :class:`flowsde.Solver`'s):
        scaled: works in the scaled state ``x/alpha`` with noise level ``sigma/alpha``
            (k-diffusion's variable), so ``alpha > 0`` is needed at every grid point.
        needs_t_from_ratio: evaluates the model between grid points (the problem must carry
            ``t_from_ratio``).
        eta_name: for stochastic methods, how the peer's ``eta`` follows from the problem's
            ``beta``: ``"sqrt"`` (ancestral and DDIM steps: ``eta = sqrt(beta)``) or ``"beta"``
            (DPM-Solver++ SDE: ``eta = beta``); ``None`` for deterministic methods.
    """

    scaled = False
    needs_t_from_ratio = False
    eta_name: Optional[str] = None

    eta: Optional[float] = None

    def _set_eta(self, eta: Optional[float]) -> None:
        """Stochastic methods take the peer's ``eta`` as an option; it must agree with the problem."""
        if eta is not None and not (isinstance(eta, numbers.Real) and not isinstance(eta, bool)
                                    and math.isfinite(eta) and eta >= 0):
            raise InputError(f"{type(self).__name__}(eta={eta!r}): eta must be a finite number >= 0 or None.")
        self.eta = None if eta is None else float(eta)

    # -- checks ----------------------------------------------------------------------------
    def check_problem(self, problem) -> None:
        if not getattr(problem, "is_semilinear", False):
            raise InputError(
                f"method={self.name!r} needs the semi-linear structure (alpha, sigma and the data prediction): "
                "solve a flowsde.adapters Diffusion's pf_ode() / reverse_sde(beta), or build "
                "flowsde.SemiLinearODE(denoise, alpha=..., sigma=..., d_alpha=..., d_sigma=...); got "
                f"{type(problem).__name__}."
            )
        if problem.is_sde and not self.noise_types:
            raise InputError(
                f"method={self.name!r} is deterministic: solve the probability-flow ODE (Diffusion.pf_ode()), not "
                f"an SDE; for a stochastic sampler use {_STOCHASTIC}."
            )
        if not problem.is_sde and not self.solves_ode:
            raise InputError(
                f"method={self.name!r} is stochastic: solve the reverse-time SDE, Diffusion.reverse_sde(beta) "
                f"({self._eta_doc()}; beta = 0 gives its deterministic limit), not the probability-flow ODE."
            )
        super().check_problem(problem)
        if self.needs_t_from_ratio and not problem.has_t_from_ratio:
            raise InputError(
                f"method={self.name!r} evaluates the model between grid points: the problem needs "
                "t_from_ratio (the time at which sigma/alpha = r); adapters' problems carry it."
            )
        self._eta_for(problem)

    def _eta_doc(self) -> str:
        return "eta = sqrt(beta)" if self.eta_name == "sqrt" else "eta = beta"

    def _eta_for(self, problem) -> float:
        """The peer's ``eta`` of this solve: 0 on an ODE, from the SDE's constant ``beta`` otherwise;
        an ``eta`` given to the constructor must agree."""
        if not problem.is_sde:
            eta = 0.0
            if self.eta:
                raise InputError(
                    f"{type(self).__name__}(eta={self.eta!r}) on an ODE: the noise comes from the problem; solve "
                    f"Diffusion.reverse_sde(beta={self._beta_of(self.eta)!r}) ({self._eta_doc()})."
                )
            return eta
        beta = problem.beta
        if callable(beta) or not isinstance(beta, numbers.Real):
            raise InputError(
                f"method={self.name!r} needs a constant beta (a number) in the reverse SDE; got a function. Use "
                "euler_maruyama for a time-dependent beta(t)."
            )
        eta = math.sqrt(beta) if self.eta_name == "sqrt" else float(beta)
        if self.eta is not None and not math.isclose(self.eta, eta, rel_tol=1e-12, abs_tol=1e-300):
            raise InputError(
                f"{type(self).__name__}(eta={self.eta!r}) disagrees with the problem's beta = {beta!r} "
                f"({self._eta_doc()} = {eta!r}); the noise comes from the problem: solve "
                f"reverse_sde(beta={self._beta_of(self.eta)!r}) or leave eta unset."
            )
        return eta

    def _beta_of(self, eta: float) -> float:
        return eta * eta if self.eta_name == "sqrt" else eta

    # -- per-solve state -------------------------------------------------------------------
    def init(self, problem, x, grid):
        """The grid's host coefficients (:class:`HostGrid`) and this solve's ``eta``, handed to
        :meth:`prepare`, which returns the method's state."""
        p = raw_problem(problem)
        return self.prepare(p, HostGrid(self.name, p, grid, scaled=self.scaled), self._eta_for(p))

    def prepare(self, problem, host: HostGrid, eta: float) -> "SamplerState":
        """The method's per-solve state: coefficients that depend on the grid only (override;
        ``problem`` is the user's semi-linear problem, ``eta`` the peer's, 0 on an ODE)."""
        return SamplerState(host, eta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.eta is None else f"{type(self).__name__}(eta={self.eta!r})"


_STOCHASTIC = "'ddim', 'euler_ancestral', 'dpmpp_2s_ancestral', 'dpmpp_2m_sde' or 'dpmpp_3m_sde'"
