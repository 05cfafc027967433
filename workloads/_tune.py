"""Grids tuned to a model: the times of one PF-ODE sampler at one NFE fitted to one network.

:func:`tune_grid` minimises the sampler's error to a float64 PF-ODE reference over a calibration batch of
``x_T``, over the interior times of the grid, as LD3 does (Tong et al. 2025, "Learning to Discretize
Denoising Diffusion ODEs", ICLR: a few hundred teacher trajectories, the student's time steps fitted to
them); the objective is the one ``flowsde compare`` reports (RMS error per coordinate). The grid is
parameterised monotonically, as cumulative softmax increments of ``t`` between the fixed ends (Bespoke
solvers, Shaul et al. 2024, parameterise their time steps the same way), and started from the best named
grid on the calibration batch. ``flowsde.solve`` takes the grid as data (it is checked and detached), so
the gradient is taken by finite differences in float64 and the fit is SciPy's L-BFGS-B: ``steps - 1``
parameters, a few dozen solves of the batch per iteration.

A :class:`TunedGrid` records the grid with the model, sampler, NFE, objective, calibration seed and
samples, and is written to / read from JSON (``flowsde tune --out grid.json``; ``flowsde compare --grid
grid.json``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

import flowsde
from flowsde import InputError
from flowsde._internal import as_seed

from ._compare import _adaptive, _EDM, _event_shape, _is_ode_method, _rmse, known_methods, steps_for_budget

__all__ = ["tune_grid", "TunedGrid"]

#: the ``format`` field of a grid file
FORMAT = "flowsde-grid"
_F64 = torch.float64


@dataclass
class TunedGrid:
    """A grid fitted to one model for one sampler at one NFE (what :func:`tune_grid` returns).

    ``grid`` is the decreasing float64 grid (``steps + 1`` times); ``error`` and ``error_init`` are the
    objective (RMS error per coordinate to the float64 PF-ODE reference) on the calibration batch after and
    before tuning (``init`` names the starting grid); ``tuning_nfe`` counts network evaluations per sample
    (the reference's and every trial solve's) and ``seconds`` the wall time of the fit.
    """

    grid: torch.Tensor
    solver: str
    nfe: int
    steps: int
    model: str
    objective: str
    seed: int
    samples: int
    init: str
    error_init: float
    error: float
    tuning_nfe: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How a row of ``flowsde compare`` names this grid."""
        return f"tuned({self.solver}, NFE {self.nfe})"

    def write(self, path) -> None:
        """Write the grid file (JSON; the grid as a list of floats, repr-exact)."""
        d = asdict(self)
        d["grid"] = [float(v) for v in self.grid.tolist()]
        Path(path).write_text(json.dumps({"format": FORMAT, "version": 1, **d}, indent=2) + "\n")

    @classmethod
    def read(cls, path) -> "TunedGrid":
        """Read a grid file written by :meth:`write` (``flowsde tune``).

        Raises:
            InputError: a missing or unreadable file, or one that is not a flowsde grid file.
        """
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"grid file {str(p)!r}: cannot read it as JSON ({e}); write one with "
                             "`flowsde tune --out grid.json`.") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(f"grid file {str(p)!r}: not a flowsde grid file (no \"format\": \"{FORMAT}\"); write "
                             "one with `flowsde tune --out grid.json`.")
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        missing = [k for k in cls.__dataclass_fields__ if k not in d and k != "extra"]
        if missing:
            raise InputError(f"grid file {str(p)!r}: missing fields {missing}.")
        d["grid"] = torch.tensor(d["grid"], dtype=_F64)
        if d["grid"].dim() != 1 or d["grid"].numel() != int(d["steps"]) + 1:
            raise InputError(f"grid file {str(p)!r}: the grid has {d['grid'].numel()} times, not steps + 1 = "
                             f"{int(d['steps']) + 1}.")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def check_fits(self, solver: str, steps: int, start: float, stop: float, where: str = "grid") -> None:
        """Raise :class:`InputError` unless this grid is for ``solver`` at ``steps`` steps from ``start`` to
        ``stop`` (what a row of ``flowsde compare`` runs)."""
        if solver != self.solver or steps != self.steps:
            raise InputError(f"{where}: {self.label} was tuned for {self.solver!r} at NFE {self.nfe} ({self.steps} "
                             f"steps); it does not fit {solver!r} at {steps} steps. Run compare with --solvers "
                             f"{self.solver} --nfe {self.nfe}, or tune a grid for this row (flowsde tune --solver "
                             f"{solver} ...).")
        a, b = float(self.grid[0]), float(self.grid[-1])
        if not (math.isclose(a, start, rel_tol=1e-12, abs_tol=1e-12)
                and math.isclose(b, stop, rel_tol=1e-12, abs_tol=1e-12)):
            raise InputError(f"{where}: {self.label} runs from t = {a!r} to {b!r}, but this comparison runs from "
                             f"{start!r} to {stop!r}; tune it on the same span (tune_grid(start=..., stop=...), "
                             "flowsde tune --t-start/--t-end).")


