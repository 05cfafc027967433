"""The solver-comparison harness: every sampler on one model, NFE for NFE, against references.

Works on any :class:`flowsde.adapters.Diffusion` (a trained network included):

* all samplers start from the same prior draws ``x_T`` (fixed seed);
* **deterministic** samplers (``euler``, ``heun``, ``edm_heun``, ``rk45``, ``ddim``,
  ``dpmpp_2m``, ``unipc``, ... every PF-ODE method) are compared with a tight float64 RK45 solution of the
  probability-flow ODE from the same ``x_T``: the **error** is the RMS difference
  per coordinate of the final samples;
* **stochastic** samplers on the reverse SDE (``euler_maruyama``, ``pc``) are
  driven by one :class:`flowsde.BrownianPath` and compared with a fine-step
  Euler–Maruyama solution on *the same path*: the **error** is the strong error
  (RMS per coordinate). ``edm_churn`` and the ancestral / DPM-Solver++ SDE samplers draw
  their noise as fresh normals, not as the path's increments: they have no strong error,
  only a distance;
* every row gets a **distance**: sliced Wasserstein-2 between its samples and an
  independent reference set (the tight PF-ODE solution from a second prior draw;
  with an exact ``data`` distribution, exact samples). Two independent
  reference sets are ``noise floor`` apart: a row at the floor is as good as
  ``n`` samples can tell.

With an exact data distribution (a :class:`GaussianMixture` whose oracle the model
is), ``x_T`` comes from the exact marginal at ``T`` (so every error is the solver's
own), each row also gets the KS distance to the exact marginal at ``t_end``, and
likelihood rows compare ``flowsde.log_likelihood`` with the exact ``log p``.

The result, its table, CSV, JSON and plots are in ``workloads/_report.py``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

import flowsde
from flowsde import InputError
from flowsde._internal import as_seed

from flowsde.validation import GaussianMixture, check_marginals, sliced_w2

from ._report import CompareResult, CompareRow

__all__ = ["compare_solvers", "CompareRow", "CompareResult", "default_mixture", "default_methods", "known_methods",
           "steps_for_budget", "default_grid", "DETERMINISTIC", "STOCHASTIC"]

#: PF-ODE samplers: core method names; ``edm_heun`` is ``method="edm"`` without churn.
DETERMINISTIC = ("euler", "heun", "edm_heun", "rk45")
#: reverse-SDE samplers; ``edm_churn`` is ``method="edm"`` with ``s_churn > 0`` (its own noise, on the PF-ODE).
STOCHASTIC = ("euler_maruyama", "pc", "edm_churn")
ALL_METHODS = DETERMINISTIC + STOCHASTIC
#: samplers added to the default set when ``flowsde.solvers.METHODS`` has them.
OPTIONAL_ODE = ("ddim", "dpmpp_2m", "unipc", "lms", "dpm_2")
OPTIONAL_SDE = ("dpmpp_2m_sde", "dpmpp_3m_sde", "euler_ancestral", "dpmpp_2s_ancestral")
#: adaptive samplers of the reverse SDE (their own steps, a tolerance sweep; run on the reverse SDE with its
#: own noise, so they have no strong error)
ADAPTIVE_SDE = ("adaptive_sde",)
#: samplers that pick their own steps from an NFE budget over the span (``solve(..., nfe=budget)``)
BUDGETED = ("dpm_fast",)
#: samplers whose noise is the Brownian path's increments (``noise.dW``): they have a strong error.
PATH_DRIVEN = ("euler_maruyama", "pc")
_EDM = ("edm_heun", "edm_churn")
_ALIASES = {"em": "euler_maruyama", "dopri5": "rk45", "edm": "edm_heun"}


def known_methods() -> Tuple[str, ...]:
    """Every name :func:`compare_solvers` accepts: the harness's own (``edm_heun``, ``edm_churn``) and
    ``flowsde.solvers.METHODS``."""
    return tuple(sorted(set(ALL_METHODS) | set(flowsde.solvers.METHODS)))


def default_methods() -> Tuple[str, ...]:
    """The default solver set: the core ones plus every optional sampler present in ``flowsde.solvers.METHODS``."""
    ode = tuple(m for m in OPTIONAL_ODE if m in flowsde.solvers.METHODS)
    sde = tuple(m for m in OPTIONAL_SDE if m in flowsde.solvers.METHODS)
    return ("euler", "heun", "edm_heun") + ode + ("rk45", "euler_maruyama", "pc", "edm_churn") + sde


def default_mixture(dim: int = 2, dtype=torch.float64) -> GaussianMixture:
    """The built-in exact demo distribution: 3 anisotropic Gaussians in ``dim`` dimensions."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise InputError(f"default_mixture(dim={dim!r}): dim must be a positive int.")
    g = torch.Generator().manual_seed(1234)
    K = 3
    means = torch.randn(K, dim, generator=g, dtype=dtype) * 1.5
    A = torch.randn(K, dim, dim, generator=g, dtype=dtype) * 0.3
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=dtype)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)
    return GaussianMixture(weights, means, covs, dtype=dtype)


