"""What the command line says (issue 21): ranges the model contradicts, messages in flags, one error line,
rank 0 alone, the NLL's meaning, help texts, global options, where files go, threads."""

import logging

import numpy as np
import pytest
import torch

from _clihelpers import one_line_error, run

FAST = ["--trace", "hutchinson", "--probes", "2", "--rtol", "1e-4", "--atol", "1e-4"]


@pytest.fixture(scope="module")
def digits4():
    from flowsde import models

    return models.digits("test")[:4]


# -- 1. a data range / levels the model contradicts --------------------------------------------------------

def test_data_range_other_than_the_models_is_refused_with_the_models_range(capsys, tmp_path, digits4):
    raw = ((digits4 + 1) * 8).round()  # the digits' raw 0..16 values
    np.save(tmp_path / "raw.npy", raw.numpy())
    # the case: it returned 222.7 bits/dim without a word
    line = one_line_error(*run(capsys, "nll", "--data", tmp_path / "raw.npy", "--data-range", 0, 16)[::2])
    assert "--data-range 0 16" in line and "[-1, 1]" in line and "17 levels" in line
    # data outside the model's range, without --data-range: refused by the command, with the model's own
    line = one_line_error(*run(capsys, "nll", "--data", tmp_path / "raw.npy")[::2])
    assert "values in [0, 16]" in line and "digits-eps declares" in line and "[-1, 1]" in line
    assert "17 levels" in line and "pass the data_range" not in line


@pytest.mark.parametrize("flags, flag", [(["--levels", 256], "--levels 256"), (["--bits", 4], "--bits 4"),
                                         (["--continuous", "--data-range", 0, 1], "--data-range 0 1")])
def test_levels_other_than_the_models_are_refused(capsys, flags, flag):
    line = one_line_error(*run(capsys, "nll", "--limit", 2, *flags)[::2])
    assert line.startswith(f"flowsde nll: error: {flag}") and "17 levels" in line and "[-1, 1]" in line


def test_the_models_own_range_and_levels_are_accepted(capsys):
    rc, out, err = run(capsys, "nll", "--limit", 2, "--levels", 17, "--data-range", "-1", "1", *FAST)
    assert rc == 0, err


# -- 3. messages name the flags ----------------------------------------------------------------------------

def test_off_grid_error_names_continuous_not_dequantize_false(capsys, tmp_path, digits4):
    np.save(tmp_path / "off.npy", (0.9 * digits4).numpy())  # in range, off the 17-level grid
    line = one_line_error(*run(capsys, "nll", "--data", tmp_path / "off.npy", *FAST)[::2])
    assert "not on the grid" in line and "--continuous" in line
    assert "dequantize=False" not in line and "levels/bits/data_range" not in line


@pytest.mark.parametrize("argv", [
    ["compare", "--model", "gmm", "--schedule", "linear", "--batch-size", 32, "--nfe", 10, "--solvers", "euler"],
    ["compare", "--model", "gmm", "--schedule", "linear", "--prediction", "velocity", "--batch-size", 32,
     "--nfe", 10, "--solvers", "euler_maruyama"],
    ["nll", "--model", "gmm", "--schedule", "linear", "--limit", 2],
])
def test_alpha_zero_at_t_max_advice_is_a_flag(capsys, tmp_path, argv):
    line = one_line_error(*run(capsys, *argv, *(["--out", tmp_path / "o"] if argv[0] == "compare" else []))[::2])
    assert "alpha" in line
    for python_only in ("1e-3", "just below t_max", "t_max < schedule.t_max", "diffusion=", "prior_logp="):
        assert python_only not in line, line
    assert "--prediction" in line or "--beta 0" in line or "--solvers" in line, line


def test_for_cli_rewrites_a_sampler_message():
    from flowsde.cli._errors import for_cli

    msg = ("method='dpmpp_2m': alpha(grid[0] = 1.0) = 0: this method works in the scaled state x/alpha, so every "
           "grid point needs alpha > 0; start slightly inside the schedule (e.g. t_max - 1e-3).")
    line = for_cli(msg, command="compare")
    assert "t_max - 1e-3" not in line and "leave dpmpp_2m out of --solvers" in line


# -- 4. one error line; rank 0 alone prints --------------------------------------------------------------

@pytest.mark.parametrize("command, flag", [("nll", "--bpd-tol"), ("likelihood", "--bpd-tol"),
                                           ("compare", "--likelihood-tols")])
def test_for_cli_names_the_commands_own_likelihood_tolerance(command, flag):
    from flowsde.cli._errors import for_cli

    line = for_cli("dataset_nll: out.csv holds results of another run (bpd_tol: 1e-05 there vs 0.0001 now)",
                   command=command)
    assert f"({flag}: 1e-05 there" in line and "bpd_tol" not in line


def test_for_cli_names_the_time_warp_flag():
    from flowsde.cli._errors import for_cli

    line = for_cli("log_likelihood: time_warp=2.0 with time='log_snr': the warp ... no warp is applied there. "
                   "Drop time_warp (or pass 1).", command="nll")
    assert "--time-warp 2.0 with" in line and "Drop --time-warp (or pass 1)" in line and "time_warp" not in line


def test_an_input_error_inside_the_run_is_said_once(capsys, caplog, tmp_path, digits4):
    np.save(tmp_path / "off.npy", (0.9 * digits4).numpy())
    with caplog.at_level(logging.WARNING, logger="flowsde.nll"):
        rc, out, err = run(capsys, "nll", "--data", tmp_path / "off.npy", *FAST)
    one_line_error(rc, err)
    # the library logs the batch's InputError and raises it: the command prints the raised one only
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


