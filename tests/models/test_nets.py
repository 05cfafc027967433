"""The architecture: an untrained GaussianResidualMLP is exactly the Gaussian model (closed form)."""

import pytest
import torch

import flowsde
from flowsde.adapters import VP
from flowsde.models import GaussianResidualMLP


def _gaussian(D, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    return torch.randn(D, generator=g, dtype=torch.float64), A @ A.T / D + 0.1 * torch.eye(D, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["eps-vp", "velocity-fm"])
def test_untrained_network_is_the_gaussian_posterior(kind):
    D, B = 5, 7
    mu, C = _gaussian(D)
    net = GaussianResidualMLP(D, kind=kind, width=16, depth=2, bound=4.0, gate=True).double()
    net.set_gaussian(mu, C)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.98 + 0.01
    if kind == "eps-vp":
        a, s = VP().alpha(t), VP().sigma(t)
    else:  # flow-matching time: x_s = s x_0 + (1 - s) eps
        a, s = t, 1 - t
    out = net(x, t)
    for i in range(B):
        K = a[i] ** 2 * C + s[i] ** 2 * torch.eye(D, dtype=torch.float64)  # Cov(x_t)
        w = torch.linalg.solve(K, x[i] - a[i] * mu)
        eps = s[i] * w  # E[eps | x_t]
        x0 = mu + a[i] * C @ w  # E[x_0 | x_t]
        want = eps if kind == "eps-vp" else x0 - eps
        torch.testing.assert_close(out[i], want, rtol=1e-10, atol=1e-10)


def test_residual_is_bounded_and_gated():
    D = 3
    net = GaussianResidualMLP(D, kind="eps-vp", width=8, depth=1, bound=2.0, gate=True).double()
    net.set_gaussian(*_gaussian(D))
    torch.nn.init.normal_(net.out.weight, std=100.0)  # a wild residual
    ref = GaussianResidualMLP(D, kind="eps-vp", width=8, depth=1).double()
    ref.load_state_dict(net.state_dict())
    torch.nn.init.zeros_(ref.out.weight)
    torch.nn.init.zeros_(ref.out.bias)
    x = torch.randn(64, D, dtype=torch.float64) * 10
    t = torch.linspace(1e-3, 1, 64, dtype=torch.float64)
    with torch.no_grad():
        res = net(x, t) - ref(x, t)
    assert float(res.abs().max()) <= 2.0
    lam = VP().log_snr(t)
    low = lam < -10  # gate sigmoid(lambda + 4) < 2.5e-3
    assert bool(low.any()) and float(res[low].abs().max()) <= 2.0 * torch.sigmoid(lam[low] + 4).max() + 1e-12


def test_bad_arguments():
    for kw in (dict(kind="score"), dict(kind="eps-vp", width=0), dict(kind="eps-vp", dropout=1.0),
               dict(kind="eps-vp", inputs="y"), dict(kind="eps-vp", bound=-1.0)):
        with pytest.raises(flowsde.InputError):
            GaussianResidualMLP(4, **kw)
    net = GaussianResidualMLP(2, kind="eps-vp")
    with pytest.raises(flowsde.InputError, match="singular"):
        net.set_gaussian(torch.zeros(2), torch.zeros(2, 2))
    with pytest.raises(flowsde.InputError, match="expected mean"):
        net.set_gaussian(torch.zeros(3), torch.eye(3))
