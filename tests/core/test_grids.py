"""The named grids of ``flowsde.grids`` (a noise-level map and a step count) and the adapter that hands them
a schedule's map (``flowsde.adapters.named_grid``).

Each grid is checked against an independent construction: with the map ``sigma/alpha = t`` (log-SNR
``-2 log t``) the EDM grid in t is ``grids.edm`` itself and the log-SNR grid ``grids.log_uniform``; on a VP
schedule the EDM grid is the one ``compare_solvers`` built before the named grids (``grids.edm`` of the
noise levels mapped by ``t_from_sigma_ratio``).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsde import InputError, grids
from flowsde.adapters import GRID_NAMES, VP, Linear, named_grid

F64 = torch.float64


def lam_of_t(t):  # sigma/alpha = t: EDM's own time
    return -2 * torch.log(t)


def t_of_lam(lam):
    return torch.exp(-lam / 2)


MAP = dict(log_snr=lam_of_t, t_from_log_snr=t_of_lam)

ends = st.tuples(st.floats(1e-3, 0.5), st.floats(1.0, 80.0))


@settings(derandomize=True, max_examples=40, deadline=None)
@given(ends=ends, steps=st.integers(1, 40), name=st.sampled_from(grids.NAMES))
def test_every_named_grid_has_steps_steps_exact_ends_and_is_monotone(ends, steps, name):
    lo, hi = ends
    g = grids.named(name, hi, lo, steps, **MAP)
    assert g.dtype == F64 and g.shape == (steps + 1,)
    assert g[0].item() == hi and g[-1].item() == lo
    assert bool((g[1:] < g[:-1]).all())
    up = grids.named(name, lo, hi, steps, **MAP)  # either direction
    assert up[0].item() == lo and up[-1].item() == hi and bool((up[1:] > up[:-1]).all())


@settings(derandomize=True, max_examples=30, deadline=None)
@given(ends=ends, steps=st.integers(1, 40), rho=st.sampled_from([1.0, 3.0, 7.0]))
def test_karras_with_sigma_equal_t_is_grids_edm(ends, steps, rho):
    lo, hi = ends
    got = grids.karras(hi, lo, steps, rho=rho, **MAP)
    want = grids.edm(lo, hi, steps, rho, final_zero=False)
    want[0], want[-1] = hi, lo  # the named grids keep the ends exact; grids.edm rounds them through ^rho
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(ends=ends, steps=st.integers(1, 40))
def test_log_snr_grid_with_sigma_equal_t_is_log_uniform(ends, steps):
    lo, hi = ends
    torch.testing.assert_close(grids.log_snr(hi, lo, steps, **MAP), grids.log_uniform(hi, lo, steps),
                               rtol=1e-12, atol=0)


def test_quadratic_and_uniform_closed_forms():
    steps = 10
    i = torch.arange(steps + 1, dtype=F64)
    want = (math.sqrt(1.0) + i / steps * (math.sqrt(1e-3) - 1.0)) ** 2  # DPM-Solver's time_quadratic
    torch.testing.assert_close(grids.quadratic(1.0, 1e-3, steps), want, rtol=1e-14, atol=1e-17)
    torch.testing.assert_close(grids.named("uniform", 1.0, 1e-3, steps), torch.linspace(1.0, 1e-3, 11, dtype=F64))


def test_named_edm_on_vp_is_compare_s_former_grid():
    sched = VP(t_min=1e-3)
    T, t_end, steps = 1.0, 1e-3, 12
    r = sched.sigma_ratio(torch.tensor([T, t_end], dtype=F64))
    former = sched.t_from_sigma_ratio(grids.edm(float(r[1]), float(r[0]), steps, 7.0, final_zero=False))
    former[0], former[-1] = T, t_end
    torch.testing.assert_close(named_grid(sched, "edm", steps), former, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", GRID_NAMES)
def test_adapter_log_snr_is_uniform_in_the_schedule_s_log_snr(name):
    sched = VP(t_min=1e-3)
    g = named_grid(sched, name, 8)
    assert g.shape == (9,) and g[0].item() == sched.t_max and g[-1].item() == sched.t_min
    if name == "log_snr":
        d = torch.diff(sched.log_snr(g))
        torch.testing.assert_close(d, d[:1].expand_as(d), rtol=1e-9, atol=0)


def test_errors_name_what_and_how():
    with pytest.raises(InputError, match="unknown grid 'cosine'.*choose from"):
        grids.named("cosine", 1.0, 0.1, 4, **MAP)
    with pytest.raises(InputError, match="needs the schedule's map.*named_grid"):
        grids.named("edm", 1.0, 0.1, 4)
    with pytest.raises(InputError, match="steps must be a positive int"):
        grids.named("log_snr", 1.0, 0.1, 0, **MAP)
    with pytest.raises(InputError, match="start and stop are both"):
        grids.quadratic(0.5, 0.5, 3)
    with pytest.raises(InputError, match=r"start, stop >= 0"):
        grids.quadratic(1.0, -0.1, 3)
    with pytest.raises(InputError, match="rho must be"):
        grids.karras(1.0, 0.1, 3, rho=0.0, **MAP)
    # alpha = 0 at a flow's t = 1: log-SNR is -inf there
    with pytest.raises(InputError, match="map is -inf at start = 1.0.*finite"):
        named_grid(Linear(t_min=1e-2), "log_snr", 5)
    with pytest.raises(InputError, match="outside the schedule's range"):
        named_grid(VP(t_min=1e-3), "edm", 5, start=2.0)
    with pytest.raises(InputError, match="expected a Diffusion or a Schedule"):
        named_grid("vp", "edm", 5)
    # a map too coarse for the steps asked: not strictly monotone
    with pytest.raises(InputError, match="not strictly monotone"):
        grids.uniform_in(1.0, 0.0, 4, forward=lambda t: t, inverse=lambda u: torch.round(u))
