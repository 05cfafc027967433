"""``--model`` specs (factory, diffusers folder) and bad input: one line, non-zero exit, no traceback."""

import subprocess
import sys
import textwrap

import pytest

from _clihelpers import one_line_error, png_size, run, table_rows

FACTORIES = textwrap.dedent("""
    import torch
    from flowsde.adapters import Diffusion, schedules
    from flowsde.workloads import default_mixture

    def good(dtype=torch.float64):
        data = default_mixture(2)
        sched = schedules.VP()
        d = Diffusion(data.oracle(sched, "eps"), sched, prediction="eps")
        d.event_shape = (2,)
        return d

    def no_shape():
        d = good()
        del d.event_shape
        return d

    def wrong_type():
        return torch.nn.Linear(2, 2)

    def raises():
        raise RuntimeError("weights not found")
""")


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "myfactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_factory_model(capsys, factories):
    rc, out, err = run(capsys, "compare", "--model", "myfactories:good", "--solvers", "euler", "heun", "--nfe", 20,
                       "--batch-size", 64, "--out", factories / "o")
    assert rc == 0, err
    rows = {r["solver"]: r for r in table_rows(out)}
    assert float(rows["heun"]["error"]) < float(rows["euler"]["error"])
    # the event shape from --shape when the Diffusion does not carry it
    rc, out, err = run(capsys, "compare", "--model", "myfactories:no_shape", "--shape", 2, "--solvers", "euler",
                       "--nfe", 4, "--batch-size", 8, "--out", factories / "o2")
    assert rc == 0, err


@pytest.mark.parametrize("spec, msg", [
    ("myfactories:wrong_type", "the factory returned Linear, not a flowsde.adapters.Diffusion"),
    ("myfactories:raises", "the factory raised RuntimeError: weights not found"),
    ("myfactories:missing", "has no callable 'missing'"),
    ("no_such_pkg_xyz.mod:make", "cannot import module 'no_such_pkg_xyz.mod'"),
    ("myfactories:no_shape", "pass --shape"),
    ("not-a-model", "unknown model"),
])
def test_bad_model_specs(capsys, factories, spec, msg):
    line = one_line_error(*run(capsys, "compare", "--model", spec, "--out", factories / "o")[::2])
    assert msg in line


