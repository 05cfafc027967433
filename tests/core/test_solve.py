"""flowsde.solve: validation, error contract, reproducibility, bookkeeping."""

import math

import sys

import pytest
import torch

import flowsde
from flowsde import grids
from method_table import names

F64 = torch.float64


def ou(b=1.0, s=0.5):
    return flowsde.SDE(lambda t, x: -b * x, lambda t, x: torch.full((), s, dtype=x.dtype, device=x.device))


def test_solution_bookkeeping_and_nfe():
    ode = flowsde.ODE(lambda t, x: -x)
    x0 = torch.ones(3, 2, dtype=F64)
    ts = grids.uniform(0, 1, 10)
    sol = flowsde.solve(ode, x0, ts, method="heun", save_all=True)
    assert sol.nfe == 20 and sol.steps == 10 and sol.rejected == 0
    assert sol.xs.shape == (11, 3, 2) and torch.equal(sol.xs[0], x0) and torch.equal(sol.xs[-1], sol.x)
    assert sol.success and sol.status.shape == (3,) and torch.all(sol.t_final == 1.0)
    sol = flowsde.solve(ode, x0, ts, method=flowsde.solvers.Heun(final_euler=True))
    assert sol.nfe == 19  # EDM: last step Euler, 2N - 1
    assert flowsde.solve(ode, x0, ts, method="euler").nfe == 10


def test_pc_counts_score_evaluations():
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.ones((), dtype=x.dtype), score=lambda t, x: -x)
    sol = flowsde.solve(sde, torch.zeros(4, 2, dtype=F64), grids.uniform(0, 1, 5),
                        method=flowsde.solvers.PC(corrector_steps=2), generator=torch.Generator().manual_seed(0))
    assert sol.nfe == 5 * (1 + 2)


@pytest.mark.parametrize("method", names("core", sde=False))
def test_ode_both_time_directions_are_inverse(method):
    # dx/dt = -x: solving forward then backward on fine grids returns to the start.
    ode = flowsde.ODE(lambda t, x: -x)
    x0 = torch.randn(5, 3, dtype=F64)
    fwd = flowsde.solve(ode, x0, grids.uniform(0, 1, 2000), method=method)
    back = flowsde.solve(ode, fwd.x, grids.uniform(1, 0, 2000), method=method)
    tol = {1: 2e-3, 2: 1e-6}[flowsde.solvers.get_solver(method).order]  # O(h) and O(h^2) with h = 5e-4
    assert torch.allclose(back.x, x0, atol=tol)
    assert torch.allclose(fwd.x, x0 * math.exp(-1), atol=tol)


def test_inputs_are_not_modified():
    sde = ou()
    x0 = torch.randn(4, 3, dtype=F64)
    ts = grids.uniform(0, 1, 5)
    x0c, tsc = x0.clone(), ts.clone()
    flowsde.solve(sde, x0, ts, method="euler_maruyama")
    assert torch.equal(x0, x0c) and torch.equal(ts, tsc)


@pytest.mark.parametrize("method", names("core", sde=True))
def test_same_seed_same_result(method):
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: 0.5 + 0.1 * x.sin(), noise_type="diagonal", score=lambda t, x: -x)
    x0 = torch.randn(4, 3, dtype=F64)
    ts = grids.uniform(1, 0, 7)
    a = flowsde.solve(sde, x0, ts, method=method, generator=torch.Generator().manual_seed(3)).x
    b = flowsde.solve(sde, x0, ts, method=method, generator=torch.Generator().manual_seed(3)).x
    c = flowsde.solve(sde, x0, ts, method=method, generator=torch.Generator().manual_seed(4)).x
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["euler_maruyama", flowsde.solvers.PC(corrector_steps=2, step_rule="per_sample"),
                                    flowsde.solvers.PC(corrector_steps=2, sigma=lambda t: 0.5 + t)])
def test_result_does_not_depend_on_batch_split(method):
    sde = flowsde.SDE(lambda t, x: -x ** 3, lambda t, x: torch.full((), 0.7, dtype=x.dtype), score=lambda t, x: -x)
    x0 = torch.randn(6, 2, 3, dtype=F64)
    seeds = list(range(100, 106))
    ts = grids.uniform(0, 1, 9)
    whole = flowsde.solve(sde, x0, ts, method=method, generator=flowsde.per_sample_generators(seeds)).x
    first = flowsde.solve(sde, x0[:2], ts, method=method, generator=flowsde.per_sample_generators(seeds[:2])).x
    rest = flowsde.solve(sde, x0[2:], ts, method=method, generator=flowsde.per_sample_generators(seeds[2:])).x
    assert torch.equal(whole, torch.cat([first, rest]))


