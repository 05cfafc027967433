"""The shipped models are trained models: the digits models beat a full-covariance Gaussian in
bits/dim on held-out digits, and the moons model's samples land on the moons."""

import math

import pytest
import torch

import flowsde
import flowsde.models as M
from flowsde.validation import sliced_w2

N_TEST = 32  # the first 32 digits of the test split (fixed), evaluated with the exact trace
LEVELS, RANGE = M.DIGITS_LEVELS, M.DIGITS_RANGE


def _se(v):
    return float(v.std()) / math.sqrt(len(v))


@pytest.mark.parametrize("name", ["digits-eps", "digits-velocity"])
def test_digits_model_beats_full_covariance_gaussian(name):
    assert (M.info(name).levels, M.info(name).data_range) == (LEVELS, RANGE)
    x = M.digits("test")[:N_TEST]
    xq = M.dequantize_digits(x, generator=torch.Generator().manual_seed(0))  # the same noise for both models
    gauss = flowsde.bits_per_dim(M.digits_gaussian().log_prob(xq), 64, levels=LEVELS, data_range=RANGE)
    res = M.load(name).log_likelihood(xq.float(), rtol=1e-4, atol=1e-4)
    assert res.success
    model = flowsde.bits_per_dim(res.logp.double(), 64, levels=LEVELS, data_range=RANGE)
    d = model - gauss
    print(f"\n{name}: {float(model.mean()):.3f} +- {_se(model):.3f} bits/dim; full-covariance Gaussian "
          f"{float(gauss.mean()):.3f} +- {_se(gauss):.3f}; paired difference {float(d.mean()):.3f} +- {_se(d):.3f} "
          f"(first {N_TEST} test digits, one dequantization, exact trace, rtol = atol = 1e-4)")
    assert float(d.mean()) + 3 * _se(d) < 0


def test_gaussian_baseline_is_the_fit():
    """The baseline is the maximum-likelihood Gaussian of the dequantized training digits, ~2.94 bits/dim."""
    g = M.digits_gaussian()
    y = torch.cat([M.dequantize_digits(M.digits("train"), generator=torch.Generator().manual_seed(5))
                   for _ in range(10)])
    assert torch.allclose(g.mean, y.mean(0), atol=3e-3)
    assert torch.allclose(g.covariance_matrix, torch.cov(y.T), atol=3e-3)
    xq = M.dequantize_digits(M.digits("test"), generator=torch.Generator().manual_seed(0))
    bpd = flowsde.bits_per_dim(g.log_prob(xq), 64, levels=LEVELS, data_range=RANGE)
    assert abs(float(bpd.mean()) - 2.94) < 3 * _se(bpd)


def test_moons_samples_land_on_the_data():
    dif = M.load("moons", net_dtype=torch.float64)
    t0, T = M.info("moons").t_range
    n = 2000
    z = dif.prior().sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.linspace(T, t0, 101, dtype=torch.float64)
    xs = flowsde.solve(dif.pf_ode(), z, ts, method="heun").x
    data, data2 = M.toy_data("moons", n, generator=100), M.toy_data("moons", n, generator=101)
    model_d, floor, prior_d = (sliced_w2(a, data, n_projections=128) for a in (xs, data2, z))
    print(f"\nmoons: sliced W2 to data {model_d:.4f}; data vs data (noise floor) {floor:.4f}; prior {prior_d:.4f}")
    assert model_d < 4 * floor
    assert model_d < 0.1 * prior_d
