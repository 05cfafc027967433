"""Bridge from huggingface/diffusers: a ``UNet2DModel`` (or any model called as
``unet(sample, timestep)``) with its scheduler becomes a :class:`Diffusion`
over the :class:`~flowsde.adapters.schedules.Discrete` schedule of the
scheduler's ``alphas_cumprod``.

diffusers is an optional extra (``pip install flowsde[diffusers]``); this
module imports it only to build a scheduler from a bare config dict.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from flowsde import InputError

from ._diffusion import Diffusion
from ._inputs import check_net
from .schedules import Discrete

__all__ = ["from_diffusers", "DIFFUSERS_PREDICTIONS", "diffusers_alphas_cumprod"]

#: diffusers' ``prediction_type`` -> flowsde's ``prediction``.
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _config(scheduler) -> dict:
    cfg = getattr(scheduler, "config", scheduler)
    if isinstance(cfg, dict):
        return dict(cfg)
    try:
        return dict(cfg)  # diffusers' FrozenDict
    except TypeError as e:
        raise InputError(f"from_diffusers: scheduler must be a diffusers scheduler or its config dict, got "
                         f"{type(scheduler).__name__}.") from e


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


def from_diffusers(unet, scheduler, *, prediction: Optional[str] = None, label: Optional[str] = None,
                   **unet_kwargs: Any):
    """A diffusers model as a :class:`~flowsde.adapters.Diffusion`.

    Arguments:
        unet: ``UNet2DModel`` (or any ``unet(sample, timestep, **kw)`` returning a tensor, a
            tuple or an object with ``.sample``), called with ``sample`` ``(B, C, H, W)``
            and ``timestep`` a ``(B,)`` float tensor: the fractional training index
            that the ``Discrete`` schedule's label gives (integer at the training steps).
            Inputs are cast to the model's parameter dtype, outputs back to ``x``'s dtype.
        scheduler: a diffusers scheduler (``DDPMScheduler``, ``DDIMScheduler``,
            ``EulerDiscreteScheduler`` ...) or its config dict: gives ``alphas_cumprod``
            (:func:`diffusers_alphas_cumprod`) and ``prediction_type``.
        prediction: override of the scheduler's ``prediction_type`` (diffusers' names
            ``epsilon`` / ``v_prediction`` / ``sample``, or flowsde's ``eps`` / ``v`` / ``x0``).
        label: the ``Discrete`` schedule's network-label convention (default ``"index"``,
            the training step index diffusers UNets are trained on).
        unet_kwargs: passed to every call (e.g. ``class_labels``; tensors must have batch ``B``).

    Returns:
        ``Diffusion(net, Discrete(alphas_cumprod), prediction)``; with a learned variance
        (``variance_type`` ``learned`` / ``learned_range``, 2C output channels) the first C
        channels are the prediction, as diffusers' schedulers split them.
    """
    if not callable(unet):
        raise InputError(f"from_diffusers: unet must be callable unet(sample, timestep), got {type(unet).__name__}.")
    check_net(unet, "from_diffusers(unet=...)", order="unet(sample, timestep)")
    cfg = _config(scheduler)
    ptype = prediction if prediction is not None else cfg.get("prediction_type", "epsilon")
    if ptype in DIFFUSERS_PREDICTIONS:
        ptype = DIFFUSERS_PREDICTIONS[ptype]
    elif ptype not in DIFFUSERS_PREDICTIONS.values():
        raise InputError(f"from_diffusers: prediction_type {ptype!r} is not one of {sorted(DIFFUSERS_PREDICTIONS)} "
                         "(flowsde: eps, v, x0); pass prediction=... to override.")
    ac = diffusers_alphas_cumprod(scheduler)
    schedule = Discrete(ac) if label is None else Discrete(ac, label=label)
    learned_var = cfg.get("variance_type") in ("learned", "learned_range")
    params = getattr(unet, "parameters", None)
    p0 = next(iter(params()), None) if callable(params) else None
    unet_dtype = p0.dtype if p0 is not None else None

    def net(x, t):
        # t arrives as the schedule's network label (Diffusion applies Discrete.net_time):
        # the fractional training index N t - 1 with the default label="index".
        lab = t.expand(x.shape[0]) if t.dim() == 0 else t
        xin = x if unet_dtype is None else x.to(unet_dtype)
        out = unet(xin, lab.to(xin.dtype), **unet_kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if learned_var and out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)

    return Diffusion(net, schedule, prediction=ptype)
