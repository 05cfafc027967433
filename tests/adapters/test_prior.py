"""GaussianPrior: exact log-density and the meta-device refusal of its entry points."""

import math

import pytest
import torch

from flowsde import InputError
from flowsde.adapters import GaussianPrior


def test_log_prob_is_the_exact_gaussian_density():
    p = GaussianPrior(2.0)
    x = torch.tensor([[0.0, 0.0], [1.0, -3.0]], dtype=torch.float64)
    expected = torch.tensor([0.0, -0.5 * 10.0 / 4.0], dtype=torch.float64) - math.log(2 * math.pi * 4.0)
    torch.testing.assert_close(p.log_prob(x), expected, rtol=0, atol=1e-15)


def test_meta_tensors_and_device_are_refused():
    p = GaussianPrior(1.5)
    with pytest.raises(InputError, match=r"prior.log_prob: x is on the 'meta' device; .*to_empty"):
        p.log_prob(torch.zeros(3, 2, device="meta"))
    for device in ("meta", torch.device("meta")):
        with pytest.raises(InputError, match=r"prior.sample: device=.*'meta' device"):
            p.sample((3, 2), device=device)
    assert p.sample((3, 2), generator=torch.Generator().manual_seed(0)).shape == (3, 2)
