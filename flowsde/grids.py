"""Time grids for fixed-step solvers.

Every grid is a 1-D float64 tensor (convert with ``.to(x)``), ordered from the
first time to the last one as given (``start`` may be larger than ``stop``:
diffusion samplers run from noise at ``T`` down to data at ``0``).
"""

from __future__ import annotations

import math

import torch

from ._errors import InputError
from ._utils import check_positive

__all__ = ["uniform", "edm", "log_uniform", "append_zero"]


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
