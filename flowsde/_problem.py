"""Problems: Itô SDEs and ODEs as drift / diffusion callables.

An Itô SDE is

    dx = f(t, x) dt + g(t, x) dW,

with ``x`` a batch-first tensor of shape ``(B, *event_shape)``, ``t`` a 0-dim
or ``(B,)`` tensor, and ``g`` either *scalar* (one number per sample,
broadcast over the event dimensions) or *diagonal* (the shape of ``x``). An
ODE is an SDE without ``g``.

Both classes expose ``.drift(t, x)`` and ``.diffusion(t, x)`` as methods, so
code written against one works with any. An optional ``score(t, x)`` (the
marginal score ``grad_x log p_t(x)``) is used by the Langevin corrector.

Time (docs/design.md, "Time"): ``solve`` carries times in float64 and casts
``t`` to the state dtype right before calling these functions, unless the
problem is built with ``time_dtype=torch.float64`` (then ``t`` arrives in
float64 and the function casts it where it needs to).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ._errors import InputError
from ._utils import batch_broadcast

Callable2 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NOISE_TYPES = ("scalar", "diagonal")
DIRECTIONS = (None, "forward", "reverse")


class ODE:
    """An ordinary differential equation ``dx/dt = f(t, x)``.

    Arguments:
        drift: ``f(t, x) -> Tensor`` with the shape of ``x``.
        score: optional ``s(t, x) -> Tensor`` (shape of ``x``), the marginal
            score, for correctors and diagnostics.
        direction: ``None`` (solvable either way in time), ``"forward"`` (only
            meaningful on increasing grids) or ``"reverse"`` (only on decreasing
            grids, e.g. a diffusion model's reverse-time SDE); :func:`flowsde.solve`
            refuses the other direction.
        time_dtype: ``None`` (``t`` is given to the functions in the state's dtype)
            or ``torch.float64`` (``t`` is given in float64, as solve carries it).
    """

    noise_type: Optional[str] = None
    is_sde = False

    def __init__(self, drift: Callable2, *, score: Optional[Callable2] = None, direction: Optional[str] = None,
                 time_dtype: Optional[torch.dtype] = None):
        if not callable(drift):
            raise InputError(f"{type(self).__name__}(drift=...): drift must be callable f(t, x), got "
                             f"{type(drift).__name__}.")
        if score is not None and not callable(score):
            raise InputError(f"{type(self).__name__}(score=...): score must be callable s(t, x) or None, got "
                             f"{type(score).__name__}.")
        if direction not in DIRECTIONS:
            raise InputError(f"{type(self).__name__}(direction={direction!r}): must be one of {DIRECTIONS}.")
        if time_dtype not in (None, torch.float64):
            raise InputError(f"{type(self).__name__}(time_dtype={time_dtype!r}): must be None (t in the state's "
                             "dtype) or torch.float64.")
        self._drift = drift
        self._score = score
        self.direction = direction
        self.time_dtype = time_dtype

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``f(t, x)``; shape ``(B, *event_shape)``."""
        return self._drift(t, x)

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> None:
        """An ODE has no diffusion: returns ``None``."""
        return None

    @property
    def has_score(self) -> bool:
        return self._score is not None

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Marginal score ``grad_x log p_t(x)``; raises if none was given."""
        if self._score is None:
            raise InputError(
                f"{type(self).__name__}.score: this problem has no score; pass score=... when you build it "
                "(adapters' Diffusion objects attach one automatically)."
            )
        return self._score(t, x)

    def _extra_repr(self) -> str:
        out = f"score={'yes' if self.has_score else 'no'}"
        if self.direction is not None:
            out += f", direction={self.direction!r}"
        if self.time_dtype is not None:
            out += f", time_dtype={self.time_dtype}"
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(drift={self._drift!r}, {self._extra_repr()})"


class SDE(ODE):
    """An Itô SDE ``dx = f(t, x) dt + g(t, x) dW``.

    Arguments:
        drift: ``f(t, x) -> Tensor`` with the shape of ``x``.
        diffusion: ``g(t, x) -> Tensor``. With ``noise_type="scalar"`` a tensor
            broadcastable to ``x`` per sample: 0-dim, ``(B,)`` or
            ``(B, 1, ..., 1)``; with ``noise_type="diagonal"`` the shape of ``x``.
        noise_type: ``"scalar"`` or ``"diagonal"``.
        score, direction, time_dtype: as for :class:`ODE`.
    """

    is_sde = True

    def __init__(
        self,
        drift: Callable2,
        diffusion: Callable2,
        noise_type: str = "scalar",
        *,
        score: Optional[Callable2] = None,
        direction: Optional[str] = None,
        time_dtype: Optional[torch.dtype] = None,
    ):
        super().__init__(drift, score=score, direction=direction, time_dtype=time_dtype)
        if not callable(diffusion):
            raise InputError(
                f"SDE(diffusion=...): diffusion must be callable g(t, x), got {type(diffusion).__name__}."
            )
        if noise_type not in NOISE_TYPES:
            raise InputError(f"SDE(noise_type={noise_type!r}): noise_type must be one of {NOISE_TYPES}.")
        self._diffusion = diffusion
        self.noise_type = noise_type

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``g(t, x)``, broadcast to the shape of ``x`` (see the class docstring)."""
        return broadcast_diffusion(self._diffusion(t, x), x, self.noise_type)

    def __repr__(self) -> str:
        return (f"SDE(drift={self._drift!r}, diffusion={self._diffusion!r}, noise_type={self.noise_type!r}, "
                f"{self._extra_repr()})")


def broadcast_diffusion(g: torch.Tensor, x: torch.Tensor, noise_type: str) -> torch.Tensor:
    """Reshape a diffusion output so that ``g * dW`` broadcasts against ``x``.

    Scalar noise: 0-dim stays 0-dim; ``(B,)`` becomes ``(B, 1, ..., 1)``;
    ``(B, 1, ..., 1)`` is kept (``flowsde._internal.batch_broadcast``). Diagonal
    noise: the shape of ``x`` (a 0-dim or per-sample value is accepted and
    broadcast, since a scalar is a special diagonal).
    """
    if isinstance(g, torch.Tensor) and (g.dim() == 0 or g.shape == x.shape):
        return g
    if not isinstance(g, (torch.Tensor, int, float)) or isinstance(g, bool):
        raise InputError(f"diffusion returned {type(g).__name__}; it must return a torch.Tensor.")
    try:
        return batch_broadcast(g, x)
    except InputError:
        expected = "0-dim, (B,), (B, 1, ..., 1)" if noise_type == "scalar" else f"{tuple(x.shape)}"
        raise InputError(
            f"diffusion returned shape {tuple(g.shape)} for x of shape {tuple(x.shape)} with "
            f"noise_type={noise_type!r}; expected {expected}."
        ) from None