def _is_ode_method(method: str) -> bool:
    if method in DETERMINISTIC:
        return True
    if method in STOCHASTIC or method in ADAPTIVE_SDE:
        return False
    return bool(getattr(flowsde.solvers.get_solver(method), "solves_ode", False))  # e.g. ddim, dpmpp_2m, unipc


def _adaptive(method: str) -> bool:
    return method not in _EDM and bool(getattr(flowsde.solvers.get_solver(method), "adaptive", False))


def _core_name(method: str) -> str:
    return "edm" if method in _EDM else method


def _nfe_of(method: str, steps: int) -> int:
    """NFE of ``steps`` steps of a fixed-step method (``Solver.nfe``).

    The harness's grids stop at ``t_end`` > 0, never at zero noise (``to_zero_noise=False``).
    """
    return int(flowsde.solvers.get_solver(_core_name(method)).nfe(steps))


def steps_for_budget(method: str, budget: int) -> Tuple[int, int]:
    """``(steps, nfe)``: the most steps of ``method`` whose NFE fits ``budget``.

    The NFE used is returned (and shown in the table) when it differs from the budget;
    a budget below one step's NFE raises :class:`InputError`.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InputError(f"NFE budget {budget!r}: must be a positive integer.")
    one = _nfe_of(method, 1)
    if budget < one:
        raise InputError(f"NFE budget {budget} is below one step of {method!r} ({one} evaluations); "
                         f"use budgets >= {one} or drop {method!r} from the solver set.")
    lo, hi = 1, max(1, budget)
    while lo < hi:  # largest n with nfe(n) <= budget (nfe increasing in n)
        mid = (lo + hi + 1) // 2
        if _nfe_of(method, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, _nfe_of(method, lo)


def _rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS difference per coordinate, in float64."""
    return float(((x.double() - ref.double()) ** 2).mean().sqrt())


#: each sampler's default grid per schedule family, where it is not :data:`DEFAULT_GRID` (the one place that
#: names them): ``"vp"`` (variance-preserving: VP, Cosine, Discrete) and ``"flow"`` (``alpha + sigma = 1``:
#: Linear, flow_matching's CondOT); other families (EDM, VE, SubVP: not measured) keep :data:`DEFAULT_GRID`.
#: Chosen by ``benchmarks/bench_default_grids.py`` (docs/samplers.md, "Default grids, by measurement"): least
#: geometric-mean error over (models x NFE 10, 20, 40) within 1.2x of the best named grid, no cell worse than
#: 2x; where no grid meets that, of those within 1.2x the one with the least worst cell. Keys are compare's
#: method names.
SAMPLER_GRIDS: Dict[str, Dict[str, str]] = {
    "euler": {"vp": "uniform", "flow": "uniform"},
    "heun": {"vp": "quadratic", "flow": "uniform"},
    "edm_heun": {"vp": "edm", "flow": "edm"},
    "ddim": {"vp": "uniform", "flow": "uniform"},
    "dpmpp_2m": {"vp": "log_snr", "flow": "quadratic"},
    "unipc": {"vp": "quadratic", "flow": "quadratic"},
    "lms": {"vp": "quadratic", "flow": "uniform"},
    "dpm_2": {"vp": "quadratic", "flow": "uniform"},
    "euler_maruyama": {"vp": "edm", "flow": "uniform"},
}
#: the grid of a sampler that :data:`SAMPLER_GRIDS` does not name (EDM's rho = 7 in sigma/alpha).
DEFAULT_GRID = "edm"


def default_grid(method: str, model=None) -> str:
    """The grid ``compare_solvers(grid=None)`` runs ``method`` on, for ``model`` (a ``Diffusion`` or a
    ``Schedule``; ``None``: a variance-preserving one): a name of ``flowsde.adapters.GRID_NAMES``, looked up in
    :data:`SAMPLER_GRIDS` by the schedule's family (``"vp"``: ``variance_preserving``; ``"flow"``:
    ``alpha + sigma = 1``; any other: :data:`DEFAULT_GRID`)."""
    sched = getattr(model, "schedule", model)
    family = "vp"
    if sched is not None and not getattr(sched, "variance_preserving", False):
        t = torch.linspace(float(sched.t_min), float(sched.t_max), 5, dtype=torch.float64)
        family = "flow" if bool(torch.allclose(sched.alpha(t) + sched.sigma(t), torch.ones_like(t))) else None
    return SAMPLER_GRIDS.get(_ALIASES.get(method, method), {}).get(family, DEFAULT_GRID)


