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
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import flowsde
from flowsde import InputError
from flowsde._internal import as_seed

from flowsde.validation import GaussianMixture, check_marginals, sliced_w2

__all__ = ["compare_solvers", "CompareRow", "CompareResult", "default_mixture", "default_methods", "known_methods",
           "steps_for_budget", "DETERMINISTIC", "STOCHASTIC"]

#: PF-ODE samplers: core method names; ``edm_heun`` is ``method="edm"`` without churn.
DETERMINISTIC = ("euler", "heun", "edm_heun", "rk45")
#: reverse-SDE samplers; ``edm_churn`` is ``method="edm"`` with ``s_churn > 0`` (its own noise, on the PF-ODE).
STOCHASTIC = ("euler_maruyama", "pc", "edm_churn")
ALL_METHODS = DETERMINISTIC + STOCHASTIC
#: samplers added to the default set when ``flowsde.solvers.METHODS`` has them.
OPTIONAL_ODE = ("ddim", "dpmpp_2m", "unipc", "lms", "dpm_2")
OPTIONAL_SDE = ("dpmpp_2m_sde", "dpmpp_3m_sde", "euler_ancestral", "dpmpp_2s_ancestral")
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
    if method in STOCHASTIC:
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


@dataclass
class CompareRow:
    method: str
    kind: str  #: "ode" (PF-ODE sampler), "sde" (reverse-SDE sampler) or "reference"
    setting: str  #: "N steps", "tol X" (RK45) or "noise floor"
    budget: Optional[int]  #: the NFE budget asked for (None: RK45, reference rows)
    nfe: float  #: NFE used per sample
    error: Optional[float]  #: RMS/coordinate to the reference on the same x_T (and Brownian path)
    distance: float  #: sliced W2 to an independent reference set
    seconds: float
    ks: Optional[float] = None  #: max KS distance to the exact marginal (exact models only)
    mean_error: Optional[float] = None
    cov_error: Optional[float] = None


COLUMNS = {
    "solver": "the sampler: PF-ODE (euler, heun, edm_heun, ddim, dpmpp_2m, unipc, rk45, ...), reverse SDE of the "
              "chosen beta (euler_maruyama, pc, dpmpp_2m_sde, euler_ancestral, ...), or EDM's churn (edm_churn)",
    "setting": "steps of the fixed-step samplers; tolerance (rtol = atol) of RK45 and the other adaptive solvers",
    "NFE": "network evaluations per sample actually used (a budget a sampler cannot meet exactly is shown as "
           "'used (budget B)')",
    "error": "RMS difference per coordinate of the final samples from the reference started at the same x_T: "
             "for PF-ODE samplers a tight float64 RK45 solution; for SDE samplers a fine-step Euler-Maruyama "
             "solution on the same Brownian path (strong error; '-' where the sampler draws fresh normals instead of "
             "the path's increments; "
             "pc's Langevin corrector is not a discretization of the path, so its error levels off)",
    "SW2": "sliced Wasserstein-2 distance from an independent set of reference samples; the 'noise floor' row "
           "is the distance between two independent reference sets: nothing below it is measurable with this n",
    "s": "wall time of the sampler run (seconds)",
}


