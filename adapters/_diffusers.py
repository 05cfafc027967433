"""Bridge from huggingface/diffusers: a ``UNet2DModel`` (or any model called as
``unet(sample, timestep)``) with its scheduler becomes a :class:`Diffusion`.

The scheduler's *class* fixes what the network is (docs/bridges.md, "diffusers"):

- the DDPM family (:data:`DDPM_SCHEDULERS`: DDPM, DDIM, Euler, DPM-Solver, ...): the
  :class:`~flowsde.adapters.schedules.Discrete` schedule of the scheduler's
  ``alphas_cumprod``, the network called at the (fractional) training index, predicting
  ``prediction_type`` (eps, v or x0);
- ``FlowMatchEulerDiscreteScheduler``: :class:`~flowsde.adapters.schedules.Linear`
  (``x_t = (1 - t) x0 + t eps``, ``t`` = diffusers' sigma), the network called at
  ``timestep = t N`` and predicting the velocity ``eps - x0 = dx/dt``;
- ``ScoreSdeVeScheduler``: :class:`~flowsde.adapters.schedules.VE`, the network called at
  ``timestep = sigma(t)`` and predicting the score (as ``ScoreSdeVePipeline`` uses it);
- ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``:
  :class:`~flowsde.adapters.schedules.EDM` (``t = sigma``), the network ``F`` preconditioned as
  ``x0 = c_skip x + c_out F(c_in x, ln(sigma)/4)`` with the scheduler's ``sigma_data``.

Every other scheduler class is refused by name. diffusers is an optional extra
(``pip install flowsde[diffusers]``); this module imports it only to build
``alphas_cumprod`` from a bare config dict.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch

from flowsde import InputError

from ._diffusion import Diffusion
from ._inputs import check_net
from ._precond import EDMPrecond, from_denoiser
from .schedules import EDM, VE, Discrete, Linear

__all__ = ["from_diffusers", "scheduler_grid", "DIFFUSERS_PREDICTIONS", "DDPM_SCHEDULERS", "SUPPORTED_SCHEDULERS",
           "diffusers_alphas_cumprod"]

#: diffusers' ``prediction_type`` -> flowsde's ``prediction``.
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}

#: Scheduler classes that read the model as a DDPM (``alphas_cumprod`` from the beta keys, the
#: network called at the training index): one model definition, differing only in how they sample.
DDPM_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
)
_FLOW = ("FlowMatchEulerDiscreteScheduler",)
_VE = ("ScoreSdeVeScheduler",)
_EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
#: Every scheduler class :func:`from_diffusers` reads (any other is refused by name).
SUPPORTED_SCHEDULERS = DDPM_SCHEDULERS + _FLOW + _VE + _EDM


def _config(scheduler) -> dict:
    cfg = getattr(scheduler, "config", scheduler)
    if isinstance(cfg, dict):
        return dict(cfg)
    try:
        return dict(cfg)  # diffusers' FrozenDict
    except TypeError as e:
        raise InputError(f"from_diffusers: scheduler must be a diffusers scheduler or its config dict, got "
                         f"{type(scheduler).__name__}.") from e


def _scheduler_class(scheduler, cfg: dict) -> Optional[str]:
    """The diffusers scheduler class name: the object's class (a diffusers scheduler), else the config's
    ``_class_name``; ``None`` for a duck-typed object or a config without one (read as the DDPM family)."""
    if type(scheduler).__module__.split(".")[0] == "diffusers":
        return type(scheduler).__name__
    name = cfg.get("_class_name")
    return str(name) if name is not None else None


def diffusers_alphas_cumprod(scheduler) -> torch.Tensor:
    """``alphas_cumprod`` ``(N,)`` as float64, exactly as diffusers computes it.

    ``scheduler``: a diffusers scheduler (its ``.alphas_cumprod`` is used as is,
    float32 values included) or a config dict (``num_train_timesteps``,
    ``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``,
    ``rescale_betas_zero_snr``), which is handed to ``diffusers.DDPMScheduler``
    so that every beta schedule diffusers knows is reproduced bit for bit.
    """
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        cfg = _config(scheduler)
        try:
            from diffusers import DDPMScheduler
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise InputError("from_diffusers: building alphas_cumprod from a config dict needs diffusers "
                             "(pip install flowsde[diffusers]); or pass the scheduler object.") from e
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "rescale_betas_zero_snr")
        ac = DDPMScheduler(**{k: cfg[k] for k in keys if k in cfg}).alphas_cumprod
    ac = torch.as_tensor(ac).detach().to("cpu", torch.float64)
    if ac.dim() != 1 or ac.numel() < 2:
        raise InputError(f"from_diffusers: alphas_cumprod must be 1-D with >= 2 entries, got shape {tuple(ac.shape)}.")
    bad = ~((ac > 0) & (ac < 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise InputError(
            f"from_diffusers: alphas_cumprod[{i}] = {float(ac[i])!r} is outside (0, 1); a zero-terminal-SNR "
            "schedule (rescale_betas_zero_snr=True) has no finite prior end: drop its last step "
            "(alphas_cumprod[:-1]) or use a schedule with alphas_cumprod > 0."
        )
    return ac


def _param_dtype(unet) -> Optional[torch.dtype]:
    """The floating dtype of the module's parameters *now* (``unet.double()`` after wrapping is followed)."""
    params = getattr(unet, "parameters", None)
    if not callable(params):
        return None
    for p in params():
        if p.is_floating_point():
            return p.dtype
    return None


def _caller(unet, unet_kwargs: dict, learned_var: bool):
    """``call(x, timestep)``: the UNet on ``x`` in its parameters' current dtype (the timestep too), the
    output unwrapped (``.sample`` / tuple; the first C channels of a learned-variance output) and cast
    back to ``x``'s dtype."""

    def call(x, timestep):
        dt = _param_dtype(unet)
        xin = x if dt is None else x.to(dt)
        out = unet(xin, timestep.to(xin.dtype), **unet_kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if learned_var and out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)

    return call


def _check_conditioning(unet, unet_kwargs: dict) -> None:
    """A conditional model whose conditioning is not given: refused by name (instead of the model's
    ``TypeError`` / ``ValueError`` at the first call)."""
    name = type(unet).__name__
    fwd = getattr(unet, "forward", None)
    try:
        params = inspect.signature(fwd).parameters if fwd is not None else {}
    except (TypeError, ValueError):
        params = {}
    p = params.get("encoder_hidden_states")
    if p is not None and p.default is inspect.Parameter.empty and "encoder_hidden_states" not in unet_kwargs:
        raise InputError(f"from_diffusers: {name} is a conditional model: it needs encoder_hidden_states (e.g. text "
                         "embeddings, batch B); pass them as from_diffusers(unet, scheduler, "
                         "encoder_hidden_states=...), or use an unconditional model (UNet2DModel).")
    cfg = getattr(unet, "config", None)
    get = (cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)) if cfg is not None else None
    if get is not None and (get("num_class_embeds", None) is not None or get("class_embed_type", None) is not None) \
            and "class_labels" not in unet_kwargs:
        raise InputError(f"from_diffusers: this {name} is class-conditional (num_class_embeds / class_embed_type "
                         "in its config): pass class_labels=... (a (B,) tensor) to from_diffusers.")


def _ptype(prediction, cfg: dict, allowed: dict, cls: str) -> str:
    ptype = prediction if prediction is not None else cfg.get("prediction_type", "epsilon")
    inv = {v: k for k, v in allowed.items()}
    if ptype in allowed:
        return allowed[ptype]
    if ptype in inv:
        return ptype
    raise InputError(f"from_diffusers: prediction_type {ptype!r} is not one of {sorted(allowed)} for {cls} "
                     f"(flowsde: {', '.join(allowed.values())}); pass prediction=... to override.")


def _refuse_keys(cls: str, cfg: dict, keys: dict) -> None:
    """Config entries that change the model's definition in a way flowsde does not map: refused by name."""
    for k, (ok, why) in keys.items():
        if k in cfg and not ok(cfg[k]):
            raise InputError(f"from_diffusers: {cls} with {k}={cfg[k]!r} is not supported: {why}.")


def from_diffusers(unet, scheduler, *, prediction: Optional[str] = None, label: Optional[str] = None,
                   **unet_kwargs: Any):
    """A diffusers model as a :class:`~flowsde.adapters.Diffusion`.

    Arguments:
        unet: ``UNet2DModel`` (or any ``unet(sample, timestep, **kw)`` returning a tensor, a
            tuple or an object with ``.sample``), called with ``sample`` ``(B, C, H, W)``
            and ``timestep`` a ``(B,)`` float tensor (what the scheduler's class feeds it: see below).
            Inputs are cast to the model's parameter dtype *at each call* (so ``unet.double()``
            after wrapping is followed), outputs back to ``x``'s dtype.
        scheduler: a diffusers scheduler or its config dict (``scheduler_config.json``; its
            ``_class_name`` names the class; a dict without one, or a duck-typed object with
            ``alphas_cumprod``, is read as the DDPM family). The class fixes the model:

            - :data:`DDPM_SCHEDULERS` (``DDPMScheduler``, ``DDIMScheduler``, ``EulerDiscreteScheduler``,
              ...): ``Diffusion(net, Discrete(alphas_cumprod), prediction)``, ``timestep`` the
              fractional training index; ``prediction_type`` epsilon / v_prediction / sample;
            - ``FlowMatchEulerDiscreteScheduler``: ``Linear(t_min=sigma_min)``, ``timestep = t N``,
              prediction ``"velocity"`` (diffusers' ``eps - x0``); ``shift`` and the dynamic shifting only
              move the scheduler's sampling sigmas, so they are accepted;
            - ``ScoreSdeVeScheduler``: ``VE(sigma_min, sigma_max, t_min=sampling_eps)``,
              ``timestep = sigma(t)``, prediction ``"score"``;
            - ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``: ``EDM(sigma_min, sigma_max)``,
              prediction ``"x0"`` of ``EDMPrecond(F, sigma_data)`` with ``F = unet`` (epsilon) or
              ``-unet`` (v_prediction), ``timestep = ln(sigma)/4``.

            Any other class is refused, naming the supported ones (:data:`SUPPORTED_SCHEDULERS`).
        prediction: override of the scheduler's ``prediction_type`` (diffusers' names
            ``epsilon`` / ``v_prediction`` / ``sample``, or flowsde's ``eps`` / ``v`` / ``x0``).
        label: the ``Discrete`` schedule's network-label convention (DDPM family only; default
            ``"index"``, the training step index diffusers UNets are trained on).
        unet_kwargs: passed to every call (e.g. ``class_labels``, ``encoder_hidden_states``;
            tensors must have batch ``B``).

    Returns:
        a :class:`~flowsde.adapters.Diffusion`; with a learned variance (``variance_type``
        ``learned`` / ``learned_range``, 2C output channels) the first C channels are the
        prediction, as diffusers' schedulers split them.

    Raises:
        InputError: an unsupported scheduler class or configuration (``rescale_betas_zero_snr``,
            ``timestep_type="continuous"``, ``use_flow_sigmas``, ``invert_sigmas``, an unknown
            ``prediction_type``), a conditional model without its conditioning.
    """
    if not callable(unet):
        raise InputError(f"from_diffusers: unet must be callable unet(sample, timestep), got {type(unet).__name__}.")
    check_net(unet, "from_diffusers(unet=...)", order="unet(sample, timestep)")
    cfg = _config(scheduler)
    cls = _scheduler_class(scheduler, cfg)
    if cls is not None and cls not in SUPPORTED_SCHEDULERS:
        raise InputError(f"from_diffusers: scheduler {cls} is not supported (its model is not read as any of "
                         f"flowsde's schedules); supported: {', '.join(SUPPORTED_SCHEDULERS)}.")
    if label is not None and cls not in (None,) + DDPM_SCHEDULERS:
        raise InputError(f"from_diffusers: label= is the Discrete schedule's convention (DDPM-family "
                         f"schedulers); {cls} fixes its own timestep.")
    _check_conditioning(unet, unet_kwargs)
    learned_var = cfg.get("variance_type") in ("learned", "learned_range")
    call = _caller(unet, unet_kwargs, learned_var)
    name = cls or "scheduler"
    if cls in _FLOW:
        return _flow_matching(call, cfg, prediction, name)
    if cls in _VE:
        return _ve(call, cfg, prediction, name)
    if cls in _EDM:
        return _edm(call, cfg, prediction, name)
    return _ddpm(call, scheduler, cfg, prediction, label, name)


