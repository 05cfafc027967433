"""A fixed-step solve with ``throw=True`` (or any on the CPU) reads finiteness off the final state
and replays a failed solve, with the same noise and every output checked, to name its first failure
(flowsde/_solve.py, docs/design.md "Errors"). The replay must see exactly the calls of the first run,
whatever the noise source, and name the same function, step, time and samples (with ``throw=False``
the same status and ``t_final``) as checking every output as it comes; a successful solve calls
each function once per evaluation."""

import pytest
import torch

import flowsde
from flowsde import grids

F64 = torch.float64
B = 6


def _recording_sde(calls, limit=1.0):
    """EM-friendly SDE whose drift turns NaN in every sample with ``|x| > limit`` (where that happens
    depends on the noise drawn); every drift call's ``(t, x)`` is appended to ``calls``."""

    def f(t, x):
        calls.append((float(t), x.clone()))
        big = x.abs().amax(1, keepdim=True) > limit
        return torch.where(big, float("nan"), -0.1 * x)

    return flowsde.SDE(f, lambda t, x: torch.tensor(1.5, dtype=x.dtype), noise_type="scalar")


def _generator(kind):
    if kind == "global":
        torch.manual_seed(3)
        return None
    if kind == "generator":
        return torch.Generator().manual_seed(3)
    if kind == "per_sample":
        return flowsde.per_sample_generators(range(10, 10 + B))
    return flowsde.BrownianPath(0.0, 1.0, (B, 2), dtype=F64, generator=3)


def _no_rewind(monkeypatch):
    """Every output checked as it comes, in one run (as where the noise cannot be rewound): the
    reference the replay must reproduce."""
    import flowsde._noise as noise

    monkeypatch.setattr(noise._GeneratorNoise, "snapshot", lambda self, x: None)
    monkeypatch.setattr(noise._PathNoise, "snapshot", lambda self, x: None)


@pytest.mark.parametrize("kind", ["global", "generator", "per_sample", "brownian"])
def test_replay_sees_the_first_runs_calls_and_names_the_full_checks_failure(kind, monkeypatch):
    ts = grids.uniform(0.0, 1.0, 40)
    x0 = torch.zeros(B, 2, dtype=F64)
    n = len(ts) - 1

    with monkeypatch.context() as m:
        _no_rewind(m)
        calls_full = []
        full = flowsde.solve(_recording_sde(calls_full), x0, ts, method="euler_maruyama",
                             generator=_generator(kind), throw=False)
    assert len(calls_full) == n
    failed = [i for i, s in enumerate(full.status_names()) if s == "NON_FINITE"]
    assert failed, "the problem must fail in some sample for this test to mean anything"
    rng_after_full = torch.get_rng_state() if kind == "global" else None

    calls = []
    with pytest.raises(flowsde.SolveError) as e:
        flowsde.solve(_recording_sde(calls), x0, ts, method="euler_maruyama", generator=_generator(kind))
    assert len(calls) == 2 * n  # the deferred run, then the replay
    for (ta, xa), (tb, xb), (tc, xc) in zip(calls[:n], calls[n:], calls_full):
        assert ta == tb == tc
        assert torch.equal(xa.nan_to_num(7.0), xb.nan_to_num(7.0))  # the replay drew the same noise
        assert torch.equal(xb.nan_to_num(7.0), xc.nan_to_num(7.0))  # ... as the checked-as-it-goes run
    # the error names what the per-output check found first
    first_t = float(full.t_final[failed].min())
    assert e.value.t == pytest.approx(first_t)
    assert e.value.samples == [i for i in failed if float(full.t_final[i]) == first_t]
    assert e.value.step == int(round(first_t * n))
    if kind == "global":  # the global RNG ends where one run leaves it
        assert torch.equal(torch.get_rng_state(), rng_after_full)

    # throw=False on the CPU: deferred too, and the replay gives the per-output check's status and t_final
    calls = []
    sol = flowsde.solve(_recording_sde(calls), x0, ts, method="euler_maruyama", generator=_generator(kind),
                        throw=False)
    assert len(calls) == 2 * n
    assert torch.equal(sol.status, full.status) and torch.equal(sol.t_final, full.t_final)
    assert torch.equal(sol.x.nan_to_num(7.0), full.x.nan_to_num(7.0))


