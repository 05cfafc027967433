"""``flowsde compare`` end to end on the shipped models and the exact mixture (small settings)."""

import pytest

from _clihelpers import png_size, read_csv, read_json, run, table_rows


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """One comparison on the shipped digits-eps model, shared by the checks below."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    import contextlib
    import io

    from flowsde.cli import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        rc = main(["compare", "--solvers", "euler", "heun", "rk45", "euler_maruyama", "--nfe", "40", "80",
                   "--batch-size", "32", "--rk45-tols", "1e-3", "1e-5", "--sde-reference-steps", "320",
                   "--out", str(out)])
    return rc, buf_out.getvalue(), buf_err.getvalue(), out


def test_compare_default_model_runs_and_writes_every_file(digits):
    rc, out, err, folder = digits
    assert rc == 0, err
    assert err == ""  # stderr is not a terminal: no progress bars
    assert out.startswith(f"Files go to {folder.resolve()}") and "\nModel: digits-eps" in out
    for name in ("compare.csv", "compare.json", "errors.png", "samples.png"):
        assert (folder / name).stat().st_size > 0 and f"{folder / name}" in out
    rows = table_rows(out)
    csv_rows = read_csv(folder / "compare.csv")
    js = read_json(folder / "compare.json")
    assert len(rows) == len(csv_rows) == len(js["rows"]) == 1 + 3 * 2 + 2
    assert set(js["columns"]) >= {"solver", "NFE", "error", "SW2", "s"}
    assert "Columns:" in out and "noise floor" in out.split("Columns:")[1]


def test_heun_beats_euler_at_equal_nfe_on_digits(digits):
    rows = {(r["solver"], r["NFE"]): r for r in table_rows(digits[1])}
    for nfe in ("40", "80"):
        euler, heun = float(rows[("euler", nfe)]["error"]), float(rows[("heun", nfe)]["error"])
        assert heun < euler, (nfe, heun, euler)


def test_rk45_error_is_within_its_tolerance_scale(digits):
    # RK45 controls the local error per step to rtol*|x| + atol; with |x| <= ~1 the global RMS error
    # against the 1e-8 float64 reference stays within 10 x tol (measured: 1.3e-3 at 1e-3, 2e-5 at 1e-5).
    for r in read_csv(digits[3] / "compare.csv"):
        if r["method"] == "rk45":
            tol = float(r["setting"].split()[1])
            assert float(r["error"]) < 10 * tol, r


def test_noise_floor_row_and_strong_error(digits):
    rows = table_rows(digits[1])
    floor = rows[0]
    assert floor["solver"] == "reference" and floor["setting"] == "noise floor" and float(floor["SW2"]) > 0
    assert floor["error"] == "-"
    em = {r["NFE"]: float(r["error"]) for r in rows if r["solver"] == "euler_maruyama"}
    assert em["80"] < em["40"]  # same Brownian path: the strong error falls with the step


def test_pngs_have_the_expected_size(digits):
    folder = digits[3]
    assert png_size(folder / "errors.png") == (800, 500)
    # digits as 8x8 images: 16 per row, one row per solver + the reference (5 rows), 100 dpi, and a footnote
    # line for the row marked * (euler_maruyama: drawn on the Brownian path, not the reference's)
    w, h = png_size(folder / "samples.png")
    assert (w, h) == (round((1.6 + 0.5 * 16) * 100), round((0.5 * 5 + 0.3 + 0.25) * 100))


def test_samples_png_shows_the_smallest_budget(digits):
    out = digits[1]
    assert "samples.png: each solver at its smallest budget" in out
    js = read_json(digits[3] / "compare.json")
    assert js["info"]["samples_nfe"]["euler"] == 40 and js["info"]["samples_nfe"]["heun"] == 40


def test_budget_a_solver_cannot_meet_is_shown(capsys, tmp_path):
    rc, out, err = run(capsys, "compare", "--model", "moons", "--solvers", "heun", "--nfe", "15",
                       "--batch-size", "64", "--out", tmp_path / "o")
    assert rc == 0, err
    (heun,) = [r for r in table_rows(out) if r["solver"] == "heun"]
    assert heun["NFE"] == "14 (budget 15)" and heun["setting"] == "7 steps"
    # the 2-D model: one scatter panel per solver (reference + heun) over the data density
    assert png_size(tmp_path / "o" / "samples.png") == (600, 300)


def test_gmm_compare_is_exact(capsys, tmp_path):
    rc, out, err = run(capsys, "compare", "--model", "gmm", "--schedule", "edm", "--prediction", "x0",
                       "--batch-size", "100", "--nfe", "8", "--solvers", "heun", "euler_maruyama",
                       "--likelihood-tols", "1e-6", "--sde-reference-steps", "200", "--out", tmp_path / "g")
    assert rc == 0, err
    assert "| heun | 4 steps | 8 |" in out and "KS exact" in out
    lik = [ln for ln in out.splitlines() if ln.startswith("| 1e-06 |")]
    assert len(lik) == 1 and float(lik[0].split("|")[4]) < 1e-3  # max |logp - exact log p| (nats)


def test_default_solver_set_includes_the_core_samplers():
    import flowsde
    from flowsde.workloads import default_methods

    methods = default_methods()
    assert {"euler", "heun", "edm_heun", "rk45", "euler_maruyama", "pc", "edm_churn"} <= set(methods)
    for m in ("ddim", "dpmpp_2m", "unipc"):
        assert (m in methods) == (m in flowsde.solvers.METHODS)
