"""The one table of flowsde's solver methods, with each method's convergence-order set-up.

Every name of :data:`flowsde.solvers.METHODS` has an entry in :data:`TABLE`, and every entry names a
method (``tests/core/test_method_table.py`` fails otherwise, as diffrax's one list of solvers with
its meta-test does). Tests take their lists of methods from here, never write their own:

* :func:`names` -- the methods of a family (``"core"`` fixed-step ODE/SDE solvers, ``"sampler"``
  semi-linear samplers, ``"adaptive"``), filtered by what they solve (``ode=`` / ``sde=``, read from
  the solvers' declared ``solves_ode`` / ``noise_types``);
* :func:`order_cases` -- the ``(method, case)`` pairs of one order set-up, as ``pytest.param``\\ s.

An :class:`OrderCase` says on which set-up (:data:`SETUPS`: the problem class -- ODE, SDE with
scalar, diagonal or additive noise, semi-linear -- and the test that runs it) a method is measured,
which declared order the slope is held to (``kind``: ``"ode"`` reads ``solver.order``, ``"strong"``
``solver.strong_order_for(<the set-up's noise>)``, ``"weak"`` ``solver.weak_order``), on which grid
levels (``2^level`` steps), against what reference, and within which tolerance. A declared order
with no case, or a method with none, says why in its entry's ``not_fitted``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Optional

import pytest

import flowsde

FAMILIES = ("core", "sampler", "adaptive")
KINDS = ("ode", "strong", "weak")
PROBLEMS = ("ode", "scalar", "diagonal", "additive", "semilinear")  # SDE problems by their noise


@dataclass(frozen=True)
class Setup:
    """A problem the order tests solve: its class (one of :data:`PROBLEMS`), the test, and what it is."""

    problem: str
    test: str
    about: str


SETUPS = types.MappingProxyType({
    "linear-ode": Setup("ode", "tests/core/test_orders.py::test_ode_order",
                        "y' = A y (d = 6, A = 0.5 N(0, 1)), both time directions over [0, 1]; max |error| at t1 "
                        "against expm (diffrax's test_ode_order)"),
    "expm": Setup("ode", "tests/validation/test_convergence_order.py::test_ode_order_against_expm",
                  "y' = A y (d = 4) over [0, 2], both directions, through convergence_order(kind='ode'): against "
                  "expm and against a fine reference of the same method"),
    "ou": Setup("additive", "tests/core/test_orders.py::test_strong_order, test_weak_order_on_ou",
                "Ornstein-Uhlenbeck dx = -x dt + 0.8 dW, both directions; strong: 100 paths x 2 dims against the "
                "same method on the fine level, one BrownianPath; weak: x and x^2 against the exact moments"),
    "mlp-sde": Setup("diagonal", "tests/core/test_orders.py::test_strong_order",
                     "diffrax's test_sde1 problem: d = 3, drift 0.5 MLP, diagonal diffusion 0.25 tanh-MLP, over "
                     "[0, 2] both directions, 60 paths"),
    "gbm": Setup("diagonal", "tests/validation/test_convergence_order.py::test_strong_order_on_gbm",
                 "geometric Brownian motion dx = 0.5 x dt + 0.8 x dW (d = 2, diagonal), through "
                 "convergence_order(kind='strong')"),
    "gbm-scalar": Setup("scalar", "tests/validation/test_convergence_order.py::test_strong_order_on_gbm",
                        "the same GBM in d = 1 with g(t, x) = 0.8 x given per sample, shape (B,) (scalar noise)"),
    "vp-mixture": Setup("semilinear", "tests/samplers/test_orders_and_marginals.py::test_declared_order",
                        "VP probability-flow ODE of a 2-D Gaussian mixture (exact eps network; the stochastic "
                        "samplers at beta = 0), t: 0.4 -> 0.02, against RK45 at rtol = atol = 1e-11"),
})


@dataclass(frozen=True)
class OrderCase:
    """One convergence-order measurement of a method.

    Attributes:
        setup: a key of :data:`SETUPS`.
        kind: ``"ode"``, ``"strong"`` or ``"weak"`` (which declared order is fitted: :meth:`declared`).
        levels: the grid levels, ``2^level`` steps each.
        ref_level: the level of the same method's fine reference (``None``: an exact answer).
        tol: ``(low, high)``: the fitted order minus the declared one must lie strictly between.
        samples: the number of paths where it depends on the method (``None``: the set-up's).
        options: solver options, ``get_solver(method, **options)``.
    """

    setup: str
    kind: str
    levels: tuple
    ref_level: Optional[int] = None
    tol: tuple = (-0.3, 0.3)
    samples: Optional[int] = None
    options: dict = field(default_factory=dict)

    @property
    def problem(self) -> str:
        return SETUPS[self.setup].problem

    @property
    def declared_name(self) -> str:
        """The solver attribute the slope is held to, as code."""
        if self.kind == "ode":
            return "order"
        if self.kind == "weak":
            return "weak_order"
        return f"strong_order_for({self.problem!r})"

    def solver(self, method: str):
        return flowsde.solvers.get_solver(method, **self.options)

    def declared(self, method: str) -> float:
        """The order ``method`` (with :attr:`options`) declares for this case."""
        s = self.solver(method)
        if self.kind == "ode":
            return s.order
        if self.kind == "weak":
            return s.weak_order
        return s.strong_order_for(self.problem)

    def accepts(self, measured: float, method: str) -> bool:
        lo, hi = self.tol
        return lo < measured - self.declared(method) < hi


@dataclass(frozen=True)
class Method:
    """A method's entry: its family, its order cases, and why any declared order has none.

    Attributes:
        family: one of :data:`FAMILIES`.
        orders: its :class:`OrderCase`\\ s.
        not_fitted: why a declared order (``order``, ``strong_order``, ``weak_order``) has no case, or
            why the method has none at all; empty when every declared order is fitted.
        alias_of: the entry it is another name of (aliases have no cases of their own).
    """

    family: str
    orders: tuple = ()
    not_fitted: str = ""
    alias_of: Optional[str] = None


def _ode(setup, levels, tol, **kw):
    return OrderCase(setup, "ode", tuple(levels), tol=tol, **kw)


def _strong(setup, levels, ref_level, **kw):
    return OrderCase(setup, "strong", tuple(levels), ref_level, **kw)


def _sampler(**options):
    return OrderCase("vp-mixture", "ode", (4, 5, 6, 7, 8), tol=(-0.25, 0.75), options=options)


_ODE_TOL = {1: (-0.15, 0.15), 2: (-0.25, 0.25)}  # 0.1 * order + 0.05 either way
_SAMPLER_WEAK = ("weak_order (beta = 1) not fitted; the stochastic samplers' marginals are tested instead: "
                 "tests/samplers/test_orders_and_marginals.py::test_stochastic_samplers_land_on_the_marginals")
_ADAPTIVE = "adaptive: the steps follow rtol/atol, there are no fixed step sizes to fit an order on; "
_EMBEDDED = ("an embedded Runge-Kutta pair: its order is fitted on fixed steps through the adaptive loop in "
             "tests/core/test_runge_kutta.py::test_fixed_step_order_of_each_pair (every flowsde pair of this table), "
             "its error against the tolerance in tests/core/test_rk45.py")

#: every method of flowsde.solvers.METHODS, in its order
TABLE = types.MappingProxyType({
    # ---- core: fixed-step ODE / SDE solvers
    "euler": Method("core", (_ode("linear-ode", range(3, 9), _ODE_TOL[1]), _ode("expm", range(3, 8), (-0.3, 0.3)))),
    "heun": Method("core", (_ode("linear-ode", range(3, 9), _ODE_TOL[2]), _ode("expm", range(3, 8), (-0.3, 0.3)))),
    # diffusers' FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler (heun with final_euler=True)
    "flow_euler": Method("core", alias_of="euler"),
    "flow_heun": Method("core", alias_of="heun"),
    "euler_maruyama": Method("core", (
        _ode("linear-ode", range(3, 9), _ODE_TOL[1]),
        _strong("ou", range(3, 9), 10),
        OrderCase("ou", "weak", (1, 2, 3, 4, 5)),  # 2 .. 32 steps; exact moments
        _strong("mlp-sde", range(3, 9), 10),
        _strong("gbm", range(3, 8), 10, samples=64),
        _strong("gbm-scalar", range(3, 8), 10, samples=64),
    )),
    "em": Method("core", alias_of="euler_maruyama"),
    "pc": Method("core", not_fitted="declares no order: the Langevin corrector targets the marginal, not the path; "
                                    "its stationary law: tests/core/test_orders.py::test_langevin_*"),
    "milstein": Method("core", (
        _strong("ou", range(2, 7), 10),
        _strong("mlp-sde", range(2, 7), 10),
        _strong("gbm", range(3, 8), 10, samples=64),
        _strong("gbm-scalar", range(3, 8), 10, samples=64),
    ), not_fitted="weak_order 1 not fitted (Euler-Maruyama's weak order 1 is, on OU)"),
    "srk": Method("core", (
        _strong("ou", range(2, 7), 9),
        _strong("gbm", range(2, 7), 9, samples=32),
        _strong("gbm-scalar", range(2, 7), 9, samples=32),
    ), not_fitted="weak_order 1.5 not fitted"),
    "torchsde_euler": Method("core", (
        _strong("ou", range(3, 9), 10),
        OrderCase("ou", "weak", (1, 2, 3, 4, 5)),
        _strong("gbm", range(3, 8), 10, samples=64),
        _strong("gbm-scalar", range(3, 8), 10, samples=64),
    )),
    # ---- adaptive ODE solvers
    "rk45": Method("adaptive", not_fitted=_EMBEDDED),
    "dopri5": Method("adaptive", alias_of="rk45"),
    "tsit5": Method("adaptive", not_fitted=_EMBEDDED),
    "bosh3": Method("adaptive", not_fitted=_EMBEDDED),
    # k-diffusion's DPM-Solver-fast / -adaptive: semi-linear samplers that choose their own steps between the
    # grid's end points
    "dpm_fast": Method("adaptive", not_fitted="its steps are set by its budget nfe, not by the grid: orders 3 "
                                              "(nfe = 3m + 2) and 2 (nfe = 3m + 1) fitted on the vp-mixture problem in "
                                              "tests/samplers/test_kdiffusion_more.py::test_dpm_fast_order"),
    "dpm_adaptive": Method("adaptive", not_fitted=_ADAPTIVE + "its DPM-Solver-3 step's order is fitted through "
                                                              "dpm_fast, its error against rtol in tests/samplers/"
                                                              "test_kdiffusion_more.py::test_dpm_adaptive_meets_its_"
                                                              "tolerance_on_the_exact_mixture"),
    # Jolicoeur-Martineau et al.'s adaptive-step SDE sampler: per-sample steps between the grid's end points
    "adaptive_sde": Method("adaptive", not_fitted=_ADAPTIVE + "its marginals and its error against the tolerance are "
                                                              "tested in tests/samplers/test_adaptive_sde.py"),
    # ---- samplers of semi-linear problems (stochastic ones: the order of their beta = 0 limit)
    "ddim": Method("sampler", (_sampler(),), not_fitted=_SAMPLER_WEAK),
    "euler_ancestral": Method("sampler", (_sampler(),), not_fitted=_SAMPLER_WEAK),
    "dpm_2": Method("sampler", (_sampler(),)),
    "dpmpp_2m": Method("sampler", (_sampler(),)),
    "dpmpp_2s_ancestral": Method("sampler", (_sampler(),), not_fitted=_SAMPLER_WEAK),
    "dpmpp_2m_sde": Method("sampler", (_sampler(), _sampler(solver_type="heun")), not_fitted=_SAMPLER_WEAK),
    "dpmpp_3m_sde": Method("sampler", (_sampler(),), not_fitted=_SAMPLER_WEAK),
    "lms": Method("sampler", (_sampler(), _sampler(order=1))),
    "unipc": Method("sampler", (_sampler(), _sampler(lower_order_final=False),
                                _sampler(order=3, lower_order_final=False),
                                _sampler(order=1, lower_order_final=False))),
    "edm": Method("sampler", (_sampler(),)),
    "dpm_2_ancestral": Method("sampler", (_sampler(),), not_fitted=_SAMPLER_WEAK),
    "dpmpp_sde": Method("sampler", (_sampler(), _sampler(r1=0.3)), not_fitted=_SAMPLER_WEAK),
    # diffusers' DEIS, DPM-Solver++(3M), single-step DPM-Solver++ and SA-Solver (order 3 of dpmpp_single on whole
    # 3-stage groups: tests/samplers/test_diffusers_more.py::test_dpmpp_single_order_3_on_whole_groups)
    "deis": Method("sampler", (_sampler(), _sampler(order=3), _sampler(order=1))),
    "dpmpp_3m": Method("sampler", (_sampler(), _sampler(solver_type="heun"))),
    "dpmpp_single": Method("sampler", (_sampler(), _sampler(order=3), _sampler(order=1))),
    "sa_solver": Method("sampler", (_sampler(), _sampler(predictor_order=1, corrector_order=2),
                                    _sampler(predictor_order=3, corrector_order=3)), not_fitted=_SAMPLER_WEAK),
    # ---- torchdiffeq's adaptive solvers, run as torchdiffeq runs them
    **{f"torchdiffeq:{m}": Method("adaptive", not_fitted=_ADAPTIVE + "torchdiffeq's own solver (its order is "
                                                                    "torchdiffeq's to test)")
       for m in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")},
})


def names(family=None, *, ode: Optional[bool] = None, sde: Optional[bool] = None, aliases: bool = False) -> list:
    """The methods of :data:`TABLE`, in its order.

    Arguments:
        family: a family of :data:`FAMILIES` or a tuple of them (``None``: all).
        ode: ``True``: only methods that solve ODEs (``solver.solves_ode``); ``False``: only those that do not.
        sde: ``True``: only methods that solve SDEs (``solver.noise_types``); ``False``: only those that do not.
        aliases: include other names of the same method (``em``, ``dopri5``).
    """
    families = FAMILIES if family is None else (family,) if isinstance(family, str) else tuple(family)
    if not set(families) <= set(FAMILIES):
        raise ValueError(f"family={family!r}: families are {FAMILIES}")
    out = []
    for name, entry in TABLE.items():
        if entry.family not in families or (entry.alias_of and not aliases):
            continue
        s = flowsde.solvers.get_solver(name)
        if ode is not None and bool(s.solves_ode) != ode:
            continue
        if sde is not None and bool(s.noise_types) != sde:
            continue
        out.append(name)
    return out


def _case_id(method, case):
    opts = ",".join(f"{k}={v}" for k, v in case.options.items())
    return f"{method}[{opts}]@{case.setup}" if opts else f"{method}@{case.setup}"


def order_cases(setup: str, kind: Optional[str] = None) -> list:
    """The ``(method, case)`` pairs of one set-up of :data:`SETUPS` (and ``kind``), as ``pytest.param``\\ s
    with readable ids, for ``@pytest.mark.parametrize("method, case", order_cases(...))``."""
    if setup not in SETUPS:
        raise ValueError(f"setup={setup!r}: set-ups are {sorted(SETUPS)}")
    return [pytest.param(name, case, id=_case_id(name, case))
            for name, entry in TABLE.items() for case in entry.orders
            if case.setup == setup and (kind is None or case.kind == kind)]
