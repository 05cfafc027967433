"""One long-lived ``Diffusion`` driven through random call sequences answers like a fresh one (issue 20, item 3).

A user builds one ``Diffusion`` and asks it for several problems (the PF-ODE, the reverse SDE at
several beta, the forward SDE), evaluates them at grid and off-grid times, solves them with several
methods and reused solver instances, and computes likelihoods. Whatever the object keeps between
calls (per-time coefficients, per-grid-time entries, the ``Discrete`` schedule's cache, solver
instances) must never change an answer. The state machine below checks, after every step, that the
long-lived object's answer equals the same call on a *freshly built* ``Diffusion`` (a new schedule
object from the same constructor, a new oracle network, the same prediction) bit for bit
(``torch.equal``, dtype and shape included), and that a call which raises on one raises the same
exception type on the other.

Exceptions to bit-equality: none so far (``REL_FAST_PATH`` lists the documented fast paths that
reorder arithmetic and may be compared to 1e-14 relative in float64; it is empty).

The networks are exact oracles of a Gaussian mixture (``flowsde.validation.GaussianMixture``), so
every answer is deterministic. ``@settings(derandomize=True)``: a red run is reproducible; the
default-suite run covers every schedule, every prediction and both bridges in a few seconds each;
``test_stateful_long`` (``slow``) runs every (schedule, prediction) pair, longer.

The plain regression tests at the end are the instances named in issue 20 (and the immutability of
a ``Diffusion``'s configuration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import flowsde
from flowsde import InputError
from flowsde.adapters import Diffusion, from_denoiser, from_flow_matching
from flowsde.adapters import schedules as S
from flowsde.solvers import DDIM, PC, DPMpp2M, Euler, EulerMaruyama, Heun
from flowsde.validation import GaussianMixture

F64, F32 = torch.float64, torch.float32
DIM = 2

# Documented fast paths whose arithmetic differs from the full path: (what, dtype) -> rel tolerance.
# Empty: every answer is compared bit for bit. Add an entry only with the fast path's docs reference.
REL_FAST_PATH: dict = {}


def _mixture() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=F64),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=F64),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]], dtype=F64),
    )


def _ddpm_discrete() -> S.Discrete:
    """diffusers' DDPM-style ``alphas_cumprod`` of a linear beta schedule, N = 100 (betas 1e-3..0.2)."""
    return S.Discrete.from_betas(torch.linspace(1e-3, 0.2, 100, dtype=F64))


SCHEDULES: dict[str, Callable[[], S.Schedule]] = {
    "VP": S.VP, "SubVP": S.SubVP, "Cosine": S.Cosine, "VE": S.VE, "EDM": S.EDM, "Linear": S.Linear,
    "Discrete": _ddpm_discrete,
}
VARIANCE_PRESERVING = ("VP", "Cosine", "Discrete")
PREDICTIONS = ("eps", "score", "x0", "v", "velocity")


@dataclass(frozen=True)
class Config:
    """How to build the Diffusion under test, fresh (new schedule object, new oracle net)."""

    name: str

    def build(self) -> Diffusion:
        gm = _mixture()
        if self.name == "denoiser":  # k-diffusion convention: model(x, sigma) -> x0
            return from_denoiser(gm.oracle(S.EDM(), "x0"))
        if self.name == "flow_matching":  # flow_matching convention: u(x, s), noise at s = 0
            u = gm.oracle(S.Linear(), "velocity")

            def velocity_net(x, s):
                return -u(x, 1.0 - s)

            return from_flow_matching(velocity_net)
        sched_name, pred = self.name.split("-")
        sched = SCHEDULES[sched_name]()
        return Diffusion(gm.oracle(sched, pred), sched, prediction=pred)


ALL_CONFIGS = [f"{s}-{p}" for s in SCHEDULES for p in PREDICTIONS if p != "v" or s in VARIANCE_PRESERVING] + [
    "denoiser", "flow_matching"]
# default suite: every schedule, every prediction, both bridges
DEFAULT_CONFIGS = ["VP-eps", "SubVP-score", "Cosine-v", "VE-x0", "EDM-score", "Linear-velocity", "Discrete-eps",
                   "Discrete-v", "denoiser", "flow_matching"]


