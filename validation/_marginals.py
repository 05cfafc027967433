"""Statistical tests of particles against an exact Gaussian-mixture marginal.

``check_marginals(x, reference)`` runs one family of hypothesis tests
of ``H0: x ~ reference`` (i.i.d.), each exact or asymptotically exact:

* **KS on random projections.** For ``P`` random unit directions ``u`` (from a
  seeded generator) the projection ``y = u . x`` of a Gaussian mixture is a 1-D
  mixture with the closed-form CDF

      F(y) = sum_k w_k Phi((y - u . mu_k) / sqrt(u^T Sigma_k u)),

  and a one-sample Kolmogorov–Smirnov test (scipy ``kstest``, exact p-value)
  is run on each.
* **Mean.** ``n (m_hat - m)^T Sigma^{-1} (m_hat - m) ~ chi^2_D`` (CLT with the
  reference's own mean ``m`` and covariance ``Sigma``, no estimation).
* **Second moments.** On each projection, ``z = (mean(y^2) - E y^2) /
  sqrt(Var(y^2) / n) ~ N(0, 1)`` (CLT) with ``E y^2`` and ``E y^4`` of the
  projected mixture in closed form (``E y^4 = sum_k w_k (m_k^4 + 6 m_k^2 v_k
  + 3 v_k^2)``); this catches a wrong variance that KS sees only weakly.

The ``2P + 1`` p-values are corrected by Holm's step-down method, so the
probability of rejecting exact samples (the false-alarm rate) is at most
``alpha`` (up to the CLT approximation of the moment tests, checked in
flowsde's own tests). ``passed`` is ``True`` when no Holm-adjusted p-value is
``<= alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from flowsde import InputError
from flowsde._internal import as_generator

from .references import GaussianMixture

__all__ = ["check_marginals", "assert_marginals", "MarginalsResult", "required_samples", "sliced_w2"]

MIN_SAMPLES = 30


@dataclass
class MarginalsResult:
    """Outcome of :func:`check_marginals`.

    Attributes:
        passed: no Holm-adjusted p-value ``<= alpha``.
        alpha: the family-wise false-alarm rate.
        samples: number of samples.
        projections: ``(P, D)`` unit directions.
        ks_statistic, ks_pvalue: ``(P,)`` numpy arrays.
        m2_z, m2_pvalue: ``(P,)`` second-moment z-scores and two-sided p-values.
        mean_chi2, mean_pvalue: the mean test.
        adjusted_pvalues: dict name -> Holm-adjusted p-value (names ``"ks[i]"``,
            ``"m2[i]"``, ``"mean"``).
        mean_error: ``(D,)`` sample mean minus reference mean.
        cov_error: relative Frobenius error ``|C_hat - C| / |C|`` of the sample covariance.
    """

    passed: bool
    alpha: float
    samples: int
    projections: np.ndarray
    ks_statistic: np.ndarray
    ks_pvalue: np.ndarray
    m2_z: np.ndarray
    m2_pvalue: np.ndarray
    mean_chi2: float
    mean_pvalue: float
    adjusted_pvalues: dict = field(default_factory=dict)
    mean_error: Optional[np.ndarray] = None
    cov_error: float = float("nan")

    @property
    def max_ks(self) -> float:
        """The largest KS distance over the projections (a sliced-KS distance)."""
        return float(self.ks_statistic.max())

    @property
    def worst(self) -> tuple:
        """``(name, adjusted p-value)`` of the most significant test."""
        name = min(self.adjusted_pvalues, key=self.adjusted_pvalues.get)
        return name, self.adjusted_pvalues[name]

    def summary(self) -> str:
        name, p = self.worst
        verdict = "PASSED" if self.passed else "REJECTED"
        return (
            f"{verdict} at alpha={self.alpha:g} (samples={self.samples}, {len(self.ks_pvalue)} projections, Holm-corrected): "
            f"most significant test {name} with adjusted p={p:.3g}; max KS distance {self.max_ks:.4f}; "
            f"mean chi2={self.mean_chi2:.3g} (p={self.mean_pvalue:.3g}); second-moment |z| max "
            f"{np.abs(self.m2_z).max():.3g}; mean error {np.array2string(self.mean_error, precision=4)}; "
            f"relative covariance error {self.cov_error:.3g}."
        )


def _reference_moments(ref: GaussianMixture):
    w, mu, S = ref.weights, ref.means, ref.covs
    m = (w[:, None] * mu).sum(0)
    C = (w[:, None, None] * (S + mu[:, :, None] * mu[:, None, :])).sum(0) - m[:, None] * m[None, :]
    return m, C


def _holm(pvals: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values."""
    m = len(pvals)
    order = np.argsort(pvals)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvals[i]))
        adj[i] = running
    return adj