def _grid(sched, T: float, t_end: float, steps: int, kind, device) -> torch.Tensor:
    """Decreasing float64 grid ``T -> t_end`` of ``steps`` steps: the named grid ``kind``
    (:func:`_named_grid`); a ``kind`` that is not a name (several grids, a tuned one, ``None``) gives
    :data:`DEFAULT_GRID` (the fine grid of the SDE reference)."""
    name = kind if isinstance(kind, str) else DEFAULT_GRID
    return _named_grid(sched, T, t_end, steps, name, device)[0]


def _named_grid(sched, T: float, t_end: float, steps: int, name: str, device) -> Tuple[torch.Tensor, str]:
    """``(grid, label)``: the named grid of ``sched`` (``flowsde.adapters.named_grid``); a map-based grid
    (``edm``, ``log_snr``) where the log-SNR is infinite at an end (alpha = 0 at a flow's t = 1) falls back to
    uniform in t, labelled so."""
    from flowsde.adapters import named_grid

    try:
        g = named_grid(sched, name, steps, start=T, stop=t_end)
    except InputError:
        f64 = torch.float64
        lam = sched.log_snr(torch.tensor([T, t_end], dtype=f64))
        if name in ("uniform", "quadratic") or bool(torch.isfinite(lam).all()):
            raise
        return flowsde.grids.uniform(T, t_end, steps, dtype=f64, device=device), f"uniform ({name}: no log-SNR at T)"
    return g.to(device), name


class _Fixed(NamedTuple):
    """The setting of a fixed-step run of the plan: its steps, NFE and grid (a name or a tuned grid)."""

    steps: int
    nfe: int
    grid: object


def _grid_specs(grid) -> Tuple[object, ...]:
    """``compare_solvers(grid=...)`` as a tuple of grid names, :class:`TunedGrid` s and ``None`` (each
    sampler's default); a path to a grid file is read."""
    from flowsde.adapters import GRID_NAMES

    from ._tune import TunedGrid

    items = list(grid) if isinstance(grid, (list, tuple)) else [grid]
    if not items:
        raise InputError("compare_solvers(grid=()): give at least one grid (a name, a grid file or None).")
    out = []
    for g in items:
        if g is None or isinstance(g, TunedGrid) or g in GRID_NAMES:
            out.append(g)
        elif isinstance(g, (str, Path)) and (str(g).endswith(".json") or Path(g).exists()):
            out.append(TunedGrid.read(g))
        else:
            raise InputError(f"compare_solvers(grid={g!r}): choose a grid name ({', '.join(GRID_NAMES)}), a grid "
                             "file (JSON, from `flowsde tune`), a TunedGrid or None (each sampler's default).")
    unique = []  # a name given twice runs once
    for g in out:
        if isinstance(g, TunedGrid) or not any(g == h for h in unique if not isinstance(h, TunedGrid)):
            unique.append(g)
    return tuple(unique)


def _row_grid(s, method: str, setting: "_Fixed") -> Tuple[torch.Tensor, str]:
    """``(grid, label)`` of a fixed-step run."""
    from ._tune import TunedGrid

    if isinstance(setting.grid, TunedGrid):
        return setting.grid.grid.to(s.device), setting.grid.label
    name = default_grid(method, s.sched) if setting.grid is None else setting.grid
    return _named_grid(s.sched, s.T, s.t_end, setting.steps, name, s.device)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _check_seq(name, values, kind=int, positive=True):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InputError(f"compare_solvers({name}={values!r}): expected a sequence.")
    for v in values:
        ok = isinstance(v, kind) and not isinstance(v, bool) and (not positive or v > 0)
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not ok:
            raise InputError(f"compare_solvers({name}=...): {v!r} is not a positive {kind.__name__}.")


# -- the steps of compare_solvers ---------------------------------------------------------------

@dataclass(frozen=True)
class _Options:
    """:func:`compare_solvers`'s keyword options as given (checked by :func:`_setup`)."""

    event_shape: Optional[Sequence[int]]
    samples: int
    budgets: Sequence[int]
    methods: Optional[Sequence[str]]
    beta: float
    t_end: Optional[float]
    rk45_tols: Sequence[float]
    reference_tol: float
    sde_reference_steps: Optional[int]
    likelihood_tols: Sequence[float]
    likelihood_samples: int
    grid: object  #: a grid name, a grid file, a TunedGrid, None (each sampler's default) or a sequence of them
    s_churn: float
    generator: object
    dtype: torch.dtype
    device: object
    reference_model: object
    n_projections: int
    keep_samples: int


@dataclass(frozen=True)
class _Setup:
    """A checked comparison: its plan and what every step shares (built by :func:`_setup`)."""

    o: _Options
    diffusion: object
    ref_model: object  #: the network of the float64 references (``reference_model`` or ``diffusion``)
    data: Optional[GaussianMixture]
    seed: int
    #: ``(method, budget, (steps, nfe))`` of a fixed-step sampler, ``(method, None, tol)`` of an adaptive one
    plan: Tuple[tuple, ...]
    T: float
    t_end: float
    event: Tuple[int, ...]
    device: torch.device
    span: torch.Tensor  #: ``[T, t_end]``, float64 on ``device``
    target: Optional[GaussianMixture]  #: the exact marginal at ``t_end`` (with ``data``)

    @property
    def n(self) -> int:
        return self.o.samples

    @property
    def sched(self):
        return self.diffusion.schedule

    @property
    def path_driven(self) -> bool:
        """Whether a sampler of the plan is driven by the Brownian path (then an SDE reference is solved)."""
        return any(m in PATH_DRIVEN for m, _, _ in self.plan)


