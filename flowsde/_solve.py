"""``solve``: the one entry point for every method."""

from __future__ import annotations

import functools
import inspect
import types
from typing import Union

import torch

from ._checks import CheckedProblem, check_grid, check_state
from ._errors import InputError
from ._noise import make_noise_source
from ._problem import ODE
from ._solution import Solution
from ._solvers import PC, RK45, SAMPLERS, AdaptiveSDE, Bosh3, Tsit5, Euler, EulerMaruyama, Heun, Solver, TorchSDE
from ._solvers.base import step_sizes
from ._solvers.torchdiffeq_engine import methods as _torchdiffeq_methods

#: ``method=`` names and the solver class (or factory) each one builds: one registry, read-only.
METHODS = types.MappingProxyType({
    "euler": Euler,
    "heun": Heun,
    # diffusers' FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler on a velocity model
    # (docs/samplers.md): the same methods, Heun with its final Euler step
    "flow_euler": Euler,
    "flow_heun": functools.partial(Heun, final_euler=True),
    "euler_maruyama": EulerMaruyama,
    "em": EulerMaruyama,
    "pc": PC,
    "milstein": functools.partial(TorchSDE, "milstein"),
    "srk": functools.partial(TorchSDE, "srk"),
    "torchsde_euler": functools.partial(TorchSDE, "euler"),
    "rk45": RK45,
    "dopri5": RK45,
    "tsit5": Tsit5,
    "bosh3": Bosh3,
    "adaptive_sde": AdaptiveSDE,  # Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast"): per-sample adaptive steps
    **SAMPLERS,  # ddim, euler_ancestral, dpm_2, dpmpp_*, lms, unipc, edm (docs/samplers.md)
    **_torchdiffeq_methods(),  # "torchdiffeq:dopri5", ... (torchdiffeq's adaptive solvers)
})


def _option_names(factory) -> list:
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def get_solver(method: Union[str, Solver], **options) -> Solver:
    """A solver instance from a ``method=`` name and its constructor options, or an instance.

    ``get_solver("rk45", rtol=1e-3)`` is ``flowsde.solvers.RK45(rtol=1e-3)``.

    Raises:
        InputError: an unknown name, an option the method does not take (the message
            lists the valid ones), or options given with a solver instance.
    """
    if isinstance(method, Solver):
        if options:
            raise InputError(
                f"options {sorted(options)} were given with the solver instance {method!r}; pass them to its "
                f"constructor instead (e.g. flowsde.solvers.{type(method).__name__}(...)), or give method by name."
            )
        return method
    if not (isinstance(method, str) and method in METHODS):
        raise InputError(
            f"method={method!r} is unknown; choose one of {sorted(METHODS)} or pass a solver instance "
            "(e.g. flowsde.solvers.PC(snr=0.1), flowsde.solvers.Heun(final_euler=True))."
        )
    factory = METHODS[method]
    if not options:
        return factory()
    valid = _option_names(factory)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise InputError(
            f"method={method!r} has no option{'s' if len(unknown) > 1 else ''} {names}; its options are "
            f"{valid if valid else 'none'}."
        )
    return factory(**options)


