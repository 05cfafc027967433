"""The solver interface shared by every method (docs/design.md, "Solvers").

A fixed-step solver declares its per-solve state as a dataclass, builds it in
``init(problem, x, grid)`` and advances one step with
``step(problem, x, t0, t1, h, i, noise, state) -> (x_new, state)`` (the manner of
diffrax's ``AbstractSolver``); the driver loop in :mod:`flowsde._solve` owns time,
saving and checks. Orders are class attributes that tests read.
"""

from __future__ import annotations

import torch

from .._errors import InputError

#: noise kinds of :meth:`Solver.strong_order_for`: the SDE noise types and "additive"
NOISE_KINDS = ("scalar", "diagonal", "additive")


class Solver:
    """Base class.

    Attributes:
        name: the ``method=`` string.
        order: global order for ODEs; for a stochastic sampler of a semi-linear SDE
            (``solves_ode = False``), the order of its deterministic (``beta = 0``) limit
            (``None`` if neither applies).
        strong_order, weak_order: for SDEs (``None`` if it does not solve SDEs, or does
            not converge to their solution); ``strong_order`` holds for every supported
            noise type, whatever ``g``.
        strong_orders: the strong order by noise kind where it is higher:
            ``{"scalar": .., "diagonal": .., "additive": ..}``, ``"additive"`` meaning a
            diffusion ``g(t)`` that does not depend on ``x`` (Euler–Maruyama: 0.5 in
            general, 1 for additive noise). Read it with :meth:`strong_order_for`.
        noise_types: the SDE noise types it supports (``()``: ODEs only).
        solves_ode: whether an :class:`flowsde.ODE` is accepted.
        requires_score: the problem must carry ``score(t, x)``.
        adaptive: chooses its own steps (``grid`` is then only the output times) and implements
            ``solve(problem, x, grid, *, noise, save_all, progress) -> Solution`` instead of
            :meth:`init` and :meth:`step`.
        evals_per_step: network evaluations (drift + score calls) per fixed step;
            :meth:`nfe` gives the total for a solve.

    Protocol of a fixed-step solve (:func:`flowsde.solve`)::

        state = solver.init(problem, x, grid)                   # once per solve
        h = step_sizes(grid, x.dtype)                           # once per solve
        for i in range(len(grid) - 1):
            x, state = solver.step(problem, x, grid[i], grid[i + 1], h[i], i, noise, state)

    ``problem`` is the checked problem (its ``drift``, ``diffusion``, ``score``, ``denoise``
    take float64 ``t`` and cast it for the user's functions; a grid time passed as the
    loop's ``t0``/``t1`` is cast once per solve and looked up by the step index);
    ``t0``, ``t1`` are 0-dim float64 tensors (views of the grid); ``h`` is ``t1 - t0``
    as a 0-dim tensor in the state's dtype, differenced in float64 and rounded once for
    the whole grid (:func:`step_sizes`: no mixed-dtype cast per step); ``i`` is the step
    index (a Python int); ``noise`` is the solve's noise source (``noise.randn_like(x)``,
    ``noise.dW(t0, t1, sqrt(|h|), x)``).

    The state is the solver's own: a dataclass it declares (frozen where nothing changes
    from step to step, a new instance per step where a multistep method carries its
    history), or ``None`` for a solver without one (:meth:`init`'s default). Whatever a
    step needs beyond its arguments is computed once, at :meth:`init`, into the state:
    ``sqrt|h|`` per step (:class:`flowsde.solvers.EulerMaruyama`), half steps
    (:class:`flowsde.solvers.Heun`), the index
    of the last step, the grid as Python floats (to branch on time without a device
    sync), a sampler's coefficients. The loop writes nothing into it.
    """

    name = "solver"
    order = None
    strong_order = None
    weak_order = None
    strong_orders: dict = {}
    noise_types: tuple = ()
    solves_ode = True
    requires_score = False
    adaptive = False
    evals_per_step: int = 1

    def nfe(self, steps: int, *, to_zero_noise: bool = False) -> int:
        """Network evaluations of a solve of ``steps`` fixed steps; ``to_zero_noise``: the grid
        ends at zero noise (a semi-linear problem's ``sigma = 0``), where two-stage samplers take a
        one-evaluation last step."""
        return int(steps) * int(self.evals_per_step)

    def strong_order_for(self, noise: str):
        """The strong order on ``noise``: a noise type (``"scalar"``, ``"diagonal"``) or
        ``"additive"`` (``g`` independent of ``x``, of either type); ``None`` where the
        solver does not converge strongly on it."""
        if noise not in NOISE_KINDS:
            raise InputError(f"strong_order_for({noise!r}): noise must be one of {NOISE_KINDS}.")
        if noise != "additive" and noise not in self.noise_types:
            return None
        if not self.noise_types:
            return None
        return self.strong_orders.get(noise, self.strong_order)

    def init(self, problem, x: torch.Tensor, grid: torch.Tensor):
        """The per-solve state passed to every :meth:`step`: a dataclass of the solver's, or
        ``None`` (the default: a solver without state). Called once per solve with the
        checked problem, the initial state and the float64 grid."""
        return None

    def check_problem(self, problem) -> None:
        if problem.is_sde:
            if problem.noise_type not in self.noise_types:
                hint = ("use method='euler_maruyama', 'pc', 'milstein' or 'srk'" if not self.noise_types
                        else f"it supports noise types {self.noise_types}")
                raise InputError(
                    f"method={self.name!r} cannot solve an SDE with noise_type={problem.noise_type!r}: {hint}."
                )
        elif not self.solves_ode:
            raise InputError(f"method={self.name!r} solves SDEs only; for an ODE use 'euler', 'heun' or 'rk45'.")
        if self.requires_score and not getattr(problem, "has_score", False):
            raise InputError(
                f"method={self.name!r} needs the marginal score: build the problem with score=... "
                "(adapters' Diffusion.reverse_sde() attaches it)."
            )

    def step(self, problem, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, h: torch.Tensor, i: int, noise,
             state):  # pragma: no cover - interface
        """One step from ``t0`` to ``t1`` (``h = t1 - t0`` in the state's dtype, ``i`` the step
        index); returns ``(x_new, state)``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement step(problem, x, t0, t1, h, i, noise, state) -> (x, state)."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def step_sizes(grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The steps ``grid[i + 1] - grid[i]`` of a float64 grid, differenced in float64 and rounded
    once to ``dtype`` (the state's): the one way a solve and its solvers get ``h``."""
    return (grid[1:] - grid[:-1]).to(dtype)
