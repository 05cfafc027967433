"""Exceptions raised by flowsde.

Every error says *what* is wrong, *where* (argument, step, time) and *how* to
fix it. They subclass the builtin exceptions a caller would already catch.
"""

from __future__ import annotations


class FlowSDEError(Exception):
    """Base class of every flowsde error."""


class InputError(FlowSDEError, ValueError):
    """An argument given by the user is invalid (shape, dtype, value, method)."""


class SolveError(FlowSDEError, RuntimeError):
    """A solve failed part-way (non-finite state, step budget exhausted); raised when
    ``throw=True`` (with ``throw=False`` the failure is a per-sample ``Solution.status``).

    Attributes:
        step: the step index at which the failure was detected (or ``None``).
        t: the time at which the failure was detected (a float, or ``None``).
        samples: the indices of the failing samples (or ``None`` when not known).
    """

    def __init__(self, message: str, *, step: int | None = None, t: float | None = None,
                 samples: list | None = None):
        super().__init__(message)
        self.step = step
        self.t = t
        self.samples = samples
