"""k-diffusion's ``sampling.py`` for the adapters' tests: the one loader,
:func:`flowsde.validation.k_diffusion_sampling` (loads it without the package ``__init__``, which
needs scikit-image; raises ImportError with the reason when k-diffusion is absent)."""

import pytest

from flowsde.validation import k_diffusion_sampling

#: the loader under the name the adapters' tests import (raises ImportError; callers skip on it)
load_kdiffusion_sampling = k_diffusion_sampling


def kdiffusion_sampling_or_skip():
    """The module, or ``pytest.skip`` with the loader's message."""
    try:
        return k_diffusion_sampling()
    except ImportError as e:
        pytest.skip(str(e))