def test_brownian_path_is_the_same_for_every_step_size():
    # Driving EM on a pure-noise SDE (dx = dW) by one path: the end state is W(1) - W(0) on every grid.
    sde = flowsde.SDE(lambda t, x: torch.zeros_like(x), lambda t, x: torch.ones((), dtype=x.dtype))
    x0 = torch.zeros(3, 2, dtype=F64)
    path = flowsde.BrownianPath(0.0, 1.0, x0.shape, generator=7)
    ends = [flowsde.solve(sde, x0, grids.uniform(0, 1, n), method="euler_maruyama", generator=path).x
            for n in (1, 3, 16)]
    for e in ends[1:]:
        assert torch.allclose(e, ends[0], atol=1e-12)
    back = flowsde.solve(sde, x0, grids.uniform(1, 0, 5), method="euler_maruyama", generator=path).x
    assert torch.allclose(back, ends[0], atol=1e-12)  # |dt| increments, same path


# ---------------------------------------------------------------- bad input


def test_unknown_method():
    with pytest.raises(flowsde.InputError, match="method='rk4'.*unknown"):
        flowsde.solve(ou(), torch.zeros(2, 1), grids.uniform(0, 1, 2), method="rk4")


@pytest.mark.parametrize("method", names("core", sde=False))
def test_ode_method_on_sde_is_refused(method):
    with pytest.raises(flowsde.InputError, match="cannot solve an SDE"):
        flowsde.solve(ou(), torch.zeros(2, 1), grids.uniform(0, 1, 2), method=method)


@pytest.mark.parametrize("method", names("core", ode=False))
def test_sde_only_method_on_ode_is_refused(method):
    with pytest.raises(flowsde.InputError, match="solves SDEs only"):
        flowsde.solve(flowsde.ODE(lambda t, x: x), torch.zeros(2, 1), grids.uniform(0, 1, 2), method=method)


def test_pc_without_score():
    with pytest.raises(flowsde.InputError, match="needs the marginal score"):
        flowsde.solve(ou(), torch.zeros(2, 1), grids.uniform(0, 1, 2), method="pc")


@pytest.mark.parametrize("ts, msg", [
    (torch.tensor([0.0, 0.5, 0.4, 1.0]), r"grid\[1\] = 0.5, grid\[2\] = 0.4"),
    (torch.tensor([0.0]), "at least 2"),
    (torch.tensor([[0.0, 1.0]]), "1-D"),
    (torch.tensor([0.0, float("nan")]), "NaN"),
    (torch.tensor([0.0, 0.0]), "strictly"),
])
def test_bad_time_grids(ts, msg):
    with pytest.raises(flowsde.InputError, match=msg):
        flowsde.solve(flowsde.ODE(lambda t, x: x), torch.zeros(2, 1), ts)


def test_bad_x0():
    ode = flowsde.ODE(lambda t, x: x)
    with pytest.raises(flowsde.InputError, match="floating point"):
        flowsde.solve(ode, torch.zeros(2, 1, dtype=torch.int64), grids.uniform(0, 1, 2))
    with pytest.raises(flowsde.InputError, match=r"samples \[1\]"):
        flowsde.solve(ode, torch.tensor([[0.0], [float("inf")]]), grids.uniform(0, 1, 2))
    with pytest.raises(flowsde.InputError, match="torch.Tensor"):
        flowsde.solve(ode, [[0.0]], grids.uniform(0, 1, 2))


def test_drift_wrong_shape_and_dtype():
    x0 = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(flowsde.InputError, match=r"drift returned shape \(2, 1\) at step 0"):
        flowsde.solve(flowsde.ODE(lambda t, x: x[:, :1]), x0, grids.uniform(0, 1, 2))
    with pytest.raises(flowsde.InputError, match="drift returned dtype torch.float32"):
        flowsde.solve(flowsde.ODE(lambda t, x: x.float()), x0, grids.uniform(0, 1, 2))


def test_diffusion_returning_nan_names_step_and_time():
    def g(t, x):
        return torch.where(t < 0.45, 1.0, float("nan")).to(x.dtype).expand(x.shape[0])

    sde = flowsde.SDE(lambda t, x: -x, g)
    with pytest.raises(flowsde.SolveError, match=r"diffusion returned NaN/Inf at step 5 \(t = 0.5\)") as e:
        flowsde.solve(sde, torch.zeros(3, 2, dtype=F64), grids.uniform(0, 1, 10), method="euler_maruyama")
    assert e.value.step == 5 and e.value.t == pytest.approx(0.5)