@dataclass
class _References:
    """What the rows are scored against (built by :func:`_references`)."""

    x_T: torch.Tensor  #: the prior draws every sampler starts from (float64)
    pf: object  #: the reference network's PF-ODE
    x: torch.Tensor  #: tight float64 RK45 solution of ``pf`` from ``x_T``
    nfe: float
    seconds: float
    indep: torch.Tensor  #: an independent reference set (the distance column)
    floor: float  #: the distance between two independent reference sets
    path: Optional[flowsde.BrownianPath] = None  #: the path of the path-driven samplers
    sde_x: Optional[torch.Tensor] = None  #: fine Euler-Maruyama solution on ``path`` from ``x_T``


def _check_options(data, o: _Options) -> Tuple[str, ...]:
    """The solver names (aliases resolved, duplicates dropped), after checking every option."""
    methods = tuple(dict.fromkeys(default_methods() if o.methods is None else (_ALIASES.get(m, m) for m in o.methods)))
    for m in methods:
        if m not in known_methods():
            raise InputError(f"compare_solvers: unknown solver {m!r}; choose from {list(known_methods())}.")
    n = o.samples
    if isinstance(n, bool) or not isinstance(n, int) or n < (30 if data is not None else 2):
        raise InputError(f"compare_solvers(samples={n!r}): need at least {30 if data is not None else 2} samples"
                         f"{' for the marginal tests' if data is not None else ''}.")
    _check_seq("budgets", o.budgets)
    _check_seq("rk45_tols", o.rk45_tols, float)
    _check_seq("likelihood_tols", o.likelihood_tols, float)
    beta = o.beta
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta) and beta >= 0):
        raise InputError(f"compare_solvers(beta={beta!r}): must be a finite number >= 0.")
    _grid_specs(o.grid)
    if o.likelihood_tols and data is None:
        raise InputError("compare_solvers(likelihood_tols=...): likelihood rows need an exact data distribution.")
    if o.dtype not in (torch.float32, torch.float64):
        raise InputError(f"compare_solvers(dtype={o.dtype!r}): the samplers run in torch.float32 or torch.float64.")
    return methods


def _plan(methods: Sequence[str], budgets: Sequence[int], rk45_tols: Sequence[float], grid,
          span: Tuple[float, float]) -> Tuple[tuple, ...]:
    """Every run, budgets checked (:func:`steps_for_budget`) before any work: a fixed-step sampler runs at
    each budget on each grid of ``grid`` (:func:`_grid_specs`); a tuned grid only on the rows it was tuned
    for, and it must fit one (with only tuned grids, every row must have one)."""
    from ._tune import TunedGrid

    specs = _grid_specs(grid)
    named = [g for g in specs if not isinstance(g, TunedGrid)]
    tuned = [g for g in specs if isinstance(g, TunedGrid)]
    plan, used = [], set()
    for m in methods:
        if m in BUDGETED:  # its own steps for each budget
            plan += [(m, b, b) for b in budgets]
            continue
        if _adaptive(m):  # rk45, torchdiffeq:*: a tolerance sweep, NFE is what it took
            plan += [(m, None, tol) for tol in rk45_tols]
            continue
        for b in budgets:
            steps, nfe = steps_for_budget(m, b)
            plan += [(m, b, _Fixed(steps, nfe, g)) for g in named]
            fits = [t for t in tuned if t.solver == m and t.steps == steps]
            if not named and not fits and tuned:
                tuned[0].check_fits(m, steps, *span, where="compare_solvers(grid=...)")  # says why it does not fit
            for t in fits:
                t.check_fits(m, steps, *span, where="compare_solvers(grid=...)")
                plan.append((m, b, _Fixed(steps, nfe, t)))
                used.add(id(t))
    for t in tuned:
        if id(t) not in used:
            raise InputError(f"compare_solvers(grid=...): {t.label} fits no run of this comparison (solvers "
                             f"{', '.join(methods)}; NFE {', '.join(map(str, budgets))}); add its sampler and NFE "
                             f"(--solvers {t.solver} --nfe {t.nfe}).")
    return tuple(plan)


