"""RK45 (Dormand–Prince 5(4)) against ODEs with known solutions.

Tolerance bounds: an embedded pair controls the *local* error per step to
``atol + rtol |y|``; the global error of a stable problem is at most about
(number of steps) x (local tolerance), and in practice well below. The tests use
``bound = 100 x tol`` (>= the number of steps taken, printed by the solver stats)
unless stated.
"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError, SolveError, Status
from flowsde.solvers import RK45

A2 = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)  # damped rotation


def _linear(A):
    def f(t, x):
        return torch.einsum("ij,bj...->bi...", A, x) if x.dim() > 2 else x @ A.T
    return flowsde.ODE(f)


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("t0,t1", [(0.0, 3.0), (3.0, 0.0), (-1.0, 1.5)])
def test_linear_ode_meets_tolerance(per_sample, t0, t1):
    # y' = A y, y(t1) = expm((t1 - t0) A) y(t0) exactly.
    x0 = torch.randn(5, 2, dtype=torch.float64)
    x0_copy = x0.clone()
    tol = 1e-7
    sol = flowsde.solve(_linear(A2), x0, torch.tensor([t0, t1]), method=RK45(tol, tol, per_sample=per_sample))
    exact = x0 @ torch.linalg.matrix_exp((t1 - t0) * A2).T
    assert sol.success
    assert torch.equal(x0, x0_copy)  # input not mutated
    assert (sol.x - exact).abs().max() < 100 * tol
    assert torch.allclose(sol.t_final, torch.full((5,), t1, dtype=torch.float64), atol=0, rtol=0)
    # FSAL: 6 new evaluations per step, plus the first f and the initial-step probe
    assert sol.nfe == 6 * sol.steps + 2


def test_error_shrinks_with_tolerance_nonlinear():
    # logistic y' = y (1 - y): y(t) = 1 / (1 + (1/y0 - 1) e^{-t}); event shape (B, 2, 3)
    y0 = torch.rand(4, 2, 3, dtype=torch.float64) * 0.8 + 0.1
    ode = flowsde.ODE(lambda t, y: y * (1 - y))
    T = 4.0
    exact = 1 / (1 + (1 / y0 - 1) * math.exp(-T))
    errs = []
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        sol = flowsde.solve(ode, y0, torch.tensor([0.0, T]), method=RK45(tol, tol))
        err = float((sol.x - exact).abs().max())
        assert err < 100 * tol, (tol, err)
        errs.append(err)
    # a 5th-order method: 100x tighter tolerance must give a clearly smaller error
    assert all(b < a / 10 for a, b in zip(errs, errs[1:])), errs


def test_save_at_requested_times_float64():
    x0 = torch.randn(3, 2, dtype=torch.float64)
    ts = torch.tensor([2.0, 1.7, 1.0, 0.2, -0.5], dtype=torch.float64)
    sol = flowsde.solve(_linear(A2), x0, ts, method="rk45", save_all=True)
    assert sol.xs.shape == (5, 3, 2)
    for i, t in enumerate(ts):
        exact = x0 @ torch.linalg.matrix_exp((t - ts[0]) * A2).T
        assert (sol.xs[i] - exact).abs().max() < 100 * 1e-5  # default rtol = atol = 1e-5
    assert torch.equal(sol.xs[0], x0)


def test_float32_state():
    x0 = torch.randn(4, 3, 2)
    A = torch.tensor([[-1.0, 0.0, 2.0], [0.0, -0.5, 0.0], [-2.0, 0.0, -1.0]])
    sol = flowsde.solve(_linear(A), x0, torch.tensor([0.0, 2.0]), method=RK45(1e-5, 1e-5))
    assert sol.x.dtype == torch.float32
    exact = torch.einsum("ij,bj...->bi...", torch.linalg.matrix_exp(2.0 * A.double()), x0.double())
    # tolerance 1e-5 plus float32 round-off over ~30 steps (~1e-6)
    assert (sol.x.double() - exact).abs().max() < 1e-3


@pytest.mark.parametrize("per_sample", [True, False])
def test_stiffish_problem_rejects_steps(per_sample):
    # Van der Pol, mu = 5 (stiff-ish relaxation oscillation; Hairer & Wanner II, IV.1): the
    # controller must reject steps at the fast transitions. Reference: scipy's DOP853 at 1e-12.
    from scipy.integrate import solve_ivp

    mu, T = 5.0, 10.0

    def f(t, y):
        return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)

    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    sol = flowsde.solve(flowsde.ODE(f), y0, torch.tensor([0.0, T]), method=RK45(1e-7, 1e-7, per_sample=per_sample))
    assert sol.rejected > 0
    for b in range(2):
        ref = solve_ivp(lambda t, y: [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]], (0.0, T), y0[b].tolist(),
                        method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
        # 1e4 x tol: the relaxation oscillation amplifies local errors (phase drift) over ~150 steps
        assert (sol.x[b] - torch.tensor(ref)).abs().max() < 1e-3


def test_linear_stiffish_accuracy():
    # y' = -50 (y - cos t), y(0) = 0: exact y = c (lam cos t + sin t) - lam c e^{-lam t}, c = lam/(lam^2+1)
    lam, T = 50.0, 1.5
    ode = flowsde.ODE(lambda t, y: -lam * (y - torch.cos(t).reshape(-1, 1)))
    sol = flowsde.solve(ode, torch.zeros(2, 1, dtype=torch.float64), torch.tensor([0.0, T]), method=RK45(1e-6, 1e-6))
    c = lam / (lam**2 + 1)
    exact = lam * c * math.cos(T) + c * math.sin(T) - lam * c * math.exp(-lam * T)
    assert (sol.x - exact).abs().max() < 1e-4  # 100 x tol


def test_per_sample_steps_differ_and_batch_mode_shares_them():
    # y' = -k_b y with rates 0.1 .. 10: per-sample control gives the slow samples fewer steps
    k = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64).reshape(3, 1)
    ode = flowsde.ODE(lambda t, y: -k * y)
    y0 = torch.ones(3, 1, dtype=torch.float64)
    ps = flowsde.solve(ode, y0, torch.tensor([0.0, 3.0]), method=RK45(1e-8, 1e-8, per_sample=True))
    bt = flowsde.solve(ode, y0, torch.tensor([0.0, 3.0]), method=RK45(1e-8, 1e-8, per_sample=False))
    steps_ps = ps.stats["accepted_per_sample"]
    steps_bt = bt.stats["accepted_per_sample"]
    assert steps_ps[0] < steps_ps[2]
    assert len(set(steps_bt.tolist())) == 1
    exact = torch.exp(-3 * k)
    for s in (ps, bt):
        assert ((s.x - exact).abs() / (1e-8 + 1e-8 * exact)).max() < 100  # 100 x the local tolerance


@pytest.mark.parametrize("first_step", [None, 0.01])
def test_nfe_per_sample_counts_each_samples_own_evaluations(first_step):
    # Dormand-Prince with FSAL: 1 evaluation for k1, 1 for Hairer's probe (none with first_step),
    # then 6 per step, accepted or rejected. Batch-shared steps: every sample has the batch's count.
    k = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64).reshape(3, 1)
    ode = flowsde.ODE(lambda t, y: -k * y)
    y0 = torch.ones(3, 1, dtype=torch.float64)
    start = 1 if first_step is not None else 2
    ps = flowsde.solve(ode, y0, torch.tensor([0.0, 3.0]), method=RK45(1e-8, 1e-8, per_sample=True,
                                                                        first_step=first_step))
    per = ps.stats["nfe_per_sample"]
    steps = ps.stats["accepted_per_sample"] + ps.stats["rejected_per_sample"]
    assert per.dtype == torch.int64 and per.shape == (3,)
    assert per.tolist() == (start + 6 * steps).tolist()
    assert per[0] < per[2] and int(per.max()) == ps.nfe  # the slowest sample runs every iteration
    bt = flowsde.solve(ode, y0, torch.tensor([0.0, 3.0]), method=RK45(1e-8, 1e-8, per_sample=False,
                                                                        first_step=first_step))
    assert bt.stats["nfe_per_sample"].tolist() == [bt.nfe] * 3


def test_nfe_per_sample_stops_counting_at_a_failure():
    # batch-shared steps: the sample that fails at t > 0.5 stops counting, the others keep the batch's
    def f(t, x):
        out = -x
        poison = torch.zeros_like(x)
        poison[1] = float("nan")
        return torch.where(t > 0.5, out + poison, out)

    sol = flowsde.solve(flowsde.ODE(f), torch.ones(3, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                        method=RK45(per_sample=False), throw=False)
    per = sol.stats["nfe_per_sample"].tolist()
    assert per[0] == per[2] == sol.nfe and 2 < per[1] < sol.nfe and (per[1] - 2) % 6 == 0


@pytest.mark.parametrize("per_sample", [True, False])
def test_nan_in_one_sample_is_isolated(per_sample):
    def f(t, x):
        bad = (t > 0.5) if t.dim() == 0 else (t > 0.5).reshape(-1, 1)
        out = -x
        poison = torch.zeros_like(x)
        poison[1] = float("nan")
        return torch.where(bad, out + poison, out)

    ode = flowsde.ODE(f)
    x0 = torch.ones(3, 2, dtype=torch.float64)
    sol = flowsde.solve(ode, x0, torch.tensor([0.0, 1.0]), method=RK45(per_sample=per_sample), throw=False)
    assert sol.status.tolist() == [Status.SUCCESS, Status.NON_FINITE, Status.SUCCESS]
    assert float(sol.t_final[1]) <= 0.5 + 1e-12 and float(sol.t_final[1]) > 0.0
    assert torch.isfinite(sol.x).all()  # frozen at its last finite state
    assert (sol.x[[0, 2]] - math.exp(-1.0)).abs().max() < 1e-3
    with pytest.raises(SolveError, match=r"sample 1 .*NaN/Inf.*step \d+, t = 0\.") as e:
        flowsde.solve(ode, x0, torch.tensor([0.0, 1.0]), method=RK45(per_sample=per_sample))
    assert e.value.t is not None and e.value.step is not None


@pytest.mark.parametrize("per_sample", [True, False])
def test_max_steps_partial_result_and_error(per_sample):
    ode = _linear(A2)
    x0 = torch.randn(2, 2, dtype=torch.float64)
    sol = flowsde.solve(ode, x0, torch.tensor([0.0, 10.0]),
                        method=RK45(1e-9, 1e-9, max_steps=5, per_sample=per_sample), throw=False)
    assert (sol.status == Status.MAX_STEPS).all()
    assert (sol.t_final > 0).all() and (sol.t_final < 10).all()
    with pytest.raises(SolveError, match=r"max_steps = 5 at t = .* with step size"):
        flowsde.solve(ode, x0, torch.tensor([0.0, 10.0]), method=RK45(1e-9, 1e-9, max_steps=5))


@pytest.mark.parametrize("kw", [dict(rtol=0.0), dict(atol=-1e-6), dict(rtol=float("nan")), dict(max_steps=0),
                                dict(mode="fast"), dict(per_sample=True, mode="batch"), dict(first_step=-1.0),
                                dict(safety=1.5), dict(dfactor=1.2), dict(ifactor=0.5), dict(beta=-0.1)])
def test_bad_options(kw):
    with pytest.raises(InputError):
        RK45(**kw)


def test_method_names_and_attributes():
    assert isinstance(flowsde.solvers.get_solver("rk45"), RK45) and isinstance(flowsde.solvers.get_solver("dopri5"), RK45)
    s = RK45()
    assert (s.order, s.adaptive, s.name) == (5, True, "rk45")
    with pytest.raises(InputError):
        flowsde.solve(flowsde.SDE(lambda t, x: x, lambda t, x: torch.ones_like(x)), torch.zeros(1, 1),
                      torch.tensor([0.0, 1.0]), method="rk45")


def test_at_most_one_host_sync_per_step(monkeypatch):
    # Count every tensor -> Python conversion (the host syncs on an accelerator) inside the
    # integrator: 2 at the start (float(grid[0]), float(grid[-1])), then one per step.
    solver = RK45(1e-6, 1e-6, per_sample=True, max_steps=1000)
    count = [0]
    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            count[0] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    out = solver.integrate(lambda t, y: (-y[0],), (torch.ones(3, 2, dtype=torch.float64),),
                           torch.tensor([0.0, 2.0], dtype=torch.float64))
    monkeypatch.undo()
    assert out.steps > 5
    assert count[0] == out.steps + 2, (count[0], out.steps)


def test_progress_bar_runs():
    sol = flowsde.solve(_linear(A2), torch.randn(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                        method="rk45", progress=True)
    assert sol.success


@pytest.mark.parametrize("per_sample", [True, False])
def test_time_passed_to_the_function(per_sample):
    # batch mode: one 0-dim time for the batch (a torchdiffeq f(t, y) works unchanged);
    # per-sample mode: (B,). Either way every time seen lies inside the span.
    seen = []

    def f(t, y):  # written for a scalar t, as torchdiffeq users do
        seen.append(t.detach().clone())
        return -y * float(t) if per_sample is False else -y * t.reshape(-1, 1)

    x0 = torch.randn(3, 2, dtype=torch.float64)
    sol = flowsde.solve(flowsde.ODE(f), x0, torch.tensor([0.0, 1.0]), method=RK45(1e-8, 1e-8, per_sample=per_sample))
    assert sol.success
    assert all(t.shape == ((3,) if per_sample else ()) for t in seen)
    ts = torch.cat([t.reshape(-1) for t in seen])
    assert float(ts.min()) >= 0.0 and float(ts.max()) <= 1.0
    assert (sol.x - x0 * math.exp(-0.5)).abs().max() < 1e-6


def test_float32_state_keeps_float64_time():
    # regression: a float32 state turned an end time of 1/3 into 0.3333333432674408 inside RK45
    seen = []

    def f(t, y):
        seen.append(t)
        return -y

    problem = flowsde.ODE(f, time_dtype=torch.float64)
    sol = flowsde.solve(problem, torch.ones(2, 3), torch.tensor([0.0, 1 / 3], dtype=torch.float64), method="rk45")
    assert sol.t_final.dtype == torch.float64 and float(sol.t_final[0]) == 1 / 3
    assert all(t.dtype == torch.float64 for t in seen)
    assert max(float(t.max()) for t in seen) == 1 / 3  # the last stage at exactly 1/3, never past it


@pytest.mark.parametrize("t0,t1", [(80.0, 0.002), (0.002, 80.0), (1.0, 1e-5)])
def test_initial_step_probe_and_stages_stay_in_span(t0, t1):
    # regression: a drift near zero at the start made Hairer's probe land past the end of the span
    lo, hi = min(t0, t1), max(t0, t1)
    seen = []

    def f(t, y):
        seen.append(t.detach().clone())
        if bool(((t < lo) | (t > hi)).any()):
            raise AssertionError(f"evaluated at t = {t} outside [{lo}, {hi}]")
        return 1e-12 * y  # nearly zero: the initial-step rule proposes the whole span

    sol = flowsde.solve(flowsde.ODE(f), torch.ones(2, 2, dtype=torch.float64),
                        torch.tensor([t0, t1], dtype=torch.float64), method="rk45")
    assert sol.success and len(seen) >= 3


def test_tolerances_below_the_dtype_refused():
    ode = flowsde.ODE(lambda t, y: -y)
    with pytest.raises(InputError, match="below what torch.float64 can meet"):
        flowsde.solve(ode, torch.ones(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                      method=RK45(rtol=1e-300, atol=1e-300))
    with pytest.raises(InputError, match="below what torch.float32 can meet"):
        flowsde.solve(ode, torch.ones(2, 2), torch.tensor([0.0, 1.0]), method="rk45", rtol=1e-9, atol=1e-9)
    # a pure absolute control (rtol negligible, atol meaningful) is meetable
    assert flowsde.solve(ode, torch.ones(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                         method=RK45(rtol=1e-300, atol=1e-8)).success


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_refused_naming_the_precision(dtype):
    with pytest.raises(InputError, match=str(dtype).split(".")[1] + ".*float32 or float64"):
        flowsde.solve(flowsde.ODE(lambda t, y: -y), torch.ones(2, 2, dtype=dtype), torch.tensor([0.0, 1.0]),
                      method="rk45")
