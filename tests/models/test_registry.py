"""flowsde.models: registry, loading, shapes and dtypes, the data splits."""

import importlib.resources
import importlib.util
import json

import numpy as np
import pytest
import torch

import flowsde
import flowsde.models as M
from flowsde.adapters import Diffusion, Linear, VP


MLP_MODELS = ["digits-eps", "digits-velocity", "moons"]  # GaussianResidualMLP weights (digits-unet: diffusers)


def test_names_and_info():
    assert M.names() == MLP_MODELS + ["digits-unet"]
    for name in M.names():
        if name == "digits-unet" and importlib.util.find_spec("diffusers") is None:
            continue  # its schedule is read through diffusers (tests/models/test_digits_unet.py)
        i = M.info(name)
        assert i.name == name and i.description
        assert i.t_range == (i.schedule.t_min, i.schedule.t_max)
    e, v, m = (M.info(n) for n in MLP_MODELS)
    assert (e.event_shape, e.levels, e.data_range, e.prediction) == ((64,), 17, (-1.0, 1.0), "eps")
    assert isinstance(e.schedule, VP)
    assert (v.event_shape, v.levels, v.prediction) == ((64,), 17, "velocity")
    assert isinstance(v.schedule, Linear)
    assert (m.event_shape, m.levels, m.data_range) == ((2,), None, None)


@pytest.mark.parametrize("bad", ["digits", "gmm", "", None, 3])
def test_unknown_name(bad):
    with pytest.raises(flowsde.InputError, match="shipped models are"):
        M.info(bad)
    with pytest.raises(flowsde.InputError, match="shipped models are"):
        M.load(bad)


def test_bad_dtype():
    with pytest.raises(flowsde.InputError, match="floating torch.dtype"):
        M.load("moons", net_dtype=torch.int64)


def test_weights_ship_inside_the_package():
    root = importlib.resources.files("flowsde.models")
    for name in MLP_MODELS:  # digits-unet's folder: tests/models/test_digits_unet.py
        p = M.weights_path(name)
        assert p.is_file(), p
        assert str(p).startswith(str(root)), p
        assert str(p).endswith(".safetensors")


@pytest.mark.parametrize("name", ["digits-eps", "digits-velocity", "moons"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_load_shapes_dtypes(name, dtype):
    dif = M.load(name, net_dtype=dtype)
    i = M.info(name)
    assert isinstance(dif, Diffusion)
    assert dif.prediction == i.prediction
    assert type(dif.schedule) is type(i.schedule) and dif.schedule.t_min == i.t_range[0]
    B = 5
    x = torch.randn((B,) + i.event_shape, dtype=dtype)
    t = torch.linspace(i.t_range[0], i.t_range[1], B, dtype=dtype)
    for f in (dif.eps, dif.score, dif.x0, dif.velocity):
        out = f(t, x)
        assert out.shape == x.shape and out.dtype == dtype
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ["digits-eps", "digits-velocity", "moons"])
def test_float32_matches_float64(name):
    i = M.info(name)
    x = torch.randn((7,) + i.event_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((7,), 0.3, dtype=torch.float64)
    e64 = M.load(name, net_dtype=torch.float64).eps(t, x)
    e32 = M.load(name, net_dtype=torch.float32).eps(t.float(), x.float())
    assert torch.allclose(e32.double(), e64, atol=1e-4, rtol=1e-4)


def test_load_is_offline(monkeypatch):
    """Loading touches nothing but the package's files: with sockets refused, every model loads, and
    its network is the one in the package's weights file (read here with safetensors directly)."""
    import socket

    from safetensors import safe_open

    from flowsde.adapters import to_flow_matching

    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise OSError("network access refused by test_load_is_offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(OSError, match="refused by test_load_is_offline"):  # the refusal is in force
        socket.create_connection(("127.0.0.1", 9))
    attempts.clear()
    if importlib.util.find_spec("diffusers") is not None:
        M.load("digits-unet", net_dtype=torch.float64)  # a diffusers folder, read with local_files_only
    for name in MLP_MODELS:
        dif = M.load(name, net_dtype=torch.float64)
        with safe_open(str(M.weights_path(name)), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            config = json.loads(f.metadata()["config"])
        net = M.GaussianResidualMLP(**config)
        net.load_state_dict(state)
        net = net.to(torch.float64).eval()
        i = M.info(name)
        x = torch.randn((5,) + i.event_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        t = torch.linspace(i.t_range[0] + 0.05, i.t_range[1] - 0.05, 5, dtype=torch.float64)
        with torch.no_grad():
            if i.prediction == "eps":
                torch.testing.assert_close(dif.eps(t, x), net(x, t), rtol=1e-12, atol=1e-12)
            else:  # a flow-matching velocity network u(x, s), s = 1 - t
                torch.testing.assert_close(to_flow_matching(dif)(x, 1 - t), net(x, 1 - t), rtol=1e-12, atol=1e-12)
    assert attempts == []  # nothing tried the network (a swallowed refusal would show here)


def test_digits_split():
    from sklearn.datasets import load_digits

    tr, te = M.digits("train"), M.digits("test")
    assert tr.shape == (1500, 64) and te.shape == (297, 64)
    assert tr.dtype == te.dtype == torch.float64
    for x in (tr, te):
        k = (x + 1) * 8
        assert torch.equal(k, k.round()) and float(k.min()) == 0 and float(k.max()) == 16
    # a partition of all 1797 digits: the multiset of rows is preserved, and fixed across calls
    raw = torch.from_numpy(load_digits().data.astype(np.float64))
    both = torch.cat([tr, te])
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731
    assert key((both + 1) * 8) == key(raw)
    assert torch.equal(M.digits("test"), te)
    with pytest.raises(flowsde.InputError, match="'train' or 'test'"):
        M.digits("val")


def test_toy_data():
    a, b = M.toy_data("moons", 500, generator=3), M.toy_data("moons", 500, generator=3)
    assert a.shape == (500, 2) and a.dtype == torch.float64 and torch.equal(a, b)
    assert not torch.equal(a, M.toy_data("moons", 500, generator=4))
    assert float(a.abs().max()) < 4
    for bad in (dict(name="spirals"), dict(samples=0), dict(samples=2.5), dict(generator=-1)):
        kw = dict(name="moons", samples=10, generator=0) | bad
        with pytest.raises(flowsde.InputError):
            M.toy_data(**kw)
