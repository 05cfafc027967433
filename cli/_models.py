"""``--model``: one spec for every command.

A spec is one of

* a shipped model name (``flowsde.models.names()``: ``digits-eps``, ``digits-velocity``, ``moons``,
  ``digits-unet``; the last is a diffusers pipeline folder inside the package, loaded as the next item);
* ``gmm``: the exact oracle network of a Gaussian mixture (``--schedule``, ``--prediction``, ``--dim``);
* ``package.module:factory``: ``factory()`` returns a :class:`flowsde.adapters.Diffusion` (it is passed
  ``device=`` / ``dtype=`` when its signature takes them);
* a diffusers pipeline folder as ``DDPMPipeline.save_pretrained`` writes it (``model_index.json``,
  ``unet/``, ``scheduler/``), loaded offline through :func:`flowsde.adapters.from_diffusers`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from ._errors import CLIError

SCHEDULES = ("vp", "cosine", "subvp", "ve", "edm", "linear")
PREDICTIONS = ("eps", "score", "x0", "v", "velocity")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class Model:
    """A resolved ``--model``: the Diffusion and what the commands need to know about it."""

    spec: str
    kind: str  #: "shipped", "gmm", "factory" or "diffusers"
    diffusion: object
    event_shape: Tuple[int, ...]
    reference: object = None  #: the same network in float64 (None: ``diffusion`` takes float64 states)
    levels: Optional[int] = None
    data_range: Optional[Tuple[float, float]] = None
    image_shape: Optional[Tuple[int, ...]] = None  #: draw samples as images of this shape
    exact: object = None  #: the exact GaussianMixture (gmm only)
    density: Optional[Callable[[int], torch.Tensor]] = None  #: samples of the data distribution (2-D pictures)
    test_data: Optional[Callable[[], torch.Tensor]] = None  #: the held-out data ``flowsde nll`` uses by default
    description: str = ""


def shipped_names() -> Tuple[str, ...]:
    try:
        from flowsde import models
    except ImportError:
        return ()
    return tuple(models.names())


def is_diffusers(spec: str) -> bool:
    """Whether ``--model spec`` is a diffusers pipeline folder (a user's, or a shipped one such as
    ``digits-unet``): a convolutional network stored in float32, run in float32 and on torch's threads."""
    if spec in shipped_names():
        from flowsde import models

        return Path(str(models.weights_path(spec))).is_dir()
    return spec != "gmm" and Path(spec).is_dir()


def default_dtype(spec: str) -> torch.dtype:
    """The state dtype when ``--dtype`` is not given: float32 for a diffusers folder (its weights' dtype; a
    UNet in float64 costs about 5x on a CPU, and its float32 likelihood floor, about 1e-6 bits/dim, is far
    below ``flowsde nll``'s default ``--bpd-tol``), float64 otherwise (small networks, reference accuracy)."""
    return torch.float32 if is_diffusers(spec) else torch.float64


def resolve(spec: str, *, device: torch.device, dtype: torch.dtype, schedule: str = "vp",
            prediction: str = "eps", dim: int = 2, shape: Optional[Tuple[int, ...]] = None) -> Model:
    """The :class:`Model` of a ``--model`` spec; :class:`CLIError` (one line: what and how to fix) otherwise."""
    if spec == "gmm":
        return _gmm(schedule, prediction, dim, device)
    names = shipped_names()
    if spec in names:
        return _shipped(spec, device, dtype)
    p = Path(spec)
    if p.is_dir():
        return _diffusers(p, device, dtype)
    if is_factory_spec(spec):
        return _factory(spec, device, dtype, shape)
    if p.exists():
        raise CLIError(f"--model {spec}: a file, not a model; pass a diffusers pipeline folder (model_index.json, "
                       f"unet/, scheduler/), a shipped name, gmm, or package.module:factory.")
    shipped = ", ".join(names) if names else "none installed"
    raise CLIError(f"--model {spec}: unknown model; use a shipped name ({shipped}), gmm, "
                   f"package.module:factory (returning a flowsde.adapters.Diffusion), or a diffusers pipeline folder.")


def _gmm(schedule: str, prediction: str, dim: int, device) -> Model:
    from flowsde.adapters import Diffusion, schedules
    from flowsde.workloads import default_mixture

    sched = {"vp": schedules.VP, "cosine": schedules.Cosine, "subvp": schedules.SubVP, "ve": schedules.VE,
             "edm": schedules.EDM, "linear": schedules.Linear}[schedule]()
    data = default_mixture(dim, dtype=torch.float64)
    net = data.oracle(sched, prediction)
    diff = Diffusion(net, sched, prediction=prediction)
    return Model(spec="gmm", kind="gmm", diffusion=diff, event_shape=(dim,), exact=data,
                 density=lambda n: data.sample(n, generator=torch.Generator().manual_seed(99)),
                 description=f"exact oracle of a 3-component Gaussian mixture in {dim}-D, {sched!r}, "
                             f"{prediction}-prediction")


