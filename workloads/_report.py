"""What :func:`~flowsde.workloads.compare_solvers` returns: its rows, the Markdown table, CSV, JSON and plots."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from flowsde import InputError

__all__ = ["CompareRow", "CompareResult", "COLUMNS"]


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
    #: the grid of a fixed-step run: a name of ``flowsde.adapters.GRID_NAMES`` or a tuned grid's label
    #: (``"tuned(heun, NFE 10)"``); None for adaptive runs and the reference
    grid: Optional[str] = None


COLUMNS = {
    "solver": "the sampler: PF-ODE (euler, heun, edm_heun, ddim, dpmpp_2m, unipc, rk45, ...), reverse SDE of the "
              "chosen beta (euler_maruyama, pc, dpmpp_2m_sde, euler_ancestral, ...), or EDM's churn (edm_churn)",
    "setting": "steps of the fixed-step samplers; tolerance (rtol = atol) of RK45 and the other adaptive solvers",
    "NFE": "network evaluations per sample actually used (a budget a sampler cannot meet exactly is shown as "
           "'used (budget B)')",
    "grid": "the fixed-step samplers' time grid: uniform (in t), quadratic (in t), edm (rho = 7 in sigma/alpha), "
            "log_snr (uniform in log-SNR), or tuned(SAMPLER, NFE N) (a grid file of `flowsde tune`); '-' for "
            "adaptive solvers",
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
    #: method -> samples of its run with the fewest NFE (its smallest budget: where the samplers differ most)
    samples: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def noise_floor(self) -> Optional[float]:
        for r in self.rows:
            if r.kind == "reference":
                return r.distance
        return None

    def table(self) -> str:
        """The comparison as a Markdown table (and the likelihood table under it)."""
        exact = any(r.ks is not None for r in self.rows)
        head = "| solver | setting | NFE | grid | error | SW2 | s |" + (" KS exact |" if exact else "")
        out = [head, "|---|---|---:|---|---:|---:|---:|" + ("---:|" if exact else "")]
        for r in self.rows:
            nfe = f"{r.nfe:.0f}" if r.budget is None or r.budget == round(r.nfe) else f"{r.nfe:.0f} (budget {r.budget})"
            err = "-" if r.error is None else f"{r.error:.2e}"
            grid = r.grid or "-"
            line = f"| {r.method} | {r.setting} | {nfe} | {grid} | {err} | {r.distance:.4f} | {r.seconds:.2f} |"
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
        info = {k: v for k, v in self.info.items()
                if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None))) or hasattr(v, "label")}
        lik = [dict(zip(("tol", "nfe", "mean_abs_error", "max_abs_error", "seconds"), t)) for t in self.likelihood]
        with open(path, "w") as f:
            json.dump({"info": info, "columns": COLUMNS, "rows": [asdict(r) for r in self.rows],
                       "likelihood": lik}, f, indent=2, default=_jsonable)

    def without_error(self) -> List[str]:
        """The samplers with no pathwise error (their noise is not the shared path's increments: compared by
        SW2 only): they have no line in :meth:`plot_errors`."""
        return [m for m in dict.fromkeys(r.method for r in self.rows if r.kind != "reference")
                if not any(r.method == m and r.error is not None and r.error > 0 for r in self.rows)]

    def path_of(self, method: str) -> str:
        """Which path ``method``'s samples were drawn on, relative to the PF-ODE reference from the same x_T:
        ``"ode"`` (the same deterministic path: comparable sample by sample), ``"brownian"`` (the reverse SDE on
        the shared Brownian path) or ``"own noise"`` (fresh normals)."""
        rows = [r for r in self.rows if r.method == method]
        if not rows or rows[0].kind in ("ode", "reference"):
            return "ode"
        return "brownian" if any(r.error is not None for r in rows) else "own noise"

    def plot_errors(self, path, *, dpi: int = 100) -> Tuple[int, int]:
        """Error against NFE (log-log), one line per solver, each against its own reference (PF-ODE samplers:
        the tight RK45 solution from the same x_T; path-driven SDE samplers: the fine Euler-Maruyama solution
        on the same Brownian path); the samplers without a pathwise error are named on the plot.
        Returns the PNG's (width, height) in pixels."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(8, 5), dpi=dpi)
        lines = 0
        for m in dict.fromkeys(r.method for r in self.rows if r.kind != "reference"):
            rs = [r for r in self.rows if r.method == m and r.error is not None and r.error > 0]
            if rs:
                ode = rs[0].kind == "ode"
                ax.loglog([r.nfe for r in rs], [r.error for r in rs], "o-" if ode else "s--",
                          label=f"{m} ({'ODE: vs RK45 reference' if ode else 'SDE: vs fine EM, same path'})")
                lines += 1
        ax.set(xlabel="NFE per sample", title=self.info.get("title", "error vs NFE"))
        ax.set_ylabel("RMS error per coordinate vs its reference\n"
                      "(ODE: RK45 float64 from x_T; SDE: fine EM, same path)", fontsize=9)
        missing = self.without_error()
        if missing:
            note = (f"no pathwise error (own noise, compared by SW2 only): {', '.join(missing)}")
            ax.text(0.5, 0.02 if lines else 0.5, note, transform=ax.transAxes, ha="center",
                    va="bottom" if lines else "center", fontsize=8, wrap=True)
        if lines:
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return 8 * dpi, 5 * dpi

    def plot_samples(self, path, *, image_shape: Optional[Tuple[int, ...]] = None, n_show: int = 16,
                     data_range: Optional[Tuple[float, float]] = None,
                     density: Optional[torch.Tensor] = None, dpi: int = 100) -> Tuple[int, int]:
        """A grid of generated samples: one row per solver at its smallest budget (where the samplers differ;
        at large budgets every PF-ODE sampler draws the reference), the reference first. Rows drawn on another
        path than the reference's (reverse-SDE samplers, own noise) are marked with ``*``: they are not
        comparable with the reference sample by sample.

        ``image_shape``: ``(H, W)`` or ``(C, H, W)`` to draw each sample as an image (digits: ``(8, 8)``);
        otherwise the samples are drawn as a 2-D scatter (first two coordinates), one panel per solver,
        over ``density`` (samples of the data distribution, shown as a 2-D histogram) when given; 1-D samples
        as histograms over the density's.
        Returns the PNG's (width, height) in pixels.
        """
        plt = _pyplot()
        if not self.samples:
            raise InputError("plot_samples: the comparison kept no samples.")
        if image_shape is not None:
            fig, (w_in, h_in) = _image_rows(plt, self, tuple(image_shape), n_show, data_range, dpi)
        else:
            fig, (w_in, h_in) = _scatter_panels(plt, self, density, dpi)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return round(w_in * dpi), round(h_in * dpi)


