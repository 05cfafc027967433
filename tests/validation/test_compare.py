"""The solver-comparison harness and the CLI, on the built-in exact model (small settings)."""

import pytest
import torch

from flowsde.adapters import Diffusion, schedules
from flowsde.validation._compare import compare_solvers, default_mixture


@pytest.fixture(scope="module")
def comparison():
    data = default_mixture(2)
    sched = schedules.EDM()
    diff = Diffusion(data.oracle(sched, "x0"), sched, prediction="x0")
    return compare_solvers(diff, data, n=300, budgets=(8, 32), methods=("euler", "heun", "rk45", "euler_maruyama"),
                           rk45_tols=(1e-3, 1e-6), likelihood_tols=(1e-6,), likelihood_n=20, seed=0)


def test_path_errors_fall_with_nfe_at_the_solver_orders(comparison):
    rows = {(r.method, r.setting): r for r in comparison.rows}
    e8, e32 = rows[("euler", "8 steps")].path_error, rows[("euler", "32 steps")].path_error
    h4, h16 = rows[("heun", "4 steps")].path_error, rows[("heun", "16 steps")].path_error
    # 4x the steps: Euler (order 1) gains ~4x, Heun (order 2) ~16x; generous bands for the
    # pre-asymptotic regime of a 4-step grid.
    assert 2.0 < e8 / e32 < 8.0
    assert h4 / h16 > 6.0
    r3, r6 = rows[("rk45", "tol 1e-03")], rows[("rk45", "tol 1e-06")]
    assert r6.path_error < r3.path_error and r6.nfe > r3.nfe
    assert r6.path_error < 1e-4  # tolerance 1e-6 against the 1e-10 reference


def test_stochastic_rows_have_no_path_error_but_a_marginal_distance(comparison):
    em = [r for r in comparison.rows if r.method == "euler_maruyama"]
    assert all(r.path_error is None and 0 <= r.ks <= 1 for r in em)


def test_likelihood_rows_are_exact_to_tolerance(comparison):
    (tol, nfe, mean_err, max_err, _), = comparison.likelihood
    assert nfe > 0 and max_err < 1e-3  # exact trace, exact prior: only the ODE error remains


def test_table_and_plot(comparison, tmp_path):
    text = comparison.table()
    assert "| heun | 16 steps | 32 |" in text and "likelihood" in text
    p = tmp_path / "cmp.png"
    comparison.plot(str(p))
    assert p.stat().st_size > 1000


def test_bad_method_is_refused():
    data = default_mixture(2)
    sched = schedules.EDM()
    diff = Diffusion(data.oracle(sched, "x0"), sched, prediction="x0")
    from flowsde import InputError

    with pytest.raises(InputError, match="unknown"):
        compare_solvers(diff, data, methods=("rk4",))
    with pytest.raises(InputError, match="at least 30"):
        compare_solvers(diff, data, n=5)


def test_cli_compare_runs(capsys):
    from flowsde.__main__ import main

    rc = main(["compare", "--schedule", "edm", "--prediction", "x0", "--n", "100", "--budgets", "8",
               "--methods", "heun", "euler_maruyama", "--likelihood-tols"])
    out = capsys.readouterr().out
    assert rc == 0 and "| heun | 4 steps | 8 |" in out


def test_cli_likelihood_runs(capsys):
    from flowsde.__main__ import main

    rc = main(["likelihood", "--schedule", "linear", "--prediction", "velocity", "--n", "10", "--tols", "1e-5",
               "--trace", "exact"])
    out = capsys.readouterr().out
    assert rc == 0 and "| exact | 1e-05 |" in out
    err = float(out.strip().splitlines()[-1].split("|")[6])
    assert err < 1e-3
