"""The hypothesis strategies produce valid objects (beta >= 0, PD mixtures, in-range times)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsde.validation import DiracMixture, GaussianMixture, strategies


@settings(max_examples=40, deadline=None, derandomize=True)
@given(beta=strategies.beta_functions(max_value=2.0, t_max=5.0))
def test_beta_functions_are_nonnegative_and_shape_preserving(beta):
    t = torch.linspace(0, 5.0, 101, dtype=torch.float64)
    b = beta(t)
    assert b.shape == t.shape and b.dtype == t.dtype
    assert bool((b >= 0).all()) and bool((b <= 2.0 + 1e-12).all()), (repr(beta), b.min(), b.max())
    assert beta(torch.tensor(1.0, dtype=torch.float64)).dim() == 0
    assert repr(beta).startswith("Beta(")


@settings(max_examples=20, deadline=None, derandomize=True)
@given(gm=strategies.gaussian_mixtures(), dm=strategies.dirac_mixtures())
def test_mixtures_are_valid(gm, dm):
    assert isinstance(gm, GaussianMixture) and isinstance(dm, DiracMixture)
    assert bool((torch.linalg.eigvalsh(gm.covs) > 0).all())
    assert torch.isfinite(gm.log_prob(gm.sample(5))).all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(data=st.data(), sched=strategies.schedules())
def test_schedules_and_times(data, sched):
    t = data.draw(strategies.times(sched))
    assert float(sched.t_min) < t < float(sched.t_max)
    tt = torch.tensor(t, dtype=torch.float64)
    assert float(sched.sigma(tt)) > 0 and float(sched.alpha(tt)) > 0
