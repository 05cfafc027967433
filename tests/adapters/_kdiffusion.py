"""Load the installed k-diffusion's ``sampling.py`` without its package ``__init__`` (which needs
PIL/torchvision/skimage). Returns the module, or ``None`` when k-diffusion is not installed;
raises ImportError when ``sampling.py`` itself cannot be imported (scipy, torchdiffeq, torchsde)."""

import importlib.util
import sys
import types


def load_kdiffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")  # does not execute the package __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("_kd_stub")
    pkg.__path__ = [root]
    utils = types.ModuleType("_kd_stub.utils")  # the real utils imports PIL/torchvision
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    saved = {k: sys.modules.get(k) for k in ("_kd_stub", "_kd_stub.utils")}
    sys.modules["_kd_stub"], sys.modules["_kd_stub.utils"] = pkg, utils
    try:
        s = importlib.util.spec_from_file_location("_kd_stub.sampling", f"{root}/sampling.py")
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod
