"""flowsde.validation.k_diffusion_sampling (the one loader of k-diffusion's sampling.py) and the
shared exact likelihood problems (likelihood_mixture, schedule_predictions)."""

import importlib.util
import sys

import pytest
import torch

from flowsde import InputError
from flowsde.validation import GaussianMixture, likelihood_mixture, peers, schedule_predictions


def test_k_diffusion_sampling_loads_without_the_package_init():
    try:
        kd = peers.k_diffusion_sampling()
    except ImportError as e:
        pytest.skip(str(e))
    assert callable(kd.sample_heun) and callable(kd.get_sigmas_karras)
    assert peers.k_diffusion_sampling() is kd  # loaded once
    fresh = peers.k_diffusion_sampling(reload=True)  # executed again: a new module, kept from now on
    assert fresh is not kd and peers.k_diffusion_sampling() is fresh and callable(fresh.sample_heun)
    # sys.modules left as it was: neither the module nor the stub package it was loaded under stays
    stub = fresh.__name__.rpartition(".")[0]
    assert stub and not [k for k in sys.modules if k == stub or k.startswith(stub + ".")]
    # its sigma grid, checked against the formula of Karras et al. (2022), eq. 5
    s = kd.get_sigmas_karras(4, 0.002, 80.0, rho=7.0, device="cpu")
    i = torch.arange(4, dtype=torch.float64)
    ref = (80.0 ** (1 / 7) + i / 3 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s[:4].double(), ref, rtol=1e-6, atol=0)
    assert float(s[4]) == 0.0


def test_k_diffusion_sampling_absent_raises_import_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "k_diffusion" else real(name, *a))
    # reload=True looks for the package again even when an earlier test loaded it
    with pytest.raises(ImportError, match=r"k_diffusion_sampling: k-diffusion is not installed; install it with pip"):
        peers.k_diffusion_sampling(reload=True)


def test_likelihood_mixture_is_seeded_and_checks_its_arguments():
    (a, ga), (b, gb) = likelihood_mixture(3), likelihood_mixture(3)
    assert isinstance(a, GaussianMixture) and a.dim == 3
    assert torch.equal(a.sample(4, generator=ga), b.sample(4, generator=gb))
    c, _ = likelihood_mixture(3, K=2, generator=1)
    assert not torch.equal(c.sample(4, generator=torch.Generator().manual_seed(0)),
                           a.sample(4, generator=torch.Generator().manual_seed(0)))
    for kw in (dict(d=0), dict(d=2.0), dict(d=2, K=4), dict(d=2, K=0)):
        with pytest.raises(InputError, match="likelihood_mixture: (d|K) must be"):
            likelihood_mixture(**kw)
    assert [p for _, p in schedule_predictions()] == ["eps", "score", "x0", "velocity"]
