"""check_marginals: false-alarm rate, power, and bad input.

All randomness is seeded, so each test is deterministic; the stated
probabilities are those of the test failing for a fresh seed.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from _vhelpers import mixture_2d
from flowsde import InputError
from flowsde.validation import GaussianMixture, assert_marginals, check_marginals, required_samples

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _moments(gm):
    m = (gm.weights[:, None] * gm.means).sum(0)
    C = (gm.weights[:, None, None] * (gm.covs + gm.means[:, :, None] * gm.means[:, None, :])).sum(0) - torch.outer(m, m)
    return m, C


def test_exact_samples_pass_and_result_fields():
    gm = mixture_2d()
    res = check_marginals(gm.sample(4000, generator=_gen(0)), gm, alpha=0.01, generator=3)
    # false alarm for a fresh seed: <= alpha = 1%
    assert res.passed, res.summary()
    assert res.ks_pvalue.shape == (8,) and res.projections.shape == (8, 2)
    assert np.allclose(np.linalg.norm(res.projections, axis=1), 1.0)
    assert set(res.adjusted_pvalues) == {f"ks[{i}]" for i in range(8)} | {f"m2[{i}]" for i in range(8)} | {"mean"}
    # Holm-adjusted p-values are >= raw ones
    assert res.adjusted_pvalues["mean"] >= res.mean_pvalue
    # same seed, same test
    again = check_marginals(gm.sample(4000, generator=_gen(0)), gm, alpha=0.01, generator=3)
    assert np.array_equal(again.ks_pvalue, res.ks_pvalue)


@pytest.mark.parametrize("kind", ["mean_shift", "variance"])
def test_power_against_stated_perturbations(kind):
    """n = 4000: a mean shift of 0.2 standard deviations (along the least-variance axis) and a
    variance inflation x1.2 are rejected. Expected z-scores ~ 0.2 sqrt(4000) = 12.6 and
    0.2 / sqrt(2 / 4000) ~ 9 (Gaussian kurtosis): the miss probability is < 1e-6 for both."""
    gm = mixture_2d()
    x = gm.sample(4000, generator=_gen(1))
    m, C = _moments(gm)
    if kind == "mean_shift":
        ev, V = torch.linalg.eigh(C)
        x = x + 0.2 * ev[-1].sqrt() * V[:, -1]
    else:
        x = m + (x - m) * math.sqrt(1.2)
    res = check_marginals(x, gm, alpha=0.01)
    assert not res.passed
    with pytest.raises(AssertionError, match="do not follow the reference marginal.*Along direction|mean"):
        assert_marginals(x, gm, alpha=0.01)


def test_wrong_mixture_weights_rejected():
    """Same components, weights 0.3/0.7 -> 0.4/0.6: a different distribution with close moments."""
    gm = mixture_2d()
    other = GaussianMixture(torch.tensor([0.4, 0.6]), gm.means, gm.covs)
    res = check_marginals(other.sample(4000, generator=_gen(2)), gm)
    assert not res.passed, res.summary()


@pytest.mark.slow
def test_false_alarm_rate_binomial_bound():
    """100 independent exact-sample checks at alpha = 0.05 (n = 300, 4-D mixture of 3): the number of
    rejections is Binomial(100, q) with q <= 0.05 if the test keeps its level; failing at >= 13 rejections
    has probability P(Binom(100, 0.05) >= 13) = 1.1e-3 for a correct test."""
    g = _gen(10)
    gm = GaussianMixture(torch.tensor([1.0, 2.0, 3.0]), torch.randn(3, 4, generator=g, dtype=F64),
                         torch.stack([torch.eye(4, dtype=F64) * v for v in (0.2, 0.5, 1.5)]))
    runs, alpha = 100, 0.05
    rejections = sum(not check_marginals(gm.sample(300, generator=_gen(1000 + s)), gm, alpha=alpha, generator=s).passed
                     for s in range(runs))
    k = 13
    assert stats.binom.sf(k - 1, runs, alpha) < 2e-3
    assert rejections < k, f"{rejections}/{runs} false alarms at alpha={alpha}"


def test_bad_input():
    gm = mixture_2d()
    x = gm.sample(100, generator=_gen(0))
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(InputError, match=r"non-finite \(indices \[7\]"):
        check_marginals(bad, gm)
    with pytest.raises(InputError, match="too few"):
        check_marginals(x[:10], gm)
    with pytest.raises(InputError, match="too few to detect a mean shift of 0.1"):
        check_marginals(x, gm, min_effect=0.1)
    with pytest.raises(InputError, match="prod"):
        check_marginals(torch.zeros(100, 3), gm)
    with pytest.raises(InputError, match="GaussianMixture"):
        check_marginals(x, "normal")
    with pytest.raises(InputError, match="alpha"):
        check_marginals(x, gm, alpha=1.5)
    # the power requirement is consistent with the noncentral chi^2 law
    n = required_samples(gm, 0.2, alpha=0.01, power=0.9)
    crit = stats.chi2.isf(0.01 / 17, 2)
    assert stats.ncx2.sf(crit, 2, n * 0.04) >= 0.9 > stats.ncx2.sf(crit, 2, (n - 1) * 0.04)
    check_marginals(gm.sample(n, generator=_gen(0)), gm, min_effect=0.2)  # enough: no error
