"""Small public helpers shared by every layer of flowsde (see docs/design.md).

* :func:`randn`, :func:`rand`, :func:`rademacher`: random draws from ``None``
  (torch's global RNG), one ``torch.Generator``, or a list of per-sample
  generators (sample ``i`` then depends on generator ``i`` alone, so a result
  does not depend on the batch it is computed in);
* :func:`batch_broadcast`: a 0-dim or per-sample ``(B,)`` coefficient made
  broadcastable against a batch ``(B, *event_shape)``;
* :func:`check_positive`: a finite number ``> 0`` or an :class:`flowsde.InputError`;
* :func:`check_time_and_state`: the ``(t, x)`` arguments of a problem function, with
  a message that names swapped arguments as such.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import torch

from ._errors import InputError

__all__ = ["randn", "rand", "rademacher", "as_generator", "as_seed", "check_generators", "batch_broadcast", "check_positive",
           "check_time_and_state", "ROUNDING", "rounding_slack", "time_in_range"]

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


def check_generators(generators: Sequence, batch, what: str) -> None:
    """Refuse a list of per-sample generators whose length is not the batch size ``batch`` or
    whose entries are not ``torch.Generator``s; ``what`` names the caller in the message."""
    if len(generators) != batch:
        raise InputError(
            f"{what}: got {len(generators)} per-sample generators for a batch of {batch}; pass one per "
            "sample (flowsde.per_sample_generators(seeds))."
        )
    for i, g in enumerate(generators):
        if not isinstance(g, torch.Generator):
            raise InputError(f"{what}: generator[{i}] is {type(g).__name__}, expected torch.Generator.")


def as_generator(generator, device=None):
    """``generator=`` as the draws take it: an int is a seed (a new ``torch.Generator`` on
    ``device`` seeded with it, docs/design.md "Vocabulary"); anything else is returned as it is."""
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        g = torch.Generator(device=device if device is not None else "cpu")
        g.manual_seed(int(generator))
        return g
    return generator


def as_seed(generator, what: str) -> int:
    """An integer seed from ``generator=``: an int as it is, a ``torch.Generator`` draws one,
    ``None`` draws one from torch's global RNG (for objects seeded by an integer, e.g. a
    Brownian tree)."""
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return int(generator)
    if generator is None or isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu").item())
    raise InputError(f"{what}: generator must be None, an int seed or a torch.Generator, got "
                     f"{type(generator).__name__}.")


def _draw(fn: Callable, shape, generator: Generators, dtype, device, what: str) -> torch.Tensor:
    generator = as_generator(generator, device)
    if generator is None or isinstance(generator, torch.Generator):
        return fn(shape, generator)
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, (list, tuple)):
        check_generators(generator, shape[0] if shape else "a 0-dim shape", what)
        return torch.stack([fn(shape[1:], g) for g in generator])
    raise InputError(
        f"{what}: generator must be None, a torch.Generator or a list of them (one per sample), got "
        f"{type(generator).__name__}."
    )


def randn(shape, generator: Generators = None, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """Standard normal draws of ``shape = (B, *event_shape)``.

    Arguments:
        shape: the output shape; with per-sample generators its first entry is the batch size.
        generator: ``None`` (global RNG), a ``torch.Generator`` (one stream for the whole
            tensor), or a list of ``B`` generators (row ``i`` drawn from generator ``i``).
        dtype, device: of the result (``dtype=None``: torch's default dtype).

    Raises:
        InputError: a generator list whose length is not ``shape[0]``, or a wrong type.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return _draw(lambda s, g: torch.randn(s, generator=g, dtype=dtype, device=device), shape, generator, dtype,
                 device, "randn")


def rand(shape, generator: Generators = None, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """Uniform draws on ``[0, 1)``; ``generator`` as in :func:`randn`."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return _draw(lambda s, g: torch.rand(s, generator=g, dtype=dtype, device=device), shape, generator, dtype,
                 device, "rand")


def rademacher(shape, generator: Generators = None, dtype: Optional[torch.dtype] = None,
               device=None) -> torch.Tensor:
    """Independent ``+1`` / ``-1`` with probability 1/2 each; ``generator`` as in :func:`randn`."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return _draw(lambda s, g: torch.randint(0, 2, s, generator=g, device=device).to(dtype) * 2 - 1, shape,
                 generator, dtype, device, "rademacher")


def batch_broadcast(c, x: torch.Tensor) -> torch.Tensor:
    """``c`` reshaped so that ``c * x`` applies one value per sample.

    ``c``: a number, a 0-dim tensor (kept 0-dim), a ``(B,)`` tensor (reshaped to
    ``(B, 1, ..., 1)``) or an already broadcastable ``(B, 1, ..., 1)`` tensor;
    ``x``: ``(B, *event_shape)``.

    Raises:
        InputError: any other shape (the message names both shapes).
    """
    if isinstance(c, numbers.Real) and not isinstance(c, bool):
        return torch.as_tensor(float(c), dtype=x.dtype, device=x.device)
    if not isinstance(c, torch.Tensor):
        raise InputError(f"batch_broadcast: expected a number or a tensor, got {type(c).__name__}.")
    if c.dim() == 0:
        return c
    B = x.shape[0]
    if c.dim() == 1 and c.shape[0] == B:
        return c.reshape((B,) + (1,) * (x.dim() - 1))
    if c.dim() == x.dim() and c.shape[0] == B and all(s == 1 for s in c.shape[1:]):
        return c
    raise InputError(
        f"batch_broadcast: a per-sample value must be 0-dim, (B,) or (B, 1, ..., 1) for x of shape "
        f"{tuple(x.shape)}; got shape {tuple(c.shape)}."
    )


def check_positive(name: str, value, *, where: str = "") -> float:
    """``float(value)`` if it is a finite real number ``> 0``; otherwise :class:`InputError`.

    ``where`` prefixes the message (e.g. ``"RK45"`` gives ``"RK45: rtol must be ..."``).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value, ok = value.item(), True
    if not (ok and math.isfinite(float(value)) and float(value) > 0):
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def check_time_and_state(t, x, *, where: str = "") -> None:
    """Check the ``(t, x)`` arguments of a function ``f(t, x)``.

    ``t``: a number, a 0-dim tensor or a ``(B,)`` tensor; ``x``: a tensor ``(B, *event_shape)``
    on a real device. Arguments given the wrong way round (``f(x, t)``: a batch tensor as
    ``t`` and a number or 0-dim tensor as ``x``) are named as swapped.

    Raises:
        InputError: the message says what was given, where, and the expected form.
    """
    prefix = f"{where}: " if where else ""
    x_is_time = (isinstance(x, numbers.Real) and not isinstance(x, bool)) or (
        isinstance(x, torch.Tensor) and x.dim() == 0)
    t_dims = t.dim() if isinstance(t, torch.Tensor) else 0
    if (x_is_time and t_dims >= 1) or (isinstance(x, torch.Tensor) and x.dim() == 1 and t_dims >= 2):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(
            f"{prefix}the arguments look swapped: got t of shape {tuple(t.shape)} and x of shape {got}; "
            "call f(t, x) with t the time (a number, 0-dim or (B,)) and x the state (B, *event_shape)."
        )
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{prefix}x must be a batch-first tensor (B, *event_shape), got {got}.")
    if x.device.type == "meta" or (isinstance(t, torch.Tensor) and t.device.type == "meta"):
        raise InputError(f"{prefix}got a tensor on the 'meta' device (shapes without values); use a real device.")
    if isinstance(t, torch.Tensor):
        if not (t.dim() == 0 or (t.dim() == 1 and t.shape[0] in (1, x.shape[0]))):
            raise InputError(f"{prefix}t must be a number, 0-dim or (B,) = ({x.shape[0]},), got shape "
                             f"{tuple(t.shape)}.")
    elif not isinstance(t, numbers.Real) or isinstance(t, bool):
        raise InputError(f"{prefix}t must be a number or a tensor, got {type(t).__name__}.")


#: A time off a schedule's range ``[t_min, t_max]`` by at most this much relative to the bound
#: (rounding of a float32 grid: 1e-5 is ~80 float32 ulps) is accepted and clamped onto the bound.
ROUNDING = 1e-5


def rounding_slack(lo: float, hi: float):
    """``(below, above)``: how far outside ``[lo, hi]`` a time may lie by rounding only:
    ``ROUNDING * |bound|``, or ``ROUNDING * 1e-3 * (hi - lo)`` for a bound at 0. The one rule of
    the adapters (``Diffusion``'s conversions; use it for any other time given by a user)."""
    return tuple(ROUNDING * (abs(b) if b != 0 else 1e-3 * (hi - lo)) for b in (lo, hi))


def time_in_range(value: float, lo: float, hi: float, *, name: str = "t", where: str = "") -> float:
    """``value`` clamped into ``[lo, hi]`` when it is off by rounding only (:func:`rounding_slack`,
    e.g. k-diffusion's float32 0.0019999996 for 0.002); a real excursion raises
    :class:`flowsde.InputError` printing the value, the bound and the difference with all digits."""
    s_lo, s_hi = rounding_slack(lo, hi)
    if lo <= value <= hi:
        return value
    if lo - s_lo <= value < lo:
        return lo
    if hi < value <= hi + s_hi:
        return hi
    end = lo if value < lo else hi
    prefix = f"{where}: " if where else ""
    raise InputError(f"{prefix}{name} = {value!r} is outside the range [t_min, t_max] = [{lo!r}, {hi!r}] by "
                     f"{abs(value - end):.3g}, more than rounding (within {ROUNDING:g} of a bound, relative, a time "
                     "is clamped onto it). Pass a time inside the range.")