# -- the knobs ----------------------------------------------------------------------------------
def _inv(t):
    return 1.0 / (1.0 + t)


def _sin2(t):
    return torch.sin(3.0 * t) ** 2


def _one(t):
    return 1.0


def _zero(t):
    return torch.zeros_like(t)


BETA_FNS = {"inv": _inv, "sin2": _sin2, "one_fn": _one, "zero_fn": _zero}
CONSTANTS = [0.0, 0, 1.0, 1, 0.5, 0.3, 2.0]
KNOBS = st.sampled_from(CONSTANTS + list(BETA_FNS))


def _knob(k):
    return BETA_FNS[k] if isinstance(k, str) else k


# a problem: ("pf",) | ("rev", beta or None) | ("rev_w", w) | ("fwd", beta or None) | ("fwd_w", w);
# mostly constant knobs (the per-grid-time kept path) on reverse_sde, the common case
PROBLEM_SPECS = st.one_of(
    st.just(("pf", None)),
    st.tuples(st.sampled_from(["rev", "rev", "fwd"]), st.sampled_from(CONSTANTS)),
    st.tuples(st.sampled_from(["rev", "rev", "fwd"]), st.sampled_from(CONSTANTS)),
    st.tuples(st.sampled_from(["rev", "fwd"]), st.one_of(st.none(), KNOBS)),
    st.tuples(st.sampled_from(["rev_w", "rev_w", "fwd_w"]), KNOBS),
)


def _problem(D: Diffusion, spec):
    kind, k = spec
    if kind == "pf":
        return D.pf_ode()
    if kind == "rev":
        return D.reverse_sde() if k is None else D.reverse_sde(_knob(k))
    if kind == "fwd":
        return D.forward_sde() if k is None else D.forward_sde(_knob(k))
    if kind == "rev_w":
        return D.reverse_sde(diffusion=_knob(k))
    return D.forward_sde(diffusion=_knob(k))


# -- times and states ---------------------------------------------------------------------------
FRACS = (0.98, 0.8, 0.55, 0.3, 0.12, 0.02)  # the fixed grid, as fractions of [t_min, t_max]


def _grid(D: Diffusion) -> list[float]:
    lo, hi = float(D.schedule.t_min), float(D.schedule.t_max)
    return [lo + (hi - lo) * f for f in FRACS]


# Weighted towards the kept path (a few 0-dim float64 grid times, a few batch sizes and dtypes), where one
# call's state can meet another's: uniform draws over many distinct keys would rarely repeat one.
_GRID_IDX = st.sampled_from([0, 1, 2, 2, 3, 5])
TIME_SPECS = st.one_of(
    st.tuples(st.just("grid"), _GRID_IDX),                            # 0-dim float64 grid tensor: the kept path
    st.tuples(st.just("grid"), _GRID_IDX),
    st.tuples(st.just("grid"), _GRID_IDX),
    st.tuples(st.just("grid32"), _GRID_IDX),                          # the same grid time as a float32 0-dim tensor
    st.tuples(st.just("float"), _GRID_IDX),                           # a Python float
    st.tuples(st.just("off"), st.floats(0.01, 0.99)),                 # off-grid 0-dim tensor
    st.tuples(st.just("edge"), st.sampled_from(["lo", "hi"])),        # t_min, t_max exactly
    st.tuples(st.just("batch"), st.integers(0, 1)),                   # (B,) per-sample times
)
STATE_SPECS = st.tuples(st.sampled_from([3, 3, 3, 1, 5]), st.sampled_from([F64, F64, F32]), st.integers(0, 1))


def _time(D: Diffusion, spec, B: int):
    kind, v = spec
    lo, hi = float(D.schedule.t_min), float(D.schedule.t_max)
    if kind == "grid":
        return torch.tensor(_grid(D)[v], dtype=F64)
    if kind == "grid32":
        return torch.tensor(_grid(D)[v], dtype=F32)
    if kind == "float":
        return _grid(D)[v]
    if kind == "off":
        return torch.tensor(lo + (hi - lo) * v, dtype=F64)
    if kind == "edge":
        return torch.tensor(lo if v == "lo" else hi, dtype=F64)
    g = torch.Generator().manual_seed(100 + v)
    return lo + (hi - lo) * (0.02 + 0.96 * torch.rand(B, generator=g, dtype=F64))