def required_samples(reference: GaussianMixture, min_effect: float, *, alpha: float = 0.01, power: float = 0.9,
                     n_projections: int = 8) -> int:
    """Samples needed so that the mean test alone detects a mean shift of ``min_effect``
    (Mahalanobis units: ``|Sigma^{-1/2} (m' - m)|``, i.e. reference standard deviations
    along the shift) with probability ``power`` at the Bonferroni level ``alpha / (2P + 1)``.

    Uses the noncentral chi^2 law of the mean statistic (noncentrality ``n min_effect^2``).
    """
    from scipy import stats

    D = reference.dim
    level = alpha / (2 * n_projections + 1)
    crit = stats.chi2.isf(level, D)
    n = MIN_SAMPLES
    while stats.ncx2.sf(crit, D, n * min_effect ** 2) < power:
        n = int(math.ceil(n * 1.25))
    lo = max(MIN_SAMPLES, int(n / 1.25))
    while lo < n:  # bisect down to the smallest sufficient n
        mid = (lo + n) // 2
        if stats.ncx2.sf(crit, D, mid * min_effect ** 2) >= power:
            n = mid
        else:
            lo = mid + 1
    return n


def check_marginals(x: torch.Tensor, reference: GaussianMixture, *, alpha: float = 0.01,
                    n_projections: int = 8, generator=0, min_effect: Optional[float] = None,
                    power: float = 0.9) -> MarginalsResult:
    """Test whether the samples ``x`` are i.i.d. draws from ``reference``.

    Arguments:
        x: ``(n, *event)`` samples with ``prod(event) = D``; any float dtype.
        reference: a :class:`GaussianMixture` (for time ``t``: ``mixture.marginal(schedule, t)``).
        alpha: family-wise false-alarm rate (probability of rejecting exact samples).
        n_projections: number ``P`` of random 1-D projections.
        generator: the projection directions' randomness: an int seed (default 0; same seed, same
            test) or a ``torch.Generator``.
        min_effect: if given, require enough samples to detect a mean shift of this
            many reference standard deviations with probability ``power``
            (:func:`required_samples`); raises :class:`flowsde.InputError` otherwise.
        power: see ``min_effect``.

    Returns:
        :class:`MarginalsResult` (``.passed``, p-values, statistics, ``.summary()``).

    Raises:
        InputError: non-finite samples, wrong shapes, fewer than 30 samples, or too few
            for the requested power.
    """
    from scipy import special, stats

    if not isinstance(reference, GaussianMixture):
        raise InputError(f"reference: expected a GaussianMixture (e.g. mixture.marginal(schedule, t)), got "
                         f"{type(reference).__name__}.")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise InputError(f"x: expected a tensor of samples (n, *event), got {type(x).__name__}.")
    D = reference.dim
    if x[0].numel() != D:
        raise InputError(f"x: shape {tuple(x.shape)} is not (n, *event) with prod(event) = {D} "
                         "(the reference's dimension).")
    if not (0 < alpha < 1):
        raise InputError(f"alpha={alpha!r}: must be in (0, 1).")
    if not (isinstance(n_projections, int) and n_projections >= 1):
        raise InputError(f"n_projections={n_projections!r}: must be an int >= 1.")
    x = x.detach().reshape(x.shape[0], D).to("cpu", torch.float64)
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise InputError(f"x: {len(bad)} of {x.shape[0]} samples are non-finite (indices {bad[:10]}"
                         f"{' ...' if len(bad) > 10 else ''}); the sampler diverged or produced NaN.")
    n = x.shape[0]
    if n < MIN_SAMPLES:
        raise InputError(f"x: n={n} is too few; the CLT moment tests need n >= {MIN_SAMPLES}.")
    if min_effect is not None:
        need = required_samples(reference, min_effect, alpha=alpha, power=power, n_projections=n_projections)
        if n < need:
            raise InputError(f"x: n={n} is too few to detect a mean shift of {min_effect} standard deviations "
                             f"with power {power} at alpha={alpha} ({n_projections} projections); need n >= {need}.")

    gen = as_generator(generator)
    U = torch.randn(n_projections, D, generator=gen, dtype=torch.float64)
    U = U / U.norm(dim=1, keepdim=True)
    w = reference.weights.cpu().numpy()
    mu = reference.means.cpu().to(torch.float64)
    S = reference.covs.cpu().to(torch.float64)
    pm = (U @ mu.T).numpy()  # (P, K) projected means
    pv = torch.einsum("pd,kde,pe->pk", U, S, U).numpy()  # (P, K) projected variances
    ys = (x @ U.T).numpy()  # (n, P)

    ks_stat, ks_p, m2_z = np.empty(n_projections), np.empty(n_projections), np.empty(n_projections)
    for p in range(n_projections):
        m_k, v_k = pm[p], pv[p]
        sd_k = np.sqrt(v_k)

        def cdf(y, m_k=m_k, sd_k=sd_k):
            y = np.asarray(y, dtype=np.float64)[..., None]
            return (w * special.ndtr((y - m_k) / sd_k)).sum(-1)

        r = stats.kstest(ys[:, p], cdf)
        ks_stat[p], ks_p[p] = r.statistic, r.pvalue
        e2 = float((w * (m_k ** 2 + v_k)).sum())
        e4 = float((w * (m_k ** 4 + 6 * m_k ** 2 * v_k + 3 * v_k ** 2)).sum())
        m2_z[p] = (float(np.mean(ys[:, p] ** 2)) - e2) / math.sqrt((e4 - e2 ** 2) / n)
    m2_p = 2 * special.ndtr(-np.abs(m2_z))

    m_ref, C_ref = _reference_moments(reference)
    m_ref, C_ref = m_ref.cpu().to(torch.float64), C_ref.cpu().to(torch.float64)
    dm = x.mean(0) - m_ref
    chi2 = float(n * dm @ torch.linalg.solve(C_ref, dm))
    mean_p = float(stats.chi2.sf(chi2, D))
    C_hat = np.cov(x.numpy(), rowvar=False).reshape(D, D)
    cov_err = float(np.linalg.norm(C_hat - C_ref.numpy()) / np.linalg.norm(C_ref.numpy()))

    names = [f"ks[{i}]" for i in range(n_projections)] + [f"m2[{i}]" for i in range(n_projections)] + ["mean"]
    adj = _holm(np.concatenate([ks_p, m2_p, [mean_p]]))
    adjusted = dict(zip(names, adj.tolist()))
    return MarginalsResult(
        passed=bool((adj > alpha).all()), alpha=float(alpha), samples=n, projections=U.numpy(),
        ks_statistic=ks_stat, ks_pvalue=ks_p, m2_z=m2_z, m2_pvalue=m2_p, mean_chi2=chi2, mean_pvalue=mean_p,
        adjusted_pvalues=adjusted, mean_error=dm.numpy(), cov_error=cov_err,
    )