def _setup(diffusion, data, o: _Options) -> _Setup:
    """Check the options and the plan (:class:`InputError` before any work); fix the span and the event shape."""
    seed = as_seed(o.generator, "compare_solvers")
    methods = _check_options(data, o)
    sched = diffusion.schedule
    T = float(sched.t_max)
    t_end = float(sched.t_min) if o.t_end is None else float(o.t_end)
    plan = _plan(methods, o.budgets, o.rk45_tols, o.grid, (T, t_end))
    event = _event_shape(diffusion, data, o.event_shape)
    dev = torch.device(o.device)
    return _Setup(o, diffusion, diffusion if o.reference_model is None else o.reference_model, data, seed, plan,
                  T, t_end, event, dev, torch.tensor([T, t_end], dtype=torch.float64, device=dev),
                  None if data is None else data.marginal(sched, t_end))


def _prior_draw(s: _Setup, seed: int) -> torch.Tensor:
    """``n`` float64 draws at ``T``: the exact marginal with ``data``, else the model's prior."""
    g, n = torch.Generator().manual_seed(seed), s.n
    if s.data is not None:
        return s.data.marginal(s.sched, s.T).sample(n, generator=g).reshape((n,) + s.event).to(s.device, torch.float64)
    return s.diffusion.prior().sample((n,) + s.event, generator=g, dtype=torch.float64).to(s.device)


def _exact_columns(s: _Setup, x: torch.Tensor) -> tuple:
    """``(ks, mean_error, cov_error)`` of ``x`` against the exact marginal at ``t_end``; Nones without data."""
    if s.target is None:
        return None, None, None
    r = check_marginals(x.reshape(s.n, -1).to("cpu", torch.float64), s.target, n_projections=8, generator=s.seed)
    return r.max_ks, float(abs(r.mean_error).max()), float(r.cov_error)


def _references(s: _Setup, bar) -> Tuple[_References, dict]:
    """The prior draws, the PF-ODE reference, the independent set and its noise floor (and the SDE
    reference where a sampler is path-driven); and the run's ``info``."""
    x_T, x_T_indep = _prior_draw(s, s.seed), _prior_draw(s, s.seed + 1)
    pf = s.ref_model.pf_ode()
    rk = flowsde.solvers.RK45(rtol=s.o.reference_tol, atol=s.o.reference_tol)
    bar.set_description("reference: PF-ODE, RK45 float64")
    t0 = time.perf_counter()
    # in the schedule's adaptive variable (VP time for a Discrete schedule, whose drift in t jumps at every knot)
    ref_ode, ref_span, ref_time = _adaptive_problem(s.ref_model, pf, s.span)
    ref = flowsde.solve(ref_ode, x_T, ref_span, method=rk)
    refs = _References(x_T, pf, ref.x, ref.nfe, time.perf_counter() - t0, None, None)
    bar.update(1)
    n, w2 = s.n, dict(n_projections=s.o.n_projections, generator=s.seed)
    if s.data is not None:
        refs.indep = s.target.sample(n, generator=torch.Generator().manual_seed(s.seed + 2))
        refs.indep = refs.indep.reshape((n,) + s.event).to(s.device, torch.float64)
        indep2 = s.target.sample(n, generator=torch.Generator().manual_seed(s.seed + 3))
        refs.floor, floor_what = sliced_w2(refs.indep, indep2.reshape((n,) + s.event), **w2), "exact samples"
    else:
        bar.set_description("reference: independent PF-ODE set")
        refs.indep = flowsde.solve(ref_ode, x_T_indep, ref_span, method=rk).x
        refs.floor, floor_what = sliced_w2(refs.x, refs.indep, **w2), "PF-ODE reference sets"
    bar.update(1)
    info = {"model": " ".join(repr(s.diffusion).split()), "T": s.T, "t_end": s.t_end, "n": n, "seed": s.seed,
            "beta": float(s.o.beta), "grid": s.o.grid, "dtype": str(s.o.dtype).replace("torch.", ""),
            "device": str(s.device),
            "reference": f"PF-ODE: RK45 rtol=atol={s.o.reference_tol:g} in float64"
                         f"{'' if ref_time == 't' else f' in time={ref_time!r}'} ({refs.nfe:.0f} NFE, "
                         f"{refs.seconds:.1f} s) from the same x_T",
            "distance_reference": f"independent {floor_what} (n={n})"}
    if s.data is not None:
        info["ks_floor"] = _exact_columns(s, refs.indep)[0]
    if s.path_driven:
        refs.path, refs.sde_x, info["sde_reference"] = _sde_reference(s, x_T, bar)
    return refs, info


