"""Checks at the adapters' entry points: the state, the time, argument order, the meta device.

Every public callable of :mod:`flowsde.adapters` that takes ``(t, x)`` (the
``Diffusion`` conversions, the problems' drift / diffusion / score) or
``(x, sigma)`` (the k-diffusion bridges) calls these first, so that a wrong
call is reported as what it is (swapped arguments, a tensor without values)
instead of failing later inside torch. All checks read metadata only (type,
shape, dtype, device): they cost no device synchronisation.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch

from flowsde import InputError
from flowsde._internal import check_time_and_state

__all__ = ["check_call", "check_tensor", "check_net"]

_META_FIX = ("a tensor on the 'meta' device has a shape but no values, so nothing can be computed from it; "
             "create it on a real device (device='cpu' or 'cuda'), or, for a model built on 'meta', "
             "materialise it with model.to_empty(device=...) and load its weights")

# parameter names that say "time" / "state": a net whose signature reads (t, x) is called the wrong way round
_TIME_NAMES = {"t", "time", "times", "timestep", "timesteps", "sigma", "sigmas", "s", "tau"}
_STATE_NAMES = {"x", "xt", "x_t", "y", "z", "sample", "samples", "state", "input", "inputs"}


def check_tensor(v, name: str, where: str) -> None:
    """Refuse a tensor on the meta device (shape without values)."""
    if isinstance(v, torch.Tensor) and v.device.type == "meta":
        raise InputError(f"{where}: {name} is on the 'meta' device; {_META_FIX}.")


def _shape(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    return f"a {type(v).__name__}"


def check_call(where: str, t, x, *, order: str = "(t, x)") -> None:
    """Validate the arguments of an entry point taking a time and a state; ``order`` names the
    expected order: ``"(t, x)"``, or ``"(x, sigma)"`` for the k-diffusion denoiser convention.

    ``x`` must be a floating tensor ``(B, *event)``; ``t`` a number, a 0-dim or a ``(B,)`` tensor
    (its shape against ``B`` is checked where it is used). Arguments that fit only the other
    order (a state-shaped ``t`` with a time-shaped ``x``) are reported as swapped
    (:func:`flowsde._internal.check_time_and_state` for ``(t, x)``).
    """
    # the common case in a few attribute reads (this runs once per network call)
    if isinstance(x, torch.Tensor) and x.dim() >= 1 and not x.is_meta and x.is_floating_point() and (
            not isinstance(t, torch.Tensor) or (t.dim() <= 1 and not t.is_meta)):
        return
    tname = "t" if order == "(t, x)" else order.strip("()").split(",")[-1].strip()
    check_tensor(x, "x", where)
    check_tensor(t, tname, where)
    if order == "(t, x)":
        check_time_and_state(t, x, where=f"{where}{order}")  # swapped arguments, meta tensors, shapes
    elif isinstance(t, torch.Tensor) and t.dim() >= 1 and (
            (isinstance(x, (int, float)) and not isinstance(x, bool)) or
            (isinstance(x, torch.Tensor) and (x.dim() == 0 or (x.dim() == 1 and t.dim() >= 2)))):
        raise InputError(f"{where}{order}: the arguments look swapped: got x {_shape(x)} and "
                         f"{tname} {_shape(t)}; call it as {where}{order} with x the state "
                         f"(B, *event) and {tname} a number, 0-dim or (B,).")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise InputError(f"{where}: x must be a floating tensor of shape (B, *event), got {_shape(x)}"
                         f"{f' of dtype {x.dtype}' if isinstance(x, torch.Tensor) else ''}.")


def check_net(net, where: str, *, order: str = "net(x, t)") -> None:
    """At construction: a network whose parameters live on the meta device, or whose Python signature
    names its arguments (time, state) although it is called ``order``, is refused."""
    params = getattr(net, "parameters", None)
    if callable(params):
        try:
            p = next((p for p in params() if p.device.type == "meta"), None)
        except TypeError:  # a callable whose .parameters is not torch's
            p = None
        if p is not None:
            raise InputError(f"{where}: the network's parameters are on the 'meta' device (weights not loaded); "
                             f"{_META_FIX}.")
    names = _positional_names(net)
    if names and len(names) >= 2 and names[0] in _TIME_NAMES and names[1] in _STATE_NAMES:
        raise InputError(f"{where}: the network's signature is ({names[0]}, {names[1]}, ...) but it is called as "
                         f"{order}: the arguments would arrive swapped. Wrap it: "
                         f"lambda x, t: net(t, x).")


def _positional_names(fn) -> Optional[list]:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name.lower() for p in sig.parameters.values() if p.kind in kinds]


def swapped_output_hint(out, t, x) -> str:
    """Extra text for a wrong-shaped network output that has the shape of ``t``."""
    if isinstance(out, torch.Tensor) and isinstance(t, torch.Tensor) and tuple(out.shape) == tuple(t.shape) \
            and tuple(out.shape) != tuple(x.shape):
        return (" The output has the shape of t: does the network take (t, x)? It is called net(x, t); wrap it "
                "as lambda x, t: net(t, x).")
    return ""
