"""Per-sample global error control of the likelihood: a ladder of solves (``error_estimate="global"``).

An embedded pair controls the *local* error of each step; the error of ``log p`` that a user reads is
the *global* one: the local errors of the log-density channel plus the state's errors carried into the
divergence integral and the prior. Measured on the shipped digits models (``docs/likelihood.md``, "What
``bpd_tol`` promises"), the global error of a solve at local tolerance ``tau`` scatters per sample from
far below ``tau`` to ~30 ``tau``, and no single-solve estimate (the embedded sum, step doubling on the
accepted steps) tracks it per sample. What does: the difference to a solve of the same sample 10x
tighter. So the likelihood climbs a ladder, per sample:

    level k solves at the request's tolerances times  START / FACTOR^k                (k = 0, 1, ...)
    est_k = SAFETY |logp_k - logp_{k+1}| + FLOOR tau_k   (the error of logp_k; SAFETY covers the part of
                                                          logp_{k+1}'s own error that cancels logp_k's, and
                                                          FLOOR tau_k, 0.3x the log-density tolerance tau_k of
                                                          level k, the two solves agreeing by chance)
    the answer of a sample is logp_k for the first k with est_k <= bpd_tol (in nats: bpd_tol D ln 2),
    with solver_error = est_k.

Levels 0 and 1 are solved for the whole batch; each further level only for the samples whose estimate
is still above the tolerance (a batch of those samples alone: with per-sample steps a sample's numbers do
not depend on its batch). A sample whose estimate exceeds the tolerance after :data:`MAX_SOLVES` solves
keeps its last level's answer and estimate (``stats["met_per_sample"]`` is then False, and the call
warns). The state's tolerances stop at the dtype's floor while the log-density's go on tightening;
float32 requests below 10x its measured floor are refused (``_likelihood.BPD_FLOOR``). The constants were chosen
on ``benchmarks/bench_likelihood_peers.py``'s digits (``docs/benchmarks.md``, "Likelihood: the promise per sample").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

#: level 0 solves at the request's tolerances times START
START = 0.1
#: each level's tolerances are the previous level's divided by FACTOR
FACTOR = 10.0
#: solver_error = SAFETY |logp_k - logp_{k+1}| + FLOOR tau_k
SAFETY = 3.0
#: solver_error adds FLOOR x the level's log-density tolerance: on 64 digits of digits-eps, 5-8 % of the samples
#: had a true error above SAFETY |logp_k - logp_{k+1}| (0.01-0.12 bpd_tol, where the two solves agreed by chance);
#: 0.3 x the level's tolerance (0.03 bpd_tol at level 0) left 0-3 % (0.5 left none, but made the median of
#: reported / max(true, bpd_tol/100) >= 5 wherever the true error is below bpd_tol/100, as on the image-sized
#: mixture; docs/benchmarks.md)
FLOOR = 0.3
#: the most solves of one sample (levels 0 .. MAX_SOLVES - 1)
MAX_SOLVES = 5


@dataclass(frozen=True)
class Ladder:
    """The ladder's constants (module docstring)."""

    start: float = START
    factor: float = FACTOR
    safety: float = SAFETY
    floor: float = FLOOR
    max_solves: int = MAX_SOLVES

    def divisor(self, k: int) -> float:
        """Level ``k`` solves at the request's tolerances divided by this."""
        return self.factor**k / self.start


@dataclass
class Climb:
    """Where each sample's answer comes from.

    Attributes:
        level: ``(B,)`` int64, the level of each sample's answer.
        estimate: ``(B,)`` float64 ``SAFETY |logp_level - logp_{level+1}| + FLOOR tau_level`` (nats).
        met: ``(B,)`` bool, ``estimate <= target``.
        solved: per level, ``(idx, run)``: the samples solved there and the solve.
    """

    level: torch.Tensor
    estimate: torch.Tensor
    met: torch.Tensor
    solved: List[Tuple[torch.Tensor, object]]


def climb(ladder: Ladder, solve: Callable[[int, torch.Tensor], object], logp_of: Callable[[object], torch.Tensor],
          target: float, batch: int, device) -> Climb:
    """Run the ladder: ``solve(k, idx)`` solves the samples ``idx`` at level ``k`` and returns a run whose
    ``logp_of(run)`` is their ``(len(idx),)`` float64 log-density (NaN where the sample failed); ``target``
    is the tolerance in nats."""
    idx = torch.arange(batch, device=device)
    solved = [(idx, solve(0, idx))]
    prev = torch.full((batch,), float("nan"), dtype=torch.float64, device=device)
    prev[idx] = logp_of(solved[0][1])
    level = torch.zeros(batch, dtype=torch.int64, device=device)
    estimate = torch.full((batch,), float("inf"), dtype=torch.float64, device=device)
    pending = idx
    k = 1
    while pending.numel() and k < ladder.max_solves:
        run = solve(k, pending)
        solved.append((pending, run))
        cur = logp_of(run)
        est = ladder.safety * (prev[pending] - cur).abs() + ladder.floor * target / ladder.divisor(k - 1)
        estimate[pending] = est
        level[pending] = k - 1
        prev[pending] = cur
        done = (est <= target) | ~torch.isfinite(est)  # met, or failed (a failed sample's numbers are NaN)
        pending = pending[~done]  # the one host sync of a level: which samples go on
        k += 1
    met = estimate <= target
    return Climb(level, estimate, met, solved)


def take(climb_: Climb, field: Callable[[object], torch.Tensor]) -> torch.Tensor:
    """A per-sample field of each sample's answer level."""
    out = None
    for k, (idx, run) in enumerate(climb_.solved):
        v = field(run)
        if out is None:
            out = v.clone()
            continue
        want = climb_.level[idx] == k
        out[idx[want]] = v[want]
    return out


def fold(climb_: Climb, field: Callable[[object], torch.Tensor], combine) -> torch.Tensor:
    """A per-sample field combined over every solve the sample took part in (``torch.add`` for its counts,
    ``torch.maximum`` for its worst status)."""
    out = None
    for idx, run in climb_.solved:
        v = field(run)
        out = v.clone() if out is None else out.index_put((idx,), combine(out[idx], v))
    return out
