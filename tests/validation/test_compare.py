"""The solver-comparison harness on the built-in exact model (small settings)."""

import math

import pytest
import torch

from flowsde import InputError
from flowsde.adapters import Diffusion, schedules
from flowsde.workloads import compare_solvers, default_mixture, steps_for_budget
from flowsde.validation import sliced_w2


@pytest.fixture(scope="module")
def exact_model():
    data = default_mixture(2)
    sched = schedules.EDM()
    return Diffusion(data.oracle(sched, "x0"), sched, prediction="x0"), data


@pytest.fixture(scope="module")
def comparison(exact_model):
    diff, data = exact_model
    return compare_solvers(diff, data, samples=300, budgets=(8, 32), methods=("euler", "heun", "rk45", "euler_maruyama"),
                           rk45_tols=(1e-3, 1e-6), likelihood_tols=(1e-6,), likelihood_samples=20, generator=0,
                           sde_reference_steps=256)


def _rows(c):
    return {(r.method, r.setting): r for r in c.rows}


def test_path_errors_fall_with_nfe_at_the_solver_orders(comparison):
    rows = _rows(comparison)
    e8, e32 = rows[("euler", "8 steps")].error, rows[("euler", "32 steps")].error
    h4, h16 = rows[("heun", "4 steps")].error, rows[("heun", "16 steps")].error
    # 4x the steps: Euler (order 1) gains ~4x, Heun (order 2) ~16x; generous bands for the
    # pre-asymptotic regime of a 4-step grid.
    assert 2.0 < e8 / e32 < 8.0
    assert h4 / h16 > 6.0
    r3, r6 = rows[("rk45", "tol 1e-03")], rows[("rk45", "tol 1e-06")]
    assert r6.error < r3.error and r6.nfe > r3.nfe
    assert r6.error < 1e-5  # tolerance 1e-6 against the 1e-8 float64 reference, RMS per coordinate


def test_strong_error_on_the_shared_path_falls_with_steps(comparison):
    rows = _rows(comparison)
    em8, em32 = rows[("euler_maruyama", "8 steps")], rows[("euler_maruyama", "32 steps")]
    assert em8.kind == "sde" and em8.error is not None
    # the same Brownian path drives coarse and fine solutions: the strong error falls (order 1/2..1)
    assert em32.error < em8.error / 1.5


def test_noise_floor_row_and_exact_columns(comparison):
    ref = comparison.rows[0]
    assert ref.method == "reference" and ref.setting == "noise floor" and ref.distance > 0
    assert comparison.noise_floor == ref.distance
    # the tight RK45 rows are as close to exact samples as exact samples are to each other (3x band)
    r6 = _rows(comparison)[("rk45", "tol 1e-06")]
    assert r6.distance < 3 * ref.distance
    assert all(0 <= r.ks <= 1 for r in comparison.rows)


def test_likelihood_rows_are_exact_to_tolerance(comparison):
    (tol, nfe, mean_err, max_err, _), = comparison.likelihood
    assert nfe > 0 and max_err < 1e-3  # exact trace, exact prior: only the ODE error remains


def test_outputs(comparison, tmp_path):
    text = comparison.table()
    assert "| heun | 16 steps | 32 |" in text and "| reference | noise floor |" in text and "likelihood" in text
    assert "SW2" in comparison.explain() and "noise floor" in comparison.explain()
    comparison.write_csv(tmp_path / "c.csv")
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0].startswith("method,kind,setting,budget,nfe,error,distance")
    assert len(lines) == 1 + len(comparison.rows)
    import json

    comparison.write_json(tmp_path / "c.json")
    js = json.loads((tmp_path / "c.json").read_text())
    assert len(js["rows"]) == len(comparison.rows) and js["rows"][0]["setting"] == "noise floor"
    w, h = comparison.plot_errors(tmp_path / "e.png")
    assert _png_size(tmp_path / "e.png") == (w, h) == (800, 500)
    w, h = comparison.plot_samples(tmp_path / "s.png")
    assert _png_size(tmp_path / "s.png") == (w, h)


