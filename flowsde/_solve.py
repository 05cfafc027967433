"""``solve``: the one entry point for every method."""

from __future__ import annotations

from typing import Union

import torch

from ._checks import CheckedProblem, check_ts, check_x0
from ._errors import InputError
from ._noise import make_noise
from ._problem import ODE
from ._solution import Solution, Status
from ._solvers import PC, Euler, EulerMaruyama, Heun, Solver, TorchSDE


def _rk45(**kw):
    from ._solvers.rk45 import RK45

    return RK45(**kw)


METHODS = {
    "euler": Euler,
    "heun": Heun,
    "euler_maruyama": EulerMaruyama,
    "em": EulerMaruyama,
    "pc": PC,
    "milstein": lambda: TorchSDE("milstein"),
    "srk": lambda: TorchSDE("srk"),
    "torchsde_euler": lambda: TorchSDE("euler"),
    "rk45": _rk45,
    "dopri5": _rk45,
}


def get_solver(method: Union[str, Solver]) -> Solver:
    """A solver instance from a ``method=`` string (default options) or an instance."""
    if isinstance(method, Solver):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    raise InputError(
        f"method={method!r} is unknown; choose one of {sorted(METHODS)} or pass a solver instance "
        "(e.g. flowsde.PC(snr=0.1), flowsde.Heun(final_euler=True))."
    )


def solve(
    problem: ODE,
    x0: torch.Tensor,
    ts,
    *,
    method: Union[str, Solver] = "euler",
    generator=None,
    save_all: bool = False,
    check_finite: bool = True,
    progress: bool = False,
) -> Solution:
    """Solve an ODE or Itô SDE from ``ts[0]`` to ``ts[-1]``.

    Arguments:
        problem: an :class:`flowsde.ODE` or :class:`flowsde.SDE`.
        x0: the state at ``ts[0]``, ``(B, *event_shape)``; never modified.
        ts: 1-D times, strictly increasing or strictly decreasing. For a
            fixed-step method the step grid; for an adaptive one the output times.
        method: a name (``"euler"``, ``"heun"``, ``"euler_maruyama"``, ``"pc"``,
            ``"rk45"``, ``"milstein"``, ``"srk"``, ``"torchsde_euler"``) or a solver
            instance carrying options (``flowsde.Heun(final_euler=True)``,
            ``flowsde.PC(snr=0.16, n_corrector=1)``, ``flowsde.RK45(rtol=1e-5)``).
        generator: the noise: ``None`` (global RNG), a ``torch.Generator``, a list
            of generators (one per sample: results do not depend on the batch
            split) or a :class:`flowsde.BrownianPath`.
        save_all: keep the state at every time of ``ts`` (``Solution.xs``).
        check_finite: detect NaN/Inf in function outputs (one host sync at the
            end of the solve, not per step) and raise :class:`flowsde.SolveError`
            naming the function, step and time.
        progress: show a tqdm progress bar.

    Returns:
        :class:`flowsde.Solution`.

    Raises:
        InputError: bad arguments (shapes, dtypes, grid, method for the problem).
        SolveError: non-finite values during the solve.
    """
    if not isinstance(problem, ODE):
        raise InputError(
            f"problem: expected flowsde.ODE or flowsde.SDE, got {type(problem).__name__}; wrap your functions "
            "as flowsde.SDE(drift, diffusion) or flowsde.ODE(drift)."
        )
    solver = get_solver(method)
    check_x0(x0)
    ts = check_ts(ts, x0)
    solver.check_problem(problem)
    noise = make_noise(generator, x0)
    checked = CheckedProblem(problem, x0, ts, check_finite=check_finite)
    if solver.adaptive:
        return solver.solve(checked, x0, ts, noise=noise, save_all=save_all, progress=progress)
    return _fixed_step_loop(solver, checked, x0, ts, noise, save_all, progress)


def _fixed_step_loop(solver, checked, x0, ts, noise, save_all, progress):
    n = ts.shape[0] - 1
    x = x0
    xs = [x0] if save_all else None
    steps = range(n)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"flowsde {solver.name}", leave=False)
    for i in steps:
        checked.step = i
        x = solver.step(checked, ts[i], ts[i + 1], x, noise, i == n - 1)
        if save_all:
            xs.append(x)
    if tuple(x.shape) != tuple(x0.shape):
        raise InputError(f"{solver.name}: the state changed shape from {tuple(x0.shape)} to {tuple(x.shape)}.")
    checked.raise_if_non_finite(x)
    B = x0.shape[0]
    return Solution(
        x=x,
        nfe=checked.nfe,
        n_steps=n,
        n_accepted=n,
        status=torch.full((B,), int(Status.SUCCESS), dtype=torch.int64, device=x0.device),
        t_final=ts[-1].expand(B).clone(),
        method=solver.name,
        ts=ts if save_all else None,
        xs=torch.stack(xs) if save_all else None,
    )
