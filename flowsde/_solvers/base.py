"""The solver interface shared by every method.

A fixed-step solver implements ``step(problem, t0, t1, x, noise, last)`` and
returns the new state; the driver loop in :mod:`flowsde._solve` owns time,
saving and checks. Orders are class attributes that tests read.
"""

from __future__ import annotations

from .._errors import InputError


class Solver:
    """Base class.

    Attributes:
        name: the ``method=`` string.
        order: global order for ODEs (``None`` if it does not solve ODEs).
        strong_order, weak_order: for SDEs (``None`` if it does not solve SDEs).
        noise_types: the SDE noise types it supports (``()``: ODEs only).
        solves_ode: whether an :class:`flowsde.ODE` is accepted.
        requires_score: the problem must carry ``score(t, x)``.
        adaptive: chooses its own steps (``ts`` are then only the output times).
    """

    name = "solver"
    order = None
    strong_order = None
    weak_order = None
    noise_types: tuple = ()
    solves_ode = True
    requires_score = False
    adaptive = False

    def check_problem(self, problem) -> None:
        if problem.is_sde:
            if problem.noise not in self.noise_types:
                hint = ("use method='euler_maruyama', 'pc', 'milstein' or 'srk'" if not self.noise_types
                        else f"it supports noise types {self.noise_types}")
                raise InputError(
                    f"method={self.name!r} cannot solve an SDE with noise={problem.noise!r}: {hint}."
                )
        elif not self.solves_ode:
            raise InputError(f"method={self.name!r} solves SDEs only; for an ODE use 'euler', 'heun' or 'rk45'.")
        if self.requires_score and not getattr(problem, "has_score", False):
            raise InputError(
                f"method={self.name!r} needs the marginal score: build the problem with score=... "
                "(adapters' Diffusion.reverse_sde() attaches it)."
            )

    def step(self, problem, t0, t1, x, noise, last: bool):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement step(problem, t0, t1, x, noise, last).")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
