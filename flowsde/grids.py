"""Time grids for fixed-step solvers.

Every grid is a 1-D float64 tensor (convert with ``.to(x)``), ordered from the
first time to the last one as given (``start`` may be larger than ``stop``:
diffusion samplers run from noise at ``T`` down to data at ``0``).

The named grids (:data:`NAMES`, :func:`named`) are functions of a noise-level map and ``steps``: this module
knows no schedule; ``flowsde.adapters.named_grid`` hands them a schedule's map ``t <-> log-SNR``
(docs/design.md, "Time").
"""

from __future__ import annotations

import math

import torch

from ._errors import InputError
from ._utils import check_positive

__all__ = ["uniform", "edm", "log_uniform", "append_zero", "NAMES", "named", "uniform_in", "quadratic", "log_snr",
           "karras"]


def _check_steps(steps, name):
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"{name}: steps must be a positive int (the number of steps, len(grid) - 1), got {steps!r}.")


def append_zero(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` with a final ``0`` appended (EDM / k-diffusion's last step to sigma = 0)."""
    return torch.cat([grid, grid.new_zeros(1)])


def uniform(start: float, stop: float, steps: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``steps`` equal steps from ``start`` to ``stop``: ``steps + 1`` points."""
    _check_steps(steps, "grids.uniform")
    if start == stop:
        raise InputError(f"grids.uniform: start and stop are both {start}; they must differ.")
    return torch.linspace(float(start), float(stop), steps + 1, dtype=dtype, device=device)


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, steps: int = 18, rho: float = 7.0, *,
        final_zero: bool = True, dtype=torch.float64, device=None) -> torch.Tensor:
    """Karras et al.'s rho-grid (EDM, eq. 5; NVlabs/edm ``edm_sampler``), descending:

        t_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0..n-1,

    ``steps`` steps in all (``len(grid) - 1``, as every grid): with ``final_zero`` the ``n = steps``
    positive levels and a last step to ``0``; without, ``n = steps + 1`` positive levels.
    ``steps = 18`` with ``final_zero`` gives EDM's CIFAR-10 grid (NFE = 35 with Heun).
    """
    _check_steps(steps, "grids.edm")
    n = steps if final_zero else steps + 1
    for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        check_positive(k, v, where="grids.edm")
    if sigma_min >= sigma_max:
        raise InputError(f"grids.edm: need sigma_min < sigma_max, got {sigma_min} >= {sigma_max}.")
    if n == 1:
        g = torch.tensor([float(sigma_max)], dtype=torch.float64)
    else:
        i = torch.arange(n, dtype=torch.float64)
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        g = (a + i / (n - 1) * (b - a)) ** rho
    if final_zero:
        g = append_zero(g)
    return g.to(dtype=dtype, device=device)


def log_uniform(start: float, stop: float, steps: int, *, final_zero: bool = False, dtype=torch.float64,
                device=None) -> torch.Tensor:
    """``steps`` steps in all (``len(grid) - 1``): equally spaced in ``log t`` from ``start`` to ``stop``
    (both > 0), or, with ``final_zero``, ``steps - 1`` such steps and a last one to ``0``."""
    _check_steps(steps, "grids.log_uniform")
    n = steps - 1 if final_zero else steps
    if n < 1:
        raise InputError(f"grids.log_uniform: final_zero needs steps >= 2 (a log step and the step to 0), got {steps}.")
    for k, v in (("start", start), ("stop", stop)):
        check_positive(k, v, where="grids.log_uniform")
    if start == stop:
        raise InputError(f"grids.log_uniform: start and stop are both {start}; they must differ.")
    g = torch.exp(torch.linspace(math.log(start), math.log(stop), n + 1, dtype=torch.float64))
    g[0], g[-1] = float(start), float(stop)
    if final_zero:
        g = append_zero(g)
    return g.to(dtype=dtype, device=device)


# -- grids of a noise-level map (docs/design.md, "Time"): the core knows no schedule; the adapters hand it
# the schedule's map (flowsde.adapters.named_grid) -----------------------------------------------------------

NAMES = ("uniform", "quadratic", "edm", "log_snr")
"""The named grids of :func:`named`, each ``steps`` steps (``len(grid) - 1``) from ``start`` to ``stop``."""


def _check_ends(start, stop, where):
    for k, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{where}: {k} must be a finite number, got {v!r}.")
    if start == stop:
        raise InputError(f"{where}: start and stop are both {start}; they must differ.")


def uniform_in(start: float, stop: float, steps: int, *, forward, inverse, dtype=torch.float64,
               device=None, where: str = "grids.uniform_in") -> torch.Tensor:
    """``steps`` equal steps of ``u = forward(t)`` from ``start`` to ``stop``, mapped back to ``t``:

        t_i = inverse(u_0 + i/steps (u_steps - u_0)),   u_0 = forward(start), u_steps = forward(stop),

    with ``t_0 = start`` and ``t_steps = stop`` exactly. ``forward`` and ``inverse`` take and return float64
    tensors (``inverse`` the inverse of ``forward`` on the span, which must be strictly monotone there).

    Raises:
        InputError: ``forward`` not finite at an end or equal at both, or a grid that is not strictly
            monotone (too many steps for the map's resolution).
    """
    _check_steps(steps, where)
    _check_ends(start, stop, where)
    f64 = torch.float64
    ends = forward(torch.tensor([float(start), float(stop)], dtype=f64)).to(f64)
    a, b = float(ends[0]), float(ends[1])
    if not (math.isfinite(a) and math.isfinite(b)) or a == b:
        raise InputError(f"{where}: the map is {a!r} at start = {start!r} and {b!r} at stop = {stop!r}; it must be "
                         "finite and differ at the two ends (start inside the schedule, e.g. t_max - 1e-3).")
    g = inverse(torch.linspace(a, b, steps + 1, dtype=f64)).to(f64)
    g[0], g[-1] = float(start), float(stop)
    d = g[1:] - g[:-1]
    if not (bool(torch.isfinite(g).all()) and (bool((d > 0).all()) or bool((d < 0).all()))):
        raise InputError(f"{where}: the grid of {steps} steps from {start!r} to {stop!r} is not strictly monotone "
                         f"({g.tolist()[:6]}...); use fewer steps or check that the map is monotone on the span.")
    return g.to(dtype=dtype, device=device)


def quadratic(start: float, stop: float, steps: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Quadratic in ``t`` (DPM-Solver's ``skip_type="time_quadratic"``, Lu et al. 2022, sec. 3.3):
    ``steps`` equal steps of ``sqrt(t)``, ``t_i = (sqrt(start) + i/steps (sqrt(stop) - sqrt(start)))^2``;
    ``start, stop >= 0``. Denser near the smaller end (the data end of a diffusion)."""
    _check_ends(start, stop, "grids.quadratic")
    if min(start, stop) < 0:
        raise InputError(f"grids.quadratic: needs start, stop >= 0 (a square root of t), got {start!r}, {stop!r}.")
    return uniform_in(start, stop, steps, forward=torch.sqrt, inverse=torch.square, dtype=dtype, device=device,
                      where="grids.quadratic")


def log_snr(start: float, stop: float, steps: int, *, log_snr, t_from_log_snr, dtype=torch.float64,
            device=None) -> torch.Tensor:
    """Uniform in log-SNR ``lambda(t) = 2 log(alpha/sigma)`` (DPM-Solver's ``skip_type="logSNR"``, Lu et al.
    2022; k-diffusion's ``get_sigmas_exponential``, uniform in ``log sigma``): ``steps`` equal steps of
    ``lambda`` mapped back by ``t_from_log_snr``. ``log_snr`` and ``t_from_log_snr`` are the schedule's map
    (float64 tensors in and out; ``flowsde.adapters.named_grid`` passes them)."""
    return uniform_in(start, stop, steps, forward=log_snr, inverse=t_from_log_snr, dtype=dtype, device=device,
                      where="grids.log_snr")


def karras(start: float, stop: float, steps: int, *, log_snr, t_from_log_snr, rho: float = 7.0,
           dtype=torch.float64, device=None) -> torch.Tensor:
    """EDM's rho-grid (Karras et al. 2022, eq. 5) in the noise level ``r(t) = sigma/alpha = exp(-lambda/2)``,
    mapped back to ``t``: ``steps`` equal steps of ``r^(1/rho)`` from ``r(start)`` to ``r(stop)`` (both
    positive: the grid stops short of zero noise; :func:`edm` is the same grid in ``r`` itself, with
    ``final_zero``). ``rho = 7`` is EDM's; ``rho = 1`` is uniform in ``r``, ``rho -> inf`` uniform in log-SNR."""
    check_positive("rho", rho, where="grids.karras")

    def forward(t):
        return torch.exp(-log_snr(t) / (2 * rho))

    def inverse(u):
        return t_from_log_snr(-2 * rho * torch.log(u))

    return uniform_in(start, stop, steps, forward=forward, inverse=inverse, dtype=dtype, device=device,
                      where="grids.karras")


def named(name: str, start: float, stop: float, steps: int, *, log_snr=None, t_from_log_snr=None,
          dtype=torch.float64, device=None) -> torch.Tensor:
    """The grid called ``name`` (one of :data:`NAMES`), ``steps`` steps (``len(grid) - 1``) from ``start`` to
    ``stop``:

    * ``"uniform"``: uniform in ``t`` (:func:`uniform`);
    * ``"quadratic"``: uniform in ``sqrt(t)`` (:func:`quadratic`);
    * ``"edm"``: EDM's rho = 7 in ``sigma/alpha`` (:func:`karras`);
    * ``"log_snr"``: uniform in log-SNR (:func:`log_snr`).

    The last two need the schedule's map, ``log_snr(t)`` and its inverse ``t_from_log_snr(lam)`` (float64
    tensors): ``flowsde.adapters.named_grid(diffusion, name, steps)`` passes a schedule's.

    Raises:
        InputError: an unknown name, or a map-based grid without the map.
    """
    if name not in NAMES:
        raise InputError(f"grids.named: unknown grid {name!r}; choose from {list(NAMES)}.")
    if name == "uniform":
        _check_ends(start, stop, "grids.uniform")
        return uniform(start, stop, steps, dtype=dtype, device=device)
    if name == "quadratic":
        return quadratic(start, stop, steps, dtype=dtype, device=device)
    if log_snr is None or t_from_log_snr is None:
        raise InputError(f"grids.named({name!r}): needs the schedule's map, log_snr= and t_from_log_snr= "
                         f"(flowsde.adapters.named_grid(diffusion, {name!r}, steps) passes them).")
    return _OF_MAP[name](start, stop, steps, log_snr=log_snr, t_from_log_snr=t_from_log_snr, dtype=dtype,
                         device=device)


#: the named grids that need the schedule's map
_OF_MAP = {"edm": karras, "log_snr": log_snr}
