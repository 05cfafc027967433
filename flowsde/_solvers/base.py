"""The solver interface shared by every method (docs/design.md, "Solvers").

A fixed-step solver implements ``step(problem, t0, t1, x, noise, last, state)``
and returns the new state; the driver loop in :mod:`flowsde._solve` owns time,
saving and checks. Orders are class attributes that tests read.
"""

from __future__ import annotations

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
        adaptive: chooses its own steps (``ts`` are then only the output times).
        evals_per_step: network evaluations (drift + score calls) per fixed step;
            :meth:`nfe` gives the total for a solve.

    Protocol of a fixed-step solve (:func:`flowsde.solve`)::

        state = solver.init_state(problem, x0, ts)       # once; a dict the solver owns
        state["ts"], state["ts_host"] = ts, ts.tolist()  # set by the loop, once
        for i in range(len(ts) - 1):
            state["i"], state["h"] = i, h[i]             # set by the loop, each step
            x = solver.step(problem, ts[i], ts[i + 1], x, noise, i == len(ts) - 2, state)

    ``problem`` is the checked problem (its ``drift``, ``diffusion``, ``score``
    take float64 ``t`` and cast it for the user's functions); ``t0``, ``t1`` are
    0-dim float64 tensors (views of the grid); ``noise`` is the solve's noise
    source (``noise.randn_like(x)``, ``noise.dW(t0, t1, sqrt(|t1 - t0|), x)``).
    The loop also sets ``state["h"]``, the step ``t1 - t0`` as a 0-dim tensor in
    the state's dtype (differenced in float64 and rounded once, for the whole grid
    at the start of the solve: no mixed-dtype cast per step; :meth:`step_size`),
    and, for an SDE, ``state["sqrt_h"] = sqrt(|h|)`` in the same dtype, and
    ``state["ts_host"]``, the grid as Python floats (branch on time without a
    device sync). A multistep solver keeps its history in ``state``.
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

    @staticmethod
    def step_size(t0, t1, state: dict):
        """``t1 - t0``: ``state["h"]`` (state dtype) when the loop set it, else ``t1 - t0``."""
        h = state.get("h")
        return t1 - t0 if h is None else h

    def init_state(self, problem, x0, ts) -> dict:
        """The per-solve state passed to every :meth:`step` (default: an empty dict)."""
        return {}

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

    def step(self, problem, t0, t1, x, noise, last: bool, state: dict):  # pragma: no cover - interface
        raise NotImplementedError(
            f"{type(self).__name__} must implement step(problem, t0, t1, x, noise, last, state)."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
