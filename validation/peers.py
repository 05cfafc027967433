"""The reference implementations flowsde is compared against, loaded for tests and benchmarks.

:func:`k_diffusion_sampling` loads k-diffusion's ``sampling.py`` without its package
``__init__``, which needs scikit-image (and PIL, torchvision, clean-fid, wandb): the one
loader the tests (``tests/adapters``, ``tests/samplers``) and the benchmarks
(``benchmarks/bench_samplers.py``, ``bench_scale.py``, ``bench_likelihood_image.py``) use.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["k_diffusion_sampling"]

_STUB = "_flowsde_kdiffusion_stub"  # the package name sampling.py is loaded under
_CACHE: dict = {}

_INSTALL = ("install it with pip install --no-deps k-diffusion==0.1.1.post1 (its sampling.py also needs scipy, "
            "torchdiffeq, torchsde, tqdm)")


def k_diffusion_sampling(*, reload: bool = False) -> types.ModuleType:
    """k-diffusion's ``sampling.py`` as a module (``sample_heun``, ``sample_lms``, ``get_sigmas_karras``,
    ...), loaded without its package ``__init__``, which needs scikit-image.

    The file is executed alone under a stub package whose ``utils`` holds the one helper it uses
    (``append_dims``; the real ``utils`` imports PIL/torchvision); ``sys.modules`` is left as it was.
    The module is loaded once per process and kept; later calls return that module.

    Arguments:
        reload: load the file again (a new module object, kept for later calls), e.g. after
            installing or upgrading k-diffusion in a running process. If loading fails, the
            module kept before (if any) stays.

    Raises:
        ImportError: k-diffusion is not installed, or its ``sampling.py`` cannot be imported (it needs
            scipy, torchdiffeq, torchsde, tqdm); the message says which and how to install it. Tests
            turn it into ``pytest.skip``.
    """
    if "sampling" in _CACHE and not reload:
        return _CACHE["sampling"]
    spec = importlib.util.find_spec("k_diffusion")  # does not execute the package __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k_diffusion_sampling: k-diffusion is not installed; {_INSTALL}.")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType(_STUB)
    pkg.__path__ = [root]
    utils = types.ModuleType(f"{_STUB}.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    saved = {k: sys.modules.get(k) for k in (_STUB, f"{_STUB}.utils")}
    sys.modules[_STUB], sys.modules[f"{_STUB}.utils"] = pkg, utils
    try:
        s = importlib.util.spec_from_file_location(f"{_STUB}.sampling", f"{root}/sampling.py")
        if s is None or s.loader is None:
            raise ImportError(f"k_diffusion_sampling: no sampling.py in the installed k-diffusion at {root}; "
                              f"{_INSTALL}.")
        mod = importlib.util.module_from_spec(s)
        try:
            s.loader.exec_module(mod)
        except (ImportError, FileNotFoundError) as e:
            raise ImportError(f"k_diffusion_sampling: k-diffusion's sampling.py ({root}) could not be imported: "
                              f"{e}; {_INSTALL}.") from e
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    _CACHE["sampling"] = mod
    return mod
