"""A schedule's named grids: :func:`flowsde.grids.named` with the schedule's noise-level map.

The core builds a grid from a map ``t <-> log-SNR`` (docs/design.md, "Time"); this adapter hands it a
schedule's (``Schedule.log_snr`` and ``Schedule.t_from_log_snr``) and its span.
"""

from __future__ import annotations

from typing import Optional

import torch

from flowsde import InputError, grids

from ._schedule import Schedule

__all__ = ["named_grid", "GRID_NAMES"]

GRID_NAMES = grids.NAMES
"""Every name :func:`named_grid` takes (``flowsde.grids.NAMES``): uniform, quadratic, edm, log_snr."""


def named_grid(model, name: str, steps: int, *, start: Optional[float] = None, stop: Optional[float] = None,
               dtype=torch.float64, device=None) -> torch.Tensor:
    """The grid called ``name`` of ``model``'s schedule, ``steps`` steps (``len(grid) - 1``) from ``start``
    (default the schedule's ``t_max``: noise) to ``stop`` (default ``t_min``): a decreasing sampling grid.

    Names (:data:`GRID_NAMES`, docs/samplers.md): ``"uniform"`` in t, ``"quadratic"`` in t (DPM-Solver's
    ``time_quadratic``), ``"edm"`` (Karras et al.'s rho = 7 in ``sigma/alpha``) and ``"log_snr"`` (uniform in
    ``lambda = 2 log(alpha/sigma)``). The map-based ones need ``alpha > 0`` and ``sigma > 0`` at both ends.

    Arguments:
        model: a :class:`flowsde.adapters.Diffusion` or a :class:`flowsde.adapters.Schedule`.
        name: the grid's name.
        steps: the number of steps.
        start, stop: the ends (times of the schedule).

    Returns:
        a 1-D float64 tensor of ``steps + 1`` times (``dtype``, ``device`` as given).

    Raises:
        InputError: an unknown name, ends outside the schedule, or a map that is not finite at an end.
    """
    sched = model if isinstance(model, Schedule) else getattr(model, "schedule", None)
    if not isinstance(sched, Schedule):
        raise InputError(f"named_grid: expected a Diffusion or a Schedule, got {type(model).__name__}.")
    start = float(sched.t_max) if start is None else float(start)
    stop = float(sched.t_min) if stop is None else float(stop)
    lo, hi = float(sched.t_min), float(sched.t_max)
    for k, v in (("start", start), ("stop", stop)):
        if not lo <= v <= hi:
            raise InputError(f"named_grid: {k} = {v!r} is outside the schedule's range [{lo!r}, {hi!r}].")
    return grids.named(name, start, stop, steps, log_snr=sched.log_snr, t_from_log_snr=sched.t_from_log_snr,
                       dtype=dtype, device=device)