def _state(spec, event=(DIM,)):
    B, dtype, seed = spec
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(B, *event, generator=g, dtype=F64)).to(dtype)


# -- comparison ---------------------------------------------------------------------------------
def _outcome(fn):
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001  the exception type is the answer to compare
        return False, e


def _same(what: str, a, b) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{what}: {a!r} vs {b!r}"
        assert a.dtype == b.dtype and a.shape == b.shape, \
            f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        rel = REL_FAST_PATH.get((what, a.dtype))
        if rel is None:
            # bit for bit; a NaN equals a NaN at the same place (an answer, not a difference)
            if not (torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                           and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))):
                d = (a.double() - b.double()).abs()
                d = d[~d.isnan()] if d.numel() else d
                raise AssertionError(f"{what}: long-lived != fresh (max |diff| {float(d.max()) if d.numel() else 'nan'}"
                                     f"; long-lived {a.flatten()[:4].tolist()}, fresh {b.flatten()[:4].tolist()})")
        else:
            torch.testing.assert_close(a, b, rtol=rel, atol=0.0)
    else:
        assert a == b, f"{what}: {a!r} vs {b!r}"


def _compare(what: str, long_fn, fresh_fn):
    """Run both; both must raise the same exception type or return equal answers. Returns the
    long-lived object's outcome."""
    ok_a, a = _outcome(long_fn)
    ok_b, b = _outcome(fresh_fn)
    if ok_a != ok_b:
        raise AssertionError(f"{what}: long-lived {'returned' if ok_a else 'raised ' + repr(a)}, "
                             f"fresh {'returned' if ok_b else 'raised ' + repr(b)}")
    if not ok_a:
        assert type(a) is type(b), f"{what}: long-lived raised {a!r}, fresh raised {b!r}"
        return ok_a, a
    if hasattr(a, "x") and hasattr(a, "nfe"):  # a Solution
        _same(f"{what}.x", a.x, b.x)
        _same(f"{what}.nfe", a.nfe, b.nfe)
    elif hasattr(a, "logp"):  # a LikelihoodResult
        _same(f"{what}.logp", a.logp, b.logp)
        _same(f"{what}.nfe", a.nfe, b.nfe)
    else:
        _same(what, a, b)
    return ok_a, a


# -- the machine ----------------------------------------------------------------------------------
PF_METHODS = ["euler", "heun", "dpmpp_2m", "ddim"]
REV_METHODS = ["euler_maruyama", "pc", "ddim"]
FWD_METHODS = ["euler_maruyama"]


