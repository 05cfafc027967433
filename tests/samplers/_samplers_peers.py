"""The peers the samplers are proven against, loaded without their heavy package imports."""

from __future__ import annotations

import pytest
import torch

from flowsde.validation import GaussianMixture, k_diffusion_sampling

F64 = torch.float64


def kdiffusion_sampling():
    """k-diffusion's ``sampling.py`` as a module (:func:`flowsde.validation.k_diffusion_sampling`, which
    loads it without the package ``__init__``), or ``pytest.skip`` with the loader's reason."""
    try:
        return k_diffusion_sampling()
    except ImportError as e:
        pytest.skip(str(e))


def diffusers_schedulers():
    """``diffusers`` or ``pytest.skip``."""
    return pytest.importorskip("diffusers", reason="diffusers is not installed (test extra)")


def mixture() -> GaussianMixture:
    """A 2-D two-component mixture with correlated covariances (the exact denoiser is nonlinear)."""
    return GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]]),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]]),
    )


def nonlinear_denoiser(x, sigma):
    """A deterministic, non-trivial k-diffusion style denoiser ``model(x, sigma)`` (``sigma`` ``(B,)``)."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))) if sigma.dim() else sigma
    return torch.tanh(x) / (1 + s) + 0.1 * torch.sin(3 * x) * s / (1 + s ** 2)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