def test_not_a_diffusers_folder(capsys, tmp_path):
    (tmp_path / "unet").mkdir()
    line = one_line_error(*run(capsys, "compare", "--model", tmp_path)[::2])
    assert "not a diffusers pipeline folder (missing model_index.json, scheduler)" in line


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A diffusers pipeline folder, as DDPMPipeline.save_pretrained writes it, from a tiny random UNet."""
    diffusers = pytest.importorskip("diffusers")
    import torch
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                     block_out_channels=(8, 16), norm_num_groups=4,
                                     down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"))
        folder = tmp_path_factory.mktemp("pipe") / "ddpm"
        diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=100)) \
            .save_pretrained(str(folder))
    return folder


def test_diffusers_folder(capsys, pipeline, tmp_path):
    rc, out, err = run(capsys, "compare", "--model", pipeline, "--solvers", "euler", "heun", "--nfe", 8,
                       "--batch-size", 4, "--rk45-tols", "1e-3", "--reference-tol", "1e-5", "--out", tmp_path / "o")
    assert rc == 0, err
    assert "diffusers UNet2DModel (1, 8, 8) with DDPMScheduler" in out
    rows = {r["solver"]: r for r in table_rows(out)}
    assert rows["euler"]["NFE"] == "8" and rows["heun"]["setting"] == "4 steps"
    assert float(rows["euler"]["error"]) > 0
    # (1, 8, 8) samples drawn as images: 4 per row (the batch), reference + 2 solvers
    assert png_size(tmp_path / "o" / "samples.png") == (round((1.6 + 0.5 * 4) * 100), round((0.5 * 3 + 0.3) * 100))


def _folder(root, pipeline, name, scheduler=None, unet_config=None, model_index=None):
    """A copy of ``pipeline`` with another scheduler (saved by diffusers), unet config entries or unet class."""
    import json
    import shutil

    folder = root / name
    shutil.copytree(pipeline, folder)
    if scheduler is not None:
        shutil.rmtree(folder / "scheduler")
        scheduler.save_pretrained(str(folder / "scheduler"))
    if unet_config:
        cfg = json.loads((folder / "unet" / "config.json").read_text())
        (folder / "unet" / "config.json").write_text(json.dumps({**cfg, **unet_config}))
    if model_index:
        idx = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**idx, **model_index}))
    return folder


@pytest.mark.parametrize("sched, kw, reads", [
    ("FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 100}, "Linear schedule, velocity-prediction"),
    ("ScoreSdeVeScheduler", {"sigma_min": 0.01, "sigma_max": 20.0}, "VE schedule, score-prediction"),
    ("EDMEulerScheduler", {"sigma_data": 0.5, "prediction_type": "v_prediction"}, "EDM schedule, x0-prediction"),
    ("DDIMScheduler", {"num_train_timesteps": 100, "prediction_type": "v_prediction"}, "Discrete schedule, v-prediction"),
])
def test_diffusers_folder_scheduler_defines_the_model(capsys, pipeline, tmp_path, sched, kw, reads):
    """Before: every scheduler was read as a linear-beta eps DDPM. The Model line says how the folder is read."""
    import diffusers

    folder = _folder(tmp_path, pipeline, sched, scheduler=getattr(diffusers, sched)(**kw))
    rc, out, err = run(capsys, "compare", "--model", folder, "--solvers", "euler", "--nfe", 2, "--batch-size", 2,
                       "--rk45-tols", "1e-2", "--reference-tol", "1e-3", "--out", tmp_path / "o")
    assert rc == 0, err
    assert f"with {sched}: {reads}" in out
    # nothing from diffusers' loader (its "pip install accelerate" advice, its logger lines)
    assert "accelerate" not in err and "diffusers" not in err, err


def test_diffusers_folder_refusals(capsys, pipeline, tmp_path):
    import diffusers

    cases = [
        (dict(scheduler=diffusers.LCMScheduler(num_train_timesteps=100)),
         "scheduler LCMScheduler is not supported (its model is not read as any of flowsde's schedules); supported: "
         "DDPMScheduler"),
        (dict(scheduler=diffusers.DDIMScheduler(num_train_timesteps=100, rescale_betas_zero_snr=True)),
         "DDIMScheduler with rescale_betas_zero_snr=True is not supported"),
        (dict(scheduler=diffusers.EulerDiscreteScheduler(num_train_timesteps=100, prediction_type="v_prediction",
                                                         timestep_type="continuous")),
         "timestep_type='continuous' is not supported"),
        (dict(model_index={"unet": ["diffusers", "UNet2DConditionModel"]}),
         "unet class UNet2DConditionModel is a conditional model (it needs encoder_hidden_states"),
        (dict(unet_config={"num_class_embeds": 10}), "is class-conditional (num_class_embeds"),
    ]
    for i, (kw, msg) in enumerate(cases):
        folder = _folder(tmp_path, pipeline, f"f{i}", **kw)
        rc, out, err = run(capsys, "compare", "--model", folder, "--out", tmp_path / "o")
        assert msg in one_line_error(rc, err), (kw, err)


def test_diffusers_folder_without_weights(capsys, pipeline, tmp_path):
    """One message, not diffusers' error line about .safetensors followed by ours naming .bin."""
    folder = _folder(tmp_path, pipeline, "noweights")
    for f in (folder / "unet").glob("diffusion_pytorch_model*"):
        f.unlink()
    rc, out, err = run(capsys, "compare", "--model", folder, "--out", tmp_path / "o")
    line = one_line_error(rc, err)
    assert "unet/ holds no weights (expected diffusion_pytorch_model.safetensors" in line and ".bin" not in line