def _check_solver(solver: str) -> None:
    if solver not in known_methods() or solver in _EDM:
        raise InputError(f"tune_grid: unknown solver {solver!r}; choose a fixed-step PF-ODE sampler of "
                         "flowsde.solvers.METHODS (euler, heun, dpmpp_2m, unipc, ...).")
    if _adaptive(solver) or not _is_ode_method(solver):
        raise InputError(f"tune_grid: {solver!r} is not a fixed-step PF-ODE sampler (adaptive and SDE samplers "
                         "have no grid to fit); choose euler, heun, dpmpp_2m, unipc, ...")


def _grid_of(w: torch.Tensor, start: float, stop: float) -> torch.Tensor:
    """The monotone grid of the logits ``w`` (``steps - 1`` values; the last increment's logit is 0):
    ``t_i = start + (stop - start) cumsum(softmax([w, 0]))_i``."""
    p = torch.softmax(torch.cat([w, w.new_zeros(1)]), 0)
    g = start + (stop - start) * torch.cat([w.new_zeros(1), torch.cumsum(p, 0)])
    g[0], g[-1] = start, stop
    return g


def _logits_of(grid: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_grid_of`."""
    d = (grid[1:] - grid[:-1]).abs()
    return torch.log(d[:-1]) - torch.log(d[-1])


def tune_grid(diffusion, solver: str, nfe: int, *, samples: int = 128, generator=12345,
              start: Optional[float] = None, stop: Optional[float] = None, event_shape: Optional[Sequence[int]] = None,
              init: Optional[str] = None, max_iterations: int = 60, reference_tol: float = 1e-8,
              model: str = "") -> TunedGrid:
    """Fit the grid of ``solver`` at ``nfe`` network evaluations to ``diffusion``.

    Minimises the RMS error per coordinate of ``solver``'s samples from a calibration batch of ``x_T``
    (``samples`` prior draws seeded by ``generator``) to the float64 PF-ODE solution from the same ``x_T``
    (RK45 at ``rtol = atol = reference_tol``), over the ``steps - 1`` interior times of the grid; the ends
    stay ``start`` and ``stop`` (LD3, Tong et al. 2025; the method is in this module's docstring).

    Arguments:
        diffusion: a :class:`flowsde.adapters.Diffusion` that takes float64 states.
        solver: a fixed-step PF-ODE sampler (``euler``, ``heun``, ``dpmpp_2m``, ``unipc``, ...).
        nfe: the NFE budget; the grid has the most steps that fit (:func:`steps_for_budget`).
        samples: calibration samples (one batch).
        generator: an int seed (or a ``torch.Generator``, one seed is drawn) of the calibration ``x_T``;
            the default differs from ``flowsde compare``'s seeds, so compare's rows are held out.
        start, stop: the grid's ends (default the schedule's ``t_max`` and ``t_min``).
        event_shape: the shape of one sample (default ``diffusion.event_shape``).
        init: the named grid to start from (default: the best of ``flowsde.adapters.GRID_NAMES`` on the
            calibration batch, among those the span allows).
        max_iterations: L-BFGS-B iterations.
        reference_tol: the reference's RK45 tolerance.
        model: the model's name, recorded in the grid file.

    Returns:
        :class:`TunedGrid`.

    Raises:
        InputError: not a fixed-step PF-ODE sampler, a budget below one step, bad samples or span.
    """
    from scipy.optimize import minimize

    from flowsde.adapters import GRID_NAMES, named_grid

    _check_solver(solver)
    steps, used = steps_for_budget(solver, nfe)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"tune_grid(samples={samples!r}): must be a positive int.")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 0:
        raise InputError(f"tune_grid(max_iterations={max_iterations!r}): must be an int >= 0.")
    if init is not None and init not in GRID_NAMES:
        raise InputError(f"tune_grid(init={init!r}): choose from {list(GRID_NAMES)}.")
    seed = as_seed(generator, "tune_grid")
    sched = diffusion.schedule
    start = float(sched.t_max) if start is None else float(start)
    stop = float(sched.t_min) if stop is None else float(stop)
    event = _event_shape(diffusion, None, event_shape)
    t0 = time.perf_counter()
    x_T = diffusion.prior().sample((samples,) + event, generator=torch.Generator().manual_seed(seed), dtype=_F64)
    pf = diffusion.pf_ode()
    ref = flowsde.solve(pf, x_T, torch.tensor([start, stop], dtype=_F64),
                        method=flowsde.solvers.RK45(rtol=reference_tol, atol=reference_tol))
    count = {"solves": 0}

    def error(grid: torch.Tensor) -> float:
        count["solves"] += 1
        sol = flowsde.solve(pf, x_T, grid, method=solver, throw=False)
        e = _rmse(sol.x, ref.x)
        return e if math.isfinite(e) else math.inf

    # the starting grid: the given name, or the best named grid on the calibration batch
    starts = {}
    for name in ([init] if init else GRID_NAMES):
        try:
            g = named_grid(diffusion, name, steps, start=start, stop=stop)
        except InputError:
            if init:
                raise
            continue  # e.g. a map-based grid where log-SNR is infinite at an end
        starts[name] = (error(g), g)
    init_name = min(starts, key=lambda k: starts[k][0])
    err0, g0 = starts[init_name]
    if not math.isfinite(err0):
        raise InputError(f"tune_grid: {solver!r} fails (a non-finite state) on every named grid from t = {start!r} to "
                         f"{stop!r} ({', '.join(starts)}); start inside the schedule (start=...) or choose another "
                         "solver.")
    best = {"err": err0, "grid": g0}

    def objective(w) -> float:
        g = _grid_of(torch.as_tensor(w, dtype=_F64), start, stop)
        if not bool(((g[1:] - g[:-1]) * (stop - start) > 0).all()):
            return 1e3  # increments that underflow: not a grid
        e = error(g)
        if e < best["err"]:
            best.update(err=e, grid=g)
        return math.log(e) if e > 0 else -1e3

    if steps > 1 and max_iterations > 0:
        minimize(objective, _logits_of(g0).numpy(), method="L-BFGS-B",
                 options=dict(maxiter=max_iterations, eps=1e-7, maxfun=max_iterations * (steps + 2)))
    seconds = time.perf_counter() - t0
    what = (f"RMS error per coordinate to the float64 PF-ODE solution (RK45 rtol=atol={reference_tol:g}, "
            f"{ref.nfe:.0f} NFE) from the same x_T")
    return TunedGrid(best["grid"].clone(), solver, int(used), int(steps), model or " ".join(repr(diffusion).split()),
                     what, seed, samples, init_name, float(err0), float(best["err"]),
                     int(ref.nfe + count["solves"] * used), float(seconds),
                     {"solves": count["solves"], "reference_nfe": int(ref.nfe), "start": start, "stop": stop})