def _shipped(name: str, device, dtype) -> Model:
    from flowsde import models

    folder = models.weights_path(name)
    if folder.is_dir():  # a shipped diffusers pipeline: the path a user's folder takes, plus the registry's facts
        return _shipped_diffusers(name, Path(str(folder)), device, dtype)
    info = models.info(name)
    diff = models.load(name, device=device, net_dtype=dtype)
    ref = models.load(name, device=device, net_dtype=torch.float64) if dtype != torch.float64 else None
    event = tuple(int(s) for s in info.event_shape)
    levels = getattr(info, "levels", None)
    dr = getattr(info, "data_range", None)
    image = (8, 8) if event == (64,) else (event if len(event) in (2, 3) else None)
    density = test = None
    if event == (2,) and hasattr(models, "toy_data"):
        density = lambda n: models.toy_data(name, n, generator=99)  # noqa: E731
    if name.startswith("digits"):
        test = lambda: models.digits("test")  # noqa: E731
    return Model(spec=name, kind="shipped", diffusion=diff, reference=ref, event_shape=event, levels=levels,
                 data_range=tuple(dr) if dr is not None else None, image_shape=image, density=density,
                 test_data=test, description=getattr(info, "description", name))


def _shipped_diffusers(name: str, folder: Path, device, dtype) -> Model:
    from flowsde import models

    m = _diffusers(folder, device, dtype)
    info = models.info(name)
    event = tuple(int(s) for s in info.event_shape)
    m.spec, m.kind, m.description = name, "shipped", info.description
    m.levels, m.data_range = info.levels, tuple(info.data_range)
    if name.startswith("digits"):
        m.test_data = lambda: models.digits("test").reshape((-1,) + event)  # noqa: E731
    return m


def is_factory_spec(spec: str) -> bool:
    """``package.module:factory`` (and not an existing path)."""
    return bool(_FACTORY.match(spec)) and not Path(spec).exists()


def import_factory(flag: str, spec: str, returns: str) -> Callable:
    """The callable named by ``package.module:factory``, or a one-line :class:`CLIError`."""
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CLIError(f"{flag} {spec}: cannot import module {mod_name!r} ({e}); check the name and that the "
                       f"package is installed or its folder is on PYTHONPATH.") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise CLIError(f"{flag} {spec}: module {mod_name!r} has no callable {fn_name!r}; name a function that "
                       f"returns {returns}.")
    return fn


def _factory(spec: str, device, dtype, shape) -> Model:
    from flowsde.adapters import Diffusion

    fn = import_factory("--model", spec, "a flowsde.adapters.Diffusion")

    def call(**kw):
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        kw = {k: v for k, v in kw.items() if k in params}
        try:
            return fn(**kw)
        except Exception as e:  # the user's code: report it in one line
            raise CLIError(f"--model {spec}: the factory raised {type(e).__name__}: {e}") from None

    diff = call(device=device, dtype=dtype)
    if not isinstance(diff, Diffusion):
        raise CLIError(f"--model {spec}: the factory returned {type(diff).__name__}, not a "
                       f"flowsde.adapters.Diffusion; return Diffusion(net, schedule, prediction=...).")
    ref = None
    if dtype != torch.float64 and "dtype" in _params(fn):
        ref = call(device=device, dtype=torch.float64)
    event = shape if shape is not None else getattr(diff, "event_shape", None)
    if event is None:
        raise CLIError(f"--model {spec}: the shape of one sample is unknown; pass --shape (e.g. --shape 64 or "
                       f"--shape 3 32 32) or set diffusion.event_shape in the factory.")
    event = tuple(int(s) for s in event)
    dr = getattr(diff, "data_range", None)
    return Model(spec=spec, kind="factory", diffusion=diff, reference=ref, event_shape=event,
                 levels=getattr(diff, "levels", None), data_range=tuple(dr) if dr is not None else None,
                 image_shape=event if len(event) in (2, 3) else None, description=repr(diff))


