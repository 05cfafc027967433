"""Adaptive-step SDE sampler with per-sample steps: Jolicoeur-Martineau et al. (2021), "Gotta Go Fast When
Generating Data with Score-Based Models", Algorithm 1 (``method="adaptive_sde"``). 2 NFE per try.

For ``dx = f(t, x) dt + g(t, x) dW`` from ``grid[0]`` to ``grid[-1]`` (either direction; a backward step uses
``|dt|`` for the Brownian increment), each sample ``i`` has its own time ``t_i`` and step ``h_i``. A try from
``t`` to ``t' = t + dt`` (``|dt| = h``) draws one Brownian increment ``dW ~ N(0, h)`` and takes an
Euler-Maruyama step and an improved-Euler (stochastic Heun) step that share it:

    K1 = f(t, x) dt + g(t, x) dW,            x' = x + K1                       (Euler-Maruyama)
    K2 = f(t', x') dt + g(t', x') dW,        x'' = x + (K1 + K2)/2             (improved Euler)

and measures, per sample, over its ``d`` coordinates,

    delta = max(atol, rtol max(|x'|, |x'_prev|)),    E = || (x'' - x') / delta ||_2 / sqrt(d),

``x'_prev`` the Euler-Maruyama proposal of the sample's last accepted try (the paper's mixed tolerance
with the previous value; ``x'_prev = x`` at the start). The try is accepted when ``E <= 1``: the sample
moves to ``x''`` (``extrapolate=True``, the paper's default) or ``x'``, and ``t`` to ``t'``. Accepted or
not, the next step is

    h <- min(h_max, safety h E^(-r)),        h_max = |grid[-1] - t|

(no growth limit, as the paper's; ``E = 0`` gives ``h_max``). Defaults are the paper's (its
Algorithm 1 and released code, ``AlexiaJM/score_sde_fast_sampling``): ``rtol = 0.01`` (``eps_rel``),
``atol = 0.0078`` (``eps_abs``, one 8-bit level of data in ``[-1, 1]``), ``safety = 0.9`` (``theta``),
``r = 0.9``, ``first_step = 0.01`` (``h_init``), ``extrapolate = True``. The paper's final denoising
step (one Tweedie step at ``t = eps``) is not part of this solver: the grid's end is where it stops,
and the improved-Euler stage evaluates the drift there, so it must be a time where the drift is finite
(``t_min > 0`` for a reverse SDE of a diffusion, not zero noise).

**Per-sample steps, batch independence.** The error norm, the acceptance and the step size are each
sample's own (the paper's "adaptive step-sizes for each sample separately"); the network sees the batch
at per-sample times ``t`` of shape ``(B,)``; a finished sample stays where it is (its evaluations are
discarded). With ``generator=`` a list of per-sample generators (:func:`flowsde.per_sample_generators`)
a sample's result does not depend on the batch it is in: every loop iteration draws one normal per
coordinate from each sample's stream, so a sample's ``k``-th try uses the ``k``-th draw of its own
stream whatever the others do.

**Noise on a rejected try.** The paper's Algorithm 1 (and its code) draws a fresh increment for every
try. That biases the samples: a try is rejected more often when its draw is large (the drift at ``x'``
moves with the noise), so the accepted increments are too small and the samples too narrow (on the
2-D mixture oracle at ``rtol = 0.01`` the projected KS test rejects them; tests/samplers/
test_adaptive_sde.py). Here a rejected try is retried on the *same* Brownian path: with a generator
(``None``, an int, one ``torch.Generator`` or per-sample generators) through :class:`BrownianMemory`
(the Brownian bridge between the points earlier tries revealed: Rackauckas & Nie 2017's rejection
sampling with memory, exact); with a :class:`flowsde.BrownianPath` by reading the try's increment off
the path (one path query per distinct interval per try: slow for large batches). ``fresh_noise=True``
gives the paper's rule, to reproduce it.

**Noise types and orders.** The improved-Euler step with a shared increment converges to the
Stratonovich solution; it equals the Itô one for additive noise (``g`` independent of ``x``), which is
the case of every diffusion model's reverse SDE (``Diffusion.reverse_sde(beta)``): use it there (or on an
ODE, where it is an adaptive Heun-Euler 2(1) pair, ``order = 2`` with extrapolation). On additive noise
the pair has strong order 1 (``strong_orders["additive"]``); its steps follow ``rtol``/``atol``, so no
order is fitted on it (tests/samplers/test_adaptive_sde.py tests its marginals and its error against the
tolerance instead).

Counts: ``Solution.nfe`` is the batch's network evaluations (2 per loop iteration); ``stats`` has each
sample's ``nfe_per_sample`` (2 per try while it ran), ``accepted_per_sample`` and ``rejected_per_sample``.
``max_steps`` is the budget of tries per sample: a sample that exhausts it stops with
:attr:`flowsde.Status.MAX_STEPS` (a step below the float64 resolution of ``t``: ``DT_MIN``; a non-finite
error: ``NON_FINITE``), and ``throw=True`` raises :class:`flowsde.SolveError` naming it.

References: Jolicoeur-Martineau, Li, Piché-Taillefer, Kachman, Mitliagkas (2021), "Gotta Go Fast When
Generating Data with Score-Based Models", arXiv:2105.14080, Section 3 and Algorithm 1 (code:
github.com/AlexiaJM/score_sde_fast_sampling, ``sampling.py``, ``AdaptivePredictor``); Rackauckas & Nie
(2017), "Adaptive methods for stochastic differential equations via natural embeddings and rejection
sampling with memory", Discrete Contin. Dyn. Syst. Ser. B 22(7).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .._errors import InputError, SolveError
from .._noise import BrownianPath
from .._problem import broadcast_diffusion
from .._solution import Solution, Status
from .._utils import check_positive
from .base import Solver
from .rk45 import check_tolerances, failure_message

F64 = torch.float64


def _nonneg(name: str, v, where: str) -> float:
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
        raise InputError(f"{where}({name}={v!r}): {name} must be a finite number >= 0.")
    return float(v)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` value shaped to broadcast against ``x``."""
    return v.reshape((-1,) + (1,) * (x.dim() - 1))


