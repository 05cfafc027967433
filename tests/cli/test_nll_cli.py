"""``flowsde nll`` end to end (small settings): per-sample results, data sources, the exact mixture."""

import math

import numpy as np
import pytest
import torch

from _clihelpers import one_line_error, read_csv, run

FAST = ["--trace", "hutchinson", "--probes", "2", "--rtol", "1e-4", "--atol", "1e-4"]


def test_rows_do_not_depend_on_the_batch_size(capsys, tmp_path):
    # Hutchinson probes and dequantization noise come from per-sample generators keyed by the global
    # index, and every sample is solved on its own steps: batch size 1 and 8 give the same rows.
    outs = []
    for bs in (1, 8):
        path = tmp_path / f"b{bs}.csv"
        rc, out, err = run(capsys, "nll", "--limit", 8, "--batch-size", bs, "--out", path, *FAST)
        assert rc == 0, err
        assert "mean bits/dim" in out and "standard error over 8 samples" in out and f"rows: {path}" in out
        outs.append(read_csv(path))
    a, b = outs
    assert [r["index"] for r in a] == [r["index"] for r in b] == [str(i) for i in range(8)]
    assert [r["status"] for r in a] == [r["status"] for r in b]
    for ra, rb in zip(a, b):
        # the same per-sample solve; only the float rounding of batched vs single matrix products differs
        for k in ("nats", "bpd", "stderr"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-10, abs=1e-10), (k, ra, rb)
    # NFE is each sample's own count (stats["nfe_per_sample"]): the same whatever the batch
    assert [r["nfe"] for r in a] == [r["nfe"] for r in b]
    bpd = np.array([float(r["bpd"]) for r in a])
    assert all(r["status"] == "SUCCESS" and int(r["nfe"]) > 0 and r["stderr"] != "nan" for r in a)
    # the summary line is the mean of the rows and its standard error over samples
    line = [ln for ln in out.splitlines() if ln.startswith("mean bits/dim")][0]
    mean, se = float(line.split()[2]), float(line.split()[4])
    assert mean == pytest.approx(bpd.mean(), abs=1e-4)
    assert se == pytest.approx(bpd.std(ddof=1) / math.sqrt(8), abs=1e-4)
    assert float(line.split("median ")[1].split(";")[0]) == pytest.approx(np.median(bpd), abs=1e-4)


