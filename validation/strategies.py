"""Hypothesis strategies for property tests of diffusion SDEs (``from flowsde.validation
import strategies``).

* :func:`gaussian_mixtures` / :func:`dirac_mixtures`: float64 reference data
  distributions (positive-definite covariances by construction).
* :func:`beta_functions`: the family knob ``beta(t) >= 0`` as constants,
  polynomials with non-negative coefficients (non-negative for ``t >= 0``) and
  piecewise-constant / piecewise-linear functions; each is a callable on
  tensors with a readable ``repr`` (shown by hypothesis on failure).
* :func:`schedules`: every schedule of :mod:`flowsde.adapters.schedules` with
  perturbed parameters (``names=`` restricts the choice).
* :func:`times`: a time strictly inside ``[t_min, t_max]`` of a schedule.

Tensors are built from drawn seeds and small parameter lists rather than
element by element, which keeps hypothesis fast and its shrinking readable.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

__all__ = ["gaussian_mixtures", "dirac_mixtures", "beta_functions", "schedules", "times", "Beta", "SCHEDULE_NAMES"]

SCHEDULE_NAMES = ("VP", "Cosine", "SubVP", "VE", "EDM", "Linear", "Discrete")


@st.composite
def gaussian_mixtures(draw, dim=st.integers(1, 3), components=st.integers(1, 3), scale: float = 2.0):
    """A float64 :class:`~flowsde.validation.GaussianMixture` with random weights, means in
    ``[-scale, scale]`` and covariances ``A A^T + 0.05 I`` (``A`` entries ~ N(0, 0.5^2))."""
    from .references import GaussianMixture

    D = draw(dim) if isinstance(dim, st.SearchStrategy) else int(dim)
    K = draw(components) if isinstance(components, st.SearchStrategy) else int(components)
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    mu = (2 * torch.rand(K, D, generator=g, dtype=torch.float64) - 1) * scale
    A = 0.5 * torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture(w, mu, covs)


@st.composite
def dirac_mixtures(draw, dim=st.integers(1, 3), n=st.integers(1, 8), scale: float = 2.0):
    """A float64 :class:`~flowsde.validation.DiracMixture` of ``n`` points in ``[-scale, scale]^D``."""
    from .references import DiracMixture

    D = draw(dim) if isinstance(dim, st.SearchStrategy) else int(dim)
    N = draw(n) if isinstance(n, st.SearchStrategy) else int(n)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    return DiracMixture((2 * torch.rand(N, D, generator=g, dtype=torch.float64) - 1) * scale)


class Beta:
    """``beta(t) >= 0`` for ``t >= 0``: ``kind`` is ``"constant"``, ``"polynomial"``
    (``sum_j c_j t^j``, ``c_j >= 0``) or ``"piecewise"`` (values ``v_i`` on
    ``[b_{i-1}, b_i)``, constant or linearly interpolated between the breakpoints)."""

    def __init__(self, kind: str, coeffs=(), breaks=(), values=(), linear: bool = False):
        self.kind, self.coeffs, self.breaks, self.values, self.linear = kind, tuple(coeffs), tuple(breaks), \
            tuple(values), linear

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if self.kind in ("constant", "polynomial"):
            out = torch.zeros_like(t)
            for c in reversed(self.coeffs):  # Horner
                out = out * t + c
            return out
        if self.linear:  # piecewise linear through (b_i, v_i), constant outside
            b = torch.tensor(self.breaks, dtype=t.dtype, device=t.device)
            v = torch.tensor(self.values, dtype=t.dtype, device=t.device)
            i = torch.searchsorted(b, t.detach().contiguous()).clamp(1, len(self.breaks) - 1)
            w = ((t - b[i - 1]) / (b[i] - b[i - 1])).clamp(0, 1)
            return v[i - 1] + w * (v[i] - v[i - 1])
        b = torch.tensor(self.breaks, dtype=t.dtype, device=t.device)
        v = torch.tensor(self.values, dtype=t.dtype, device=t.device)
        return v[torch.bucketize(t.detach().contiguous(), b)] + 0 * t

    def __repr__(self) -> str:
        if self.kind == "constant":
            return f"Beta(constant={self.coeffs[0]:.4g})"
        if self.kind == "polynomial":
            return "Beta(" + " + ".join(f"{c:.4g} t^{j}" for j, c in enumerate(self.coeffs)) + ")"
        return (f"Beta(piecewise-{'linear' if self.linear else 'constant'}, breaks={[round(b, 4) for b in self.breaks]}, "
                f"values={[round(v, 4) for v in self.values]})")


@st.composite
def beta_functions(draw, max_value: float = 3.0, t_max: float = 1.0):
    """A :class:`Beta` (constant, polynomial or piecewise) with values in ``[0, max_value]``
    on ``[0, t_max]`` (polynomials: each coefficient scaled so the sum is <= max_value at t_max)."""
    kind = draw(st.sampled_from(["constant", "polynomial", "piecewise", "piecewise_linear"]))
    val = st.floats(0.0, max_value, allow_nan=False)
    if kind == "constant":
        return Beta("constant", coeffs=(draw(val),))
    if kind == "polynomial":
        deg = draw(st.integers(1, 3))
        raw = [draw(st.floats(0.0, 1.0)) for _ in range(deg + 1)]
        s = sum(r * t_max ** j for j, r in enumerate(raw)) or 1.0
        return Beta("polynomial", coeffs=tuple(r * max_value / s for r in raw))
    n = draw(st.integers(1, 3))
    breaks = sorted({round(draw(st.floats(0.05, 0.95)) * t_max, 6) for _ in range(n)})
    if kind == "piecewise":
        return Beta("piecewise", breaks=breaks, values=[draw(val) for _ in range(len(breaks) + 1)])
    breaks = sorted(set([0.0] + breaks + [t_max]))
    return Beta("piecewise", breaks=breaks, values=[draw(val) for _ in breaks], linear=True)


@st.composite
def schedules(draw, names=SCHEDULE_NAMES):
    """A schedule of :mod:`flowsde.adapters.schedules` with perturbed parameters."""
    from flowsde.adapters import schedules as S

    name = draw(st.sampled_from(tuple(names)))
    if name == "VP":
        return S.VP(beta_min=draw(st.floats(0.05, 0.5)), beta_max=draw(st.floats(5.0, 20.0)))
    if name == "SubVP":
        return S.SubVP(beta_min=draw(st.floats(0.05, 0.5)), beta_max=draw(st.floats(5.0, 20.0)))
    if name == "Cosine":
        return S.Cosine(s=draw(st.floats(0.001, 0.02)))
    if name == "VE":
        return S.VE(sigma_min=draw(st.floats(0.005, 0.05)), sigma_max=draw(st.floats(5.0, 50.0)))
    if name == "EDM":
        return S.EDM(sigma_min=draw(st.floats(0.002, 0.01)), sigma_max=draw(st.floats(5.0, 80.0)))
    if name == "Linear":
        return S.Linear()
    n = draw(st.integers(10, 1000))
    b0, b1 = draw(st.floats(1e-4, 1e-3)), draw(st.floats(0.01, 0.03))
    betas = torch.linspace(b0, b1 * 1000 / n, n, dtype=torch.float64).clamp(max=0.5)
    label = draw(st.sampled_from(("index", "score_sde", "dpm_solver")))
    return S.Discrete(torch.cumprod(1 - betas, 0), label=label)


@st.composite
def times(draw, schedule, margin: float = 0.01):
    """A float time in ``[t_min + margin (t_max - t_min), t_max - margin (t_max - t_min)]``."""
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    d = margin * (hi - lo)
    return draw(st.floats(lo + d, hi - d))
