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
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ._errors import InputError

Callable2 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NOISE_TYPES = ("scalar", "diagonal")


class ODE:
    """An ordinary differential equation ``dx/dt = f(t, x)``.

    Arguments:
        drift: ``f(t, x) -> Tensor`` with the shape of ``x``.
        score: optional ``s(t, x) -> Tensor`` (shape of ``x``), the marginal
            score, for correctors and diagnostics.
    """

    noise: Optional[str] = None
    is_sde = False

    def __init__(self, drift: Callable2, *, score: Optional[Callable2] = None):
        if not callable(drift):
            raise InputError(f"ODE(drift=...): drift must be callable f(t, x), got {type(drift).__name__}.")
        if score is not None and not callable(score):
            raise InputError(f"ODE(score=...): score must be callable s(t, x) or None, got {type(score).__name__}.")
        self._drift = drift
        self._score = score

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(drift={self._drift!r}, score={'yes' if self.has_score else 'no'})"


class SDE(ODE):
    """An Itô SDE ``dx = f(t, x) dt + g(t, x) dW``.

    Arguments:
        drift: ``f(t, x) -> Tensor`` with the shape of ``x``.
        diffusion: ``g(t, x) -> Tensor``. With ``noise="scalar"`` a tensor
            broadcastable to ``x`` per sample: 0-dim, ``(B,)`` or
            ``(B, 1, ..., 1)``; with ``noise="diagonal"`` the shape of ``x``.
        noise: ``"scalar"`` or ``"diagonal"``.
        score: optional marginal score ``s(t, x)``.
    """

    is_sde = True

    def __init__(
        self,
        drift: Callable2,
        diffusion: Callable2,
        noise: str = "scalar",
        *,
        score: Optional[Callable2] = None,
    ):
        super().__init__(drift, score=score)
        if not callable(diffusion):
            raise InputError(
                f"SDE(diffusion=...): diffusion must be callable g(t, x), got {type(diffusion).__name__}."
            )
        if noise not in NOISE_TYPES:
            raise InputError(f"SDE(noise={noise!r}): noise must be one of {NOISE_TYPES}.")
        self._diffusion = diffusion
        self.noise = noise

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``g(t, x)``, broadcast to the shape of ``x`` (see the class docstring)."""
        return broadcast_diffusion(self._diffusion(t, x), x, self.noise)

    def __repr__(self) -> str:
        return (
            f"SDE(drift={self._drift!r}, diffusion={self._diffusion!r}, noise={self.noise!r}, "
            f"score={'yes' if self.has_score else 'no'})"
        )


def broadcast_diffusion(g: torch.Tensor, x: torch.Tensor, noise: str) -> torch.Tensor:
    """Reshape a diffusion output so that ``g * dW`` broadcasts against ``x``.

    Scalar noise: 0-dim stays 0-dim; ``(B,)`` becomes ``(B, 1, ..., 1)``;
    ``(B, 1, ..., 1)`` is kept. Diagonal noise: must already be ``x.shape``
    (a 0-dim or per-sample value is accepted and broadcast, since a scalar is a
    special diagonal).
    """
    if not isinstance(g, torch.Tensor):
        if isinstance(g, (int, float)):
            return torch.as_tensor(float(g), dtype=x.dtype, device=x.device)
        raise InputError(f"diffusion returned {type(g).__name__}; it must return a torch.Tensor.")
    if g.dim() == 0 or tuple(g.shape) == tuple(x.shape):
        return g
    B = x.shape[0]
    if g.dim() == 1 and g.shape[0] == B:
        return g.reshape((B,) + (1,) * (x.dim() - 1))
    if g.dim() == x.dim() and g.shape[0] == B and all(s == 1 for s in g.shape[1:]):
        return g
    expected = "0-dim, (B,), (B, 1, ..., 1)" if noise == "scalar" else f"{tuple(x.shape)}"
    raise InputError(
        f"diffusion returned shape {tuple(g.shape)} for x of shape {tuple(x.shape)} with noise={noise!r}; "
        f"expected {expected}."
    )
