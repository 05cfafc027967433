"""Problems and grids: the contracts of flowsde._problem and flowsde.grids."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowsde
from flowsde import grids


def test_sde_and_ode_expose_drift_and_diffusion_methods():
    ode = flowsde.ODE(lambda t, x: -x)
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: 2.0 * torch.ones(x.shape[0], dtype=x.dtype), noise_type="scalar")
    x = torch.randn(3, 2, 4)
    t = torch.tensor(0.5)
    assert torch.equal(ode.drift(t, x), -x)
    assert ode.diffusion(t, x) is None
    g = sde.diffusion(t, x)
    assert g.shape == (3, 1, 1)  # (B,) is broadcast per sample
    assert torch.equal(g * torch.ones_like(x), 2 * torch.ones_like(x))
    assert sde.is_sde and not ode.is_sde


def test_diffusion_shape_errors_name_the_shapes():
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.ones(x.shape[0], 3), noise_type="diagonal")
    with pytest.raises(flowsde.InputError, match=r"\(4, 3\).*\(4, 2\)"):
        sde.diffusion(torch.tensor(0.0), torch.randn(4, 2))


def test_score_missing_raises():
    with pytest.raises(flowsde.InputError, match="no score"):
        flowsde.ODE(lambda t, x: x).score(torch.tensor(0.0), torch.zeros(1, 1))


@pytest.mark.parametrize("noise", ["gaussian", None, 3])
def test_unknown_noise_type(noise):
    with pytest.raises(flowsde.InputError, match="noise"):
        flowsde.SDE(lambda t, x: x, lambda t, x: x, noise_type=noise)


def test_edm_grid_matches_the_formula():
    # NVlabs/edm generate.py: t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0.
    g = grids.edm(0.002, 80.0, 18, 7.0)
    assert g.shape == (19,) and g[-1] == 0
    i = 5
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(float(g[i]), ref, rel_tol=1e-14)
    assert math.isclose(float(g[0]), 80.0, rel_tol=1e-14) and math.isclose(float(g[17]), 0.002, rel_tol=1e-12)
    assert grids.edm(steps=17, final_zero=False).shape == (18,)


@given(st.floats(1e-3, 1.0), st.floats(2.0, 100.0), st.integers(1, 50))
def test_log_uniform_is_geometric_and_exact_at_ends(a, b, n):
    g = grids.log_uniform(b, a, n)
    assert g.shape == (n + 1,) and float(g[0]) == b and float(g[-1]) == a
    ratios = g[1:] / g[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-10)
    z = grids.log_uniform(b, a, n + 1, final_zero=True)  # steps = len(grid) - 1, the step to 0 included
    assert z.shape == (n + 2,) and z[-1] == 0 and torch.equal(z[:-1], g)


@given(st.floats(-5, 5), st.floats(-5, 5), st.integers(1, 40))
def test_uniform_grid(a, b, n):
    if a == b:
        with pytest.raises(flowsde.InputError):
            grids.uniform(a, b, n)
        return
    g = grids.uniform(a, b, n)
    d = g[1:] - g[:-1]
    assert torch.allclose(d, torch.full_like(d, (b - a) / n), atol=1e-12)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_grid_bad_steps(bad):
    with pytest.raises(flowsde.InputError, match="steps must be"):
        grids.uniform(0, 1, bad)


def test_edm_grid_bad_sigmas():
    with pytest.raises(flowsde.InputError, match="sigma_min < sigma_max"):
        grids.edm(80.0, 0.002)
    with pytest.raises(flowsde.InputError, match="sigma_min"):
        grids.edm(-1.0, 80.0)


@pytest.mark.parametrize("call, msg", [
    (lambda: grids.edm(sigma_min=0.0), r"^grids.edm: sigma_min must be a finite number > 0, got 0.0"),
    (lambda: grids.edm(rho=float("nan")), r"^grids.edm: rho must be a finite number > 0"),
    (lambda: grids.log_uniform(1.0, -1.0, 4), r"^grids.log_uniform: stop must be a finite number > 0, got -1.0"),
])
def test_grid_positive_arguments(call, msg):
    with pytest.raises(flowsde.InputError, match=msg):
        call()
