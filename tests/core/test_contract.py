"""The core solver contract: throw / per-sample status, grad, options, direction,
float64 time, the solver protocol (init, step, typed state, evals_per_step) and flowsde._internal."""

import dataclasses
import math
from typing import Optional

import pytest
import torch

import flowsde
import flowsde._internal
from flowsde import Status, grids
from flowsde import _internal as utils
from method_table import names

F64 = torch.float64
FIXED = names("core")  # every fixed-step ODE/SDE solver (tests/method_table.py)


def _sde(poison_sample=None, at=0.5, score=True):
    """dx = -x dt + 0.3 dW (diagonal), whose drift returns NaN for one sample once t > at."""

    def f(t, x):
        out = -x
        if poison_sample is not None:
            mask = torch.zeros_like(x, dtype=torch.bool)
            mask[poison_sample] = True
            out = torch.where(mask & (t > at), torch.full_like(x, float("nan")), out)
        return out

    return flowsde.SDE(f, lambda t, x: 0.3 * torch.ones_like(x), noise_type="diagonal",
                       score=(lambda t, x: -x) if score else None)


def _ode(poison_sample=None, at=0.5):
    sde = _sde(poison_sample, at)
    return flowsde.ODE(sde.drift)


# ------------------------------------------------------------------ throw / status


@pytest.mark.parametrize("method", FIXED)
def test_throw_false_marks_only_the_failing_sample(method):
    problem = _sde(1) if flowsde.solvers.get_solver(method).noise_types else _ode(1)
    x0 = torch.ones(4, 3, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    sol = flowsde.solve(problem, x0, ts, method=method, throw=False, generator=torch.Generator().manual_seed(0))
    assert sol.status_names() == ["SUCCESS", "NON_FINITE", "SUCCESS", "SUCCESS"]
    assert not sol.success
    assert torch.isfinite(sol.x[[0, 2, 3]]).all()
    # the failing sample's t_final is the start of the step where its NaN was first seen (0.5 < t <= 0.6)
    assert 0.5 <= float(sol.t_final[1]) <= 0.6 and (sol.t_final[[0, 2, 3]] == 1.0).all()
    with pytest.raises(flowsde.SolveError, match=r"drift returned NaN/Inf at step \d \(t = 0.[56]\d*\) in "
                                                 r"sample 1\b") as e:
        flowsde.solve(problem, x0, ts, method=method, generator=torch.Generator().manual_seed(0))
    assert e.value.samples == [1] and e.value.step in (5, 6) and 0.5 <= e.value.t <= 0.6


def test_non_finite_state_without_non_finite_outputs_is_flagged():
    # float32: f = x is finite at x = 3e38 but one Euler step of h = 1 overflows the state.
    ode = flowsde.ODE(lambda t, x: x)
    x0 = torch.tensor([[3e38], [1.0]])
    sol = flowsde.solve(ode, x0, grids.uniform(0, 1, 1), throw=False)
    assert sol.status_names() == ["NON_FINITE", "SUCCESS"] and float(sol.x[1]) == 2.0
    with pytest.raises(flowsde.SolveError, match=r"state became non-finite \(overflow\) in sample 0 although") as e:
        flowsde.solve(ode, x0, grids.uniform(0, 1, 1))
    assert e.value.samples == [0]


def test_status_prints_names():
    assert str(Status.NON_FINITE) == "NON_FINITE" and f"{Status.DT_MIN}" == "DT_MIN"
    sol = flowsde.solve(_ode(0), torch.ones(2, 1, dtype=F64), grids.uniform(0, 1, 10), throw=False)
    assert "NON_FINITE=1" in repr(sol) and "SUCCESS=1" in repr(sol)
    assert sol.status_names() == ["NON_FINITE", "SUCCESS"]


def test_check_finite_is_gone():
    with pytest.raises(flowsde.InputError, match="check_finite"):
        flowsde.solve(_ode(), torch.ones(1, 1), grids.uniform(0, 1, 2), check_finite=False)


# ------------------------------------------------------------------ grad


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3, dtype=F64)

    def forward(self, t, x):
        return torch.tanh(self.lin(x))


