"""EDM's samplers (Karras et al. 2022, Algorithms 1 and 2; NVlabs/edm ``generate.py``)
on any schedule.

Everything runs in EDM's scaled variable: ``x~ = x_t / alpha(t)`` at noise level
``r = sigma(t) / alpha(t)``, where the probability-flow ODE is
``dx~/dr = (x~ - D(x~, r)) / r`` whatever the schedule (Karras et al. 2022, eq. 4
and appendix D.1: the ODE of any (s, sigma) pair is this one after the change of
variables). The steps are EDM's, in ``r``; NVlabs/edm's ``ablation_sampler`` instead
steps the same ODE in its own time ``t``, so its VP/VE runs differ by discretization.
The denoiser ``D`` comes from
:class:`~flowsde.adapters.Denoiser` (``r -> t`` by ``schedule.t_from_sigma_ratio``),
or is any k-diffusion style ``model(x, sigma)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from flowsde import InputError, SemiLinearODE, Solution, grids, solve
from flowsde.solvers import EDMChurn

from ._precond import Denoiser

F64 = torch.float64

__all__ = ["edm_sampler", "LAST_STEPS"]

LAST_STEPS = ("euler", "denoise", "stop")


def _as_denoiser(model):
    """``(D, sigma_min, sigma_max, schedule_or_None)`` for a Diffusion or a k-diffusion denoiser."""
    if hasattr(model, "schedule") and callable(getattr(model, "x0", None)):
        d = Denoiser(model)
        return d._eval, d.sigma_min, d.sigma_max, d
    if isinstance(model, Denoiser):
        return model._eval, model.sigma_min, model.sigma_max, model
    if callable(model):
        lo = float(getattr(model, "sigma_min", 0.0))
        hi = float(getattr(model, "sigma_max", math.inf))
        return model, lo, hi, None
    raise InputError(
        f"edm_sampler: expected a flowsde.adapters.Diffusion or a denoiser model(x, sigma), got "
        f"{type(model).__name__}."
    )


def _check_number(name, v, *, lo=0.0, allow_inf=False, strict=False):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    ok = ok and (allow_inf or math.isfinite(v)) and (v > lo if strict else v >= lo)
    if not ok:
        raise InputError(f"edm_sampler: {name} must be a number {'>' if strict else '>='} {lo}, got {v!r}.")


def _grid(grid, steps, sigma_min, sigma_max, rho, round_sigma, lo, hi):
    """The descending EDM-sigma grid, ending in 0 (host float64), and the effective range."""
    if grid is not None:
        g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
        if g.dim() != 1 or g.numel() < 2 or float(g[-1]) != 0.0:
            raise InputError(f"edm_sampler: grid must be a 1-D grid of >= 2 values ending in 0 (k-diffusion "
                             f"convention), got shape {tuple(g.shape)} ending in {g.reshape(-1)[-1:].tolist()}.")
        if not bool(torch.isfinite(g).all()) or not bool((g[1:] < g[:-1]).all()):
            raise InputError(f"edm_sampler: grid must be finite and strictly decreasing, got {g.tolist()}.")
        pos = g[:-1]
        if float(pos.min()) < lo * (1 - 1e-9) or float(pos.max()) > hi * (1 + 1e-9):
            raise InputError(f"edm_sampler: grid spans [{float(pos.min())}, {float(pos.max())}] but the model is "
                             f"defined on [{lo}, {hi}]; pass a grid inside it.")
        return g, float(pos.min()), float(pos.max())
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"edm_sampler: steps must be a positive int, got {steps!r}.")
    _check_number("rho", rho, strict=True)
    _check_number("sigma_min", sigma_min, strict=True)
    _check_number("sigma_max", sigma_max, strict=True, allow_inf=True)
    # NVlabs/edm generate.py: sigma_min = max(sigma_min, net.sigma_min); sigma_max = min(sigma_max, net.sigma_max).
    s_lo, s_hi = max(float(sigma_min), lo), min(float(sigma_max), hi)
    if not (s_lo < s_hi or (steps == 1 and s_lo <= s_hi)):
        raise InputError(f"edm_sampler: the requested sigma range [{sigma_min}, {sigma_max}] and the model's "
                         f"[{lo}, {hi}] leave [{s_lo}, {s_hi}]: empty.")
    g = grids.edm(s_lo, s_hi, steps=steps - 1, rho=rho, final_zero=False) if steps > 1 else \
        torch.tensor([s_hi], dtype=torch.float64)
    if round_sigma is not None:
        g = torch.as_tensor(round_sigma(g), dtype=torch.float64).cpu()
    return grids.append_zero(g), s_lo, s_hi


# 17 parameters: NVlabs/edm's edm_sampler (num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise,
# randn_like) in this library's words, and its generate.py's choices (the grid, dtype, the last step); the
# docstring is the user reference. The body is its steps: _check_call, _grid, _solve, _result.
def edm_sampler(
    model,
    x: torch.Tensor,
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    grid=None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    last_step: str = "euler",
    dtype: Optional[torch.dtype] = torch.float64,
    net_dtype: Optional[torch.dtype] = None,
    generator=None,
    save_all: bool = False,
    throw: bool = True,
) -> Solution:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2; NVlabs/edm ``generate.py``
    ``edm_sampler``), in the scaled variable of any schedule.

    Grid (EDM eq. 5), ``N = steps`` positive levels and a final zero:
    ``r_i = (r_max^(1/rho) + i/(N-1) (r_min^(1/rho) - r_max^(1/rho)))^rho``, ``r_N = 0``,
    with ``[r_min, r_max]`` clipped to the model's range (as NVlabs/edm). Step ``i``:

        gamma_i = min(s_churn / N, sqrt(2) - 1)  if s_tmin <= r_i <= s_tmax  else 0,
        r^ = r_i (1 + gamma_i),   x^ = x_i + sqrt(r^^2 - r_i^2) s_noise z,
        d = (x^ - D(x^, r^)) / r^,   x_{i+1} = x^ + (r_{i+1} - r^) d,
        if r_{i+1} > 0:  d' = (x_{i+1} - D(x_{i+1}, r_{i+1})) / r_{i+1},
                         x_{i+1} = x^ + (r_{i+1} - r^) (d + d') / 2,

    starting from ``x * r_0``. The network sees the churned pair
    ``(x^, r^)`` (diffusers #8549 evaluated it before adding the noise).

    This is a thin wrapper: the grid and EDM's defaults here, the loop in the core,

        flowsde.solve(edm_ode(model), x * r_0, r, method=flowsde.solvers.EDMChurn(s_churn, s_tmin, s_tmax, s_noise)),

    (:func:`~flowsde.adapters.edm_ode`, :class:`flowsde.solvers.EDMChurn`), so NFE counts, per-sample
    status and ``throw`` are :func:`flowsde.solve`'s.

    Arguments:
        model: a :class:`~flowsde.adapters.Diffusion` (any schedule; ``r -> t`` by
            ``schedule.t_from_sigma_ratio``), or a k-diffusion denoiser ``model(x, sigma)``
            (EDM sigma as a ``(B,)`` tensor, scaled ``x``; optional ``sigma_min`` /
            ``sigma_max`` / ``round_sigma`` attributes, used as NVlabs/edm does).
        x: ``(B, *event)`` standard normal draws (scaled by ``r_0`` here).
        steps, sigma_min, sigma_max, rho: the grid (EDM defaults: 18, 0.002, 80, 7).
        grid: instead, an explicit descending grid ending in 0 (k-diffusion convention);
            then ``N = len(grid) - 1``.
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn. With ``s_churn > 0`` one normal draw is
            taken every step (also where ``gamma = 0``, as NVlabs/edm) so per-sample streams
            line up with EDM's; with ``s_churn = 0`` no noise is drawn.
        last_step: ``"euler"``: the last step is Euler to ``r = 0`` (EDM; NFE ``2N - 1``);
            ``"denoise"``: Heun to ``r_{N-1}``, then return ``D(x, r_{N-1})`` (no churn on that
            evaluation; NFE ``2N - 1``); ``"stop"``: Heun to ``r_{N-1}`` and return the noisy
            state there, unscaled to ``x_t = alpha(t) x~`` at ``t = t(r_{N-1})`` (NFE ``2N - 2``).
        dtype: the dtype of the state and of all sampler arithmetic (default float64, as
            NVlabs/edm); ``None``: ``x.dtype``.
        net_dtype: the dtype the model is called in (default ``x.dtype``); outputs are
            cast back to ``dtype``.
        generator: churn noise: ``None``, a ``torch.Generator``, per-sample generators
            (:func:`flowsde.per_sample_generators`), as :func:`flowsde.solve`.
        save_all: keep the state at every grid level (``Solution.xs``, scaled variable,
            ``Solution.grid`` the EDM sigmas reached).
        throw: as :func:`flowsde.solve`: raise :class:`flowsde.SolveError` naming the first
            non-finite model output (step, noise level, samples), checked once after the loop;
            if False, flag those samples in ``status``.

    Returns:
        :class:`flowsde.Solution` with ``x`` ``(B, *event)`` in ``dtype`` (the data-space
        sample for ``"euler"`` / ``"denoise"``), ``nfe``, ``steps`` (the denoising evaluation
        of ``"denoise"`` counts as a step), ``t_final`` (schedule
        time; 0 for a data-space sample) and ``stats`` (``grid``, ``t``, the effective
        ``sigma_min`` / ``sigma_max``, ``gammas``, ``last_step``).

    Raises:
        flowsde.InputError: bad arguments (with the offending value), a grid outside the
            model's range, a model output of the wrong shape.
        flowsde.SolveError: a non-finite model output or state (``throw=True``), naming the
            first step and its noise level.
    """
    D, lo, hi, den = _as_denoiser(model)
    dtype, net_dtype = _check_call(x, last_step, dtype, net_dtype, churn=(s_churn, s_tmin, s_tmax, s_noise))
    # NVlabs/edm's net.round_sigma (identity for continuous nets; iDDPM rounds to its table).
    round_sigma = getattr(model, "round_sigma", None) if den is None else None
    g, s_lo, s_hi = _grid(grid, steps, sigma_min, sigma_max, rho, round_sigma, lo, hi)
    # The loop is the core's: flowsde.solvers.EDMChurn (Algorithm 2) on the EDM-time problem of the denoiser.
    solver = EDMChurn(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                      last_step="denoise" if last_step == "denoise" else "euler", round_sigma=round_sigma)
    problem = edm_ode(den if den is not None else D, compute_dtype=dtype, net_dtype=net_dtype)
    sol = _solve(problem, solver, x.to(dtype), g, last_step, generator=generator if s_churn > 0 else None,
                 save_all=save_all, throw=throw)
    return _result(sol, x, g, den, last_step, dtype, solver, (s_lo, s_hi))