def _sde_reference(s: _Setup, x_T: torch.Tensor, bar) -> Tuple[flowsde.BrownianPath, torch.Tensor, str]:
    """The Brownian path shared by the path-driven samplers, a fine float64 Euler-Maruyama solution of the
    reverse SDE on it from ``x_T``, and its description."""
    max_steps = max(setting[0] for m, _, setting in s.plan if m in PATH_DRIVEN)
    k_ref = s.o.sde_reference_steps or max(1000, 8 * max_steps)
    bar.set_description(f"reference: reverse SDE, {k_ref} EM steps on the shared path")
    fine = _grid(s.sched, s.T, s.t_end, k_ref, s.o.grid, s.device)
    # the tree must resolve the finest spacing (torchsde's BrownianInterval recurses without end on
    # queries closer than its tolerance)
    tol = min(1e-6 * (s.T - s.t_end), 0.01 * float((fine[:-1] - fine[1:]).abs().min()))
    path = flowsde.BrownianPath(s.T, s.t_end, tuple(x_T.shape), dtype=torch.float64, device=s.device,
                                generator=s.seed + 11, tol=tol)
    t0 = time.perf_counter()
    x = flowsde.solve(s.ref_model.reverse_sde(s.o.beta), x_T, fine, method="euler_maruyama", generator=path).x
    what = (f"reverse SDE (beta={s.o.beta:g}): {k_ref} Euler-Maruyama steps in float64 on the "
            f"same Brownian path ({time.perf_counter() - t0:.1f} s)")
    bar.update(1)
    return path, x, what


def _rows(s: _Setup, refs: _References, info: dict, bar) -> Tuple[List[CompareRow], Dict[str, torch.Tensor]]:
    """The noise-floor row, then one row per run of the plan; and the samples kept (each method's run with
    the fewest NFE: its smallest budget, or its loosest tolerance, where the samplers differ most)."""
    keep = s.o.keep_samples
    kept: Dict[str, torch.Tensor] = {"reference": refs.x[:keep].cpu()}
    rows = [CompareRow("reference", "reference", "noise floor", None, float(refs.nfe), None, refs.floor,
                       refs.seconds, *_exact_columns(s, refs.x))]
    x_run = refs.x_T.to(s.o.dtype)
    pf, rsde = s.diffusion.pf_ode(), s.diffusion.reverse_sde(s.o.beta)
    for method, budget, setting in s.plan:
        bar.set_description(f"{method}" + (f" NFE {budget}" if budget else f" tol {setting:.0e}"))
        ode = _is_ode_method(method)
        _sync(s.device)
        t0 = time.perf_counter()
        if method in BUDGETED:
            sol = flowsde.solve(pf, x_run, s.span, method=method, nfe=budget)
            x, nfe, label, grid = sol.x, float(sol.nfe), f"nfe {budget}", "its own"
        elif method in ADAPTIVE_SDE:  # per-sample steps on the reverse SDE: NFE the mean over the samples
            sol = flowsde.solve(rsde, x_run, s.span, method=method, rtol=setting, generator=s.seed)
            x, nfe, label, grid = (sol.x, float(sol.stats["nfe_per_sample"].double().mean()), f"tol {setting:.0e}",
                                   None)
        elif budget is None:
            x, nfe, label, grid = *_adaptive_run(*_adaptive_problem(s.diffusion, pf, s.span)[:2], method, setting,
                                                 x_run), None
        else:
            x, nfe, label, grid = _fixed_step_run(s, pf if ode else rsde, method, setting, x_run, refs.path)
        _sync(s.device)
        rows.append(_row(s, refs, method, ode, budget, label, x, nfe, time.perf_counter() - t0,
                         grid if budget is not None else None))
        at = info.setdefault("samples_nfe", {})
        if method not in at or nfe < at[method]:
            kept[method] = x[:keep].detach().cpu()
            at[method] = nfe
        bar.update(1)
    return rows, kept


def _adaptive_problem(model, pf, span: torch.Tensor):
    """``(ode, span, time)``: the PF-ODE ``pf`` of ``model`` over ``span`` (``[T, t_end]``) in the variable an
    adaptive solve uses (``flowsde.adapters``' ``adaptive_pf_ode``: VP time for a ``Discrete`` schedule, whose
    drift in t jumps at every knot; t otherwise, also for a model without a schedule)."""
    from flowsde.adapters import adaptive_pf_ode

    if getattr(model, "schedule", None) is None:
        return pf, span, "t"
    ode, var_span, time = adaptive_pf_ode(model, span.tolist(), ode=pf)
    return ode, (span if time == "t" else torch.tensor(var_span, dtype=torch.float64, device=span.device)), time


def _adaptive_run(pf, span: torch.Tensor, method: str, tol: float, x: torch.Tensor
                  ) -> Tuple[torch.Tensor, float, str]:
    """An adaptive solver (rk45, torchdiffeq:*) on the PF-ODE ``pf`` over ``span`` (its integration variable:
    :func:`_adaptive_problem`) at ``rtol = atol = tol``."""
    sol = flowsde.solve(pf, x, span, method=method, rtol=tol, atol=tol)
    return sol.x, float(sol.nfe), f"tol {tol:.0e}"