@pytest.mark.parametrize("method", names(("core", "adaptive"), sde=False))
def test_grad_false_keeps_no_graph_and_grad_true_keeps_it(method):
    net = _Net()
    x0 = torch.randn(5, 3, dtype=F64)
    ts = grids.uniform(0, 1, 4)
    sol = flowsde.solve(flowsde.ODE(net), x0, ts, method=method)
    assert sol.x.grad_fn is None and not sol.x.requires_grad
    sol = flowsde.solve(flowsde.ODE(net), x0, ts, method=method, grad=True)
    assert sol.x.grad_fn is not None
    sol.x.sum().backward()
    assert net.lin.weight.grad is not None and torch.isfinite(net.lin.weight.grad).all()


def test_grad_false_also_for_sdes_and_save_all():
    net = _Net()
    sde = flowsde.SDE(net, lambda t, x: torch.full((), 0.1, dtype=x.dtype))
    sol = flowsde.solve(sde, torch.randn(2, 3, dtype=F64), grids.uniform(0, 1, 3), method="euler_maruyama",
                        save_all=True)
    assert sol.x.grad_fn is None and sol.xs.grad_fn is None


# ------------------------------------------------------------------ options


def test_options_by_name_equal_the_instance():
    ode = flowsde.ODE(lambda t, x: -x)
    x0 = torch.ones(2, 1, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    a = flowsde.solve(ode, x0, ts, method="rk45", rtol=1e-3, atol=1e-6)
    b = flowsde.solve(ode, x0, ts, method=flowsde.solvers.RK45(rtol=1e-3, atol=1e-6))
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    assert flowsde.solvers.get_solver("heun", final_euler=True).final_euler
    assert flowsde.solvers.get_solver("pc", snr=0.1, corrector_steps=2).corrector_steps == 2


def test_unknown_option_is_named_with_the_valid_ones():
    with pytest.raises(flowsde.InputError, match=r"method='rk45' has no option 'rtoll'.*'rtol'"):
        flowsde.solve(flowsde.ODE(lambda t, x: -x), torch.ones(1, 1), grids.uniform(0, 1, 2), method="rk45",
                      rtoll=1e-3)
    with pytest.raises(flowsde.InputError, match="has no option 'snr'.*options are none"):
        flowsde.solvers.get_solver("euler", snr=1)
    with pytest.raises(flowsde.InputError, match="solver instance"):
        flowsde.solvers.get_solver(flowsde.solvers.Heun(), final_euler=True)


# ------------------------------------------------------------------ direction


def test_direction_refuses_the_other_grid():
    rev = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.ones((), dtype=x.dtype), direction="reverse")
    fwd = flowsde.ODE(lambda t, x: -x, direction="forward")
    x0 = torch.zeros(2, 1, dtype=F64)
    with pytest.raises(flowsde.InputError, match=r"direction='reverse'.*increases from 0.0 to 1.0.*decreasing grid"
                                                 r".*uniform\(1.0, 0.0, steps\)"):
        flowsde.solve(rev, x0, grids.uniform(0, 1, 3), method="euler_maruyama")
    with pytest.raises(flowsde.InputError, match=r"direction='forward'.*increasing grid"):
        flowsde.solve(fwd, x0, grids.uniform(1, 0, 3))
    assert flowsde.solve(rev, x0, grids.uniform(1, 0, 3), method="euler_maruyama").success
    assert flowsde.solve(fwd, x0, grids.uniform(0, 1, 3)).success
    with pytest.raises(flowsde.InputError, match="direction"):
        flowsde.ODE(lambda t, x: x, direction="backward")


# ------------------------------------------------------------------ time


def test_time_is_float64_and_cast_once_for_the_user():
    seen = []

    def f(t, x):
        seen.append(t.dtype)
        return -x

    x0 = torch.ones(2, 1)  # float32 state
    ts = grids.uniform(0, 1, 3, dtype=torch.float32)
    sol = flowsde.solve(flowsde.ODE(f), x0, ts, method="heun", save_all=True)
    assert set(seen) == {torch.float32} and sol.x.dtype == torch.float32
    assert sol.grid.dtype == F64 and sol.t_final.dtype == F64
    seen.clear()
    flowsde.solve(flowsde.ODE(f, time_dtype=F64), x0, ts, method="heun")
    assert set(seen) == {F64}
    seen.clear()
    flowsde.solve(flowsde.ODE(f, time_dtype=F64), x0, ts, method="rk45")
    assert set(seen) == {F64}
    with pytest.raises(flowsde.InputError, match="time_dtype"):
        flowsde.ODE(f, time_dtype=torch.float32)


