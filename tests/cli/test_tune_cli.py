"""Grids tuned to a model (``flowsde.workloads.tune_grid``, ``flowsde tune``) and ``compare --grid``.

Small settings (16 calibration samples, a few iterations): the checks are that the fit never does worse than
its start, that the error it reports is the sampler's error on the grid it returns (recomputed here with
``flowsde.solve`` and an independent reference), that the grid file round-trips, and that compare uses a
grid only on the rows it fits and refuses the others. The held-out measurement of the fit is
``benchmarks/bench_tune.py``.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsde
from flowsde import InputError, models
from flowsde.adapters import named_grid
from flowsde.workloads import TunedGrid, compare_solvers, tune_grid
from flowsde.workloads._tune import _grid_of, _logits_of

from _clihelpers import read_json, run, table_rows

F64 = torch.float64


@pytest.fixture(scope="module")
def eps_model():
    return models.load("digits-eps", net_dtype=F64)


@pytest.fixture(scope="module")
def tuned(eps_model):
    return tune_grid(eps_model, "heun", 6, samples=16, event_shape=(64,), max_iterations=3, model="digits-eps")


def test_tuned_grid_is_no_worse_than_its_start_and_reports_its_own_error(eps_model, tuned):
    assert tuned.steps == 3 and tuned.nfe == 6 and tuned.grid.shape == (4,) and tuned.samples == 16
    g = tuned.grid
    assert g[0].item() == 1.0 and g[-1].item() == 1e-3 and bool((g[1:] < g[:-1]).all())
    assert tuned.error <= tuned.error_init
    start = named_grid(eps_model, tuned.init, 3)
    # the error, recomputed: the calibration x_T from the recorded seed, a reference at another tolerance
    x_T = eps_model.prior().sample((16, 64), generator=torch.Generator().manual_seed(tuned.seed), dtype=F64)
    pf = eps_model.pf_ode()
    ref = flowsde.solve(pf, x_T, torch.tensor([1.0, 1e-3], dtype=F64), method="rk45", rtol=1e-10, atol=1e-10).x

    def rms(grid):
        return float(((flowsde.solve(pf, x_T, grid, method="heun").x - ref) ** 2).mean().sqrt())

    assert rms(g) == pytest.approx(tuned.error, rel=1e-5)
    assert rms(start) == pytest.approx(tuned.error_init, rel=1e-5)
    # the cost: the reference's NFE and 6 per trial solve (the named starts and the fit's evaluations)
    assert tuned.extra["solves"] >= len(flowsde.adapters.GRID_NAMES) + 1
    assert tuned.tuning_nfe == tuned.extra["reference_nfe"] + 6 * tuned.extra["solves"]


@settings(derandomize=True, max_examples=25, deadline=None)
@given(st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=12))
def test_monotone_parameterisation_round_trips(increments):
    d = torch.tensor(increments, dtype=F64)
    grid = 1.0 - torch.cat([d.new_zeros(1), torch.cumsum(d / d.sum(), 0)]) * (1.0 - 1e-3)
    back = _grid_of(_logits_of(grid), 1.0, 1e-3)
    torch.testing.assert_close(back, grid, rtol=1e-10, atol=1e-13)


def test_grid_file_round_trips_and_bad_files_are_refused(tmp_path, tuned):
    p = tmp_path / "g.json"
    tuned.write(p)
    back = TunedGrid.read(p)
    assert torch.equal(back.grid, tuned.grid) and back.solver == "heun" and back.nfe == 6
    assert (back.model, back.seed, back.samples, back.objective) == ("digits-eps", 12345, 16, tuned.objective)
    (tmp_path / "x.json").write_text('{"grid": [1, 0]}')
    with pytest.raises(InputError, match="not a flowsde grid file"):
        TunedGrid.read(tmp_path / "x.json")
    with pytest.raises(InputError, match="cannot read it as JSON"):
        TunedGrid.read(tmp_path / "missing.json")


def test_tune_refuses_what_has_no_grid(eps_model):
    with pytest.raises(InputError, match="not a fixed-step PF-ODE sampler"):
        tune_grid(eps_model, "rk45", 10, event_shape=(64,))
    with pytest.raises(InputError, match="not a fixed-step PF-ODE sampler"):
        tune_grid(eps_model, "euler_maruyama", 10, event_shape=(64,))
    with pytest.raises(InputError, match="below one step"):
        tune_grid(eps_model, "heun", 1, event_shape=(64,))


def test_compare_runs_a_tuned_grid_on_its_row_only_and_refuses_a_misfit(eps_model, tuned):
    res = compare_solvers(eps_model, event_shape=(64,), samples=8, budgets=(6,), methods=["heun"],
                          grid=["edm", tuned], n_projections=4)
    assert [r.grid for r in res.rows[1:]] == ["edm", "tuned(heun, NFE 6)"]
    with pytest.raises(InputError, match=r"tuned for 'heun' at NFE 6 \(3 steps\); it does not fit 'euler'"):
        compare_solvers(eps_model, event_shape=(64,), samples=8, budgets=(6,), methods=["euler"], grid=tuned)
    with pytest.raises(InputError, match="fits no run of this comparison"):
        compare_solvers(eps_model, event_shape=(64,), samples=8, budgets=(6,), methods=["euler"],
                        grid=["edm", tuned])
    with pytest.raises(InputError, match="choose a grid name"):
        compare_solvers(eps_model, event_shape=(64,), samples=8, budgets=(6,), methods=["euler"], grid="cosine")


def test_cli_tune_then_compare_with_the_file(capsys, tmp_path):
    g = tmp_path / "grid.json"
    rc, out, err = run(capsys, "tune", "--solver", "euler", "--nfe", "4", "--out", g, "--samples", "8",
                       "--max-iterations", "2", "-q")
    assert rc == 0, err
    assert "Tuning cost:" in out and g.is_file()
    js = read_json(g)
    assert js["format"] == "flowsde-grid" and js["solver"] == "euler" and js["nfe"] == 4 and len(js["grid"]) == 5
    assert js["model"] == "digits-eps" and js["seed"] == 12345 and js["samples"] == 8
    rc, out, err = run(capsys, "compare", "--solvers", "euler", "--nfe", "4", "-n", "8", "--grid", "log_snr", g,
                       "--out", tmp_path / "c", "-q")
    assert rc == 0, err
    rows = table_rows(out)
    assert [r["grid"] for r in rows] == ["-", "log_snr", "tuned(euler, NFE 4)"]
    assert [r["grid"] for r in read_json(tmp_path / "c" / "compare.json")["rows"]] == [None, "log_snr",
                                                                                         "tuned(euler, NFE 4)"]
    rc, out, err = run(capsys, "compare", "--solvers", "heun", "--nfe", "4", "-n", "8", "--grid", g,
                       "--out", tmp_path / "d", "-q")
    assert rc == 2 and "does not fit 'heun'" in err and len(err.strip().splitlines()) == 1
    rc, out, err = run(capsys, "compare", "--grid", "nosuch", "--out", tmp_path / "e", "-q")
    assert rc == 2 and "neither a grid name" in err


def test_tune_help_is_plain_text(capsys):
    rc, out, err = run(capsys, "tune", "--help")
    assert rc == 0 and "usage: flowsde tune" in out and "--calibration-seed" in out
    assert "`" not in out
