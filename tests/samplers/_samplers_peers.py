"""The peers the samplers are proven against, loaded without their heavy package imports."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from flowsde.validation import GaussianMixture

F64 = torch.float64


def kdiffusion_sampling():
    """k-diffusion's ``sampling.py`` as a module, or ``pytest.skip`` with the reason.

    Its package ``__init__`` imports PIL, torchvision, clean-fid, wandb (and skimage), so the
    file is loaded alone under a stub package whose ``utils`` has the one helper it uses
    (``append_dims``), as ``tests/adapters/test_edm.py`` does."""
    spec = importlib.util.find_spec("k_diffusion")  # does not execute the package __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (test extra: pip install --no-deps k-diffusion==0.1.1.post1)")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("_kd_samplers_stub")
    pkg.__path__ = [root]
    utils = types.ModuleType("_kd_samplers_stub.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    saved = {k: sys.modules.get(k) for k in ("_kd_samplers_stub", "_kd_samplers_stub.utils")}
    sys.modules["_kd_samplers_stub"], sys.modules["_kd_samplers_stub.utils"] = pkg, utils
    try:
        s = importlib.util.spec_from_file_location("_kd_samplers_stub.sampling", f"{root}/sampling.py")
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    except ImportError as e:  # its sampling.py needs scipy, torchdiffeq, torchsde, tqdm
        pytest.skip(f"k-diffusion's sampling.py could not be loaded: {e}")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


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