def scheduler_grid(scheduler, steps: Optional[int] = None) -> torch.Tensor:
    """The sampling grid of a diffusers scheduler, in the time of :func:`from_diffusers`'s Diffusion.

    ``timestep_spacing`` (``"leading"``, ``"trailing"``, ``"linspace"``), ``shift`` and the other
    settings that only place a scheduler's sampling steps do not define the model; this is where
    they are used: ``flowsde.solve(from_diffusers(unet, scheduler).pf_ode(), x, scheduler_grid(scheduler,
    20), method="ddim")`` runs the scheduler's own grid, for runs equal to its pipeline's.

    The grid, by scheduler family:

    - DDPM family (``Discrete``): ``t = (k + 1)/N`` at each timestep ``k``, then where the
      scheduler's last step lands: ``t = 0`` (zero noise: ``set_alpha_to_one``,
      ``final_sigmas_type="zero"``, and the schedulers that step to sigma = 0), or ``t = 1/N``
      (the first training step: ``set_alpha_to_one=False``, ``final_sigmas_type="sigma_min"``);
    - ``FlowMatchEulerDiscreteScheduler`` (``Linear``) and the EDM schedulers (``EDM``): its
      ``sigmas`` (ending in 0), which are flowsde's ``t``;
    - ``ScoreSdeVeScheduler`` (``VE``): its timesteps, which are flowsde's ``t``.

    Arguments:
        scheduler: a diffusers scheduler of :data:`SUPPORTED_SCHEDULERS` (not modified: with
            ``steps``, ``set_timesteps`` runs on a copy).
        steps: the scheduler's ``num_inference_steps``; ``None``: the timesteps it holds now.

    Returns:
        A decreasing float64 grid of ``steps + 1`` times (``ScoreSdeVeScheduler``: ``steps`` times,
        as its pipeline ends on the last one).

    Raises:
        InputError: an unsupported scheduler, bad ``steps``, or a ``DDIMScheduler`` / ``DDPMScheduler``
            whose steps do not land on the next timestep (``"linspace"`` spacing).
    """
    import copy

    cfg = _config(scheduler)
    cls = _scheduler_class(scheduler, cfg)
    if not hasattr(scheduler, "set_timesteps"):
        raise InputError(f"scheduler_grid: expected a diffusers scheduler (with set_timesteps), got "
                         f"{type(scheduler).__name__}; build it with <SchedulerClass>.from_config(config).")
    if cls is not None and cls not in SUPPORTED_SCHEDULERS:
        raise InputError(f"scheduler_grid: {cls} is not supported; supported: {', '.join(SUPPORTED_SCHEDULERS)}.")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"scheduler_grid: steps must be a positive int, got {steps!r}.")
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(steps)
    if getattr(scheduler, "timesteps", None) is None:
        raise InputError("scheduler_grid: the scheduler holds no timesteps yet; pass steps=.")
    f64 = torch.float64
    if cls in _VE:
        return torch.as_tensor(scheduler.timesteps, dtype=f64).cpu().clone()
    if cls in _FLOW or cls in _EDM:
        return torch.as_tensor(scheduler.sigmas, dtype=f64).cpu().clone()
    N = int(cfg.get("num_train_timesteps", 1000))
    k = torch.as_tensor(scheduler.timesteps, dtype=f64).cpu()
    if cls in ("DDIMScheduler", "DDPMScheduler") and k.numel() > 1:
        # these step from timestep k to k - N // steps, which must be the next timestep for one grid to hold
        lands = k[:-1] - N // k.numel()
        if not torch.equal(lands, k[1:]):
            raise InputError(f"scheduler_grid: {cls} with timestep_spacing={cfg.get('timestep_spacing')!r} steps from "
                             f"timestep {int(k[0])} to {int(lands[0])} but evaluates the next step at {int(k[1])}: "
                             "no grid reproduces that; use timestep_spacing 'leading' or 'trailing'.")
    to_first_step = cfg.get("final_sigmas_type") == "sigma_min" or (
        cls == "DDIMScheduler" and not cfg.get("set_alpha_to_one", True))
    return torch.cat([(k + 1) / N, torch.tensor([1.0 / N if to_first_step else 0.0], dtype=f64)])