class DiffusionMachine(RuleBasedStateMachine):
    """One long-lived Diffusion (``self.D``) and its problems against fresh objects, call by call."""

    CONFIG: Config = Config("VP-eps")

    problems = Bundle("problems")

    def __init__(self):
        super().__init__()
        self.D = self.CONFIG.build()
        # solver instances built once and reused by the long-lived side; the fresh side names the method
        self.solvers = {"euler": Euler(), "heun": Heun(), "dpmpp_2m": DPMpp2M(), "ddim": DDIM(),
                        "euler_maruyama": EulerMaruyama(), "pc": PC()}
        self.likelihoods = 0
        self.made: list = [(("pf", None), self.D.pf_ode())]

    def fresh(self) -> Diffusion:
        return self.CONFIG.build()

    @initialize(target=problems, specs=st.lists(PROBLEM_SPECS, min_size=2, max_size=4))
    def start_with_several_problems(self, specs):
        """The PF-ODE and a few problems made up front (a user's comparison of family members)."""
        self.made += [(spec, _problem(self.D, spec)) for spec in specs]
        return multiple(*self.made)

    @rule(target=problems, spec=PROBLEM_SPECS)
    def make_problem(self, spec):
        p = _problem(self.D, spec)
        self.made.append((spec, p))
        return spec, p

    @rule(t=TIME_SPECS, xs=STATE_SPECS)
    def evaluate_every_problem(self, t, xs):
        """Every problem made so far (in the order made), drift and diffusion at one time: where one
        problem's kept state could answer for another's."""
        x = _state(xs)
        for spec, p in self.made:
            fresh_p = _problem(self.fresh(), spec)
            for what in ("drift", "diffusion"):
                if callable(getattr(p, what, None)):
                    _compare(f"{spec}.{what}(t={t}, x={xs}) [every problem]",
                             lambda: getattr(p, what)(_time(self.D, t, xs[0]), x),
                             lambda: getattr(fresh_p, what)(_time(self.D, t, xs[0]), x))

    @rule(pp=problems, what=st.sampled_from(["drift", "drift", "diffusion", "diffusion", "score", "denoise", "eps"]),
          t=TIME_SPECS, xs=STATE_SPECS)
    def evaluate_problem(self, pp, what, t, xs):
        """A problem's drift / diffusion / score (and a semi-linear problem's denoise / eps) at a time."""
        spec, p = pp
        if not callable(getattr(p, what, None)):
            return
        x = _state(xs)
        tt = _time(self.D, t, xs[0])
        fresh_p = _problem(self.fresh(), spec)
        _compare(f"{spec}.{what}(t={t}, x={xs})", lambda: getattr(p, what)(tt, x),
                 lambda: getattr(fresh_p, what)(_time(self.D, t, xs[0]), x))

    @rule(what=st.sampled_from(["score", "eps", "x0", "v", "velocity"]), t=TIME_SPECS, xs=STATE_SPECS)
    def convert(self, what, t, xs):
        """The Diffusion's own conversions."""
        x = _state(xs)
        fresh = self.fresh()
        _compare(f"D.{what}(t={t}, x={xs})", lambda: getattr(self.D, what)(_time(self.D, t, xs[0]), x),
                 lambda: getattr(fresh, what)(_time(self.D, t, xs[0]), x))

    @rule(pp=problems, m=st.integers(0, 3), seed=st.integers(0, 2), xs=STATE_SPECS, reuse=st.booleans(),
          steps=st.sampled_from([3, 5]))
    def solve(self, pp, m, seed, xs, reuse, steps):
        """``flowsde.solve`` on the fixed grid (its first ``steps + 1`` points; increasing for a
        forward SDE), EM/PC with a fixed seed, the long-lived side with reused solver instances."""
        spec, p = pp
        kind = spec[0]
        methods = PF_METHODS if kind == "pf" else REV_METHODS if kind.startswith("rev") else FWD_METHODS
        method = methods[m % len(methods)]
        grid = torch.tensor(_grid(self.D)[: steps + 1], dtype=F64)
        if kind.startswith("fwd"):
            grid = grid.flip(0)
        x = _state(xs)
        fresh_p = _problem(self.fresh(), spec)
        solver = self.solvers[method] if reuse else method
        _compare(f"solve({spec}, {method}, seed={seed}, x={xs}, steps={steps})",
                 lambda: flowsde.solve(p, x, grid, method=solver, generator=seed),
                 lambda: flowsde.solve(fresh_p, x, grid.clone(), method=method, generator=seed))

    @precondition(lambda self: self.likelihoods < 1)
    @rule(seed=st.integers(0, 1), now=st.sampled_from([True, False, False]))
    def log_likelihood(self, seed, now):
        """Exact-trace likelihood of 2 points (rtol 1e-3): occasionally, at most once per sequence (the
        costly rule: ~0.1 s a solve, ~0.5 s on Discrete, whose piecewise schedule takes 250+ RK45 steps)."""
        if not now:
            return
        self.likelihoods += 1
        x = _state((2, F64, seed)) / 1.5
        fresh = self.fresh()
        kw = dict(trace="exact", rtol=1e-3, atol=1e-3, bpd_tol=1e-3)  # the ladder's solves, at a quick tolerance
        _compare(f"log_likelihood(seed={seed})", lambda: self.D.log_likelihood(x, **kw),
                 lambda: fresh.log_likelihood(x, **kw))

    @rule(pp=problems, bad=st.sampled_from(["above", "below", "nan", "x_shape", "t_shape", "x_0dim"]),
          what=st.sampled_from(["drift", "diffusion", "score"]), xs=STATE_SPECS)
    def raise_in_the_middle(self, pp, bad, what, xs):
        """A call that raises (a time outside the range, a wrong-shaped x or t): it must raise on both
        objects alike, and later steps check that the long-lived object still answers like a fresh one."""
        spec, p = pp
        if not callable(getattr(p, what, None)):
            return
        lo, hi = float(self.D.schedule.t_min), float(self.D.schedule.t_max)
        B = xs[0]
        x = _state(xs)
        t = torch.tensor(_grid(self.D)[2], dtype=F64)
        if bad == "above":
            t = torch.tensor(hi + 0.5 * (hi - lo) + 1.0, dtype=F64)
        elif bad == "below":
            t = torch.tensor(lo - 0.5 * (hi - lo) - 1.0, dtype=F64)
        elif bad == "nan":
            t = torch.tensor(math.nan, dtype=F64)
        elif bad == "x_shape":
            x = _state(xs, event=(DIM + 1,))
        elif bad == "t_shape":
            t = torch.full((B + 1,), _grid(self.D)[2], dtype=F64)
        else:
            x = x[0, 0]
        fresh_p = _problem(self.fresh(), spec)
        ok, _ = _compare(f"{spec}.{what} with bad {bad}", lambda: getattr(p, what)(t, x),
                         lambda: getattr(fresh_p, what)(t, x))
        if bad == "t_shape" and what != "diffusion":  # the others may be legal (a net's own output at any t; a
            assert not ok, f"{spec}.{what} with bad {bad} did not raise"  # beta = 1 forward drift calls no net)

    @invariant()
    def configuration_unchanged(self):
        ref = self.fresh()
        assert self.D.prediction == ref.prediction
        assert repr(self.D.schedule) == repr(ref.schedule)


