"""Exact likelihood problems shared by flowsde's likelihood tests and benchmarks.

A random full-covariance Gaussian mixture has a closed-form marginal ``log p_t`` under every
schedule (:class:`flowsde.validation.GaussianMixture`), and its oracle networks make the solver's
error the only error of ``Diffusion.log_likelihood``. ``tests/adapters/test_adapter_likelihood.py``,
``tests/adapters/test_likelihood_engines.py`` and ``benchmarks/bench_likelihood_estimate.py`` (whose
figures are in ``docs/likelihood.md``) all use these two functions, so they measure the same problems.
"""

from __future__ import annotations

import math

import torch

from flowsde import InputError
from flowsde._internal import as_generator
from flowsde.adapters import EDM, VE, VP, Linear

from .references import GaussianMixture

__all__ = ["likelihood_mixture", "schedule_predictions"]

_WEIGHTS = (0.5, 0.3, 0.2)


def likelihood_mixture(d: int, K: int = 3, *, generator=0, dtype: torch.dtype = torch.float64):
    """``(mixture, generator)``: ``K`` (1-3) Gaussians in ``d`` dimensions with means ``1.5 N(0, I)``,
    full covariances ``0.3 A A^T + 0.05 I`` (``A`` with ``N(0, 1/d)`` entries) and weights
    ``0.5, 0.3, 0.2`` (the first ``K``, normalised), drawn from ``generator`` (an int seed, default 0,
    or a ``torch.Generator``); the generator is returned after those draws, for drawing the samples."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise InputError(f"likelihood_mixture: d must be a positive int, got {d!r}.")
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= len(_WEIGHTS):
        raise InputError(f"likelihood_mixture: K must be an int in 1..{len(_WEIGHTS)}, got {K!r}.")
    g = as_generator(generator)
    means = 1.5 * torch.randn(K, d, generator=g, dtype=dtype)
    A = torch.randn(K, d, d, generator=g, dtype=dtype) / math.sqrt(d)
    covs = 0.3 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=dtype)
    w = torch.tensor(_WEIGHTS[:K], dtype=dtype)
    return GaussianMixture(w / w.sum(), means, covs, dtype=dtype), g


def schedule_predictions():
    """One prediction type per schedule, so the conversions are exercised too (new instances per call):
    ``[(VP(), "eps"), (VE(), "score"), (EDM(), "x0"), (Linear(), "velocity")]``."""
    return [(VP(), "eps"), (VE(), "score"), (EDM(), "x0"), (Linear(), "velocity")]
