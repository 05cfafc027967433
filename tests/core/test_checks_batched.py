"""Finiteness of function outputs is reduced in groups (flowsde/_checks.py): the failing function,
step, time and samples must be those of a check of every output at once, whatever the grouping,
also for a function that writes every output into one buffer."""

import pytest
import torch

import flowsde
from flowsde import grids

F64 = torch.float64


def _reused_buffer_drift(bad_step_t, sample):
    buf = torch.empty(4, 3, dtype=F64)

    def f(t, x):
        torch.neg(x, out=buf)  # every output is this same tensor, rewritten in place
        if abs(float(t) - bad_step_t) < 1e-9:
            buf[sample] = float("nan")
        return buf

    return f


@pytest.mark.parametrize("group", [1, 3, 32])
def test_output_buffer_rewritten_in_place_is_still_attributed(monkeypatch, group):
    import flowsde._checks as checks

    monkeypatch.setattr(checks, "_GROUP", group)
    ts = grids.uniform(0, 1, 10)
    ode = flowsde.ODE(_reused_buffer_drift(0.5, 1))
    x0 = torch.ones(4, 3, dtype=F64)
    with pytest.raises(flowsde.SolveError, match=r"drift returned NaN/Inf at step 5 \(t = 0.5\) in sample 1\.") as e:
        flowsde.solve(ode, x0, ts, method="euler")
    assert e.value.samples == [1] and e.value.step == 5
    sol = flowsde.solve(ode, x0, ts, method="euler", throw=False)
    assert sol.status_names() == ["SUCCESS", "NON_FINITE", "SUCCESS", "SUCCESS"]
    assert sol.t_final.tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("group, fold_every", [(1, 1), (2, 3), (32, 256), (5, 7)])
def test_interleaved_widths_and_scalars_keep_record_order(monkeypatch, group, fold_every):
    # drift (B, 2) and a diagonal diffusion (B, 2), a scalar score: three widths of records
    # interleaved; sample 3's diffusion fails first (t > 0.35), then sample 0's drift (t > 0.55).
    import flowsde._checks as checks

    monkeypatch.setattr(checks, "_GROUP", group)
    monkeypatch.setattr(checks, "_FOLD_EVERY", fold_every)
    rows = torch.arange(4)[:, None]

    def f(t, x):
        return torch.where((rows == 0) & (t > 0.55), float("nan"), -x)

    def g(t, x):
        return torch.where((rows == 3) & (t > 0.35), float("inf"), 0.1 * torch.ones_like(x))

    sde = flowsde.SDE(f, g, noise_type="diagonal")
    x0 = torch.ones(4, 2, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    sol = flowsde.solve(sde, x0, ts, method="euler_maruyama", throw=False, generator=torch.Generator().manual_seed(0))
    assert sol.status_names() == ["NON_FINITE", "SUCCESS", "SUCCESS", "NON_FINITE"]
    assert sol.t_final.tolist() == pytest.approx([0.6, 1.0, 1.0, 0.4])
    with pytest.raises(flowsde.SolveError, match=r"diffusion returned NaN/Inf at step 4 \(t = 0.4\) in sample 3\."):
        flowsde.solve(sde, x0, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("group", [2, 16])
def test_state_shaped_and_broadcast_outputs_in_one_group(monkeypatch, group):
    # a drift of the state's shape (B, 3, 1) and a diffusion (B, 1, 1) broadcast over the event share a
    # pending group: each is reduced at its own width, and the failing sample and step are still named
    import flowsde._checks as checks

    monkeypatch.setattr(checks, "_GROUP", group)
    rows = torch.arange(4).reshape(4, 1, 1)

    def g(t, x):
        return torch.where((rows == 2) & (t > 0.45), float("nan"), 0.1 * torch.ones(4, 1, 1, dtype=F64))

    sde = flowsde.SDE(lambda t, x: -x, g, noise_type="diagonal")
    x0 = torch.ones(4, 3, 1, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    with pytest.raises(flowsde.SolveError, match=r"diffusion returned NaN/Inf at step 5 \(t = 0.5\) in sample 2\."):
        flowsde.solve(sde, x0, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(0))
    sol = flowsde.solve(sde, x0, ts, method="euler_maruyama", generator=torch.Generator().manual_seed(0), throw=False)
    assert sol.status_names() == ["SUCCESS", "SUCCESS", "NON_FINITE", "SUCCESS"]