def _check_call(x, last_step, dtype, net_dtype, *, churn) -> tuple:
    """``(dtype, net_dtype)`` (``None``: ``x.dtype``), after checking ``x``, ``last_step`` and the churn
    ``(s_churn, s_tmin, s_tmax, s_noise)``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise InputError(f"edm_sampler: x must be a floating tensor (B, *event), got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')} "
                         f"{tuple(getattr(x, 'shape', ()))}.")
    if not bool(torch.isfinite(x).all()):
        raise InputError("edm_sampler: x contain NaN/Inf.")
    if last_step not in LAST_STEPS:
        raise InputError(f"edm_sampler: last_step={last_step!r}; choose one of {LAST_STEPS}.")
    s_churn, s_tmin, s_tmax, s_noise = churn
    for name, v in (("s_churn", s_churn), ("s_noise", s_noise), ("s_tmin", s_tmin)):
        _check_number(name, v)
    _check_number("s_tmax", s_tmax, allow_inf=True)
    dtype = x.dtype if dtype is None else dtype
    net_dtype = x.dtype if net_dtype is None else net_dtype
    if not (dtype.is_floating_point and net_dtype.is_floating_point):
        raise InputError(f"edm_sampler: dtype={dtype} and net_dtype={net_dtype} must be floating point.")
    return dtype, net_dtype


def _solve(problem, solver, x: torch.Tensor, g: torch.Tensor, last_step: str, *, generator, save_all: bool,
           throw: bool) -> Solution:
    """The sampler's loop from ``x * r_0`` down the grid ``g`` (``"stop"``: to its last positive level)."""
    N = g.shape[0] - 1
    ts = (g if last_step != "stop" else g[:N]).to(x.device)
    x0 = x * float(g[0])  # r_0: the first level, a host float64 scalar
    if ts.shape[0] == 1:  # "stop" on a single level: no step to take
        return Solution(x=x0, nfe=0, steps=0, status=torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device),
                        t_final=ts.expand(x0.shape[0]), method="edm", grid=ts if save_all else None,
                        xs=x0[None] if save_all else None)
    return solve(problem, x0, ts, method=solver, generator=generator, save_all=save_all, throw=throw)