_PATH_MARK = {"ode": "", "brownian": "*", "own noise": "*"}
_PATH_WORD = {"ode": "", "brownian": "SDE path", "own noise": "own noise"}


def _nfe_label(res: CompareResult, m: str, fmt: str) -> str:
    """``m`` with the NFE its kept samples took, in ``fmt`` (``"{m}\\n{nfe} NFE"``), or ``m`` alone; marked
    ``*`` (and the path named) where drawn on another path than the reference."""
    at = res.info.get("samples_nfe", {}).get(m)
    p = res.path_of(m)
    label = m if at is None else fmt.format(m=m, nfe=f"{at:.0f}")
    return label + (f"{_PATH_MARK[p]}\n({_PATH_WORD[p]})" if p != "ode" else "")


_FOOTNOTE = "* drawn on another path than the reference (reverse SDE / own noise): compare by eye, not sample by sample"


def _marked(res: CompareResult) -> bool:
    return any(res.path_of(m) != "ode" for m in res.samples)


def _image_rows(plt, res: CompareResult, image_shape, n_show, data_range, dpi):
    """One row of ``n_show`` images per solver (and a footnote line for rows marked ``*``); returns the
    figure and its size in inches."""
    names = list(res.samples)
    k = min(n_show, min(int(s.shape[0]) for s in res.samples.values()))
    foot = 0.25 if _marked(res) else 0.0
    w_in, h_in = 1.6 + 0.5 * k, 0.5 * len(names) + 0.3 + foot
    fig, axes = plt.subplots(len(names), k, figsize=(w_in, h_in), dpi=dpi, squeeze=False)
    lo, hi = data_range if data_range is not None else (None, None)
    for i, m in enumerate(names):
        xs = res.samples[m][:k].detach().to("cpu", torch.float64).reshape((-1,) + image_shape)
        for j in range(k):
            ax = axes[i][j]
            ax.imshow(_as_image(xs[j], lo, hi).numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(_nfe_label(res, m, "{m}\n{nfe} NFE"), rotation=0, ha="right", va="center",
                              fontsize=7 if res.path_of(m) != "ode" else 8)
    fig.subplots_adjust(left=1.4 / w_in, right=0.98, top=1 - 0.06 / h_in, bottom=(0.06 + foot) / h_in,
                        wspace=0.05, hspace=0.05)
    if foot:
        fig.text(0.01, 0.03 / h_in, _FOOTNOTE, fontsize=7, ha="left", va="bottom")
    return fig, (w_in, h_in)


def _as_image(img: torch.Tensor, lo, hi) -> torch.Tensor:
    """A ``(H, W)`` or ``(C, H, W)`` sample as imshow takes it: colour channels last (scaled to [0, 1] with a
    data range), one channel alone."""
    if img.dim() == 3:
        img = img.permute(1, 2, 0) if img.shape[0] in (3, 4) else img[0]
        if img.dim() == 3 and lo is not None:
            img = ((img - lo) / (hi - lo)).clamp(0, 1)
    return img


def _scatter_panels(plt, res: CompareResult, density, dpi):
    """One panel per solver: a 2-D scatter (first two coordinates) over ``density``'s histogram when given,
    or, for 1-D samples, a histogram over the density's; returns the figure and its size in inches."""
    names = list(res.samples)
    cols = min(4, len(names))
    rows_ = math.ceil(len(names) / cols)
    w_in, h_in = 3 * cols, 3 * rows_
    fig, axes = plt.subplots(rows_, cols, figsize=(w_in, h_in), dpi=dpi, squeeze=False)

    def first2(x):
        return x.reshape(x.shape[0], -1)[:, :2].detach().to("cpu", torch.float64)

    span = first2(density if density is not None else res.samples[names[0]])
    lo_, hi_ = span.min(0).values, span.max(0).values
    pad = 0.1 * (hi_ - lo_).clamp_min(1e-12)
    ext = [(float(lo_[i] - pad[i]), float(hi_[i] + pad[i])) for i in range(span.shape[1])]
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    for m, ax in zip(names, axes.flat):
        xs = first2(res.samples[m]).numpy()
        d = first2(density).numpy() if density is not None else None
        if len(ext) == 1:  # 1-D samples: histograms
            if d is not None:
                ax.hist(d[:, 0], bins=60, range=ext[0], density=True, color="0.8")
            ax.hist(xs[:, 0], bins=40, range=ext[0], density=True, histtype="step", color="tab:red")
            ax.set(xlim=ext[0])
        else:
            if d is not None:
                ax.hist2d(d[:, 0], d[:, 1], bins=60, range=[ext[0], ext[1]], cmap="Greys")
            ax.scatter(xs[:, 0], xs[:, 1], s=3, c="tab:red", alpha=0.6)
            ax.set(xlim=ext[0], ylim=ext[1])
        ax.set_title(_nfe_label(res, m, "{m} ({nfe} NFE)"), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if _marked(res):
        fig.text(0.01, 0.005, _FOOTNOTE, fontsize=7, ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.06 / rows_, 1, 1))
    else:
        fig.tight_layout()
    return fig, (w_in, h_in)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError("plots need matplotlib: pip install flowsde[plots] (or matplotlib).") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _jsonable(o):
    """What ``json.dump`` writes for an object it does not know: a tuned grid's label, else ``str``."""
    return getattr(o, "label", None) or str(o)