def test_npy_and_pt_data_give_the_same_rows(capsys, tmp_path):
    from flowsde import models

    x = models.digits("test")[:4]
    np.save(tmp_path / "d.npy", x.numpy())
    torch.save(x, tmp_path / "d.pt")
    rows = []
    for src in ("d.npy", "d.pt"):
        rc, out, err = run(capsys, "nll", "--data", tmp_path / src, "--levels", 17, "--out", tmp_path / f"{src}.csv",
                           *FAST)
        assert rc == 0, err
        assert "17 levels" in out
        rows.append(read_csv(tmp_path / f"{src}.csv"))
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_dataset_factory(capsys, tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "from flowsde import models\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    def __init__(self): self.x = models.digits('test')[:3]\n"
        "    def __len__(self): return len(self.x)\n"
        "    def __getitem__(self, i): return self.x[i], 0\n"
        "def make(): return DS()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, out, err = run(capsys, "nll", "--data", "mydata:make", "--levels", 17, *FAST)
    assert rc == 0, err
    assert "3 samples" in out


def _exact_bpd(out: str) -> float:
    """The closed-form figure the command prints for the exact mixture's points."""
    return float([ln for ln in out.splitlines() if ln.startswith("exact mean bits/dim")][0].split()[-1])


def test_gmm_nll_matches_the_exact_log_density(capsys):
    rc, out, err = run(capsys, "nll", "--model", "gmm", "--schedule", "linear", "--prediction", "velocity",
                       "--limit", 8, "--rtol", "1e-6", "--atol", "1e-6")
    assert rc == 0, err
    model = float([ln for ln in out.splitlines() if ln.startswith("mean bits/dim")][0].split()[2])
    exact = _exact_bpd(out)
    assert "continuous data" in out
    # exact trace, exact oracle: only the ODE error remains (the prior at T is the Gaussian N(0, I))
    assert abs(model - exact) < 1e-3


def test_gmm_nll_with_time_warp_matches_the_exact_log_density(capsys):
    # integrating in s = t^(1/1.5): the same bound as in t (the test above)
    rc, out, err = run(capsys, "nll", "--model", "gmm", "--schedule", "linear", "--prediction", "velocity",
                       "--limit", 4, "--rtol", "1e-6", "--atol", "1e-6", "--time-warp", "1.5")
    assert rc == 0, err
    assert "time warp 1.5" in out
    model = float([ln for ln in out.splitlines() if ln.startswith("mean bits/dim")][0].split()[2])
    exact = _exact_bpd(out)
    assert abs(model - exact) < 1e-3


def test_likelihood_is_an_alias_of_nll(capsys):
    rc, out, err = run(capsys, "likelihood", "--limit", 2, *FAST)
    assert rc == 0, err and "mean bits/dim" in out


@pytest.mark.parametrize("shape, hint", [((5, 8, 8), "reshape it to (N, 64)"), ((5, 63), "takes (64,)")])
def test_data_of_the_wrong_shape(capsys, tmp_path, shape, hint):
    np.save(tmp_path / "bad.npy", np.zeros(shape))
    line = one_line_error(*run(capsys, "nll", "--data", tmp_path / "bad.npy", "--levels", 17)[::2])
    assert "samples of shape" in line and hint in line


def test_nll_bad_input(capsys, tmp_path):
    cases = [
        (["--data", tmp_path / "missing.npy"], "no such file"),
        (["--data", "nomodule_xyz:f"], "cannot import module"),
        (["--data", "data.txt"], "expected FILE.npy"),
        (["--out", tmp_path / "no" / "dir" / "x.csv", "--limit", 2], "does not exist"),
        (["--out", tmp_path / "x.txt"], "expected a .csv"),
        (["--levels", 17, "--bits", 8], "give one"),
        (["--probes", 4], "only with --trace hutchinson"),
        (["--model", "moons"], "has no data set of its own"),
        (["--limit", 0], "not a positive integer"),
        (["--trace", "magic"], "invalid choice"),
        (["--time-warp", "0.5"], "must be >= 1"),
    ]
    for args, msg in cases:
        rc, out, err = run(capsys, "nll", *args)
        assert msg in one_line_error(rc, err), (args, err)


def test_resume_refuses_another_model_and_data_and_accepts_the_default_spelled_out(capsys, tmp_path):
    # issue 21: `--out swap.csv` then the same command with `--model digits-velocity` (or other --data)
    # read the first model's rows back; `--time-warp 1.5`, the default, was refused as another setting
    path = tmp_path / "swap.csv"
    base = ["nll", "--limit", 4, "--batch-size", 4, "--out", path, *FAST]
    rc, out, err = run(capsys, *base)
    assert rc == 0, err
    rc, out, err = run(capsys, *base, "--model", "digits-velocity")
    assert rc != 0 and "model weights: sha256 " in err and "prediction: 'eps' there vs 'velocity' now" in err
    assert "pass another out (--out) or delete" in err
    from flowsde import models

    other = models.digits("test")[4:8].numpy()
    np.save(tmp_path / "other.npy", other)
    rc, out, err = run(capsys, *base, "--data", tmp_path / "other.npy")
    assert rc != 0 and "data rows 0-3: sha256 " in err
    rc, out, err = run(capsys, *base, "--time-warp", "1.5")
    assert rc == 0, err
    assert "4 row(s) read back" in out


@pytest.mark.parametrize("value,msg", [("0", "must be a finite number > 0"), ("-1e-3", "must be a finite number > 0"),
                                       ("nan", "must be a finite number > 0"), ("abc", "is not a number"),
                                       ("2", "must be below 1")])
def test_bpd_tol_bad_value_is_one_line(capsys, value, msg):
    rc, out, err = run(capsys, "nll", f"--bpd-tol={value}")
    assert msg in one_line_error(rc, err), err


def test_bpd_tol_sets_the_tolerance_and_the_summary_reports_the_error(capsys):
    # --bpd-tol is the tolerance the rows are computed with (printed with rtol/atol, which default to it), and the
    # summary prints the solver's error estimate (max and median of solver_error_bpd over the samples), which
    # follows the tolerance: within 2x of it per sample, and smaller at a tighter one
    maxes = {}
    for tol in ("1e-3", "1e-7"):
        rc, out, err = run(capsys, "nll", "--model", "gmm", "--limit", 4, "--bpd-tol", tol)
        assert rc == 0, err
        assert f"bpd_tol={float(tol):g}, RK45 rtol={float(tol):g} atol={float(tol):g}" in out
        line = [ln for ln in out.splitlines() if ln.startswith("solver error estimate")][0]
        mx = float(line.split(" max ")[1].split(",")[0])
        med = float(line.split(" median ")[1].split(" ")[0])
        assert 0 <= med <= mx < 2 * float(tol) and "over 4 samples" in line, line
        maxes[tol] = mx
    assert maxes["1e-7"] < maxes["1e-3"], maxes