def _result(sol: Solution, x: torch.Tensor, g: torch.Tensor, den, last_step: str, dtype: torch.dtype,
            solver: EDMChurn, sigma_range) -> Solution:
    """The loop's solution as :func:`edm_sampler` returns it: ``"stop"`` unscaled to ``x_t`` at the schedule's
    time of the last level (with a Denoiser), ``t_final``, and the sampler's ``stats``."""
    sig = g.tolist()
    N = len(sig) - 1
    n_loop = N if last_step == "euler" else N - 1
    x_out, B, t_final = sol.x, x.shape[0], 0.0
    if last_step == "stop" and den is not None:
        t_end = den.time(torch.tensor(sig[N - 1], dtype=torch.float64))
        x_out = float(den.schedule.alpha(t_end)) * x_out
        t_final = float(t_end)
    elif last_step == "stop":
        t_final = sig[N - 1]
    times = None
    if den is not None:
        times = den.time(torch.tensor(sig[:N], dtype=torch.float64)).tolist() + [0.0]
    return dataclasses.replace(
        sol, x=x_out, method="edm_sampler",
        t_final=torch.full((B,), t_final, dtype=dtype, device=x.device),
        stats={"sigmas": g, "t": times, "sigma_min": sigma_range[0], "sigma_max": sigma_range[1],
               "gammas": solver.gammas(sig)[:n_loop], "last_step": last_step, "steps": N},
    )