def _fixed_step_run(s: _Setup, problem, method: str, setting: _Fixed, x: torch.Tensor, path
                    ) -> Tuple[torch.Tensor, float, str, str]:
    """A fixed-step sampler, ``setting.steps`` steps of the run's grid (:func:`_row_grid`): EDM's on the
    PF-ODE, a PF-ODE sampler on ``problem`` (the PF-ODE), or a reverse-SDE sampler on ``problem`` (the
    reverse SDE) driven by ``path`` (the path-driven ones: its increments, cast to the run's dtype).
    Returns the samples, the NFE, the setting's label and the grid's."""
    steps = setting.steps
    grid, grid_label = _row_grid(s, method, setting)
    if method in _EDM:
        out, nfe = _edm(s.diffusion, x, grid, method, s.o.s_churn, s.seed)
        return out, nfe, f"{steps} steps", grid_label
    if _is_ode_method(method):
        sol = flowsde.solve(problem, x, grid, method=method)
    else:
        sol = flowsde.solve(problem, x, grid, method=method, generator=path)
    return sol.x, float(sol.nfe), f"{steps} steps", grid_label


def _row(s: _Setup, refs: _References, method: str, ode: bool, budget: Optional[int], label: str,
         x: torch.Tensor, nfe: float, seconds: float, grid: Optional[str] = None) -> CompareRow:
    """A run's row: its error (PF-ODE samplers against the PF-ODE reference, path-driven ones against the
    SDE reference on their path, the others none), its distance and the exact columns."""
    if ode:
        err = _rmse(x, refs.x)
    elif method in PATH_DRIVEN:
        err = _rmse(x, refs.sde_x)
    else:
        err = None  # its noise is not the path's increments: no strong error
    dist = sliced_w2(x, refs.indep, n_projections=s.o.n_projections, generator=s.seed)
    return CompareRow(method, "ode" if ode else "sde", label, budget, nfe, err, dist, seconds, *_exact_columns(s, x),
                      grid=grid)


def _likelihood_rows(s: _Setup, pf, bar) -> list:
    """``(tol, nfe, mean |logp - exact|, max |logp - exact|, seconds)`` of :func:`flowsde.log_likelihood`
    of ``pf`` at each of ``likelihood_tols``, on exact samples at ``t_end``."""
    k, lik = s.o.likelihood_samples, []
    if not s.o.likelihood_tols:
        return lik
    xs = s.target.sample(k, generator=torch.Generator().manual_seed(s.seed + 5)).reshape(
        (k,) + s.event).to(s.device, torch.float64)
    exact = s.target.log_prob(xs.reshape(k, -1).cpu())
    prior = s.data.marginal(s.sched, s.T)
    model = s.ref_model
    for tol in s.o.likelihood_tols:
        bar.set_description(f"likelihood tol {tol:.0e}")
        t0 = time.perf_counter()
        if getattr(model, "schedule", None) is not None:  # the adapter's likelihood: its integration variable
            res = model.log_likelihood(xs, t_eps=s.t_end, t_max=s.T, prior_logp=prior.log_prob, bpd_tol=tol)
        else:  # a model without a schedule: its PF-ODE in t
            res = flowsde.log_likelihood(pf, xs, (s.t_end, s.T), prior.log_prob, bpd_tol=tol)
        err = (res.logp.cpu() - exact).abs()
        lik.append((tol, float(res.nfe), float(err.mean()), float(err.max()), time.perf_counter() - t0))
        bar.update(1)
    return lik