def test_float64_time_resolves_steps_float32_cannot():
    # 1 + k * 1e-9 are distinct in float64 but not in float32: a float32 grid would have zero steps.
    ts = 1.0 + torch.arange(5, dtype=F64) * 1e-9
    x0 = torch.ones(1, 1)
    sol = flowsde.solve(flowsde.ODE(lambda t, x: torch.ones_like(x) * 1e6), x0, ts, method="euler")
    assert math.isclose(float(sol.x), 1.0 + 4e-9 * 1e6, rel_tol=1e-6)


# ------------------------------------------------------------------ solver protocol


@pytest.mark.parametrize("method", FIXED + [flowsde.solvers.Heun(final_euler=True), flowsde.solvers.PC(corrector_steps=3)])
def test_nfe_matches_evals_per_step(method):
    solver = flowsde.solvers.get_solver(method)
    problem = _ode() if solver.solves_ode and not solver.noise_types else _sde()
    sol = flowsde.solve(problem, torch.ones(2, 3, dtype=F64), grids.uniform(0, 1, 6), method=solver,
                        generator=torch.Generator().manual_seed(0))
    assert sol.nfe == solver.nfe(6)
    assert isinstance(solver.evals_per_step, int)


@dataclasses.dataclass(frozen=True)
class _AB2State:
    f_prev: Optional[torch.Tensor]  # the previous step's drift (None on the first step)


class _TwoStepAB(flowsde.solvers.Solver):
    """Two-step Adams–Bashforth (first step Euler): a multistep solver whose typed state carries
    its history from step to step."""

    name = "ab2"
    order = 2

    def init(self, problem, x, grid):
        return _AB2State(f_prev=None)

    def step(self, problem, x, t0, t1, h, i, noise, state):
        f = problem.drift(t0, x)
        if state.f_prev is None:
            x1 = x + h * f
        else:
            x1 = x + h * (1.5 * f - 0.5 * state.f_prev)
        return x1, _AB2State(f_prev=f)


def test_state_is_passed_and_multistep_has_order_two():
    solver = _TwoStepAB()
    ode = flowsde.ODE(lambda t, x: -x)
    x0 = torch.ones(1, 1, dtype=F64)
    errs = [abs(float(flowsde.solve(ode, x0, grids.uniform(0, 1, n), method=solver).x) - math.exp(-1))
            for n in (50, 100, 200)]
    assert 3.6 < errs[0] / errs[1] < 4.4 and 3.6 < errs[1] / errs[2] < 4.4  # order 2


def test_step_arguments_and_state_hand_over():
    # init once per solve; each step gets the grid's float64 0-dim times, h = t1 - t0 differenced in
    # float64 and rounded once to the state's dtype, its index, and the state the previous step returned.
    calls = []

    class Spy(_TwoStepAB):
        def init(self, problem, x, grid):
            calls.append(("init", tuple(x.shape), grid.dtype, grid.tolist()))
            return 0

        def step(self, problem, x, t0, t1, h, i, noise, state):
            calls.append((i, state, t0.dtype, t0.dim(), float(t0), float(t1), h.dtype, h.dim(), float(h)))
            return x + h * problem.drift(t0, x), state + 1

    ts = torch.tensor([0.0, 0.1, 0.35, 1.0], dtype=F64)
    flowsde.solve(flowsde.ODE(lambda t, x: -x), torch.ones(2, 1), ts, method=Spy())
    h = (ts[1:] - ts[:-1]).float().tolist()
    assert calls == [("init", (2, 1), F64, ts.tolist())] + [
        (i, i, F64, 0, ts[i].item(), ts[i + 1].item(), torch.float32, 0, h[i]) for i in range(3)]


def test_a_step_must_return_the_state_too():
    class Old(flowsde.solvers.Solver):
        name = "old"

        def step(self, problem, x, t0, t1, h, i, noise, state):
            return x + h * problem.drift(t0, x)  # the state is missing

    with pytest.raises(flowsde.InputError, match=r"old: step\(problem, x, t0, t1, h, i, noise, state\) must return "
                                                 r"\(x, state\), got Tensor"):
        flowsde.solve(flowsde.ODE(lambda t, x: -x), torch.ones(2, 1), grids.uniform(0, 1, 3), method=Old())


