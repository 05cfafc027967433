"""Gradients of the exact log-likelihood by the continuous adjoint, memory flat in the step count.

For ``dx/dt = u_theta(t, x)`` carried from ``t_data`` to ``t_prior`` the instantaneous change of variables
(:func:`flowsde.log_likelihood`) gives

    log p(x_0) = log p_prior(x(T)) + int_{t_data}^{t_prior} div u_theta(t, x(t)) dt.

Its gradient with respect to the data ``x_0`` and the network's parameters ``theta`` is that of the
adjoint method (Pontryagin; Chen et al. 2018, "Neural ODEs", Alg. 1 and App. B; Grathwohl et al. 2019,
FFJORD), the log-density channel ``L`` (``dL/dt = div u``) having the constant adjoint ``w`` (the
weight of the sample's ``logp`` in the loss, 1 for ``logp.sum()``):

    a(T)        = w grad log p_prior(x(T)),                  a_theta(T) = 0,
    da/dt       = -(a^T du/dx + w d(div u)/dx),
    da_theta/dt = -(a^T du/dtheta + w d(div u)/dtheta),       solved backward from T to t_data;
    d logp / dx_0 = a(t_data),    d logp / dtheta = a_theta(t_data).

Both terms are the gradient of one scalar per sample, ``q = a^T u + w div u``, taken by autograd: the
divergence is built with its graph (``create_graph``; the exact trace by its ``D`` batched
vector-Jacobian products, Hutchinson's ``z^T J z`` with the forward's probes held fixed), so
``d(div u)/dx`` is a double backward (the exact trace's costs ``D`` VJPs: meant for small ``D``; use
Hutchinson for images). ``d q / dtheta`` is taken **per sample** (``(B, P)``: one VJP per sample, batched
by vmap, a loop where vmap fails), because with per-sample steps (the likelihood's default) each sample
integrates its own ``a_theta`` at its own times; the batch's gradient is their sum. With steps shared by
the batch (``per_sample=False``, torchdiffeq's mode) one VJP of ``sum_b q_b`` (for ``x`` and ``theta`` at
once) suffices, and ``a_theta`` is the batch's ``P`` numbers: measured 16x cheaper per evaluation than the
per-sample VJPs at ``B = 64`` on ``benchmarks/bench_adjoint.py``'s MLP. Memory of the exact trace's double
backward: the ``(D, B, *event)`` basis and its VJPs with their graph, refused above ``exact_max_bytes``.

Design, and why:

* **Continuous, not discrete, adjoint.** flowsde's engine (:class:`flowsde.solvers.RK45`) takes
  per-sample adaptive steps and exposes no step record, and a discrete adjoint would have to store (or
  recompute) every accepted step's stages; the continuous adjoint reuses ``EmbeddedRK.integrate`` as is,
  its tolerances controlling the gradient's own error, which is measured (below), as the forward's.
* **x from checkpoints, not re-integrated over the whole span.** The forward is solved with
  ``save_all`` at ``checkpoints + 1`` times equally spaced in the engine's (warped) time; the backward
  solve runs segment by segment and restarts ``x`` from the forward's checkpoint at each segment's end,
  so the re-integrated trajectory's drift from the forward one (which torchdiffeq's ``odeint_adjoint``
  lets grow over the whole span, and which is unbounded for dissipative drifts) is reset
  ``checkpoints`` times. Memory: ``(checkpoints + 1) B D`` for the checkpoints, plus the backward
  state ``(x, a, a_theta)``, ``2 B D + B P``: independent of the number of steps.
* **Accuracy controlled and reported** as the forward's global ladder (:mod:`flowsde._error_control`):
  forward and backward are solved at the request's tolerances times ``START``, then 10x tighter, and
  again while the estimate ``SAFETY ||g_k - g_(k+1)|| / ||g_(k+1)||`` (each of ``dx`` and the
  parameters' gradient, relative norms over the batch) exceeds ``grad_tol``; the answer is level ``k``'s,
  with that estimate as ``grad_error_rel``. The forward's ``logp`` gets ``solver_error = SAFETY
  |logp_k - logp_(k+1)|`` alike.
* The same time warp ``t = s^rho`` as the forward (``time_warp``): the adjoint ODE is that of the
  warped system, whose solution map is the same.

Two entry points: :func:`adjoint_log_likelihood` (eager: the log-likelihood and the gradient of
``sum_b w_b logp_b``) and :func:`adjoint_logp` (a ``logp`` with an autograd node, so that
``loss(logp).backward()`` fills ``x.grad`` and the parameters' ``.grad``; the adjoint runs in
``backward`` with the loss's weights ``w``).

Not differentiated: the prior's own parameters (``prior_logp`` is differentiated in its argument only)
and the time span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import torch

from ._divergence import _vjps
from ._error_control import Ladder
from ._errors import InputError
from ._likelihood import (AugmentedODE, DEFAULT_BPD_TOL, LikelihoodResult, TimeWarp, _check_call, _check_tol,
                          _check_warp, _cotangents, _engine, _result, _Run, _Tolerances)
from ._solution import Status
from ._utils import batch_broadcast

F64 = torch.float64
#: default relative accuracy of the gradient (``grad_tol``)
DEFAULT_GRAD_TOL = 1e-4
#: default number of forward checkpoints the backward solve restarts ``x`` from
DEFAULT_CHECKPOINTS = 8


@dataclass
class AdjointResult:
    """What :func:`adjoint_log_likelihood` returns.

    Attributes:
        result: the :class:`flowsde.LikelihoodResult` of the forward (``logp``, ``solver_error`` from the
            ladder's two levels, ...).
        dx: ``(B, *event)`` ``d (sum_b w_b logp_b) / dx``, i.e. row ``b`` is ``w_b d logp_b / dx_b``.
        dparams: one tensor per parameter (its shape, float64): ``d (sum_b w_b logp_b) / dtheta``.
        dparams_per_sample: ``(B, P)`` float64: each sample's contribution (flattened, concatenated in the
            order of ``params``); ``dparams`` is its sum over the batch. ``None`` with steps shared by the batch
            (``per_sample=False``), where the parameters' adjoint is integrated for the batch as a whole.
        grad_error_rel: the estimated relative error of the gradient, ``max`` of ``x_error_rel`` and
            ``params_error_rel``.
        x_error_rel, params_error_rel: ``SAFETY ||g_k - g_(k+1)|| / ||g_(k+1)||`` for ``dx`` and for the
            parameters' gradient (0 where a gradient is 0 at both levels; NaN with no parameters).
        stats: ``level`` (of the answer), ``met`` (``grad_error_rel <= grad_tol``), ``checkpoints``,
            ``nfe_backward`` (the backward solves' evaluations, all levels), ``grad_tol``, ...
    """

    result: LikelihoodResult
    dx: torch.Tensor
    dparams: Tuple[torch.Tensor, ...]
    dparams_per_sample: Optional[torch.Tensor]
    grad_error_rel: float
    x_error_rel: float
    params_error_rel: float
    stats: dict = field(default_factory=dict)


class GraphDivergence:
    """``(u, div u)`` of a drift at ``(t, x)`` with the graph kept (``create_graph``): ``div u`` ``(B,)`` in the
    dtype of ``x``, differentiable with respect to ``x`` and the parameters (the exact trace by ``D`` VJPs, or
    the mean over the ``k`` probes of ``z^T J z``). Batched by vmap (``is_grads_batched``), one VJP at a time
    where vmap fails.

    :class:`flowsde._divergence.Divergence` (the forward's) computes the same numbers without a graph;
    this one keeps it, for the adjoint's ``d(div u)/dx`` and ``d(div u)/dtheta``.
    """

    def __init__(self, cot, exact: bool):
        self.cot, self.exact = cot, exact
        self.vmap = True

    def _basis(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return self.cot.chunk(0, self.cot.D).to(x.dtype)
        return self.cot

    def __call__(self, u: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        B = xg.shape[0]
        cot = self._basis(xg)
        g, failed = _vjps(u, xg, cot, vmap=self.vmap, create_graph=True)  # the forward's VJPs, graph kept
        self.vmap = self.vmap and not failed
        n = cot.shape[0]
        per = (g * cot).reshape(n, B, -1).sum(-1)  # exact: the rows e_i^T J e_i summed over i; probes: z^T J z
        return per.sum(0) if self.exact else per.mean(0)


class AdjointODE:
    """The backward system ``d(x, a, a_theta)/ds`` of the warped augmented ODE (module docstring).

    Called by the engine as ``f(s, (x, a, a_theta))`` with ``s`` float64 ``(B,)`` (per-sample steps) or
    0-dim; ``x``, ``a`` ``(B, *event)`` in the data's dtype, ``a_theta`` float64, ``(B, P)`` per sample or, with
    steps shared by the batch, the batch's ``P``-vector packed in ``B`` rows (:meth:`pack`); ``w`` ``(B,)``
    the constant adjoint of the log-density channel.
    """

    def __init__(self, ode, params: Sequence[torch.Tensor], div: GraphDivergence, warp: TimeWarp, w: torch.Tensor,
                 x: torch.Tensor, shared_steps: bool = False):
        self.ode, self.params, self.div, self.warp, self.w = ode, tuple(params), div, warp, w
        self.shared_steps = shared_steps
        self.B, self.dtype = x.shape[0], x.dtype
        self.time_dtype = getattr(ode, "time_dtype", None) or x.dtype
        self.P = sum(p.numel() for p in self.params)
        #: the columns of a_theta: per sample, P; with shared steps, the one P-vector packed into B rows
        self.width = -(-self.P // self.B) if shared_steps else self.P
        self.per_sample_vmap = True
        self.eye = torch.eye(self.B, dtype=x.dtype, device=x.device)

    def __call__(self, s: torch.Tensor, y):
        x, a = y[0].detach(), y[1].detach()
        t, c = s, None
        if self.warp.rho != 1.0:
            t, c = self.warp.t_of(s), self.warp.dt_ds(s)
        tt = t.to(self.time_dtype)
        with torch.enable_grad():
            xg = x.requires_grad_(True)
            u = self.ode.drift(tt, xg)
            if not isinstance(u, torch.Tensor) or u.shape != x.shape or u.dtype != x.dtype:
                got = f"{tuple(u.shape)} {u.dtype}" if isinstance(u, torch.Tensor) else type(u).__name__
                raise InputError(f"adjoint log-likelihood: the ODE's drift returned {got} for x of shape "
                                 f"{tuple(x.shape)} {x.dtype}; it must return the shape and dtype of x.")
            if not u.requires_grad:  # a drift that depends on neither x nor the parameters
                zx = torch.zeros_like(x)
                return (self._scale(u.detach(), c), zx) + ((torch.zeros(self.B, self.width, dtype=F64,
                                                                         device=x.device),) if self.P else ())
            div = self.div(u, xg)
            q = (a * u).reshape(self.B, -1).sum(1) + self.w.to(u.dtype) * div  # (B,): one scalar per sample
            if self.shared_steps:  # one backward for x and the batch's parameters
                g = torch.autograd.grad(q.sum(), (xg,) + self.params, allow_unused=True)
                gx, gp = g[0], self.pack(g[1:])
            else:
                (gx,) = torch.autograd.grad(q.sum(), xg, retain_graph=bool(self.P), allow_unused=True)
                gp = self._per_sample_params(q)
            gx = torch.zeros_like(x) if gx is None else gx
        # without parameters the state is (x, a): an empty component would give a NaN error norm
        return (self._scale(u.detach(), c), -self._scale(gx.detach(), c)) + ((-self._scale(gp, c),) if self.P else ())

    def _scale(self, v: torch.Tensor, c) -> torch.Tensor:
        """``(dt/ds) v`` (the warp's factor, one per sample or for the batch)."""
        return v if c is None else v * batch_broadcast(c.to(v.dtype), v)

    def pack(self, grads) -> torch.Tensor:
        """With shared steps: the batch's parameter gradient, one ``P``-vector (float64), zero-padded and laid
        out in ``B`` rows of ``width`` (the engine's state is batch-first; the rows share the steps, so the
        layout is only storage: ``P`` numbers, not ``B P``)."""
        dev = self.eye.device
        flat = torch.cat([torch.zeros(p.numel(), dtype=F64, device=dev) if r is None else r.reshape(-1).to(F64)
                          for p, r in zip(self.params, grads)] + [torch.zeros(self.B * self.width - self.P,
                                                                              dtype=F64, device=dev)])
        return flat.reshape(self.B, self.width).detach()

    def unpack(self, ap: torch.Tensor) -> torch.Tensor:
        """The batch's ``(P,)`` parameter gradient from ``a_theta`` (the sum of the rows per sample, else the
        packed vector)."""
        return ap.reshape(-1)[:self.P] if self.shared_steps else ap.sum(0)

    def _per_sample_params(self, q: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` float64: ``d q_b / dtheta`` per sample (one VJP per sample, batched by vmap)."""
        B, dev = self.B, q.device
        if not self.P:
            return torch.zeros(B, 0, dtype=F64, device=dev)
        rows = None
        if self.per_sample_vmap and B > 1:
            try:
                rows = torch.autograd.grad(q, self.params, self.eye.to(q.dtype), is_grads_batched=True,
                                           allow_unused=True)
            except RuntimeError:  # no vmap rule: one sample at a time
                self.per_sample_vmap = False
        if rows is None:
            per = [torch.autograd.grad(q[b], self.params, retain_graph=b < B - 1, allow_unused=True)
                   for b in range(B)]
            rows = [None if per[0][i] is None else torch.stack([r[i] for r in per]) for i in range(len(self.params))]
        flat = [torch.zeros(B, p.numel(), dtype=F64, device=dev) if r is None else r.reshape(B, -1).to(F64)
                for p, r in zip(self.params, rows)]
        return torch.cat(flat, 1).detach()


def _check_params(params) -> Tuple[torch.Tensor, ...]:
    if isinstance(params, torch.Tensor):
        params = (params,)
    try:
        params = tuple(params)
    except TypeError as e:
        raise InputError(f"adjoint log-likelihood: params must be a sequence of tensors (e.g. "
                         f"tuple(net.parameters())), got {type(params).__name__}.") from e
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.is_floating_point() or not p.requires_grad:
            what = (f"{p.dtype} tensor with requires_grad={p.requires_grad}" if isinstance(p, torch.Tensor)
                    else type(p).__name__)
            raise InputError(f"adjoint log-likelihood: params[{i}] is a {what}; pass the floating-point tensors "
                             "the drift uses that require grad (e.g. [p for p in net.parameters() if "
                             "p.requires_grad]).")
    return params


def _check_checkpoints(checkpoints) -> int:
    if not isinstance(checkpoints, int) or isinstance(checkpoints, bool) or checkpoints < 1:
        raise InputError(f"adjoint log-likelihood: checkpoints must be a positive int (the forward states the "
                         f"backward solve restarts x from), got {checkpoints!r}.")
    return checkpoints


class _Adjoint:
    """The checked request: forward solves with checkpoints, backward solves, the ladder."""

    def __init__(self, ode, x, t_span, prior_logp, *, params, trace, probes, probe, generator, bpd_tol, grad_tol,
                 rtol, atol, method, per_sample, max_steps, exact_max_bytes, time_warp, checkpoints, cot=None):
        t_data, t_prior = _check_call(ode, x, t_span, prior_logp, trace=trace, probe=probe, probes=probes,
                                      error_estimate="global")
        self.params = _check_params(params)
        self.grad_tol = _check_tol("grad_tol", grad_tol)
        self.checkpoints = _check_checkpoints(checkpoints)
        self.ode, self.prior_logp = ode, prior_logp
        self.warp = TimeWarp(_check_warp(time_warp, t_data, t_prior), t_data, t_prior)
        self.D = math.prod(x.shape[1:])
        self.tols = _Tolerances.of(bpd_tol, rtol, atol, x.dtype, self.D)
        self.method, self.per_sample, self.max_steps = method, per_sample, max_steps
        self.exact = trace == "exact"
        # the forward's own cotangents where it hands them over (the same probes), else drawn here
        self.cot = _cotangents(x, trace, probes, probe, generator, exact_max_bytes) if cot is None else cot
        if self.exact:
            need = 4 * x.shape[0] * self.D * self.D * x.element_size()  # basis, VJPs and their graph's copies
            if need > exact_max_bytes:
                raise InputError(f"adjoint log-likelihood: trace='exact' differentiates D = {self.D} VJPs with their "
                                 f"graph, ~{need / 2**20:.1f} MiB for B = {x.shape[0]} > exact_max_bytes = "
                                 f"{exact_max_bytes / 2**20:.1f} MiB; use trace='hutchinson', a smaller batch, or "
                                 "raise exact_max_bytes.")
        self.exact_max_bytes = exact_max_bytes
        self.ladder = Ladder()
        self.stats = dict(trace=trace, probes=1 if self.exact else probes, bpd_tol=self.tols.bpd_tol,
                          grad_tol=self.grad_tol, checkpoints=self.checkpoints, time_warp=self.warp.rho,
                          t_span=(t_data, t_prior), adjoint="continuous, x restarted from forward checkpoints")

    def engine(self, tol: _Tolerances):
        eng = _engine(self.method, tol.rtol, tol.atol, self.per_sample, self.max_steps)
        if not hasattr(eng, "tableau"):
            raise InputError(f"adjoint log-likelihood: method={self.method!r} is not one of flowsde's embedded "
                             "Runge-Kutta engines; choose 'rk45', 'tsit5', 'bosh3' or a flowsde.solvers.RK45(...).")
        return eng

    def s_grid(self, x: torch.Tensor) -> torch.Tensor:
        s0, s1 = self.warp.s_span
        g = torch.linspace(s0, s1, self.checkpoints + 1, dtype=F64, device=x.device)
        g[0], g[-1] = s0, s1
        return g

    def forward(self, x: torch.Tensor, tol: _Tolerances, what: str):
        """``(run, checkpoints (n+1, B, *event))``: the augmented forward solve saved at the checkpoints."""
        aug = AugmentedODE(self.ode, x, self.cot, self.exact, self.warp)
        eng = self.engine(tol)
        out = eng.integrate(aug, aug.initial_state(x), self.s_grid(x), norms=("rms", "abs"), tols=tol.pairs,
                            save_all=True, desc=what)
        self.warp.report_in_t(out)
        eng.raise_on_failure(out, what=f"{what} ({eng.name})")
        z, L = out.y
        with torch.no_grad():
            lp = self.prior_logp(z)
        if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (x.shape[0],):
            got = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise InputError(f"prior_logp returned {got}; it must return a (B,) = ({x.shape[0]},) tensor summed "
                             "over the event.")
        return _Run(out, z, L, lp.to(F64)), out.ys[0]

    def prior_grad(self, z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            lp = self.prior_logp(zg)
            (g,) = torch.autograd.grad(lp.sum(), zg, allow_unused=True)
        return torch.zeros_like(z) if g is None else g.detach()

    def backward(self, run: _Run, xs: torch.Tensor, w: torch.Tensor, tol: _Tolerances, what: str):
        """``(dx, (dparams (P,), per sample (B, P) or None), nfe)``: the adjoint solved backward, segment by
        segment."""
        B = xs.shape[1]
        a = self.prior_grad(run.z) * batch_broadcast(w.to(xs.dtype), run.z)
        eng = self.engine(tol)
        fn = AdjointODE(self.ode, self.params, GraphDivergence(self.cot, self.exact), self.warp, w, xs[0],
                        shared_steps=not eng.per_sample)
        ap = torch.zeros(B, fn.width, dtype=F64, device=xs.device)
        # the adjoint's tolerances: relative to its own size, absolute in the units of the terminal adjoint
        scale = max(float(a.abs().amax()), 1.0) if a.numel() else 1.0
        rt = max(tol.rtol, tol.floor)
        tols = ((tol.rtol, tol.atol), (rt, rt * scale), (rt, rt * scale))
        grid, nfe = self.s_grid(xs), 0
        for j in range(self.checkpoints, 0, -1):
            y0 = (xs[j], a, ap) if fn.P else (xs[j], a)
            out = eng.integrate(fn, y0, grid[[j, j - 1]], norms=("rms",) * len(y0), tols=tols[:len(y0)],
                                desc=what)
            nfe += out.calls
            if bool((out.status != int(Status.SUCCESS)).any()):
                self.warp.report_in_t(out)
                eng.raise_on_failure(out, what=f"{what}, backward solve of segment {j} ({eng.name})")
            a, ap = out.y[1], (out.y[2] if fn.P else ap)
        return a.detach(), (fn.unpack(ap), ap if not fn.shared_steps else None), nfe

    def level(self, x: torch.Tensor, w: torch.Tensor, k: int):
        tol = self.tols.divided(self.ladder.divisor(k))
        run, xs = self.forward(x, tol, f"adjoint log-likelihood forward (level {k})")
        dx, dp, nfe = self.backward(run, xs, w, tol, f"adjoint log-likelihood backward (level {k})")
        return tol, run, dx, dp, nfe

    def gradients(self, x: torch.Tensor, w: torch.Tensor) -> AdjointResult:
        """Climb the ladder until the gradient's estimate is within ``grad_tol`` (module docstring)."""
        prev = self.level(x, w, 0)
        nfe_bwd, nfe_fwd, k = prev[4], prev[1].out.calls, 1
        while True:
            cur = self.level(x, w, k)
            nfe_bwd += cur[4]
            nfe_fwd += cur[1].out.calls
            ex = _rel(prev[2], cur[2], self.ladder.safety)
            ep = _rel(prev[3][0], cur[3][0], self.ladder.safety) if self.params else float("nan")
            err = max(ex, ep) if not math.isnan(ep) else ex
            if err <= self.grad_tol or k + 1 >= self.ladder.max_solves or not _above_floor(
                    self.tols.divided(self.ladder.divisor(k + 1))):
                break
            prev, k = cur, k + 1
        _, run, dx, dp, _ = prev
        solver_error = self.ladder.safety * (run.per_probe.mean(1) - cur[1].per_probe.mean(1)).abs()
        res = _result(run, exact=self.exact, dims=self.D, stats=dict(self.stats, level=k - 1),
                      solver_error=solver_error)
        res.nfe = nfe_fwd
        shapes = [p.shape for p in self.params]
        total, per_sample = dp
        dparams, i = [], 0
        for s in shapes:
            n = math.prod(s)
            dparams.append(total[i:i + n].reshape(s))
            i += n
        stats = dict(self.stats, level=k - 1, met=bool(err <= self.grad_tol), nfe_backward=nfe_bwd, nfe_forward=nfe_fwd)
        return AdjointResult(res, dx, tuple(dparams), per_sample, err, ex, ep, stats)


def _above_floor(tol: _Tolerances) -> bool:
    """Whether the state's tolerances are above the dtype's floor (else tightening does not tighten)."""
    return tol.rtol > tol.floor or tol.atol > tol.floor


def _rel(a: torch.Tensor, b: torch.Tensor, safety: float) -> float:
    """``safety ||a - b|| / ||b||`` in float64 (0 when both are 0)."""
    d, n = float((a.to(F64) - b.to(F64)).norm()), float(b.to(F64).norm())
    if n == 0.0:
        return 0.0 if d == 0.0 else float("inf")
    return safety * d / n


def adjoint_log_likelihood(
    ode,
    x: torch.Tensor,
    t_span: Sequence[float],
    prior_logp: Callable[[torch.Tensor], torch.Tensor],
    *,
    params: Sequence[torch.Tensor] = (),
    weights: Optional[torch.Tensor] = None,
    trace: str = "exact",
    probes: int = 1,
    probe: str = "rademacher",
    generator=None,
    bpd_tol: float = DEFAULT_BPD_TOL,
    grad_tol: float = DEFAULT_GRAD_TOL,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    method="rk45",
    per_sample: Optional[bool] = None,
    max_steps: int = 10_000,
    exact_max_bytes: int = 2**30,
    time_warp: Optional[float] = None,
    checkpoints: int = DEFAULT_CHECKPOINTS,
) -> AdjointResult:
    """``log p(x)`` and its gradient with respect to ``x`` and ``params`` by the continuous adjoint.

    The gradient is that of ``sum_b w_b logp_b`` (``weights`` ``w``, default ones), solved backward from
    ``t_prior`` with ``x`` restarted from ``checkpoints`` forward states; memory does not grow with the
    number of steps (module docstring; Chen et al. 2018, "Neural ODEs", Alg. 1).

    Arguments:
        ode, x, t_span, prior_logp, trace, probes, probe, generator, bpd_tol, rtol, atol, method, per_sample,
            max_steps, exact_max_bytes, time_warp: as :func:`flowsde.log_likelihood` (``method``: one of
            flowsde's embedded Runge-Kutta engines).
        params: the tensors (requiring grad) the drift depends on, e.g. ``tuple(diffusion.net.parameters())``.
        weights: ``(B,)`` the weight of each sample's ``logp`` in the differentiated sum (default ones).
        grad_tol: the relative accuracy asked of the gradient: levels 10x tighter are solved while the
            estimate ``grad_error_rel`` exceeds it (up to 5 solves; module docstring).
        checkpoints: forward states (equally spaced in the engine's time) the backward solve restarts ``x`` from.

    Returns:
        :class:`AdjointResult`: the forward's :class:`flowsde.LikelihoodResult`, ``dx`` ``(B, *event)``,
        ``dparams`` (one per parameter), and the estimated relative error ``grad_error_rel``.

    Raises:
        InputError: as :func:`flowsde.log_likelihood`, and a ``params`` entry that is not a tensor requiring
            grad, ``weights`` not ``(B,)``, ``grad_tol`` or ``checkpoints`` not positive.
        SolveError: a forward or backward solve that fails (NaN/Inf, ``max_steps``).
    """
    adj = _Adjoint(ode, x, t_span, prior_logp, params=params, trace=trace, probes=probes, probe=probe,
                   generator=generator, bpd_tol=bpd_tol, grad_tol=grad_tol, rtol=rtol, atol=atol, method=method,
                   per_sample=per_sample, max_steps=max_steps, exact_max_bytes=exact_max_bytes, time_warp=time_warp,
                   checkpoints=checkpoints)
    return adj.gradients(x.detach(), _check_weights(weights, x))


def _check_weights(weights, x: torch.Tensor) -> torch.Tensor:
    B = x.shape[0]
    if weights is None:
        return torch.ones(B, dtype=F64, device=x.device)
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (B,) or not torch.isfinite(weights).all():
        got = f"{tuple(weights.shape)}" if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise InputError(f"adjoint log-likelihood: weights must be a finite (B,) = ({B},) tensor, got {got}.")
    return weights.detach().to(device=x.device, dtype=F64)


class _AdjointLogp(torch.autograd.Function):
    """``logp`` with the continuous adjoint as its backward (:func:`adjoint_logp`)."""

    @staticmethod
    def forward(ctx, adj: _Adjoint, info: dict, value: Optional[torch.Tensor], x: torch.Tensor,
                *params: torch.Tensor):
        ctx.adj, ctx.info = adj, info
        ctx.save_for_backward(x)
        if value is not None:  # the caller's log-density (log_likelihood's, with its own error control)
            return value.detach().clone()
        tol = adj.tols.divided(adj.ladder.divisor(0))
        run, _ = adj.forward(x.detach(), tol, "adjoint log-likelihood forward")
        info["result"] = _result(run, exact=adj.exact, dims=adj.D, stats=dict(adj.stats))
        return run.per_probe.mean(1).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        r = ctx.adj.gradients(x.detach(), g.detach().to(F64))
        ctx.info.update(grad_error_rel=r.grad_error_rel, x_error_rel=r.x_error_rel,
                        params_error_rel=r.params_error_rel, adjoint=r)
        dparams = tuple(d.to(p.dtype) for d, p in zip(r.dparams, ctx.adj.params))
        return (None, None, None, r.dx.to(x.dtype)) + dparams


def adjoint_logp(ode, x: torch.Tensor, t_span: Sequence[float], prior_logp, *, params: Sequence[torch.Tensor] = (),
                 **options) -> Tuple[torch.Tensor, dict]:
    """``(logp, info)``: ``logp`` ``(B,)`` in the dtype of ``x``, differentiable with respect to ``x`` and
    ``params`` by the continuous adjoint (``loss(logp).backward()`` fills ``x.grad`` and the parameters'
    ``.grad``); ``info["result"]`` the forward's :class:`flowsde.LikelihoodResult` (one solve at the ladder's
    first level, its ``solver_error`` the embedded estimate) and, after ``backward``, ``info["grad_error_rel"]``
    and ``info["adjoint"]`` (the :class:`AdjointResult` of the backward's ladder).

    ``options``: those of :func:`adjoint_log_likelihood` but ``weights`` (the loss's gradient gives them).
    """
    if "weights" in options:
        raise InputError("adjoint_logp: weights come from the loss's gradient in backward; do not pass them.")
    adj = _Adjoint(ode, x, t_span, prior_logp, params=params, **_with_defaults(options))
    info: dict = {}
    logp = _AdjointLogp.apply(adj, info, None, x, *adj.params)
    return logp, info


def attach_adjoint(logp: torch.Tensor, ode, x: torch.Tensor, t_span: Sequence[float], prior_logp, *, cot,
                   params: Sequence[torch.Tensor] = (), **options) -> Tuple[torch.Tensor, dict]:
    """``(logp', info)``: the caller's ``logp`` (``(B,)``, computed without a graph, e.g. by
    :func:`flowsde.log_likelihood`'s ladder) given the adjoint as its backward, ``cot`` the cotangents that
    computed it (the exact basis or the Hutchinson probes, so that the gradient is that of the same
    estimator). For ``log_likelihood(..., adjoint=True)``; ``options`` as :func:`adjoint_logp`'s.
    """
    if not isinstance(logp, torch.Tensor) or tuple(logp.shape) != (x.shape[0],):
        raise InputError(f"attach_adjoint: logp must be a ({x.shape[0]},) tensor, got "
                         f"{tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__}.")
    adj = _Adjoint(ode, x, t_span, prior_logp, params=params, cot=cot, **_with_defaults(options))
    info: dict = {}
    return _AdjointLogp.apply(adj, info, logp, x, *adj.params), info


def _with_defaults(options: dict) -> dict:
    defaults = dict(trace="exact", probes=1, probe="rademacher", generator=None, bpd_tol=DEFAULT_BPD_TOL,
                    grad_tol=DEFAULT_GRAD_TOL, rtol=None, atol=None, method="rk45", per_sample=None,
                    max_steps=10_000, exact_max_bytes=2**30, time_warp=None, checkpoints=DEFAULT_CHECKPOINTS)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise InputError(f"adjoint_logp: unknown options {unknown}; choose from {sorted(defaults)}.")
    return dict(defaults, **options)