def test_drift_nan_mid_solve():
    ode = flowsde.ODE(lambda t, x: torch.log(0.7 - t) * torch.ones_like(x))  # -Inf at t = 0.7 (Heun step 6 evaluates there), NaN beyond
    with pytest.raises(flowsde.SolveError, match=r"drift returned NaN/Inf at step 6 \(t = 0.7\)"):
        flowsde.solve(ode, torch.zeros(1, 1, dtype=F64), grids.uniform(0, 1, 10), method="heun")


def test_generator_validation():
    x0 = torch.zeros(3, 1, dtype=F64)
    with pytest.raises(flowsde.InputError, match="2 per-sample generators for a batch of 3"):
        flowsde.solve(ou(), x0, grids.uniform(0, 1, 2), method="euler_maruyama",
                      generator=flowsde.per_sample_generators([1, 2]))
    with pytest.raises(flowsde.InputError, match="BrownianPath has shape"):
        flowsde.solve(ou(), x0, grids.uniform(0, 1, 2), method="euler_maruyama",
                      generator=flowsde.BrownianPath(0, 1, (2, 1)))
    with pytest.raises(flowsde.InputError, match="generator"):
        flowsde.solve(ou(), x0, grids.uniform(0, 1, 2), method="euler_maruyama", generator="5")
    # an int is a seed (docs/design.md, "Vocabulary"): the same as a generator seeded with it
    a = flowsde.solve(ou(), x0, grids.uniform(0, 1, 2), method="euler_maruyama", generator=5)
    b = flowsde.solve(ou(), x0, grids.uniform(0, 1, 2), method="euler_maruyama",
                      generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.x, b.x)


@pytest.mark.parametrize("method", ["euler_maruyama", "pc", "milstein", "torchsde_euler"])
@pytest.mark.parametrize("span", [(0.5, 1.0), (0.99, 1.0), (1e-3, 0.5), (0.0, 1e-3)])
def test_a_brownian_path_that_does_not_cover_the_grid_is_refused(method, span):
    # Outside its span a path's increments are zero (torchsde only warns): a wrong law, no error.
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.ones_like(x), noise_type="diagonal", score=lambda t, x: -x)
    x0 = torch.zeros(3, 2, dtype=F64)
    ts = grids.uniform(1.0, 1e-3, 10)
    with pytest.raises(flowsde.InputError) as e:
        flowsde.solve(sde, x0, ts, method=method, generator=flowsde.BrownianPath(*span, x0.shape, generator=0))
    msg = str(e.value)
    assert f"spans [{span[0]!r}, {span[1]!r}]" in msg and "grid spans [0.001, 1.0]" in msg


def test_a_brownian_path_that_covers_the_grid_up_to_rounding_is_accepted():
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.ones_like(x), noise_type="diagonal")
    x0 = torch.zeros(3, 2, dtype=F64)
    ts = grids.uniform(1.0, 1e-3, 10)
    for lo, hi in [(1e-3, 1.0), (0.0, 2.0), (1e-3 * (1 + 2e-16), 1.0 - 1e-16), (1.0, 1e-3)]:
        sol = flowsde.solve(sde, x0, ts, method="euler_maruyama", generator=flowsde.BrownianPath(lo, hi, x0.shape,
                                                                                                  generator=0))
        assert sol.success


def test_srk_needs_levy_area_on_a_path():
    x0 = torch.zeros(3, 1, dtype=F64)
    with pytest.raises(flowsde.InputError, match="levy_area=True"):
        flowsde.solve(ou(), x0, grids.uniform(0, 1, 2), method="srk", generator=flowsde.BrownianPath(0, 1, x0.shape))


def test_problem_type_checked():
    with pytest.raises(flowsde.InputError, match="flowsde.ODE or flowsde.SDE"):
        flowsde.solve(lambda t, x: x, torch.zeros(1, 1), grids.uniform(0, 1, 2))


def test_solver_orders_are_declared():
    # The values the slow order tests (tests/core/test_orders.py) read and fit.
    assert flowsde.solvers.Euler.order == 1 and flowsde.solvers.Heun.order == 2
    em = flowsde.solvers.EulerMaruyama()
    assert em.strong_order == 0.5 and em.weak_order == 1.0
    assert [em.strong_order_for(k) for k in ("scalar", "diagonal", "additive")] == [0.5, 0.5, 1.0]
    assert flowsde.solvers.TorchSDE("milstein").strong_order == 1.0 and flowsde.solvers.TorchSDE("srk").strong_order == 1.5
    assert flowsde.solvers.TorchSDE("euler").strong_order_for("additive") == 1.0
    assert flowsde.solvers.Heun().strong_order_for("additive") is None  # an ODE solver
    pc = flowsde.solvers.PC()
    assert pc.requires_score and pc.strong_order is None and pc.strong_order_for("diagonal") is None
    with pytest.raises(flowsde.InputError, match="noise must be one of"):
        em.strong_order_for("multiplicative")


