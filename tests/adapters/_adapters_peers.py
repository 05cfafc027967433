"""Helpers of the adapters' peer tests (imported by them: ``from _adapters_peers import ...``)."""

import pytest

from flowsde.validation import k_diffusion_sampling


def kd_sampling():
    """k-diffusion's ``sampling`` module (an anchor that ``make test`` installs); skips where it is absent."""
    try:
        kd = k_diffusion_sampling()
    except ImportError as e:
        pytest.skip(f"k-diffusion's sampling.py could not be loaded: {e}")
    if kd is None:
        pytest.skip("k-diffusion is not installed")
    return kd