def _ddpm(call, scheduler, cfg, prediction, label, cls):
    _refuse_keys(cls, cfg, {
        "rescale_betas_zero_snr": (lambda v: not v, "a zero-terminal-SNR schedule (alphas_cumprod[-1] = 0) leaves the "
                                   "model's last step without a finite Gaussian prior, so neither its sampling "
                                   "start nor its likelihood is defined; use a model trained without it"),
        "timestep_type": (lambda v: v in (None, "discrete"), "the network is then called at ln(sigma)/4 instead of "
                          "the training index, a convention this bridge does not map; use timestep_type='discrete'"),
        "use_flow_sigmas": (lambda v: not v, "that is a flow-matching model; save it with "
                            "FlowMatchEulerDiscreteScheduler (read as the Linear schedule)"),
    })
    ptype = _ptype(prediction, cfg, DIFFUSERS_PREDICTIONS, cls)
    ac = diffusers_alphas_cumprod(scheduler)
    schedule = Discrete(ac) if label is None else Discrete(ac, label=label)

    def net(x, t):
        # t arrives as the schedule's network label (Diffusion applies Discrete.net_time):
        # the fractional training index N t - 1 with the default label="index".
        return call(x, t.expand(x.shape[0]) if t.dim() == 0 else t)

    return Diffusion(net, schedule, prediction=ptype)


def _flow_matching(call, cfg, prediction, cls):
    _refuse_keys(cls, cfg, {"invert_sigmas": (lambda v: not v, "the network is then called at (1 - sigma) N, a "
                                              "convention this bridge does not map")})
    if prediction not in (None, "velocity", "flow_prediction"):
        raise InputError(f"from_diffusers: {cls}'s network predicts the flow velocity eps - x0; prediction="
                         f"{prediction!r} cannot override that.")
    N = int(cfg.get("num_train_timesteps", 1000))
    # the smallest sigma of the scheduler's training table (timesteps 1..N over N, shifted as diffusers
    # does without dynamic shifting): where its pipelines call the model last
    s, shift = 1.0 / N, float(cfg.get("shift", 1.0) or 1.0)
    if not cfg.get("use_dynamic_shifting", False):
        s = shift * s / (1 + (shift - 1) * s)
    schedule = Linear(t_min=s, t_max=1.0)

    def net(x, t):
        # diffusers: x = (1 - sigma) x0 + sigma eps with sigma = t, the model called at sigma N,
        # returning eps - x0 = dx/dsigma: flowsde's velocity on Linear, no sign flip
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return call(x, t * N)

    return Diffusion(net, schedule, prediction="velocity")


def _ve(call, cfg, prediction, cls):
    if prediction not in (None, "score"):
        raise InputError(f"from_diffusers: {cls}'s network predicts the score (ScoreSdeVePipeline's step_pred / "
                         f"step_correct use it so); prediction={prediction!r} cannot override that.")
    smin, smax = float(cfg.get("sigma_min", 0.01)), float(cfg.get("sigma_max", 1348.0))
    schedule = VE(sigma_min=smin, sigma_max=smax, t_min=float(cfg.get("sampling_eps", 1e-5)), t_max=1.0)

    def net(x, t):
        # ScoreSdeVePipeline calls unet(x, sigma_t) with sigma_t = sigma_min (sigma_max/sigma_min)^t
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return call(x, schedule.sigma(t))

    return Diffusion(net, schedule, prediction="score")


def _edm(call, cfg, prediction, cls):
    p = prediction if prediction is not None else cfg.get("prediction_type", "epsilon")
    p = {"eps": "epsilon", "v": "v_prediction"}.get(p, p)
    if p not in ("epsilon", "v_prediction"):
        raise InputError(f"from_diffusers: {cls} preconditions an epsilon or v_prediction network (c_out = +/- sigma "
                         f"sigma_data / sqrt(sigma^2 + sigma_data^2)); prediction_type {p!r} is not one of them.")
    sign = 1.0 if p == "epsilon" else -1.0
    sd = float(cfg.get("sigma_data", 0.5))

    def F(x_in, c_noise):
        out = call(x_in, c_noise)
        return out if sign > 0 else -out

    F.__name__ = f"diffusers_{cls}"
    precond = EDMPrecond(F, sigma_data=sd)
    smin, smax = float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0))
    if not (0 < smin < smax < math.inf):
        raise InputError(f"from_diffusers: {cls} needs 0 < sigma_min < sigma_max < inf, got {smin} and {smax}.")
    return from_denoiser(precond, sigma_min=smin, sigma_max=smax)