@pytest.mark.parametrize("method", sorted(flowsde.solvers.METHODS))
def test_every_method_declares_its_orders(method):
    s = flowsde.solvers.get_solver(method)
    for v in (s.order, s.strong_order, s.weak_order):
        assert v is None or (isinstance(v, (int, float)) and v > 0)
    assert s.noise_types or s.strong_order is None  # an ODE-only method has no strong order
    if s.solves_ode:
        assert s.order is not None or s.requires_score
    elif s.order is not None:  # an SDE sampler's order is that of its beta = 0 limit: it must say so
        assert "deterministic limit" in sys.modules[type(s).__module__].__doc__
    for noise_type in s.noise_types:
        so = s.strong_order_for(noise_type)
        assert so is None or so <= s.strong_order_for("additive")
    assert isinstance(s.evals_per_step, int) and s.evals_per_step >= 1


def test_pc_options_validated():
    with pytest.raises(flowsde.InputError, match="snr"):
        flowsde.solvers.PC(snr=0)
    with pytest.raises(flowsde.InputError, match="step_rule"):
        flowsde.solvers.PC(step_rule="batch")
    with pytest.raises(flowsde.InputError, match="corrector_steps"):
        flowsde.solvers.PC(corrector_steps=-1)


def test_float32_and_time_as_batch_tensor():
    # Callables receive a 0-dim t from the fixed-step solvers; a (B,)-aware callable works too.
    def drift(t, x):
        t = t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t
        return -t * x

    x0 = torch.ones(2, 3, 4)
    sol = flowsde.solve(flowsde.ODE(drift), x0, grids.uniform(0, 1, 200), method="heun")
    assert sol.x.dtype == torch.float32
    assert torch.allclose(sol.x, torch.full_like(x0, math.exp(-0.5)), atol=1e-5)


def test_pc_auto_step_rule_depends_on_dimension():
    from flowsde._internal import resolve_step_rule

    assert resolve_step_rule("auto", torch.zeros(3, 2)) == "score_sde"
    assert resolve_step_rule("auto", torch.zeros(3, 1, 8, 8)) == "per_sample"
    assert resolve_step_rule("score_sde", torch.zeros(3, 1, 8, 8)) == "score_sde"


# ---------------------------------------------------------------- batch independence


@pytest.mark.parametrize("method", names("core", sde=True) + [flowsde.solvers.PC(corrector_steps=3)])
@pytest.mark.parametrize("event", [(2,), (1, 8, 8)])
def test_default_methods_make_each_sample_independent_of_its_batch(method, event):
    # A 16-sample subset of a 64 batch, with per-sample generators, gives the same bits: the
    # default step rules are per sample (the PC corrector's held per-sample step included).
    sde = flowsde.SDE(lambda t, x: -x.sin(), lambda t, x: 0.5 + 0.1 * x.sin(), noise_type="diagonal",
                      score=lambda t, x: -x - x.sin())
    x0 = torch.randn((64,) + event, dtype=F64, generator=torch.Generator().manual_seed(1))
    seeds = list(range(1000, 1064))
    ts = grids.uniform(0, 1, 8)
    whole = flowsde.solve(sde, x0, ts, method=method, generator=flowsde.per_sample_generators(seeds))
    part = flowsde.solve(sde, x0[16:32], ts, method=method, generator=flowsde.per_sample_generators(seeds[16:32]))
    assert torch.equal(whole.x[16:32], part.x)


def test_pc_batch_rule_is_opt_in_and_couples_the_batch():
    assert flowsde.solvers.PC().step_rule == "sigma"  # tests/core/test_pc.py: per sample, every dimension
    sde = flowsde.SDE(lambda t, x: -x, lambda t, x: torch.full((), 0.5, dtype=x.dtype), score=lambda t, x: -x)
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    x0[:16] *= 10  # the rest of the batch changes the batch-mean norms
    seeds = list(range(64))
    ts = grids.uniform(1, 0, 4)
    pc = flowsde.solvers.PC(step_rule="score_sde")
    whole = flowsde.solve(sde, x0, ts, method=pc, generator=flowsde.per_sample_generators(seeds)).x
    part = flowsde.solve(sde, x0[16:32], ts, method=pc, generator=flowsde.per_sample_generators(seeds[16:32])).x
    assert (whole[16:32] - part).abs().max() > 1e-3