# ------------------------------------------------------------------ utils


def test_randn_per_sample_rows_do_not_depend_on_the_batch():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    whole = utils.randn((4, 2, 3), gens([1, 2, 3, 4]), F64)
    part = utils.randn((2, 2, 3), gens([3, 4]), F64)
    assert torch.equal(whole[2:], part)
    assert utils.randn((3,), torch.Generator().manual_seed(0)).dtype == torch.get_default_dtype()
    u = utils.rand((2, 5), gens([1, 2]), F64)
    assert ((u >= 0) & (u < 1)).all()
    r = utils.rademacher((2, 50), gens([1, 2]), F64)
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(flowsde.InputError, match="2 per-sample generators for a batch of 3"):
        utils.randn((3, 1), gens([1, 2]))
    with pytest.raises(flowsde.InputError, match="generator"):
        utils.randn((3, 1), "5")
    assert torch.equal(utils.randn((3, 1), 5), utils.randn((3, 1), torch.Generator().manual_seed(5)))


def test_batch_broadcast():
    x = torch.zeros(3, 2, 4)
    assert utils.batch_broadcast(torch.tensor(2.0), x).shape == ()
    assert utils.batch_broadcast(torch.arange(3.0), x).shape == (3, 1, 1)
    assert utils.batch_broadcast(torch.ones(3, 1, 1), x).shape == (3, 1, 1)
    assert float(utils.batch_broadcast(1.5, x)) == 1.5
    with pytest.raises(flowsde.InputError, match=r"\(2,\).*\(3, 2, 4\)|\(3, 2, 4\).*\(2,\)"):
        utils.batch_broadcast(torch.ones(2), x)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True, None])
def test_check_positive(bad):
    assert utils.check_positive("rtol", 1e-3) == 1e-3
    with pytest.raises(flowsde.InputError, match=r"^RK45: rtol must be a finite number > 0, got"):
        utils.check_positive("rtol", bad, where="RK45")


def test_grid_times_reach_the_user_exactly_as_cast():
    # The cast of a grid time is looked up, by the step index, in a grid cast once per solve (Heun's
    # t1 of step i and t0 of step i + 1 are one tensor); other times are cast on the fly.
    seen = []

    def f(t, x):
        seen.append(t)
        return -x

    ts = torch.tensor([0.0, 0.1, 0.35, 1.0], dtype=F64)
    flowsde.solve(flowsde.ODE(f), torch.ones(1, 1), ts, method="heun")
    assert [float(t) for t in seen] == [float(v) for v in ts.float()[[0, 1, 1, 2, 2, 3]]]
    assert all(t.dtype == torch.float32 and t.dim() == 0 for t in seen)
    assert seen[1] is seen[2] and seen[3] is seen[4]
    seen.clear()
    flowsde.solve(flowsde.ODE(f), torch.ones(1, 1), ts, method="rk45")
    assert seen[0].dtype == torch.float32 and float(seen[0]) == 0.0
    ts_user = ts.clone()
    flowsde.solve(flowsde.ODE(f), torch.ones(1, 1, dtype=F64), ts_user)
    assert torch.equal(ts_user, ts)


def test_autograd_inside_a_function_works_with_enable_grad():
    # docs/solvers.md: a score by autograd of a log-density, inside a no-grad solve
    def score(t, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad((-0.5 * x ** 2).sum(), x)[0]

    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.zeros((), dtype=x.dtype), score=score)
    x0 = torch.ones(3, 2, dtype=F64)
    a = flowsde.solve(sde, x0, grids.uniform(0, 1, 4), method=flowsde.solvers.PC(corrector_steps=2),
                      generator=torch.Generator().manual_seed(0))
    assert a.success and a.x.grad_fn is None
    s = flowsde.solve(flowsde.ODE(score), x0, grids.uniform(0, 1, 4), method="euler").x
    assert torch.allclose(s, x0 * 0.75 ** 4) and s.grad_fn is None  # score = -x: Euler gives (1 - h)^n