def solve(
    problem: ODE,
    x: torch.Tensor,
    grid,
    *,
    method: Union[str, Solver] = "euler",
    generator=None,
    save_all: bool = False,
    throw: bool = True,
    grad: bool = False,
    progress: bool = False,
    **options,
) -> Solution:
    """Solve an ODE or Itô SDE from ``grid[0]`` to ``grid[-1]``.

    Arguments:
        problem: an :class:`flowsde.ODE` or :class:`flowsde.SDE`.
        x: the state at ``grid[0]``, ``(B, *event_shape)``, float32 or float64; never modified.
        grid: 1-D times, strictly increasing or strictly decreasing. For a
            fixed-step method the step grid; for an adaptive one the output times.
            Carried in float64 whatever the state dtype (docs/design.md, "Time").
        method: a name (``"euler"``, ``"heun"``, ``"euler_maruyama"``, ``"pc"``,
            ``"rk45"``, ``"milstein"``, ``"srk"``, ``"torchsde_euler"``) or a solver
            instance carrying options (``flowsde.solvers.Heun(final_euler=True)``,
            ``flowsde.solvers.PC(snr=0.16, corrector_steps=1)``, ``flowsde.solvers.RK45(rtol=1e-5)``).
        generator: the noise: ``None`` (global RNG), a ``torch.Generator``, a list of
            generators (one per sample: results do not depend on the batch
            split) or a :class:`flowsde.BrownianPath`.
        save_all: keep the state at every time of ``grid`` (``Solution.xs``).
        throw: ``True``: a numerical failure (NaN/Inf in a function output or the
            state, an exhausted step budget, a step size underflow) raises
            :class:`flowsde.SolveError` naming the samples, step and time (checked
            with one host sync at the end of the solve, not per step). With a
            fixed-step method the final state decides, and a failed solve is run a
            second time from ``x`` with the same noise and every output checked, to
            name its first failure (your functions are then called twice: give them
            no side effects that matter). ``False``: never raises for a numerical
            failure; ``Solution.status`` marks each failed sample
            (:class:`flowsde.Status`); on an accelerator with no host sync (every
            output reduced on the device), on the CPU as with ``True``.
        grad: ``False`` (default): the solve runs under ``torch.no_grad()`` and keeps
            no autograd graph (sampling memory stays O(batch x state)). ``True``:
            the graph is kept so that ``Solution.x`` can be differentiated.
        progress: show a tqdm progress bar.
        **options: constructor options of a method given by name
            (``solve(..., method="rk45", rtol=1e-3)`` is
            ``method=flowsde.solvers.RK45(rtol=1e-3)``).

    Returns:
        :class:`flowsde.Solution`.

    Raises:
        InputError: bad arguments (shapes, dtypes, grid, method for the problem,
            unknown option, a grid against the problem's ``direction``).
        SolveError: a numerical failure, when ``throw=True``.
    """
    if not isinstance(problem, ODE):
        raise InputError(
            f"problem: expected flowsde.ODE or flowsde.SDE, got {type(problem).__name__}; wrap your functions "
            "as flowsde.SDE(drift, diffusion) or flowsde.ODE(drift)."
        )
    solver = get_solver(method, **options)
    check_state(x)
    grid = check_grid(grid, x, direction=getattr(problem, "direction", None))
    solver.check_problem(problem)
    noise_source = make_noise_source(generator, x, grid)  # a BrownianPath must span the grid
    with torch.set_grad_enabled(bool(grad)):
        if solver.adaptive:
            checked = CheckedProblem(problem, x, grid, throw=throw)
            return solver.solve(checked, x, grid, noise=noise_source, save_all=save_all, progress=progress)
        # throw=True, or any solve on the CPU (where reading a value is no device sync): outputs get
        # their host-side checks as they come and the final state decides (a NaN/Inf in an output the
        # solver uses reaches the state); a failure is replayed from x with the same noise and every
        # output checked, to name it (docs/design.md, "Errors").
        rewind = noise_source.snapshot(x) if throw or x.device.type == "cpu" else None
        checked = CheckedProblem(problem, x, grid, throw=throw, defer=rewind is not None)
        sol = _fixed_step_loop(solver, checked, x, grid, noise_source, save_all, progress)
        if sol is None:
            rewind()
            sol = _fixed_step_loop(solver, CheckedProblem(problem, x, grid, throw=throw), x, grid, noise_source,
                                   save_all, progress)
        return sol


def _fixed_step_loop(solver, checked, x0, grid, noise_source, save_all, progress):
    """The steps of a fixed-step solve (the contract of :class:`flowsde.solvers.Solver`); ``None``
    where ``checked`` defers its checks and the final state is not finite."""
    n = grid.shape[0] - 1
    x = x0
    xs = [x0] if save_all else None
    state = solver.init(checked, x0, grid)
    steps = range(n)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"flowsde {solver.name}", leave=False)
    # Once per solve, not per step: the grid's 0-dim views (the checked problem's, which it maps to
    # their cast by the step index) and the steps differenced in float64 and rounded once to the
    # state's dtype.
    tv = checked.times
    hs = step_sizes(grid, x0.dtype).unbind(0)
    step = solver.step
    for i in steps:
        checked.step = i
        out = step(checked, x, tv[i], tv[i + 1], hs[i], i, noise_source, state)
        if type(out) is not tuple:
            raise InputError(f"{solver.name}: step(problem, x, t0, t1, h, i, noise, state) must return (x, state), "
                             f"got {type(out).__name__}.")
        x, state = out
        if save_all:
            xs.append(x)
    if tuple(x.shape) != tuple(x0.shape):
        raise InputError(f"{solver.name}: the state changed shape from {tuple(x0.shape)} to {tuple(x.shape)}.")
    done = checked.finish(x, grid)
    if done is None:
        return None
    status, t_final = done
    return Solution(
        x=x,
        nfe=checked.nfe,
        steps=n,
        accepted=n,
        status=status,
        t_final=t_final,
        method=solver.name,
        grid=grid if save_all else None,
        xs=torch.stack(xs) if save_all else None,
    )
