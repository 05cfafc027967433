"""Finiteness of function outputs is reduced in groups (flowsde/_checks.py): the failing function,
step, time and samples must be those of a check of every output at once, whatever the grouping
(CheckedProblem's ``group`` and ``fold_every``), also for a function that writes every output into
one buffer."""

import pytest
import torch

import flowsde
from flowsde import grids
from flowsde._internal import CheckedProblem, check_grid, make_noise_source
from flowsde._internal import fixed_step_loop as _fixed_step_loop

F64 = torch.float64


def solve_checked(problem, x, grid, method, *, group=16, fold_every=256, throw=True, generator=None):
    """``flowsde.solve``'s fixed-step path with every output checked as it comes (the path of its
    replay, and of ``throw=False`` on an accelerator), through a CheckedProblem built with the
    grouping knobs ``group`` and ``fold_every``."""
    grid = check_grid(grid, x)
    checked = CheckedProblem(problem, x, grid, throw=throw, group=group, fold_every=fold_every)
    solver = flowsde.solvers.get_solver(method)
    return _fixed_step_loop(solver, checked, x, grid, make_noise_source(generator, x), False, False)


def _reused_buffer_drift(bad_step_t, sample):
    buf = torch.empty(4, 3, dtype=F64)

    def f(t, x):
        torch.neg(x, out=buf)  # every output is this same tensor, rewritten in place
        if abs(float(t) - bad_step_t) < 1e-9:
            buf[sample] = float("nan")
        return buf

    return f


def test_the_knobs_default_to_solve_and_are_checked():
    # the helper with the default knobs is flowsde.solve (whose failed solve is replayed this way)
    sde = flowsde.SDE(lambda t, x: torch.where(t > 0.45, x / 0, -x), lambda t, x: torch.full((), 0.1, dtype=F64))
    x0 = torch.ones(3, 2, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    a = flowsde.solve(sde, x0, ts, method="euler_maruyama", throw=False, generator=torch.Generator().manual_seed(0))
    b = solve_checked(sde, x0, ts, "euler_maruyama", throw=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.status, b.status) and torch.equal(a.t_final, b.t_final) and a.nfe == b.nfe
    assert torch.equal(a.x.isnan(), b.x.isnan())
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(flowsde.InputError, match="group must be an int >= 1"):
            CheckedProblem(sde, x0, check_grid(ts, x0), group=bad)
        with pytest.raises(flowsde.InputError, match="fold_every must be an int >= 1"):
            CheckedProblem(sde, x0, check_grid(ts, x0), fold_every=bad)


@pytest.mark.parametrize("group", [1, 3, 32])
def test_output_buffer_rewritten_in_place_is_still_attributed(group):
    ts = grids.uniform(0, 1, 10)
    ode = flowsde.ODE(_reused_buffer_drift(0.5, 1))
    x0 = torch.ones(4, 3, dtype=F64)
    with pytest.raises(flowsde.SolveError, match=r"drift returned NaN/Inf at step 5 \(t = 0.5\) in sample 1\.") as e:
        solve_checked(ode, x0, ts, "euler", group=group)
    assert e.value.samples == [1] and e.value.step == 5
    sol = solve_checked(ode, x0, ts, "euler", group=group, throw=False)
    assert sol.status_names() == ["SUCCESS", "NON_FINITE", "SUCCESS", "SUCCESS"]
    assert sol.t_final.tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("group, fold_every", [(1, 1), (2, 3), (32, 256), (5, 7)])
def test_interleaved_widths_and_scalars_keep_record_order(group, fold_every):
    # drift (B, 2) and a diagonal diffusion (B, 2), a scalar score: three widths of records
    # interleaved; sample 3's diffusion fails first (t > 0.35), then sample 0's drift (t > 0.55).
    rows = torch.arange(4)[:, None]

    def f(t, x):
        return torch.where((rows == 0) & (t > 0.55), float("nan"), -x)

    def g(t, x):
        return torch.where((rows == 3) & (t > 0.35), float("inf"), 0.1 * torch.ones_like(x))

    sde = flowsde.SDE(f, g, noise_type="diagonal")
    x0 = torch.ones(4, 2, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    knobs = dict(group=group, fold_every=fold_every)
    sol = solve_checked(sde, x0, ts, "euler_maruyama", throw=False, generator=torch.Generator().manual_seed(0), **knobs)
    assert sol.status_names() == ["NON_FINITE", "SUCCESS", "SUCCESS", "NON_FINITE"]
    assert sol.t_final.tolist() == pytest.approx([0.6, 1.0, 1.0, 0.4])
    with pytest.raises(flowsde.SolveError, match=r"diffusion returned NaN/Inf at step 4 \(t = 0.4\) in sample 3\."):
        solve_checked(sde, x0, ts, "euler_maruyama", generator=torch.Generator().manual_seed(0), **knobs)


@pytest.mark.parametrize("group", [2, 16])
def test_state_shaped_and_broadcast_outputs_in_one_group(group):
    # a drift of the state's shape (B, 3, 1) and a diffusion (B, 1, 1) broadcast over the event share a
    # pending group: each is reduced at its own width, and the failing sample and step are still named
    rows = torch.arange(4).reshape(4, 1, 1)

    def g(t, x):
        return torch.where((rows == 2) & (t > 0.45), float("nan"), 0.1 * torch.ones(4, 1, 1, dtype=F64))

    sde = flowsde.SDE(lambda t, x: -x, g, noise_type="diagonal")
    x0 = torch.ones(4, 3, 1, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    with pytest.raises(flowsde.SolveError, match=r"diffusion returned NaN/Inf at step 5 \(t = 0.5\) in sample 2\."):
        solve_checked(sde, x0, ts, "euler_maruyama", group=group, generator=torch.Generator().manual_seed(0))
    sol = solve_checked(sde, x0, ts, "euler_maruyama", group=group, generator=torch.Generator().manual_seed(0),
                        throw=False)
    assert sol.status_names() == ["SUCCESS", "SUCCESS", "NON_FINITE", "SUCCESS"]


@pytest.mark.parametrize("fold_every", [1, 3, 256])
def test_failure_bookkeeping_is_the_same_whatever_the_folding(fold_every):
    # Per-output sums are folded into one (B,) tensor every `fold_every` outputs (memory O(B));
    # the first failure of each sample, and the earliest of the solve, must not depend on it.
    def f(t, x):
        out = -x
        nan = torch.full_like(x, float("nan"))
        out = torch.where((torch.arange(4)[:, None] == 2) & (t > 0.25), nan, out)  # sample 2 from t > 0.25
        return torch.where((torch.arange(4)[:, None] == 0) & (t > 0.65), nan, out)  # sample 0 from t > 0.65

    sde = flowsde.SDE(f, lambda t, x: torch.full((), 0.1, dtype=x.dtype), score=lambda t, x: -x)
    x0 = torch.ones(4, 2, dtype=F64)
    ts = grids.uniform(0, 1, 20)
    sol = solve_checked(sde, x0, ts, "euler_maruyama", fold_every=fold_every, throw=False)
    assert sol.status_names() == ["NON_FINITE", "SUCCESS", "NON_FINITE", "SUCCESS"]
    assert sol.t_final.tolist() == pytest.approx([0.7, 1.0, 0.3, 1.0])
    with pytest.raises(flowsde.SolveError, match=r"drift returned NaN/Inf at step 6 \(t = 0.3\) in sample 2\.") as e:
        solve_checked(sde, x0, ts, "euler_maruyama", fold_every=fold_every)
    assert e.value.samples == [2]
