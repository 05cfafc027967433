"""Input messages that name the real cause: swapped (x, t), meta tensors, half precision."""

import pytest
import torch

import flowsde
from flowsde import InputError, grids
from flowsde import _internal as utils

F64 = torch.float64


def _ode():
    return flowsde.ODE(lambda t, x: -x)


def test_zero_dim_x0_is_named_as_a_swapped_time():
    with pytest.raises(InputError, match=r"x: got a 0-dim tensor \(0.5\), which looks like a time.*swap"):
        flowsde.solve(_ode(), torch.tensor(0.5), grids.uniform(0, 1, 2))


def test_state_and_grid_given_the_wrong_way_round():
    x0 = torch.zeros(4, 3)
    ts = grids.uniform(0, 1, 5)
    with pytest.raises(InputError, match=r"grid: expected a 1-D tensor of times, got shape \(4, 3\)\. It looks like "
                                         r"the state: did you swap"):
        flowsde.solve(_ode(), ts, x0)


def test_meta_tensors_are_refused_up_front():
    with pytest.raises(InputError, match="x: is on the 'meta' device"):
        flowsde.solve(_ode(), torch.zeros(2, 3, device="meta"), grids.uniform(0, 1, 2))
    with pytest.raises(InputError, match="grid: is on the 'meta' device"):
        flowsde.solve(_ode(), torch.zeros(2, 3), torch.linspace(0, 1, 3, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states_are_refused_with_the_fix(dtype):
    with pytest.raises(InputError, match=rf"x: dtype {dtype} is too coarse.*float32 or float64.*half precision "
                                         "inside your function"):
        flowsde.solve(_ode(), torch.zeros(2, 3, dtype=dtype), grids.uniform(0, 1, 2))


def test_a_half_precision_network_inside_a_float32_solve():
    lin = torch.nn.Linear(3, 3).to(torch.bfloat16)

    def drift(t, x):  # the documented pattern: the network in half, the state in float32
        return lin(x.to(torch.bfloat16)).to(x.dtype)

    sol = flowsde.solve(flowsde.ODE(drift), torch.ones(2, 3), grids.uniform(0, 1, 4))
    assert sol.x.dtype == torch.float32 and sol.success


def test_check_time_and_state():
    x = torch.zeros(4, 3)
    utils.check_time_and_state(0.5, x)
    utils.check_time_and_state(torch.tensor(0.5), x)
    utils.check_time_and_state(torch.full((4,), 0.5), x)
    with pytest.raises(InputError, match=r"^Diffusion.score: the arguments look swapped: got t of shape \(4, 3\)"):
        utils.check_time_and_state(x, torch.tensor(0.5), where="Diffusion.score")
    with pytest.raises(InputError, match="look swapped"):
        utils.check_time_and_state(x, 0.5)
    with pytest.raises(InputError, match=r"t must be a number, 0-dim or \(B,\) = \(4,\), got shape \(3,\)"):
        utils.check_time_and_state(torch.zeros(3), x)
    with pytest.raises(InputError, match="meta"):
        utils.check_time_and_state(0.5, torch.zeros(4, 3, device="meta"))
    with pytest.raises(InputError, match="x must be a batch-first tensor"):
        utils.check_time_and_state(0.5, [1.0])
