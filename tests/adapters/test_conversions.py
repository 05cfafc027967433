"""The parameterization conversions of ``adapters/_conversions.py`` on their own, in float64.

Each conversion and its inverse compose to the identity (round-trip), every pair of predictions
converts both ways through :func:`convert`, and the formulas agree with the definitions
``x = alpha x0 + sigma eps``, ``u = alpha' x0 + sigma' eps``, ``v = alpha eps - sigma x0`` on a
sample drawn from them. Tolerance: 1e-12 relative (float64 round-off times a conversion's condition
number, below ~1e2 at the times drawn here); a wrong coefficient gives O(1e-2) or more.
"""

import pytest
import torch

from flowsde.adapters import _conversions as cv
from flowsde.adapters.schedules import EDM, VE, VP, Cosine, Discrete, Linear, SubVP

f64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)
SCHEDULES = [VP(), SubVP(), Cosine(), VE(), EDM(), Linear(),
             Discrete.from_betas(torch.linspace(1e-4, 0.02, 50, dtype=f64))]


def _at(sched, n=16, seed=0):
    """The schedule at n times inside its range (shape (n, 1), broadcast against (n, 3) states)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(sched.t_min), float(sched.t_max)
    t = lo + (hi - lo) * (0.05 + 0.9 * torch.rand(n, 1, generator=g, dtype=f64))
    return sched.at(t), g


def _sample(sched, seed=0):
    """(c, x0, eps, x, u): data, noise, the state and the path's velocity from the definitions."""
    c, g = _at(sched, seed=seed)
    x0 = torch.randn(16, 3, generator=g, dtype=f64)
    eps = torch.randn(16, 3, generator=g, dtype=f64)
    return c, x0, eps, c.alpha * x0 + c.sigma * eps, c.d_alpha * x0 + c.d_sigma * eps


def _truth(sched, c, x0, eps, u):
    t = {"eps": eps, "x0": x0, "score": -eps / c.sigma, "velocity": u}
    if sched.variance_preserving:
        t["v"] = c.alpha * eps - c.sigma * x0
    return t


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedule_at(sched):
    c, _ = _at(sched)
    t = torch.linspace(0, 1, 16, dtype=f64)  # only the shape matters for this check
    assert isinstance(c, cv.ScheduleAt) and c.alpha.shape == (16, 1) and t.shape == (16,)
    torch.testing.assert_close(c.log_snr, 2 * torch.log(c.alpha / c.sigma), **TOL)
    torch.testing.assert_close(c.f, c.d_alpha / c.alpha, rtol=0, atol=0)
    assert sched.at(torch.tensor(0.5, dtype=f64) * sched.t_max, log_snr=False).log_snr is None


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_named_conversions_match_the_definitions(sched):
    c, x0, eps, x, u = _sample(sched)
    score = -eps / c.sigma
    close = torch.testing.assert_close
    close(cv.eps_to_score(eps, c), score, **TOL)
    close(cv.score_to_eps(score, c), eps, **TOL)
    close(cv.eps_to_x0(x, eps, c), x0, **TOL)
    close(cv.x0_to_eps(x, x0, c), eps, **TOL)
    close(cv.velocity_to_eps(x, u, c), eps, **TOL)
    close(cv.velocity_to_x0(x, u, c), x0, **TOL)
    close(cv.velocity_from_eps(x, eps, c), u, **TOL)
    close(cv.velocity_from_x0_eps(x0, eps, c), u, **TOL)
    if sched.variance_preserving:
        v = cv.v_from_eps_x0(eps, x0, c)
        close(v, c.alpha * eps - c.sigma * x0, rtol=0, atol=0)
        close(cv.v_to_eps(x, v, c), eps, **TOL)
        close(cv.v_to_x0(x, v, c), x0, **TOL)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_convert_every_pair_and_round_trip(sched):
    c, x0, eps, x, u = _sample(sched, seed=1)
    truth = _truth(sched, c, x0, eps, u)
    for pred, o in truth.items():
        for target, want in truth.items():
            y = cv.convert(pred, target, x, o, c)
            torch.testing.assert_close(y, want, **TOL, msg=lambda m: f"{pred} -> {target}: {m}")
            back = cv.convert(target, pred, x, y, c)  # and back again: the identity
            torch.testing.assert_close(back, o, **TOL, msg=lambda m: f"{pred} -> {target} -> {pred}: {m}")


def test_convert_on_floats_is_affine():
    # the per-time memo evaluates convert on Python floats at (x, o) = (1, 0) and (0, 1): target = A x + C o
    sched = VP()
    t = torch.tensor(0.37, dtype=f64)
    cf = cv.ScheduleAt(*(float(v) for v in sched.coefficients(t)))
    ct = sched.at(t)
    x, o = torch.randn(5, dtype=f64), torch.randn(5, dtype=f64)
    for pred in cv.PREDICTIONS:
        for target in cv.PREDICTIONS:
            A, C = cv.convert(pred, target, 1.0, 0.0, cf), cv.convert(pred, target, 0.0, 1.0, cf)
            torch.testing.assert_close(A * x + C * o, cv.convert(pred, target, x, o, ct), **TOL)
    with pytest.raises(ValueError):
        cv.convert("eps", "noise", x, o, ct)
    with pytest.raises(ValueError):
        cv.convert("noise", "eps", x, o, ct)