# 22 parameters: the public call behind `flowsde compare`, one keyword per option of the command (docs/cli.md,
# docs/validation.md); the body hands them on as one _Options.
def compare_solvers(
    diffusion,
    data: Optional[GaussianMixture] = None,
    *,
    event_shape: Optional[Sequence[int]] = None,
    samples: int = 256,
    budgets: Sequence[int] = (10, 20, 40, 80),
    methods: Optional[Sequence[str]] = None,
    beta: float = 1.0,
    t_end: Optional[float] = None,
    rk45_tols: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5),
    reference_tol: float = 1e-8,
    sde_reference_steps: Optional[int] = None,
    likelihood_tols: Sequence[float] = (),
    likelihood_samples: int = 200,
    grid=None,
    s_churn: float = 10.0,
    generator=0,
    dtype: torch.dtype = torch.float64,
    device="cpu",
    reference_model=None,
    n_projections: int = 64,
    keep_samples: int = 512,
    progress: bool = False,
) -> CompareResult:
    """Run every sampler on ``diffusion``, NFE for NFE, against references.

    Arguments:
        diffusion: a :class:`flowsde.adapters.Diffusion` (any network).
        data: optional exact data distribution (a :class:`GaussianMixture` the network is the
            oracle of): adds exact-marginal columns and, with ``likelihood_tols`` (values of
            ``flowsde.log_likelihood``'s ``bpd_tol``, bits/dim), likelihood rows.
        event_shape: the shape of one sample, e.g. ``(64,)`` or ``(3, 32, 32)`` (default: ``data``'s
            dimension, or a ``diffusion.event_shape`` attribute).
        samples: samples per sampler (one batch).
        budgets: NFE budgets of the fixed-step samplers; each runs the most steps that fit
            (:func:`steps_for_budget`), and the NFE used is reported.
        methods: solver names (default :func:`default_methods`); any name of ``flowsde.solvers.METHODS``,
            plus ``edm_heun`` / ``edm_churn`` (``method="edm"`` without / with churn).
        beta: the reverse-SDE family member of the stochastic samplers (1: Anderson's reverse SDE).
        t_end: where sampling stops (default: the schedule's ``t_min``).
        rk45_tols: tolerances (rtol = atol) swept for RK45 and the other adaptive methods
            (``torchdiffeq:*``); their NFE is what they took.
        reference_tol: RK45 tolerance of the float64 PF-ODE reference.
        sde_reference_steps: Euler-Maruyama steps of the SDE reference (default
            ``max(1000, 8 x`` the most steps of any row).
        grid: the fixed-step samplers' grid: ``None`` (each sampler's :func:`default_grid`), a name of
            ``flowsde.adapters.GRID_NAMES`` (``"uniform"``, ``"quadratic"``, ``"edm"``, ``"log_snr"``), a grid file
            from ``flowsde tune`` (a path) or a :class:`TunedGrid` (used on the runs of its sampler and NFE
            only), or a sequence of these (every run on each; the row's ``grid`` names it).
        s_churn: EDM's s_churn for ``edm_churn``.
        generator: everything random derives from it: an int seed (default 0) or a
            ``torch.Generator`` (one seed is drawn from it).
        dtype, device: of the sampler runs (references are float64 on ``device``).
        reference_model: the same network for float64 reference solves, when ``diffusion``
            cannot take float64 states (default: ``diffusion``).

    Returns:
        :class:`CompareResult` (``table()``, ``explain()``, ``write_csv``, ``write_json``,
        ``plot_errors``, ``plot_samples``).

    Raises:
        InputError: unknown method, bad budgets / tolerances / samples, a budget below one step of a sampler.
    """
    s = _setup(diffusion, data, _Options(
        event_shape=event_shape, samples=samples, budgets=budgets, methods=methods, beta=beta, t_end=t_end,
        rk45_tols=rk45_tols, reference_tol=reference_tol, sde_reference_steps=sde_reference_steps,
        likelihood_tols=likelihood_tols, likelihood_samples=likelihood_samples, grid=grid, s_churn=s_churn,
        generator=generator, dtype=dtype, device=device, reference_model=reference_model,
        n_projections=n_projections, keep_samples=keep_samples))
    # progress: the two references, the SDE reference, the runs, the likelihood rows
    bar = _bar(2 + int(s.path_driven) + len(s.plan) + len(s.o.likelihood_tols), progress)
    refs, info = _references(s, bar)
    rows, kept = _rows(s, refs, info, bar)
    lik = _likelihood_rows(s, refs.pf, bar)
    bar.close()
    return CompareResult(rows, lik, info, kept)


def _event_shape(diffusion, data, event_shape) -> Tuple[int, ...]:
    if event_shape is None and data is not None:
        return (data.dim,)
    shape = getattr(diffusion, "event_shape", None) if event_shape is None else event_shape
    if shape is None:
        raise InputError("compare_solvers: the model's event shape is unknown; pass event_shape=(64,) (the "
                         "shape of one sample), or set it as an attribute of the Diffusion.")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise InputError(f"compare_solvers(event_shape={event_shape!r}): expected a tuple of positive ints.")
    return shape


def _edm(diffusion, x: torch.Tensor, ts: torch.Tensor, method: str, s_churn: float, seed: int):
    """EDM's sampler (``method="edm"``) on the PF-ODE: Heun, or with churn for ``edm_churn``."""
    if method == "edm_heun" or s_churn == 0:
        sol = flowsde.solve(diffusion.pf_ode(), x, ts, method="edm")
        return sol.x, float(sol.nfe)
    # churn raises the noise level r to (1 + gamma) r: s_tmax keeps it inside the schedule's range
    # (no churn where (1 + gamma) r would pass r(T)), as EDM's s_tmax restricts churn to a band.
    n_levels = ts.shape[0]  # EDM's N: positive noise levels of a grid that stops short of zero
    gamma = min(s_churn / n_levels, math.sqrt(2) - 1)
    r_max = float(diffusion.schedule.sigma_ratio(ts[:1].to(torch.float64)))
    g = torch.Generator(device=x.device).manual_seed(seed + 13)
    sol = flowsde.solve(diffusion.pf_ode(), x, ts, method="edm", s_churn=s_churn,
                        s_tmax=r_max / (1 + gamma) * (1 - 1e-9), generator=g)
    return sol.x, float(sol.nfe)


class _NoBar:
    def set_description(self, *_):
        pass

    def update(self, *_):
        pass

    def close(self):
        pass


def _bar(total: int, progress: bool):
    if not progress:
        return _NoBar()
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, file=sys.stderr, leave=False)
