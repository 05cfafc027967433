"""The ladder of ``flowsde/_error_control.py`` on scripted solves: its estimate, its levels and who climbs."""

import torch

from flowsde._error_control import Ladder, climb

DT = torch.float64


def _scripted(values):
    """``solve(k, idx)`` returning ``values[k][idx]`` (the log-density of each sample at level ``k``)."""
    calls = []

    def solve(k, idx):
        calls.append((k, idx.tolist()))
        return torch.tensor(values[k], dtype=DT)[idx]

    return solve, calls


def test_estimate_is_safety_times_the_difference_plus_the_floor_of_its_level():
    lad, target = Ladder(), 1.0
    tau = lambda k: target / lad.divisor(k)  # noqa: E731 - level k's log-density tolerance
    # sample 0: levels 0 and 1 agree exactly (the floor alone); sample 1: a difference within the target;
    # sample 2: too far apart at level 0, then within it at level 1
    values = [[5.0, 5.0, 5.0], [5.0, 5.1, 5.5], [5.0, 5.1, 5.51]]
    solve, calls = _scripted(values)
    c = climb(lad, solve, lambda r: r, target, 3, "cpu")
    want0 = lad.floor * tau(0)
    want1 = lad.safety * 0.1 + lad.floor * tau(0)
    want2 = lad.safety * 0.01 + lad.floor * tau(1)
    torch.testing.assert_close(c.estimate, torch.tensor([want0, want1, want2], dtype=DT), rtol=1e-12, atol=0)
    assert c.level.tolist() == [0, 0, 1] and c.met.all()
    assert calls == [(0, [0, 1, 2]), (1, [0, 1, 2]), (2, [2])]  # only the sample above the target climbs
    assert lad.floor * tau(0) == 0.3 * 0.1 * target  # 0.03 bpd_tol at level 0 (docs/likelihood.md)