def test_diffusers_references_run_the_loaded_unet(pipeline):
    """--dtype float32 (the default for a folder): the UNet runs in float32, also under the references' float64
    states (a float64 copy would cost 5x on a CPU for rounding far below any sampler's error); --dtype float64
    runs it in float64."""
    import torch

    from flowsde.cli._models import resolve

    m = resolve(str(pipeline), device=torch.device("cpu"), dtype=torch.float32)
    seen = []

    def hook(mod, args):
        seen.append(args[0].dtype)

    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    m64 = resolve(str(pipeline), device=torch.device("cpu"), dtype=torch.float64)
    for model in (m.diffusion, m64.diffusion):
        unets = [c.cell_contents for c in _cells(model.net) if isinstance(c.cell_contents, torch.nn.Module)]
        assert len(unets) == 1
        h = unets[0].register_forward_pre_hook(hook)
        model.eps(t, x)  # a float64 state: the UNet still runs in the dtype it was loaded in
        h.remove()
    assert seen == [torch.float32, torch.float64]
    # the references take float64 states through the run's own network (no second, float64 copy)
    assert m.reference is None and m64.reference is None


def _cells(fn):
    """The closure cells of ``fn`` and of the functions it closes over (how from_diffusers holds the UNet)."""
    out = []
    for c in fn.__closure__ or ():
        out.append(c)
        if callable(c.cell_contents) and getattr(c.cell_contents, "__closure__", None):
            out += _cells(c.cell_contents)
    return out


def test_compare_bad_options(capsys, tmp_path, monkeypatch):
    import flowsde.workloads

    def no_work(*a, **k):
        raise AssertionError("the comparison ran before the input was checked")

    monkeypatch.setattr(flowsde.workloads, "compare_solvers", no_work)
    (tmp_path / "file.txt").write_text("")
    cases = [
        (["--nfe", 0], "'0' is not a positive integer"),
        (["--nfe", "ten"], "'ten' is not a positive integer"),
        (["--nfe", -4], "'-4' is not a positive integer"),
        (["--solvers", "rk4"], "--solvers: unknown rk4"),
        (["--solvers", "heun", "--nfe", 1], "NFE budget 1 is below one step of 'heun'"),
        (["--beta", -1], "'-1' must be a finite number >= 0"),
        (["--beta", "nan"], "must be a finite number >= 0"),
        (["--dtype", "int8"], "choose float32 or float64"),
        (["--device", "gpu0"], "not a torch device"),
        (["--batch-size", 0], "not a positive integer"),
        (["--out", tmp_path / "file.txt"], "exists and is not a folder"),
        (["--out", tmp_path / "file.txt" / "sub"], "cannot write there"),
        (["--likelihood-tols", "1e-3"], "only with --model gmm"),
        (["--model", "gmm", "--prediction", "noise"], "invalid choice"),
        (["--bogus"], "flowsde compare: error: unrecognized arguments: --bogus"),
    ]
    for args, msg in cases:
        rc, out, err = run(capsys, "compare", *args)
        assert msg in one_line_error(rc, err), (args, err)


def test_the_command_runs_without_hypothesis(tmp_path):
    # hypothesis is a test-only dependency: block it and run the real entry point in a fresh interpreter
    code = ("import sys; sys.modules['hypothesis'] = None; from flowsde.__main__ import main; "
            "sys.exit(main(['compare', '--model', 'not-a-model']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown model" in r.stderr
    assert "Traceback" not in r.stderr


def test_shipped_diffusers_model_resolves_through_the_folder_path():
    """``--model digits-unet``: the shipped pipeline folder takes the path of a user's diffusers folder
    (the same Diffusion as loading that folder by its path), plus the registry's levels, range and data."""
    pytest.importorskip("diffusers")
    import torch

    from flowsde import models
    from flowsde.cli._models import resolve

    m = resolve("digits-unet", device=torch.device("cpu"), dtype=torch.float32)
    by_path = resolve(str(models.weights_path("digits-unet")), device=torch.device("cpu"), dtype=torch.float32)
    assert (m.spec, m.kind, m.event_shape, m.image_shape) == ("digits-unet", "shipped", (1, 8, 8), (1, 8, 8))
    assert (m.levels, m.data_range) == (17, (-1.0, 1.0)) and m.description == models.info("digits-unet").description
    assert by_path.kind == "diffusers" and by_path.levels is None
    assert m.reference is None  # the references run the float32 UNet on float64 states, as for a user's folder
    x = m.test_data()
    assert x.shape == (297, 1, 8, 8) and torch.equal(x.reshape(297, 64), models.digits("test"))
    t = torch.tensor([0.01, 0.5], dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(m.diffusion.eps(t, x[:2].float()), by_path.diffusion.eps(t, x[:2].float()),
                                   rtol=0, atol=0)