def _png_size(path):
    with open(path, "rb") as f:
        b = f.read(24)
    assert b[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")


def test_sliced_w2_matches_the_1d_closed_form():
    # two point sets on a line, shifted by c: every projection theta gives W2 = |theta . c| exactly,
    # and mean_theta (theta . c)^2 = |c|^2 / d for directions uniform on the sphere (d = 1 here: exact).
    x = torch.randn(500, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert math.isclose(sliced_w2(x, x + 0.7, n_projections=4), 0.7, rel_tol=1e-12)
    assert sliced_w2(x, x) == 0.0
    with pytest.raises(InputError, match="same shape"):
        sliced_w2(x, x[:10])


def test_budgets_map_to_steps_and_too_small_budgets_are_refused():
    assert steps_for_budget("euler", 10) == (10, 10)
    assert steps_for_budget("heun", 10) == (5, 10)
    assert steps_for_budget("heun", 15) == (7, 14)  # the used NFE is returned (and printed), not hidden
    with pytest.raises(InputError, match="below one step"):
        steps_for_budget("heun", 1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="positive integer"):
            steps_for_budget("euler", bad)


def test_bad_arguments_are_refused(exact_model):
    diff, data = exact_model
    with pytest.raises(InputError, match="unknown"):
        compare_solvers(diff, data, methods=("rk4",))
    with pytest.raises(InputError, match="at least 30"):
        compare_solvers(diff, data, samples=5)
    with pytest.raises(InputError, match="event shape"):
        compare_solvers(diff, samples=8)
    with pytest.raises(InputError, match="below one step"):
        compare_solvers(diff, data, methods=("heun",), budgets=(1,))


def test_samples_are_kept_at_the_smallest_budget(comparison):
    # at the largest budget every PF-ODE sampler draws the reference; the smallest shows how they differ
    assert comparison.info["samples_nfe"]["euler"] == 8 and comparison.info["samples_nfe"]["heun"] == 8
    assert comparison.info["samples_nfe"]["rk45"] == min(r.nfe for r in comparison.rows if r.method == "rk45")
    assert comparison.path_of("euler") == comparison.path_of("reference") == "ode"
    assert comparison.path_of("euler_maruyama") == "brownian"


def test_one_dimensional_samples_plot(tmp_path):
    # `flowsde compare --model gmm --dim 1` raised IndexError in plot_samples after writing the tables
    data = default_mixture(1)
    sched = schedules.VP()
    diff = Diffusion(data.oracle(sched, "eps"), sched, prediction="eps")
    c = compare_solvers(diff, data, samples=40, budgets=(6,), methods=("euler", "edm_churn"), generator=0)
    density = data.sample(500, generator=torch.Generator().manual_seed(1))
    w, h = c.plot_samples(tmp_path / "s.png", density=density)
    assert _png_size(tmp_path / "s.png") == (w, h) == (900, 300)
    assert c.path_of("edm_churn") == "own noise"


def test_error_plot_names_samplers_without_a_pathwise_error(exact_model, tmp_path):
    # --beta 0 --solvers euler_ancestral: no line at all; matplotlib warned ("No artists with labels") and the
    # plot was silently empty
    import warnings

    diff, data = exact_model
    c = compare_solvers(diff, data, samples=40, budgets=(6, 12), methods=("euler_ancestral",), beta=0.0,
                        generator=0)
    assert c.without_error() == ["euler_ancestral"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.plot_errors(tmp_path / "e.png") == (800, 500)
    assert _png_size(tmp_path / "e.png") == (800, 500)
    import matplotlib.pyplot as plt

    texts = []
    real_close = plt.close

    def grab(fig=None):  # the figure's texts just before plot_errors closes it
        if fig is not None and hasattr(fig, "axes"):
            texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
            texts.extend(ax.get_ylabel() for ax in fig.axes)
        return real_close(fig)

    plt.close = grab
    try:
        c.plot_errors(tmp_path / "e2.png")
        comparison_mixed = compare_solvers(diff, data, samples=40, budgets=(6,), methods=("euler", "euler_maruyama"),
                                           generator=0, sde_reference_steps=64)
        comparison_mixed.plot_errors(tmp_path / "e3.png")
    finally:
        plt.close = real_close
    assert any("no pathwise error" in t and "euler_ancestral" in t for t in texts)
    # the y-label says that the ODE and SDE lines have different references
    assert any("ODE: RK45" in t and "SDE: fine EM, same path" in t for t in texts)