def _identity(t):
    return torch.as_tensor(t).clone()


def _one(t):
    return torch.ones_like(torch.as_tensor(t))


def _zero(t):
    return torch.zeros_like(torch.as_tensor(t))


def edm_ode(model, *, compute_dtype: Optional[torch.dtype] = None, net_dtype: Optional[torch.dtype] = None
            ) -> SemiLinearODE:
    """The probability-flow ODE in EDM time (``alpha = 1``, ``sigma = t``: the state is EDM's scaled
    ``x``, the time its noise level) of a denoiser, for the samplers of ``docs/samplers.md`` and
    EDM's (``flowsde.solvers.EDMChurn``): ``dx/dt = (x - D(x, t))/t``.

    Arguments:
        model: a :class:`~flowsde.adapters.Diffusion` (its :class:`~flowsde.adapters.Denoiser`,
            any schedule), a :class:`~flowsde.adapters.Denoiser`, or a k-diffusion / EDM denoiser
            ``model(x, sigma) -> x0`` (``sigma`` a ``(B,)`` tensor).
        compute_dtype: cast the model's output to this dtype, the sampler's arithmetic then runs in
            it (default: the state's).
        net_dtype: call the model in this dtype (default: the state's); ``sigma`` is given in it.

    Returns:
        :class:`flowsde.SemiLinearODE` with ``time_dtype=float64``; solve it on a decreasing
        grid of noise levels, e.g. ``flowsde.grids.edm(0.002, 80, steps=18)`` (ending at 0), from
        ``x = latents * sigma_max``.
    """

    own = True  # flowsde's Denoiser: it takes one 0-dim float64 sigma for the batch
    if isinstance(model, Denoiser):
        D = model._eval
    elif hasattr(model, "schedule") and callable(getattr(model, "x0", None)):
        D = Denoiser(model)._eval
    elif callable(model):
        D, own = model, False
    else:
        raise InputError(f"edm_ode: expected a flowsde.adapters.Diffusion, a Denoiser or a denoiser "
                         f"model(x, sigma), got {type(model).__name__}.")
    for name, v in (("compute_dtype", compute_dtype), ("net_dtype", net_dtype)):
        if v is not None and not (isinstance(v, torch.dtype) and v.is_floating_point):
            raise InputError(f"edm_ode({name}={v!r}): must be None or a floating torch.dtype.")

    def denoise(t, x):
        md = net_dtype or x.dtype
        if own and t.dim() == 0:
            # a grid level as it is (float64, 0-dim): the Denoiser maps it to the schedule's time in
            # float64 and the Diffusion reuses that time's coefficients from one solve to the next
            sig = t
        else:  # a peer's denoiser: (B,) sigma in the model's dtype, its convention
            sig = t.to(md).expand(x.shape[0]) if t.dim() == 0 else t.to(md)  # a view: not for in-place writes
        out = D(x.to(md), sig)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"edm_ode: the model returned {got} for x of shape {tuple(x.shape)} at sigma = "
                             f"{float(t.reshape(-1)[0])!r}; it must return the shape of x.")
        return out.to(compute_dtype or x.dtype)

    return SemiLinearODE(denoise, alpha=_one, sigma=_identity, d_alpha=_zero, d_sigma=_one,
                         t_from_ratio=_identity, time_dtype=F64)