class BrownianMemory:
    """Each sample's Brownian path ahead of its current time, as far as tries have revealed it
    (Rackauckas & Nie 2017, "rejection sampling with memory", in its exact form): the points
    ``W(t + s_k) - W(t)``, ``0 < s_1 < s_2 < ...``, of tries that were rejected. A try of length ``h``
    reads ``W(t + h) - W(t)`` given them: the Brownian bridge between its two neighbours
    ``(s_l, W_l) < h <= (s_r, W_r)`` (``(0, 0)`` on the left where none),

        W(h) = W_l + (h - s_l)/(s_r - s_l) (W_r - W_l) + sqrt((h - s_l)(s_r - h)/(s_r - s_l)) z,

    or ``W_l + sqrt(h - s_l) z`` beyond the last point, ``z`` one standard normal per coordinate drawn
    from the solve's generator. A rejected try adds its point; an accepted one moves the origin to
    ``t + h`` (the points up to ``h`` are the past). The path is then one Brownian path whatever the
    order of the queries (a rejected try is retried on the same path), and a sample's path depends on
    its own draws only.

    State: ``s`` ``(B, K)`` float64 offsets (``inf``: no point), ``w`` ``(B, K, *event)``; ``K`` grows
    with the longest run of rejections and shrinks when accepted steps pass the points.
    """

    def __init__(self, x: torch.Tensor):
        B = x.shape[0]
        self.s = torch.full((B, 0), math.inf, dtype=F64, device=x.device)
        self.w = x.new_zeros((B, 0) + tuple(x.shape[1:]))

    def _rows(self, v: torch.Tensor, dim: int) -> torch.Tensor:
        return v.reshape(v.shape + (1,) * (dim - v.dim()))

    def increment(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``W(t + h) - W(t)`` per sample (``h``: ``(B,)`` float64 ``>= 0``; ``z`` shaped like ``x``)."""
        K = self.s.shape[1]
        if K == 0:
            return z * self._rows(h.sqrt().to(z.dtype), z.dim())
        B = h.shape[0]
        j = (self.s < h[:, None]).sum(1)  # points strictly before h (the offsets are sorted)
        ar = torch.arange(B, device=h.device)
        jl = (j - 1).clamp_min(0)
        has_l = j > 0
        s_l = torch.where(has_l, self.s[ar, jl], torch.zeros_like(h))
        w_l = torch.where(self._rows(has_l, z.dim()), self.w[ar, jl], torch.zeros_like(z))
        jr = j.clamp_max(K - 1)
        s_r = self.s[ar, jr]
        has_r = (j < K) & torch.isfinite(s_r)
        s_r = torch.where(has_r, s_r, h + 1)  # (any value > h where there is no right point)
        w_r = self.w[ar, jr]
        span = s_r - s_l
        frac = torch.where(has_r, (h - s_l) / span, torch.zeros_like(h))
        var = torch.where(has_r, (h - s_l) * (s_r - h) / span, h - s_l).clamp_min(0)
        w_r = torch.where(self._rows(has_r, z.dim()), w_r, w_l)
        mean = w_l + self._rows(frac.to(z.dtype), z.dim()) * (w_r - w_l)
        return mean + z * self._rows(var.sqrt().to(z.dtype), z.dim())

    def update(self, h: torch.Tensor, dW: torch.Tensor, accept: torch.Tensor, reject: torch.Tensor) -> None:
        """After a try of length ``h`` with increment ``dW``: a rejected sample keeps its point, an
        accepted one moves its origin to ``h``; the others (finished, or not tried) are left alone."""
        s = torch.cat([self.s, torch.where(reject, h, torch.full_like(h, math.inf))[:, None]], 1)
        w = torch.cat([self.w, dW[:, None]], 1)
        acc = accept[:, None]
        s = torch.where(acc, torch.where(s > h[:, None], s - h[:, None], torch.full_like(s, math.inf)), s)
        w = torch.where(self._rows(acc, w.dim()), w - dW[:, None], w)
        order = s.argsort(1)
        s = s.gather(1, order)
        w = w[torch.arange(s.shape[0], device=s.device)[:, None], order]
        keep = int(torch.isfinite(s).sum(1).max()) if s.numel() else 0
        self.s, self.w = s[:, :keep], w[:, :keep]


class AdaptiveSDE(Solver):
    """Arguments (the paper's name in brackets):
        rtol: relative tolerance [``eps_rel``], ``>= 0``.
        atol: absolute tolerance [``eps_abs``], in the units of ``x``, ``>= 0``; not both 0.
        safety: the step's safety factor [``theta``], in ``(0, 1]``.
        r: the exponent of the step update [``r``], ``> 0``.
        extrapolate: move to the improved-Euler solution (``True``) or to the Euler-Maruyama one.
        max_steps: the budget of tries per sample (an int ``>= 1``).
        first_step: the first step size in ``t`` [``h_init``] (``> 0``; clipped to the span).
        fresh_noise: ``True``: every try draws a new increment, as the paper's Algorithm 1 and code do
            (biased: a try is rejected more often when its draw is large, so the accepted increments are
            too small; kept to reproduce the paper); ``False`` (default): a rejected try is retried on
            the same Brownian path (:class:`BrownianMemory`). Ignored with a ``BrownianPath``.
    """

    name = "adaptive_sde"
    order = 2
    strong_order = None
    strong_orders = {"additive": 1.0}
    weak_order = None
    adaptive = True
    noise_types = ("scalar", "diagonal")
    evals_per_step = 2  # per try

    def __init__(self, rtol: float = 0.01, atol: float = 0.0078, safety: float = 0.9, r: float = 0.9,
                 extrapolate: bool = True, max_steps: int = 10000, first_step: float = 0.01,
                 fresh_noise: bool = False):
        own = "AdaptiveSDE"
        self.rtol = _nonneg("rtol", rtol, own)
        self.atol = _nonneg("atol", atol, own)
        if self.rtol == 0 and self.atol == 0:
            raise InputError(f"{own}(rtol=0, atol=0): at least one tolerance must be > 0.")
        self.safety = check_positive("safety", safety, where=own)
        if self.safety > 1:
            raise InputError(f"{own}(safety={safety!r}): safety must be in (0, 1] (the paper's theta = 0.9).")
        self.r = check_positive("r", r, where=own)
        if not isinstance(extrapolate, bool):
            raise InputError(f"{own}(extrapolate={extrapolate!r}): extrapolate must be True or False.")
        self.extrapolate = extrapolate
        if not isinstance(fresh_noise, bool):
            raise InputError(f"{own}(fresh_noise={fresh_noise!r}): fresh_noise must be True or False.")
        self.fresh_noise = fresh_noise
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
            raise InputError(f"{own}(max_steps={max_steps!r}): max_steps must be an int >= 1.")
        self.max_steps = int(max_steps)
        self.first_step = check_positive("first_step", first_step, where=own)

    # -- the noise of a try
    @staticmethod
    def _path_increment(path: BrownianPath, t0: torch.Tensor, t1: torch.Tensor, running: torch.Tensor,
                        x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` increments of a :class:`flowsde.BrownianPath` over ``[t0_i, t1_i]`` (one query per
        distinct interval; zero for the samples not running)."""
        dW = torch.zeros_like(x)
        idx = running.nonzero().flatten().tolist()
        groups: dict = {}
        for i, ab in zip(idx, zip(t0[idx].tolist(), t1[idx].tolist())):
            groups.setdefault(ab, []).append(i)
        for (ta, tb), rows in groups.items():
            dW[rows] = path.increment(ta, tb).to(dtype=x.dtype, device=x.device)[rows]
        return dW

    def solve(self, checked, x, grid, *, noise=None, save_all=False, progress=False) -> Solution:
        check_tolerances(self.rtol, self.atol, x.dtype, where="AdaptiveSDE")
        problem = checked.problem
        is_sde = checked.is_sde
        B, dev = x.shape[0], x.device
        t_start, t_end = float(grid[0]), float(grid[-1])
        direction = 1.0 if t_end > t_start else -1.0
        tiny = 8 * torch.finfo(F64).eps * max(abs(t_start), abs(t_end), abs(t_end - t_start))
        first = [True]

        def evaluate(t, y):
            """``(f, g)`` at per-sample times ``t`` (float64 ``(B,)``); the first call through the checks."""
            if first[0]:
                first[0] = False
                f = checked.drift(t, y)
                g = checked.diffusion(t, y) if is_sde else None
            else:
                checked.nfe += 1
                tc = checked.time(t)
                f = problem.drift(tc, y)
                g = broadcast_diffusion(problem.diffusion(tc, y), y, problem.noise_type) if is_sde else None
            return f, g

        t = torch.full((B,), t_start, dtype=F64, device=dev)
        h = torch.full((B,), min(self.first_step, abs(t_end - t_start)), dtype=F64, device=dev)
        status = torch.zeros(B, dtype=torch.int64, device=dev)
        accepted = torch.zeros(B, dtype=torch.int64, device=dev)
        rejected = torch.zeros(B, dtype=torch.int64, device=dev)
        x0 = x_prev = x
        path = getattr(noise, "path", None) if is_sde else None
        path = path if isinstance(path, BrownianPath) else None
        memory = BrownianMemory(x) if is_sde and path is None and not self.fresh_noise else None
        ok = int(Status.SUCCESS)
        iterations = 0
        while True:
            remaining = (t_end - t) * direction
            running = (status == ok) & (remaining > tiny)
            if not bool(running.any()):  # the loop's one host sync per iteration
                break
            tries = accepted + rejected
            out_of_budget = running & (tries >= self.max_steps)
            status = torch.where(out_of_budget, int(Status.MAX_STEPS), status)
            running = running & ~out_of_budget
            h_try = torch.where(running, torch.minimum(h, remaining), torch.zeros_like(h))
            # the last step lands on the end exactly
            t1 = torch.where(running & (remaining - h_try <= tiny), torch.full_like(t, t_end), t + direction * h_try)
            dt = _per_sample((t1 - t).to(x.dtype), x)
            f0, g0 = evaluate(t, x)
            K1 = f0 * dt
            if is_sde:
                if path is not None:
                    dW = self._path_increment(path, t, t1, running, x)
                elif self.fresh_noise:
                    dW = noise.randn_like(x) * _per_sample((t1 - t).abs().sqrt().to(x.dtype), x)
                else:
                    dW = memory.increment((t1 - t).abs(), noise.randn_like(x))
                K1 = K1 + g0 * dW
            x_em = x + K1
            f1, g1 = evaluate(t1, x_em)
            K2 = f1 * dt
            if is_sde:
                K2 = K2 + g1 * dW
            x_heun = x + 0.5 * (K1 + K2)
            delta = torch.clamp_min(self.rtol * torch.maximum(x_em.abs(), x_prev.abs()), self.atol)
            err = ((x_heun - x_em) / delta).reshape(B, -1).to(F64).pow(2).mean(1).sqrt()
            finite = torch.isfinite(err) & torch.isfinite(x_heun).reshape(B, -1).all(1)
            status = torch.where(running & ~finite, int(Status.NON_FINITE), status)
            running = running & finite
            accept = running & (err <= 1)
            acc_b = _per_sample(accept, x)
            x = torch.where(acc_b, x_heun if self.extrapolate else x_em, x)
            x_prev = torch.where(acc_b, x_em, x_prev)
            t_before = t
            t = torch.where(accept, t1, t)
            if memory is not None:
                memory.update((t1 - t_before).abs(), dW, accept, running & ~accept)
            accepted = accepted + accept.long()
            rejected = rejected + (running & ~accept).long()
            h_max = ((t_end - t) * direction).clamp_min(0)
            factor = torch.where(err > 0, self.safety * err.pow(-self.r), torch.full_like(err, math.inf))
            h_new = torch.minimum(h_max, h_try * factor)
            still = running & (h_max > tiny)
            too_small = still & (h_new <= tiny)
            status = torch.where(too_small, int(Status.DT_MIN), status)
            h = torch.where(running, h_new, h)
            iterations += 1
        t_final = t
        tries = accepted + rejected
        if checked.throw:
            msg = failure_message(status, t_final, h, tries, self.name)
            if msg is not None:
                text, step, tf = msg
                raise SolveError(text, step=step, t=tf, samples=(status != ok).nonzero().flatten().tolist())
        ends = torch.stack([grid[0], grid[-1]])
        return Solution(
            x=x, nfe=checked.nfe, steps=iterations, accepted=int(accepted.max()), rejected=int(rejected.max()),
            status=status, t_final=t_final, method=self.name, grid=ends if save_all else None,
            xs=torch.stack([x0, x]) if save_all else None,
            stats=dict(mode="per_sample", accepted_per_sample=accepted, rejected_per_sample=rejected,
                       nfe_per_sample=2 * tries, h_last=h, rtol=self.rtol, atol=self.atol))

    def __repr__(self) -> str:
        return (f"AdaptiveSDE(rtol={self.rtol!r}, atol={self.atol!r}, safety={self.safety!r}, r={self.r!r}, "
                f"extrapolate={self.extrapolate!r}, max_steps={self.max_steps}, first_step={self.first_step!r}, "
                f"fresh_noise={self.fresh_noise!r})")
