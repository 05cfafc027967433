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
        if not self.samples:
            raise InputError("plot_samples: the comparison kept no samples.")
        if image_shape is not None:
            fig, (w_in, h_in) = _image_rows(plt, self, tuple(image_shape), n_show, data_range, dpi)
        else:
            fig, (w_in, h_in) = _scatter_panels(plt, self, density, dpi)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return round(w_in * dpi), round(h_in * dpi)


def _nfe_label(res: CompareResult, m: str, fmt: str) -> str:
    """``m`` with the NFE its kept samples took, in ``fmt`` (``"{m}\\n{nfe} NFE"``), or ``m`` alone."""
    at = res.info.get("samples_nfe", {}).get(m)
    return m if at is None else fmt.format(m=m, nfe=f"{at:.0f}")


def _image_rows(plt, res: CompareResult, image_shape, n_show, data_range, dpi):
    """One row of ``n_show`` images per solver; returns the figure and its size in inches."""
    names = list(res.samples)
    k = min(n_show, min(int(s.shape[0]) for s in res.samples.values()))
    w_in, h_in = 1.6 + 0.5 * k, 0.5 * len(names) + 0.3
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
                              fontsize=8)
    fig.subplots_adjust(left=1.4 / w_in, right=0.98, top=0.98, bottom=0.02, wspace=0.05, hspace=0.05)
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
    """One 2-D scatter panel per solver (first two coordinates), over ``density``'s histogram when given;
    returns the figure and its size in inches."""
    names = list(res.samples)
    cols = min(4, len(names))
    rows_ = math.ceil(len(names) / cols)
    w_in, h_in = 3 * cols, 3 * rows_
    fig, axes = plt.subplots(rows_, cols, figsize=(w_in, h_in), dpi=dpi, squeeze=False)
    ref = res.samples[names[0]].reshape(res.samples[names[0]].shape[0], -1)[:, :2].double()
    span = (density if density is not None else ref).reshape(-1, ref.shape[1])[:, :2].double()
    lo_, hi_ = span.min(0).values, span.max(0).values
    pad = 0.1 * (hi_ - lo_)
    ext = [float(lo_[0] - pad[0]), float(hi_[0] + pad[0]), float(lo_[1] - pad[1]), float(hi_[1] + pad[1])]
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    for m, ax in zip(names, axes.flat):
        if density is not None:
            d = density.reshape(density.shape[0], -1)[:, :2].double().numpy()
            ax.hist2d(d[:, 0], d[:, 1], bins=60, range=[ext[:2], ext[2:]], cmap="Greys")
        xs = res.samples[m].reshape(res.samples[m].shape[0], -1)[:, :2].double().numpy()
        ax.scatter(xs[:, 0], xs[:, 1], s=3, c="tab:red", alpha=0.6)
        ax.set(xlim=ext[:2], ylim=ext[2:], title=_nfe_label(res, m, "{m} ({nfe} NFE)"))
        ax.set_xticks([])
        ax.set_yticks([])
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
