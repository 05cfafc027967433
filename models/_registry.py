"""The registry of shipped models: names, descriptions, how each becomes a ``Diffusion``."""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from typing import Callable, Dict, Optional, Tuple

import torch

from flowsde import InputError
from flowsde.adapters import VP, Diffusion, Linear, Schedule, from_flow_matching

from ._data import DIGITS_LEVELS, DIGITS_RANGE
from ._nets import GaussianResidualMLP

__all__ = ["ModelInfo", "names", "info", "load", "weights_path"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a shipped model is.

    Attributes:
        name: registry name (``flowsde.models.load(name)``).
        description: one line.
        event_shape: shape of one sample, e.g. ``(64,)``.
        levels: quantization bins of the data (17 for the digits, ``None`` for continuous data).
        data_range: ``(lo, hi)`` the discrete data are mapped to (``None`` for continuous data).
        schedule: the :class:`flowsde.adapters.Schedule` of the returned ``Diffusion``.
        prediction: what the ``Diffusion``'s network predicts (``"eps"``, ``"velocity"``).
        t_range: ``(schedule.t_min, schedule.t_max)``: integrate / sample inside it.
        data: where the data come from (``flowsde.models.digits`` / ``toy_data``).
        weights: name of the weights under ``flowsde/models/weights/``: a ``.safetensors`` file, or for a
            diffusers model the folder ``DDPMPipeline.save_pretrained`` wrote (``model_index.json``,
            ``unet/``, ``scheduler/``), loaded through :func:`flowsde.adapters.from_diffusers`.
    """

    name: str
    description: str
    event_shape: Tuple[int, ...]
    levels: Optional[int]
    data_range: Optional[Tuple[float, float]]
    schedule: Schedule
    prediction: str
    t_range: Tuple[float, float]
    data: str
    weights: str


def _vp_eps(net: GaussianResidualMLP, schedule: VP) -> Diffusion:
    c = net.config
    if c["kind"] != "eps-vp" or (c["beta_min"], c["beta_max"]) != (schedule.beta_min, schedule.beta_max):
        raise InputError(f"weights of kind {c['kind']!r} (beta {c['beta_min']}..{c['beta_max']}) do not match "
                         f"{schedule!r}; retrain with scripts/train_models.py.")
    return Diffusion(net, schedule, prediction="eps")


def _fm_velocity(net: GaussianResidualMLP, schedule: Linear) -> Diffusion:
    if net.config["kind"] != "velocity-fm":
        raise InputError(f"weights of kind {net.config['kind']!r} are not a flow-matching velocity network; "
                         "retrain with scripts/train_models.py.")
    return from_flow_matching(net, "cond_ot", t_min=schedule.t_min, t_max=schedule.t_max)


def _diffusers_config(name: str, folder) -> dict:
    """The ``scheduler_config.json`` of a shipped diffusers pipeline folder."""
    path = folder.joinpath("scheduler", "scheduler_config.json")
    if not path.is_file():
        raise InputError(f"load({name!r}): {path} is missing; reinstall flowsde or rerun "
                         "`python scripts/train_diffusers_digits.py`.")
    return json.loads(path.read_text())


def _need_diffusers(name: str):
    try:
        import diffusers
    except ImportError:
        raise InputError(f"model {name!r} is a diffusers pipeline and needs diffusers: pip install "
                         "'flowsde[diffusers]'.") from None
    return diffusers


@functools.lru_cache(maxsize=None)
def _diffusers_schedule(name: str) -> Schedule:
    """The schedule :func:`flowsde.adapters.from_diffusers` reads from a shipped pipeline's scheduler (no weights)."""
    from flowsde.adapters import from_diffusers

    _need_diffusers(name)
    return from_diffusers(lambda x, timestep: x, _diffusers_config(name, weights_path(name))).schedule


def _load_diffusers(name: str, device, net_dtype: torch.dtype) -> Diffusion:
    """A shipped diffusers pipeline folder as a ``Diffusion``: ``UNet2DModel.from_pretrained`` (offline) and
    :func:`flowsde.adapters.from_diffusers` on its scheduler config, as for a user's folder."""
    import logging
    import warnings

    from flowsde.adapters import from_diffusers

    diffusers = _need_diffusers(name)
    folder = weights_path(name)
    config = _diffusers_config(name, folder)
    from diffusers.utils import logging as dlog

    verbosity = dlog.get_verbosity()
    dlog.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet = diffusers.UNet2DModel.from_pretrained(str(folder.joinpath("unet")), local_files_only=True,
                                                         torch_dtype=net_dtype, low_cpu_mem_usage=False)
    finally:
        dlog.set_verbosity(verbosity)
    unet.requires_grad_(False)
    unet = unet.to(device=device).eval()  # already in net_dtype (torch_dtype=): a .to(dtype) here makes diffusers warn
    return from_diffusers(unet, config)


# name -> (description, event_shape, levels, data_range, data, weights file, Diffusion builder, schedule)
# (a diffusers model: build None, schedule None, both read from its pipeline folder)
_VP_DIGITS = VP(t_min=1e-3)
# t_min = 1e-2 is where samplers end (the score and the SDEs divide by sigma(t) = t); the network is trained
# on all of [0, 1] and the likelihood of a velocity model integrates from t = 0 (adapters/_likelihood.py)
_LIN_DIGITS = Linear(t_min=1e-2)
_VP_MOONS = VP(t_min=1e-3)
_SPECS: Dict[str, dict] = {
    "digits-eps": dict(
        description="eps-prediction network on sklearn 8x8 digits (64 dims, 17 levels), VP schedule "
                    "(beta 0.1..20, t in [1e-3, 1])",
        event_shape=(64,), levels=DIGITS_LEVELS, data_range=DIGITS_RANGE, schedule=_VP_DIGITS, prediction="eps",
        data="flowsde.models.digits()", weights="digits-eps.safetensors", build=_vp_eps),
    "digits-velocity": dict(
        description="flow-matching (rectified flow / cond-OT) velocity network on sklearn 8x8 digits "
                    "(64 dims, 17 levels), trained on t in [0, 1]; Linear schedule (samplers: t in [1e-2, 1]; "
                    "likelihood from t = 0)",
        event_shape=(64,), levels=DIGITS_LEVELS, data_range=DIGITS_RANGE, schedule=_LIN_DIGITS,
        prediction="velocity", data="flowsde.models.digits()", weights="digits-velocity.safetensors",
        build=_fm_velocity),
    "moons": dict(
        description="eps-prediction network on sklearn's two moons (2-D, continuous), VP schedule "
                    "(beta 0.1..20, t in [1e-3, 1])",
        event_shape=(2,), levels=None, data_range=None, schedule=_VP_MOONS, prediction="eps",
        data="flowsde.models.toy_data('moons', samples, generator=seed)", weights="moons.safetensors", build=_vp_eps),
    "digits-unet": dict(
        description="diffusers UNet2DModel (channels 32/64) eps-prediction DDPM on sklearn 8x8 digits as 1x8x8 "
                    "images (17 levels), DDPMScheduler linear betas, 1000 steps: a Discrete schedule "
                    "(t in [1e-3, 1]); needs diffusers",
        event_shape=(1, 8, 8), levels=DIGITS_LEVELS, data_range=DIGITS_RANGE, schedule=None, prediction="eps",
        data="flowsde.models.digits().reshape(-1, 1, 8, 8)", weights="digits-unet", build=None),
}


def names() -> list:
    """Names of the shipped models: ``["digits-eps", "digits-velocity", "moons", "digits-unet"]``."""
    return list(_SPECS)


def _spec(name: str) -> dict:
    if not isinstance(name, str) or name not in _SPECS:
        raise InputError(f"unknown model {name!r}: the shipped models are {names()}.")
    return _SPECS[name]


def info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a shipped model (no weights are read; ``digits-unet``'s schedule is read from
    its scheduler config and needs diffusers: an :class:`~flowsde.InputError` naming the extra otherwise)."""
    s = _spec(name)
    sch = s["schedule"] if s["schedule"] is not None else _diffusers_schedule(name)
    return ModelInfo(name=name, description=s["description"], event_shape=tuple(s["event_shape"]),
                     levels=s["levels"], data_range=s["data_range"], schedule=sch, prediction=s["prediction"],
                     t_range=(float(sch.t_min), float(sch.t_max)), data=s["data"], weights=s["weights"])


def weights_path(name: str):
    """Path of a shipped model's weights inside the installed package: a ``.safetensors`` file, or the
    diffusers pipeline folder of a diffusers model (``digits-unet``)."""
    return resources.files("flowsde.models").joinpath("weights", _spec(name)["weights"])


def read_weights(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, config)`` from a safetensors file written by :func:`write_weights`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        raise InputError(f"{path}: no 'config' in the safetensors metadata; not a flowsde.models weights file.")
    return state, json.loads(meta["config"])


def write_weights(net: GaussianResidualMLP, path, **extra_meta) -> None:
    """Save ``net``'s state (float32) with its config (and ``extra_meta``, strings) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}
    meta = {"config": json.dumps(net.config)}
    meta.update({k: str(v) for k, v in extra_meta.items()})
    save_file(state, str(path), metadata=meta)


def build(name: str, net: GaussianResidualMLP) -> Diffusion:
    """The ``Diffusion`` of a shipped model around a network of its architecture."""
    s = _spec(name)
    if s["build"] is None:
        raise InputError(f"build({name!r}): a diffusers model; load it with flowsde.models.load({name!r}) or "
                         "flowsde.adapters.from_diffusers(unet, scheduler).")
    return s["build"](net, s["schedule"])


def load(name: str, *, device="cpu", net_dtype: torch.dtype = torch.float32) -> Diffusion:
    """A shipped model as a :class:`flowsde.adapters.Diffusion` (weights read offline from the package).

    Arguments:
        name: one of :func:`names`.
        device: where the network's weights go.
        net_dtype: floating dtype the network runs in (``torch.float32`` or ``torch.float64``).

    Returns:
        a ``Diffusion`` whose network takes ``(B, *info(name).event_shape)`` in the model's data range.
        The network's parameters do not require gradients (gradients w.r.t. ``x`` still flow).

    Raises:
        InputError: unknown name, a non-floating net_dtype, missing weights, or a diffusers model
            (``digits-unet``) without diffusers installed.
    """
    s = _spec(name)
    if not (isinstance(net_dtype, torch.dtype) and net_dtype.is_floating_point):
        raise InputError(f"load({name!r}, net_dtype={net_dtype!r}): net_dtype must be a floating torch.dtype, e.g. "
                         "torch.float32.")
    path = weights_path(name)
    if s["build"] is None:
        if not path.is_dir():
            raise InputError(f"load({name!r}): the pipeline folder {path} is missing; reinstall flowsde or rerun "
                             "`python scripts/train_diffusers_digits.py`.")
        return _load_diffusers(name, device, net_dtype)
    if not path.is_file():
        raise InputError(f"load({name!r}): weights {path} are missing; reinstall flowsde or rerun "
                         "`python scripts/train_models.py`.")
    state, config = read_weights(path)
    net = GaussianResidualMLP(**config)
    net.load_state_dict(state)
    net.requires_grad_(False)
    net = net.to(device=device, dtype=net_dtype).eval()
    return s["build"](net, s["schedule"])