@dataclass
class CompareResult:
    rows: List[CompareRow]
    likelihood: list = field(default_factory=list)  #: (tol, nfe, mean |logp - exact|, max |...|, seconds)
    info: dict = field(default_factory=dict)
    samples: Dict[str, torch.Tensor] = field(default_factory=dict)  #: method -> samples at its largest budget

    @property
    def noise_floor(self) -> Optional[float]:
        for r in self.rows:
            if r.kind == "reference":
                return r.distance
        return None

    def table(self) -> str:
        """The comparison as a Markdown table (and the likelihood table under it)."""
        exact = any(r.ks is not None for r in self.rows)
        head = "| solver | setting | NFE | error | SW2 | s |" + (" KS exact |" if exact else "")
        out = [head, "|---|---|---:|---:|---:|---:|" + ("---:|" if exact else "")]
        for r in self.rows:
            nfe = f"{r.nfe:.0f}" if r.budget is None or r.budget == round(r.nfe) else f"{r.nfe:.0f} (budget {r.budget})"
            err = "-" if r.error is None else f"{r.error:.2e}"
            line = f"| {r.method} | {r.setting} | {nfe} | {err} | {r.distance:.4f} | {r.seconds:.2f} |"
            if exact:
                line += " - |" if r.ks is None else f" {r.ks:.4f} |"
            out.append(line)
        if self.likelihood:
            out += ["", "| likelihood bpd_tol | NFE | mean abs logp error (nats) | max abs error | s |",
                    "|---|---:|---:|---:|---:|"]
            for tol, nfe, mean_err, max_err, sec in self.likelihood:
                out.append(f"| {tol:.0e} | {nfe:.0f} | {mean_err:.2e} | {max_err:.2e} | {sec:.2f} |")
        return "\n".join(out)

    def explain(self) -> str:
        """What each column means (printed under the table)."""
        lines = [f"  {k}: {v}" for k, v in COLUMNS.items()]
        if any(r.ks is not None for r in self.rows):
            lines.append("  KS exact: largest Kolmogorov-Smirnov distance over random 1-D projections to the exact "
                         f"marginal at t_end (exact samples score {self.info.get('ks_floor', float('nan')):.4f})")
        return "\n".join(lines)

    def write_csv(self, path) -> None:
        names = list(CompareRow.__dataclass_fields__)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            for r in self.rows:
                w.writerow(["" if v is None else v for v in asdict(r).values()])

    def write_json(self, path) -> None:
        info = {k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
        lik = [dict(zip(("tol", "nfe", "mean_abs_error", "max_abs_error", "seconds"), t)) for t in self.likelihood]
        with open(path, "w") as f:
            json.dump({"info": info, "columns": COLUMNS, "rows": [asdict(r) for r in self.rows],
                       "likelihood": lik}, f, indent=2)

    def plot_errors(self, path, *, dpi: int = 100) -> Tuple[int, int]:
        """Error against NFE (log-log), one line per solver; returns the PNG's (width, height) in pixels."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(8, 5), dpi=dpi)
        for m in dict.fromkeys(r.method for r in self.rows if r.kind != "reference"):
            rs = [r for r in self.rows if r.method == m and r.error is not None and r.error > 0]
            if rs:
                ls = "o-" if rs[0].kind == "ode" else "s--"
                ax.loglog([r.nfe for r in rs], [r.error for r in rs], ls, label=f"{m} ({rs[0].kind.upper()})")
        ax.set(xlabel="NFE per sample", ylabel="RMS error per coordinate vs reference",
               title=self.info.get("title", "error vs NFE"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return 8 * dpi, 5 * dpi

    def plot_samples(self, path, *, image_shape: Optional[Tuple[int, ...]] = None, n_show: int = 16,
                     data_range: Optional[Tuple[float, float]] = None,
                     density: Optional[torch.Tensor] = None, dpi: int = 100) -> Tuple[int, int]:
        """A grid of generated samples: one row per solver (at its largest budget), the reference first.

        ``image_shape``: ``(H, W)`` or ``(C, H, W)`` to draw each sample as an image (digits: ``(8, 8)``);
        otherwise the samples are drawn as a 2-D scatter (first two coordinates), one panel per solver,
        over ``density`` (samples of the data distribution, shown as a 2-D histogram) when given.
        Returns the PNG's (width, height) in pixels.
        """
        plt = _pyplot()
        names = list(self.samples)
        if not names:
            raise InputError("plot_samples: the comparison kept no samples.")
        if image_shape is not None:
            k = min(n_show, min(int(s.shape[0]) for s in self.samples.values()))
            w_in, h_in = 1.6 + 0.5 * k, 0.5 * len(names) + 0.3
            fig, axes = plt.subplots(len(names), k, figsize=(w_in, h_in), dpi=dpi, squeeze=False)
            lo, hi = data_range if data_range is not None else (None, None)
            for i, m in enumerate(names):
                xs = self.samples[m][:k].detach().to("cpu", torch.float64).reshape((-1,) + tuple(image_shape))
                for j in range(k):
                    ax = axes[i][j]
                    img = xs[j]
                    if img.dim() == 3:
                        img = img.permute(1, 2, 0) if img.shape[0] in (3, 4) else img[0]
                        if img.dim() == 3 and lo is not None:
                            img = ((img - lo) / (hi - lo)).clamp(0, 1)
                    ax.imshow(img.numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                at = self.info.get("samples_nfe", {}).get(m)
                axes[i][0].set_ylabel(m if at is None else f"{m}\n{at:.0f} NFE", rotation=0, ha="right",
                                      va="center", fontsize=8)
            fig.subplots_adjust(left=1.4 / w_in, right=0.98, top=0.98, bottom=0.02, wspace=0.05, hspace=0.05)
        else:
            cols = min(4, len(names))
            rows_ = math.ceil(len(names) / cols)
            w_in, h_in = 3 * cols, 3 * rows_
            fig, axes = plt.subplots(rows_, cols, figsize=(w_in, h_in), dpi=dpi, squeeze=False)
            ref = self.samples[names[0]].reshape(self.samples[names[0]].shape[0], -1)[:, :2].double()
            span = (density if density is not None else ref).reshape(-1, ref.shape[1])[:, :2].double()
            lo_, hi_ = span.min(0).values, span.max(0).values
            pad = 0.1 * (hi_ - lo_)
            ext = [float(lo_[0] - pad[0]), float(hi_[0] + pad[0]), float(lo_[1] - pad[1]), float(hi_[1] + pad[1])]
            for idx, ax in enumerate(axes.flat):
                if idx >= len(names):
                    ax.axis("off")
                    continue
                m = names[idx]
                if density is not None:
                    d = density.reshape(density.shape[0], -1)[:, :2].double().numpy()
                    ax.hist2d(d[:, 0], d[:, 1], bins=60, range=[ext[:2], ext[2:]], cmap="Greys")
                xs = self.samples[m].reshape(self.samples[m].shape[0], -1)[:, :2].double().numpy()
                ax.scatter(xs[:, 0], xs[:, 1], s=3, c="tab:red", alpha=0.6)
                at = self.info.get("samples_nfe", {}).get(m)
                ax.set(xlim=ext[:2], ylim=ext[2:], title=m if at is None else f"{m} ({at:.0f} NFE)")
                ax.set_xticks([])
                ax.set_yticks([])
            fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return round(w_in * dpi), round(h_in * dpi)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError("plots need matplotlib: pip install flowsde[plots] (or matplotlib).") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(sched, T: float, t_end: float, steps: int, kind: str, device) -> torch.Tensor:
    """Decreasing float64 grid ``T -> t_end`` of ``steps`` steps."""
    if kind == "uniform":
        return flowsde.grids.uniform(T, t_end, steps, dtype=torch.float64, device=device)
    f64 = torch.float64
    r_hi = float(sched.sigma_ratio(torch.tensor(T, dtype=f64)))
    r_lo = float(sched.sigma_ratio(torch.tensor(t_end, dtype=f64)))
    if not (math.isfinite(r_hi) and r_hi > r_lo > 0):
        return flowsde.grids.uniform(T, t_end, steps, dtype=f64, device=device)
    ratios = flowsde.grids.edm(r_lo, r_hi, steps, 7.0, final_zero=False, dtype=f64)
    ts = sched.t_from_sigma_ratio(ratios).to(f64)
    ts[0], ts[-1] = T, t_end
    return ts.to(device)


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
    grid: str = "edm",
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
        grid: ``"edm"`` (rho = 7 in sigma/alpha) or ``"uniform"`` in t.
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
    n, seed = samples, as_seed(generator, "compare_solvers")
    methods = tuple(dict.fromkeys(default_methods() if methods is None else (_ALIASES.get(m, m) for m in methods)))
    for m in methods:
        if m not in known_methods():
            raise InputError(f"compare_solvers: unknown solver {m!r}; choose from {list(known_methods())}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < (30 if data is not None else 2):
        raise InputError(f"compare_solvers(samples={n!r}): need at least {30 if data is not None else 2} samples"
                         f"{' for the marginal tests' if data is not None else ''}.")
    _check_seq("budgets", budgets)
    _check_seq("rk45_tols", rk45_tols, float)
    _check_seq("likelihood_tols", likelihood_tols, float)
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta) and beta >= 0):
        raise InputError(f"compare_solvers(beta={beta!r}): must be a finite number >= 0.")
    if grid not in ("edm", "uniform"):
        raise InputError(f"compare_solvers(grid={grid!r}): choose 'edm' or 'uniform'.")
    if likelihood_tols and data is None:
        raise InputError("compare_solvers(likelihood_tols=...): likelihood rows need an exact data distribution.")
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"compare_solvers(dtype={dtype!r}): the samplers run in torch.float32 or torch.float64.")
    plan = []  # every budget checked before any work
    for m in methods:
        if _adaptive(m):  # rk45, torchdiffeq:*: a tolerance sweep, NFE is what it took
            plan += [(m, None, tol) for tol in rk45_tols]
        else:
            plan += [(m, b, steps_for_budget(m, b)) for b in budgets]
    ref_model = diffusion if reference_model is None else reference_model
    sched = diffusion.schedule
    T = float(sched.t_max)
    t_end = float(sched.t_min) if t_end is None else float(t_end)
    f64 = torch.float64
    event = _event_shape(diffusion, data, event_shape)
    dev = torch.device(device)

    # -- prior draws and references ------------------------------------------------------------
    def draw(s):
        g = torch.Generator().manual_seed(s)
        if data is not None:
            return data.marginal(sched, T).sample(n, generator=g).reshape((n,) + event).to(dev, f64)
        return diffusion.prior().sample((n,) + event, generator=g, dtype=f64).to(dev)

    xT, xT_indep = draw(seed), draw(seed + 1)
    n_sde = [p for p in plan if p[0] in PATH_DRIVEN]
    total = 2 + (1 if n_sde else 0) + len(plan) + len(likelihood_tols)
    bar = _bar(total, progress)
    pf_ref = ref_model.pf_ode()
    span = torch.tensor([T, t_end], dtype=f64, device=dev)
    rk_ref = flowsde.solvers.RK45(rtol=reference_tol, atol=reference_tol)
    bar.set_description("reference: PF-ODE, RK45 float64")
    t0 = time.perf_counter()
    ref = flowsde.solve(pf_ref, xT, span, method=rk_ref)
    ref_nfe, ref_sec = ref.nfe, time.perf_counter() - t0
    ref_x = ref.x
    bar.update(1)
    if data is not None:
        indep = data.marginal(sched, t_end).sample(n, generator=torch.Generator().manual_seed(seed + 2))
        indep = indep.reshape((n,) + event).to(dev, f64)
        indep2 = data.marginal(sched, t_end).sample(n, generator=torch.Generator().manual_seed(seed + 3))
        floor = sliced_w2(indep, indep2.reshape((n,) + event), n_projections=n_projections, generator=seed)
        floor_what = "exact samples"
    else:
        bar.set_description("reference: independent PF-ODE set")
        indep = flowsde.solve(pf_ref, xT_indep, span, method=rk_ref).x
        floor = sliced_w2(ref_x, indep, n_projections=n_projections, generator=seed)
        floor_what = "PF-ODE reference sets"
    bar.update(1)
    info = {"model": " ".join(repr(diffusion).split()), "T": T, "t_end": t_end, "n": n, "seed": seed,
            "beta": float(beta), "grid": grid, "dtype": str(dtype).replace("torch.", ""), "device": str(dev),
            "reference": f"PF-ODE: RK45 rtol=atol={reference_tol:g} in float64 ({ref_nfe:.0f} NFE, "
                         f"{ref_sec:.1f} s) from the same x_T",
            "distance_reference": f"independent {floor_what} (n={n})"}

    target = data.marginal(sched, t_end) if data is not None else None

    def marg(x):
        r = check_marginals(x.reshape(n, -1).to("cpu", f64), target, n_projections=8, generator=seed)
        return r.max_ks, float(abs(r.mean_error).max()), float(r.cov_error)

    if data is not None:
        info["ks_floor"] = marg(indep)[0]

    path = None
    sde_ref = None
    if n_sde:
        max_steps = max(p[2][0] for p in n_sde)
        k_ref = sde_reference_steps or max(1000, 8 * max_steps)
        bar.set_description(f"reference: reverse SDE, {k_ref} EM steps on the shared path")
        fine = _grid(sched, T, t_end, k_ref, grid, dev)
        # the tree must resolve the finest spacing (torchsde's BrownianInterval recurses without end on
        # queries closer than its tolerance)
        tol = min(1e-6 * (T - t_end), 0.01 * float((fine[:-1] - fine[1:]).abs().min()))
        path = flowsde.BrownianPath(T, t_end, tuple(xT.shape), dtype=f64, device=dev, generator=seed + 11, tol=tol)
        t0 = time.perf_counter()
        sde_ref = flowsde.solve(ref_model.reverse_sde(beta), xT, fine, method="euler_maruyama", generator=path).x
        info["sde_reference"] = (f"reverse SDE (beta={beta:g}): {k_ref} Euler-Maruyama steps in float64 on the "
                                 f"same Brownian path ({time.perf_counter() - t0:.1f} s)")
        bar.update(1)

    rows: List[CompareRow] = []
    samples: Dict[str, torch.Tensor] = {"reference": ref_x[:keep_samples].cpu()}
    rows.append(CompareRow("reference", "reference", "noise floor", None, float(ref_nfe), None, floor, ref_sec,
                              *(marg(ref_x) if data is not None else (None, None, None))))
    x_run = xT.to(dtype)
    pf = diffusion.pf_ode()
    rsde = diffusion.reverse_sde(beta)
    for method, budget, setting in plan:
        bar.set_description(f"{method}" + (f" NFE {budget}" if budget else f" tol {setting:.0e}"))
        ode = _is_ode_method(method)
        _sync(dev)
        t0 = time.perf_counter()
        if budget is None:
            sol = flowsde.solve(pf, x_run, span, method=method, rtol=setting, atol=setting)
            x, nfe, label = sol.x, float(sol.nfe), f"tol {setting:.0e}"
        else:
            steps, _ = setting
            ts = _grid(sched, T, t_end, steps, grid, dev)
            label = f"{steps} steps"
            if method in _EDM:
                x, nfe = _edm(diffusion, x_run, ts, method, s_churn, seed)
            elif ode:
                sol = flowsde.solve(pf, x_run, ts, method=method)
                x, nfe = sol.x, float(sol.nfe)
            else:
                sol = flowsde.solve(rsde, x_run, ts, method=method, generator=path)  # increments cast to dtype
                x, nfe = sol.x, float(sol.nfe)
        _sync(dev)
        sec = time.perf_counter() - t0
        if ode:
            err = _rmse(x, ref_x)
        elif method in PATH_DRIVEN:
            err = _rmse(x, sde_ref)
        else:
            err = None  # its noise is not the path's increments: no strong error
        dist = sliced_w2(x, indep, n_projections=n_projections, generator=seed)
        ex = marg(x) if data is not None else (None, None, None)
        rows.append(CompareRow(method, "ode" if ode else "sde", label, budget, nfe, err, dist, sec, *ex))
        samples[method] = x[:keep_samples].detach().cpu()  # the plan runs budgets in increasing order
        info.setdefault("samples_nfe", {})[method] = nfe
        bar.update(1)

    lik = []
    if likelihood_tols:
        xs = target.sample(likelihood_samples, generator=torch.Generator().manual_seed(seed + 5)).reshape(
            (likelihood_samples,) + event).to(dev, f64)
        exact = target.log_prob(xs.reshape(likelihood_samples, -1).cpu())
        prior = data.marginal(sched, T)
        for tol in likelihood_tols:
            bar.set_description(f"likelihood tol {tol:.0e}")
            t0 = time.perf_counter()
            res = flowsde.log_likelihood(pf_ref, xs, (t_end, T), prior.log_prob, bpd_tol=tol)
            err = (res.logp.cpu() - exact).abs()
            lik.append((tol, float(res.nfe), float(err.mean()), float(err.max()), time.perf_counter() - t0))
            bar.update(1)
    bar.close()
    return CompareResult(rows, lik, info, samples)


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
