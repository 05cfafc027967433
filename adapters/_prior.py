"""The reference (prior) distribution at the noise end ``t = T`` of a schedule."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from flowsde import InputError
from flowsde._internal import check_positive, randn

from ._inputs import _META_FIX, check_tensor

__all__ = ["GaussianPrior"]


class GaussianPrior:
    """Isotropic Gaussian ``N(0, std^2 I)`` over the event dimensions.

    :meth:`Diffusion.prior <flowsde.adapters.Diffusion.prior>` uses
    ``std = sigma(T)``: ``N(0, sigma_max^2 I)`` for VE / EDM (score_sde ``VESDE.prior_sampling``),
    ``N(0, sigma(T)^2 I)`` with ``sigma(T) = sqrt(1 - alpha(T)^2) ~ 1`` for VP-type
    schedules (score_sde uses exactly ``N(0, I)``; the two differ by ``alpha(T)^2``,
    4.3e-5 for ``VP(0.1, 20)``), ``N(0, I)`` exactly for ``Linear`` at ``T = 1``.

    Arguments:
        std: the standard deviation, a finite float > 0.
    """

    def __init__(self, std: float):
        self.std = check_positive("std", std, where="GaussianPrior")

    def sample(
        self,
        shape: Sequence[int],
        generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None,
        *,
        dtype: Optional[torch.dtype] = None,
        device: Union[None, str, torch.device] = None,
    ) -> torch.Tensor:
        """Draw ``std * z``, ``z ~ N(0, I)`` of shape ``shape = (B, *event)``.

        ``generator``: ``None`` (global RNG), a ``torch.Generator``, or a list of ``B``
        per-sample generators (``flowsde.per_sample_generators``), in which case sample
        ``i`` depends only on generator ``i`` (results independent of the batch size).
        ``device="meta"`` is refused (a meta tensor has no values to sample).
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise InputError(f"prior.sample: shape must be (B, *event) with positive sizes, got {shape}.")
        if device is not None and torch.device(device).type == "meta":
            raise InputError(f"prior.sample: device={device!r} is the 'meta' device; {_META_FIX}.")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        return self.std * randn(shape, generator, dtype, device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; 0, std^2 I)`` summed over the event dimensions: ``(B,)``, dtype of ``x``.
        A tensor on the meta device is refused (:class:`flowsde.InputError`)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise InputError(f"prior.log_prob: x must be a tensor of shape (B, *event), got {type(x).__name__}"
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}.")
        check_tensor(x, "x", "prior.log_prob")
        d = x[0].numel()
        sq = (x.reshape(x.shape[0], -1) ** 2).sum(1)
        return -0.5 * sq / self.std**2 - 0.5 * d * math.log(2 * math.pi * self.std**2)

    def __repr__(self) -> str:
        return f"GaussianPrior(std={self.std!r})"
