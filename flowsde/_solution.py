"""The result of a solve."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

import torch


class Status(enum.IntEnum):
    """Per-sample outcome of a solve (stored in ``Solution.status``)."""

    SUCCESS = 0
    NON_FINITE = 1  #: the state or a function value became NaN/Inf
    MAX_STEPS = 2  #: the step budget ran out before the end time
    DT_MIN = 3  #: the adaptive step size fell below its minimum

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


_MESSAGES = {
    Status.SUCCESS: "success",
    Status.NON_FINITE: "the state or a function value became non-finite; check the model near that time, "
    "use float64 or a smaller step",
    Status.MAX_STEPS: "the step budget ran out before the end time; try increasing max_steps or loosening rtol/atol",
    Status.DT_MIN: "the step size fell below its minimum; the problem may be stiff or singular at that time",
}


@dataclass
class Solution:
    """What :func:`flowsde.solve` returns.

    Attributes:
        x: final state, ``(B, *event_shape)``.
        grid: the times at which states were saved, 1-D (``None`` if only the final state was kept).
        xs: saved states, ``(len(grid), B, *event_shape)`` (or ``None``).
        nfe: number of function evaluations: calls of the drift plus calls of the score
            (the network evaluations, for a model); diffusion calls are not counted.
        steps: steps taken (accepted + rejected for adaptive methods).
        accepted, rejected: adaptive step counts (``rejected`` is 0 for fixed steps).
        status: ``(B,)`` int64 tensor of :class:`Status` codes.
        t_final: ``(B,)`` time each sample reached.
        method: the name of the solver used.
        stats: solver-specific extras.
    """

    x: torch.Tensor
    nfe: int
    steps: int
    status: torch.Tensor
    t_final: torch.Tensor
    method: str
    grid: Optional[torch.Tensor] = None
    xs: Optional[torch.Tensor] = None
    accepted: int = 0
    rejected: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        """True when every sample reached the end time."""
        return bool((self.status == Status.SUCCESS).all())

    def status_names(self) -> list:
        """Each sample's status as a name (``"SUCCESS"``, ``"NON_FINITE"``, ...)."""
        return [Status(int(s)).name for s in self.status.tolist()]

    def __repr__(self) -> str:
        codes = torch.bincount(self.status.detach().cpu().flatten(), minlength=len(Status)).tolist()
        counts = ", ".join(f"{Status(c).name}={n}" for c, n in enumerate(codes) if n)
        return (
            f"Solution(method={self.method!r}, x={tuple(self.x.shape)}, nfe={self.nfe}, steps={self.steps}, "
            f"accepted={self.accepted}, rejected={self.rejected}, status: {counts})"
        )