def test_success_calls_each_function_once_per_evaluation():
    calls = []
    sde = _recording_sde(calls, limit=1e9)
    sol = flowsde.solve(sde, torch.zeros(B, 2, dtype=F64), grids.uniform(0.0, 1.0, 25), method="euler_maruyama",
                        generator=torch.Generator().manual_seed(0))
    assert sol.status_names() == ["SUCCESS"] * B
    assert len(calls) == sol.nfe == 25


def test_a_source_that_cannot_be_rewound_is_checked_as_it_goes(monkeypatch):
    # as torch's global RNG on an accelerator other than CUDA: no snapshot, every output checked
    _no_rewind(monkeypatch)
    calls = []
    ts = grids.uniform(0.0, 1.0, 40)
    with pytest.raises(flowsde.SolveError, match="drift returned NaN/Inf at step") as e:
        flowsde.solve(_recording_sde(calls), torch.zeros(B, 2, dtype=F64), ts, method="euler_maruyama",
                      generator=torch.Generator().manual_seed(5))
    assert len(calls) == len(ts) - 1  # one run, no replay
    full = flowsde.solve(_recording_sde([]), torch.zeros(B, 2, dtype=F64), ts, method="euler_maruyama",
                         generator=torch.Generator().manual_seed(5), throw=False)
    assert e.value.t == pytest.approx(float(full.t_final[full.status != 0].min()))


def test_state_overflow_without_a_bad_output_is_reported_after_the_replay():
    # every output finite, the state overflows: the replay finds no bad output and says so
    ode = flowsde.ODE(lambda t, x: torch.full_like(x, 1e308))
    with pytest.raises(flowsde.SolveError, match="state became non-finite"):
        flowsde.solve(ode, torch.full((2, 1), 1e308, dtype=F64), grids.uniform(0.0, 1.0, 5), method="euler")


def _poisoned_diffusion(t_bad, sample):
    """A VP eps-model whose network returns NaN in ``sample`` at the network time ``t_bad`` (a grid
    time), and a smooth linear eps elsewhere: a failure every fixed-step method meets at the start
    of the same step, whatever else it evaluates."""
    from flowsde.adapters import Diffusion
    from flowsde.adapters.schedules import VP

    def net(x, t):
        out = 0.3 * x
        hit = (t.to(F64) - t_bad).abs() < 1e-6 * max(1.0, abs(t_bad))
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[sample] = True
        return torch.where((hit & mask).reshape(-1, *([1] * (x.dim() - 1))), float("nan"), out)

    return Diffusion(net, VP(), "eps")


FIXED_STEP = sorted(m for m in flowsde.solvers.METHODS if not flowsde.solvers.get_solver(m).adaptive)


@pytest.mark.parametrize("method", FIXED_STEP)
def test_every_fixed_step_method_carries_a_nan_to_the_state(method, monkeypatch):
    """The replay design rests on this: no method's arithmetic removes a NaN from its outputs, so
    the final state shows it and the replay names what checking every output as it comes names."""
    solver = flowsde.solvers.get_solver(method)
    ts = grids.uniform(1.0, 1e-3, 12)
    k, sample = 5, 2
    dif = _poisoned_diffusion(float(ts[k]), sample)
    problem = dif.pf_ode() if solver.solves_ode else dif.reverse_sde(1.0)
    x0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))

    def run(throw):
        return flowsde.solve(problem, x0, ts, method=method, generator=torch.Generator().manual_seed(1), throw=throw)

    with pytest.raises(flowsde.SolveError) as deferred:
        run(True)
    with monkeypatch.context() as m:
        _no_rewind(m)
        with pytest.raises(flowsde.SolveError) as as_it_goes:
            run(True)
    assert (deferred.value.step, deferred.value.t, deferred.value.samples) == \
        (as_it_goes.value.step, as_it_goes.value.t, as_it_goes.value.samples)
    assert deferred.value.samples == [sample]
    assert deferred.value.step <= k
    sol = run(False)
    assert sol.status_names()[sample] == "NON_FINITE"
