"""reverse_time_sde keeps a problem's declared direction (flipped) and time dtype."""

import pytest
import torch

import flowsde
from flowsde.validation import reverse_time_sde


def test_direction_flips_and_time_dtype_is_kept():
    rev = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.ones((), dtype=x.dtype), direction="reverse",
                      time_dtype=torch.float64)
    conv = reverse_time_sde(rev, 1.0)
    assert conv.direction == "forward" and conv.time_dtype == torch.float64 and conv.noise_type == "scalar"
    x0 = torch.zeros(2, 1, dtype=torch.float64)
    assert flowsde.solve(conv, x0, flowsde.grids.uniform(0, 1, 2), method="euler_maruyama").success
    with pytest.raises(flowsde.InputError, match="direction='forward'"):
        flowsde.solve(conv, x0, flowsde.grids.uniform(1, 0, 2), method="euler_maruyama")
    assert reverse_time_sde(flowsde.ODE(lambda t, x: -x), 1.0).direction is None