# No shrinking: a failing sequence is at most stateful_step_count steps and printed as run (derandomized,
# so it reproduces); shrinking a red machine replays it hundreds of times (minutes on 2 shared cores).
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)


def _machine(config: str):
    return type(f"Machine_{config.replace('-', '_')}", (DiffusionMachine,), {"CONFIG": Config(config)})


@pytest.mark.parametrize("config", DEFAULT_CONFIGS)
def test_stateful_long_lived_equals_fresh(config):
    run_state_machine_as_test(_machine(config), settings=settings(
        max_examples=12, stateful_step_count=14, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), phases=PHASES))


@pytest.mark.slow
@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_stateful_long(config):
    run_state_machine_as_test(_machine(config), settings=settings(
        max_examples=8, stateful_step_count=40, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), phases=PHASES))


# == plain regressions: the instances of issue 20 ================================================
def _vp_eps() -> Diffusion:
    return Config("VP-eps").build()


T03 = torch.tensor(0.3, dtype=F64)


def _x(B=4):
    return torch.randn(B, DIM, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_diffusion_of_beta_half_after_beta_zero():
    D = _vp_eps()
    x = _x()
    assert float(D.reverse_sde(beta=0.0).diffusion(T03, x).abs().max()) == 0.0
    got = D.reverse_sde(beta=0.5).diffusion(T03, x)
    ref = _vp_eps().reverse_sde(beta=0.5).diffusion(T03, x)
    assert float(ref.abs().max()) > 1.0
    _same("reverse_sde(0.5).diffusion after reverse_sde(0.0)", got, ref)


def _em(D, problem_of, x, grid, seed=7):
    return flowsde.solve(problem_of(D), x, grid, method="euler_maruyama", generator=seed).x


GRID = flowsde.grids.uniform(1.0, 1e-3, 50)


def test_euler_maruyama_beta_one_after_beta_zero_on_the_same_grid():
    D = _vp_eps()
    x = _x(64)
    _em(D, lambda d: d.reverse_sde(beta=0.0), x, GRID)
    got = _em(D, lambda d: d.reverse_sde(beta=1.0), x, GRID)
    ref = _em(_vp_eps(), lambda d: d.reverse_sde(beta=1.0), x, GRID)
    _same("EM beta=1 after beta=0", got, ref)


def test_beta_w_after_diffusion_w_drift_and_solve():
    D = _vp_eps()
    x = _x(64)
    _em(D, lambda d: d.reverse_sde(diffusion=0.5), x, GRID)
    fresh = _vp_eps()
    t = torch.tensor(float(GRID[5]), dtype=F64)
    _same("drift of beta=0.5 after diffusion=0.5", D.reverse_sde(beta=0.5).drift(t, x),
          fresh.reverse_sde(beta=0.5).drift(t, x))
    _same("diffusion of beta=0.5 after diffusion=0.5", D.reverse_sde(beta=0.5).diffusion(t, x),
          _vp_eps().reverse_sde(beta=0.5).diffusion(t, x))
    got = _em(D, lambda d: d.reverse_sde(beta=0.5), x, GRID)
    ref = _em(_vp_eps(), lambda d: d.reverse_sde(beta=0.5), x, GRID)
    _same("EM beta=0.5 after diffusion=0.5", got, ref)


def test_diffusion_w_after_beta_w():
    """The same key clash the other way round: diffusion=0.5 (g = 0.5) after beta=0.5."""
    D = _vp_eps()
    x = _x()
    D.reverse_sde(beta=0.5).diffusion(T03, x)
    D.reverse_sde(beta=0.5).drift(T03, x)
    _same("diffusion=0.5 .diffusion after beta=0.5", D.reverse_sde(diffusion=0.5).diffusion(T03, x),
          _vp_eps().reverse_sde(diffusion=0.5).diffusion(T03, x))
    _same("diffusion=0.5 .drift after beta=0.5", D.reverse_sde(diffusion=0.5).drift(T03, x),
          _vp_eps().reverse_sde(diffusion=0.5).drift(T03, x))


def test_forward_sde_beta_03_after_beta_one():
    D = _vp_eps()
    x = _x()
    D.forward_sde(1.0).diffusion(T03, x)
    got = D.forward_sde(0.3).diffusion(T03, x)
    ref = _vp_eps().forward_sde(0.3).diffusion(T03, x)
    _same("forward_sde(0.3).diffusion after forward_sde(1.0)", got, ref)


@pytest.mark.parametrize("attr", ["prediction", "schedule"])
def test_configuration_is_immutable_after_use(attr):
    """A changed schedule or prediction is a new object: setting either after use raises
    (a stale cache would otherwise answer for the old one)."""
    D = _vp_eps()
    x = _x()
    D.score(T03, x)
    D.reverse_sde(0.5).drift(T03, x)
    new = "score" if attr == "prediction" else S.SubVP()
    with pytest.raises((AttributeError, TypeError, InputError)):
        setattr(D, attr, new)
    assert D.prediction == "eps" and isinstance(D.schedule, S.VP)
    _same("score after a refused setattr", D.score(T03, x), _vp_eps().score(T03, x))


class _ScaledNet(torch.nn.Module):
    """An oracle times a trainable scale: a network whose weights change between calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.scale = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, x, t):
        return self.scale * self.inner(x, t)


@torch.no_grad()
def test_network_weights_changed_in_place_are_seen():
    """The network is held by reference: nothing is kept on its weights (training changes them)."""
    sched = S.VP()
    net = _ScaledNet(_mixture().oracle(sched, "eps"))
    D = Diffusion(net, sched, prediction="eps")
    x = _x()
    prob = D.reverse_sde(0.5)
    before = prob.drift(T03, x), D.score(T03, x)
    net.scale.fill_(2.0)
    after = prob.drift(T03, x), D.score(T03, x)
    fresh = Diffusion(net, S.VP(), prediction="eps")
    _same("drift after a weight change", after[0], fresh.reverse_sde(0.5).drift(T03, x))
    _same("score after a weight change", after[1], fresh.score(T03, x))
    assert not torch.equal(before[1], after[1])