def assert_marginals(x: torch.Tensor, reference: GaussianMixture, **kwargs) -> MarginalsResult:
    """:func:`check_marginals`, raising ``AssertionError`` with its summary when it rejects.

    The message names the most significant test (KS on projection ``i``, the
    second moment on projection ``i``, or the mean), its direction, its Holm-adjusted
    p-value, and the sample vs reference mean and variance along that direction.
    """
    res = check_marginals(x, reference, **kwargs)
    if not res.passed:
        name, p = res.worst
        detail = ""
        if name != "mean":
            i = int(name[name.index("[") + 1:-1])
            u = res.projections[i]
            y = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy() @ u
            w = reference.weights.cpu().numpy()
            m_k = reference.means.cpu().numpy() @ u
            v_k = np.einsum("d,kde,e->k", u, reference.covs.cpu().numpy(), u)
            m = float((w * m_k).sum())
            v = float((w * (v_k + m_k ** 2)).sum()) - m * m
            detail = (f" Along direction {np.array2string(u, precision=3)}: sample mean {y.mean():.4g} vs "
                      f"reference {m:.4g}, sample variance {y.var():.4g} vs reference {v:.4g}"
                      f"{', KS distance %.4f' % res.ks_statistic[i] if name.startswith('ks') else ''}.")
        raise AssertionError("samples do not follow the reference marginal: " + res.summary() + detail)
    return res


def sliced_w2(a: torch.Tensor, b: torch.Tensor, *, n_projections: int = 64, generator=0) -> float:
    """Sliced Wasserstein-2 distance between two equally sized sample sets ``(n, *event)``.

    ``sqrt(mean_theta W2(theta.a, theta.b)^2)`` over ``n_projections`` random unit
    directions (drawn from ``generator``: an int seed, default 0, or a ``torch.Generator``), each 1-D W2 from sorted projections
    (Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters of measures").
    """
    a = a.detach().reshape(a.shape[0], -1).to("cpu", torch.float64)
    b = b.detach().reshape(b.shape[0], -1).to("cpu", torch.float64)
    if a.shape != b.shape:
        raise InputError(f"sliced_w2: the sample sets must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    theta = torch.randn(a.shape[1], n_projections, generator=as_generator(generator), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = (a @ theta).sort(0)
    pb, _ = (b @ theta).sort(0)
    return float(((pa - pb) ** 2).mean().sqrt())