def test_only_rank_0_prints(capsys, monkeypatch):
    args = ["nll", "--model", "gmm", "--limit", 2, "--rtol", "1e-3", "--atol", "1e-3"]
    rc, out0, err = run(capsys, *args)
    assert rc == 0 and "mean bits/dim" in out0
    monkeypatch.setenv("RANK", "1")
    rc, out1, err1 = run(capsys, *args)
    assert rc == 0 and out1 == ""
    rc, out1, err1 = run(capsys, "nll", "--limit", 2, "--bits", 4)  # an InputError every rank raises alike
    assert rc == 2 and out1 == "" and err1 == ""


# -- 5. the NLL's meaning, help texts, global options, where files go -------------------------------------

def test_summary_says_what_the_nll_is(capsys):
    rc, out, err = run(capsys, "nll", "--limit", 2, *FAST)
    assert rc == 0, err
    assert "continuous density of the dequantized sample on [-1, 1]" in out and "bin width 0.125" in out
    assert "rows: not saved (pass --out FILE.csv" in out


@pytest.mark.parametrize("cmd", [[], ["demo"], ["compare"], ["nll"], ["likelihood"]])
def test_help_has_no_rst_markup(capsys, cmd):
    rc, out, err = run(capsys, *cmd, "--help")
    assert rc == 0 and "usage: flowsde" in out
    assert "`" not in out, [ln for ln in out.splitlines() if "`" in ln]


@pytest.mark.parametrize("before, after", [(["-q"], []), ([], ["-q"]), (["--seed", 3, "-q"], []),
                                           (["--model", "gmm", "--dim", 3], [])])
def test_global_options_before_or_after_the_command(capsys, before, after):
    from flowsde.cli import build_parser

    argv = [str(a) for a in before + ["nll"] + after]
    args = build_parser().parse_args(argv)
    assert args.cmd == "nll" and args.quiet == ("-q" in argv)
    assert args.seed == (3 if "--seed" in argv else 0)
    assert args.model == ("gmm" if "gmm" in argv else "digits-eps") and args.dim == (3 if "--dim" in argv else 2)
    if before == ["-q"]:  # and it runs
        rc, out, err = run(capsys, "-q", "nll", "--model", "gmm", "--limit", 2, "--rtol", "1e-3", "--atol", "1e-3")
        assert rc == 0, err


def test_after_the_command_wins():
    from flowsde.cli import build_parser

    args = build_parser().parse_args(["--seed", "1", "nll", "--seed", "2"])
    assert args.seed == 2


def test_compare_says_where_the_files_go(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "compare", "--model", "gmm", "--dim", 1, "--solvers", "euler", "--nfe", 4,
                       "--batch-size", 32)
    assert rc == 0, err
    (folder,) = list(tmp_path.glob("flowsde-compare-*"))
    assert out.startswith(f"Files go to a new folder in the working directory: {folder.resolve()}")


# -- 2 (CLI side). gmm in one dimension ----------------------------------------------------------------

def test_compare_gmm_in_one_dimension_writes_its_plots(capsys, tmp_path):
    rc, out, err = run(capsys, "compare", "--model", "gmm", "--dim", 1, "--batch-size", 64, "--nfe", 10,
                       "--solvers", "euler", "euler_maruyama", "edm_churn", "--sde-reference-steps", 100,
                       "--out", tmp_path / "g")
    assert rc == 0, err
    assert "Traceback" not in err
    for name in ("compare.csv", "compare.json", "errors.png", "samples.png"):
        assert (tmp_path / "g" / name).stat().st_size > 0
    assert "errors.png: no line for edm_churn" in out


# -- threads ----------------------------------------------------------------------------------------------

def test_threads_one_for_small_models_and_restored(capsys, monkeypatch):
    import flowsde.cli._app as app

    seen = []
    real = app._threads

    def spy(args, model):
        cm = real(args, model)

        class Wrap:
            def __enter__(self):
                n = cm.__enter__()
                seen.append((n, torch.get_num_threads()))
                return n

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Wrap()

    monkeypatch.setattr(app, "_threads", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    argv = ["nll", "--model", "gmm", "--limit", 2, "--rtol", "1e-3", "--atol", "1e-3"]
    assert run(capsys, *argv)[0] == 0
    assert seen[-1] == (1, 1) and torch.get_num_threads() == before
    assert run(capsys, "--threads", 2, *argv)[0] == 0
    assert seen[-1] == (2, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert run(capsys, *argv)[0] == 0
    assert seen[-1][0] is None  # the user's OMP_NUM_THREADS is kept


def test_a_diffusers_folder_runs_in_float32_on_torchs_threads(tmp_path, monkeypatch):
    """``--dtype`` and ``--threads`` unset: float32 and torch's threads for a diffusers folder (digits-unet, or
    a user's folder, which the same rule reads from disk), float64 and one thread for the shipped MLPs and gmm."""
    from types import SimpleNamespace

    import flowsde.cli._app as app
    from flowsde.cli._models import default_dtype, is_diffusers

    pytest.importorskip("diffusers")
    folder = tmp_path / "pipe"
    folder.mkdir()
    assert default_dtype("digits-unet") == torch.float32 and is_diffusers("digits-unet")
    assert default_dtype(str(folder)) == torch.float32
    for spec in ("digits-eps", "digits-velocity", "moons", "gmm", "pkg.mod:factory"):
        assert default_dtype(spec) == torch.float64 and not is_diffusers(spec)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = SimpleNamespace(threads=None, device=torch.device("cpu"))
    for spec, kind, want in (("digits-unet", "shipped", None), ("digits-eps", "shipped", 1), ("gmm", "gmm", 1)):
        with app._threads(args, SimpleNamespace(kind=kind, spec=spec)) as n:
            assert n == want, spec