def _params(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


#: unet/ weight files as ``save_pretrained`` writes them (``name[.variant].safetensors`` / ``.bin``, or sharded)
_WEIGHTS = re.compile(r"^diffusion_pytorch_model(?:\.([\w-]+))?\.(?:safetensors|bin)(?:\.index\.json)?$")
#: the unet classes the command line runs: unconditional, called as unet(sample, timestep)
_UNCONDITIONAL = ("UNet2DModel",)


def _weights_variant(unet_dir: Path, folder: Path) -> Optional[str]:
    """``None`` for plain weight files, a variant (``fp16``) when only those exist; a one-line
    :class:`CLIError` when unet/ holds no weights (instead of diffusers' two messages naming .bin)."""
    variants = set()
    for f in unet_dir.iterdir() if unet_dir.is_dir() else ():
        m = _WEIGHTS.match(f.name)
        if m:
            variants.add(m.group(1))
    if None in variants:
        return None
    if len(variants) == 1:
        return next(iter(variants))
    if not variants:
        raise CLIError(f"--model {folder}: unet/ holds no weights (expected diffusion_pytorch_model.safetensors, "
                       f"as save_pretrained writes it); the folder is incomplete: save the pipeline again.")
    raise CLIError(f"--model {folder}: unet/ holds only variant weights ({', '.join(sorted(variants))}) and no "
                   f"plain diffusion_pytorch_model.safetensors; keep one variant or save the pipeline again.")


def _load_unet(cls, folder: Path, cls_name: str, dtype, variant):
    """``cls.from_pretrained`` offline in ``dtype`` with diffusers' own logging silenced (its loader advice,
    e.g. "pip install accelerate", and its error lines are not the user's concern: failures are reported
    in one line by the caller)."""
    import logging

    from diffusers.utils import logging as dlog

    verbosity = dlog.get_verbosity()
    dlog.set_verbosity(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = dict(local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
            if variant is not None:
                kw["variant"] = variant
            return cls.from_pretrained(str(folder / "unet"), **kw)
    except Exception as e:  # diffusers' loader errors
        raise CLIError(f"--model {folder}: cannot load unet/ with diffusers.{cls_name} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}).") from None
    finally:
        dlog.set_verbosity(verbosity)


def _diffusers(folder: Path, device, dtype) -> Model:
    missing = [n for n in ("model_index.json", "unet", "scheduler") if not (folder / n).exists()]
    if missing:
        raise CLIError(f"--model {folder}: not a diffusers pipeline folder (missing {', '.join(missing)}); expected "
                       f"model_index.json, unet/ and scheduler/ as DDPMPipeline.save_pretrained writes them.")
    try:
        import diffusers
    except ImportError:
        raise CLIError(f"--model {folder}: loading a diffusers folder needs diffusers: pip install "
                       f"flowsde[diffusers].") from None
    import flowsde
    from flowsde.adapters import from_diffusers

    try:
        index = json.loads((folder / "model_index.json").read_text())
        cls_name = index.get("unet", [None, "UNet2DModel"])[1]
        sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise CLIError(f"--model {folder}: cannot read the pipeline's model_index.json / "
                       f"scheduler/scheduler_config.json / unet/config.json ({e}).") from None
    sched_name = sched_cfg.get("_class_name", "?")
    if str(cls_name) not in _UNCONDITIONAL:
        what = ("a conditional model (it needs encoder_hidden_states, e.g. text embeddings)"
                if "Condition" in str(cls_name) else "not an unconditional UNet2DModel")
        raise CLIError(f"--model {folder}: unet class {cls_name} is {what}; the command line runs unconditional "
                       f"UNet2DModel pipelines: in Python, pass the conditioning to "
                       f"flowsde.adapters.from_diffusers(unet, scheduler, encoder_hidden_states=...).")
    if unet_cfg.get("num_class_embeds") is not None or unet_cfg.get("class_embed_type") is not None:
        raise CLIError(f"--model {folder}: this {cls_name} is class-conditional (num_class_embeds / class_embed_type "
                       f"in unet/config.json); the command line runs unconditional models: in Python, pass "
                       f"class_labels= to flowsde.adapters.from_diffusers.")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise CLIError(f"--model {folder}: unet class {cls_name!r} is not a diffusers model class.")
    size, chans = unet_cfg.get("sample_size"), unet_cfg.get("in_channels")
    if size is None or chans is None:
        raise CLIError(f"--model {folder}: unet/config.json lacks sample_size / in_channels.")
    # the scheduler defines the model (flowsde.adapters.from_diffusers): refused before any weights are read
    try:
        from_diffusers(lambda x, timestep: x, sched_cfg)
    except flowsde.InputError as e:
        raise CLIError(f"--model {folder}: scheduler/scheduler_config.json: {str(e).replace('from_diffusers: ', '')}"
                       ) from None
    variant = _weights_variant(folder / "unet", folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def load(dt):
        unet = _load_unet(cls, folder, cls_name, dt, variant).to(device=device).eval()
        for p in unet.parameters():
            p.requires_grad_(False)
        return from_diffusers(unet, sched_cfg)

    diff = load(dtype)
    # the references (compare's PF-ODE and SDE solutions) carry float64 states and time through the UNet in the
    # run's dtype: a float32 UNet's weights are the model, its rounding (~5e-7 RMS on digits-unet's PF-ODE,
    # docs/cli.md) is far below any sampler's error, and in float64 it costs 5x on a CPU (and far more on most
    # GPUs); --dtype float64 runs it, and every sampler, in float64
    ref = None
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    event = (int(chans),) + hw
    # ScoreSdeVePipeline returns samples clamped to [0, 1] (score_sde's uncentered data); the others [-1, 1]
    data_range = (0.0, 1.0) if sched_name == "ScoreSdeVeScheduler" else (-1.0, 1.0)
    return Model(spec=str(folder), kind="diffusers", diffusion=diff, reference=ref, event_shape=event,
                 data_range=data_range, image_shape=event,
                 description=f"diffusers {cls_name} {event} with {sched_name}: {_what(diff)}"
                             f" ({math.prod(event)} dims)")


def _what(diff) -> str:
    """How the model is read: its schedule and prediction, in one phrase."""
    return f"{type(diff.schedule).__name__} schedule, {diff.prediction}-prediction"
