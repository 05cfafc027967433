"""Predictor–corrector sampling (Song et al., 2021, "Score-Based Generative
Modeling through SDEs", Algorithms 2-3; score_sde ``pc_sampler``).

At every grid time ``t_i``: ``corrector_steps`` Langevin MCMC steps on the
problem's marginal score at ``t_i`` (corrector), then one Euler–Maruyama
step of the problem from ``t_i`` to ``t_{i+1}`` (predictor). The corrector
step is

    x <- x + eps s(t, x) + sqrt(2 eps) z,     eps = 2 a (snr ||z|| / ||s(t, x)||)^2,

with ``z ~ N(0, I)``. ``a`` is score_sde's ``alpha_i``: 1 for VE, ``1 - beta_i``
for VP/sub-VP, where ``beta_i`` is the discrete DDPM beta of a 1000-step grid
(score_sde #41, #73). Its only role is to shrink the step near ``t = 0`` for
VP; we default to ``a = 1`` (the signal-to-noise rule alone sets the step) and
accept a number or a function ``a(t)``.

Step rules (``step_rule``):

* ``"sigma"`` (the default): ``eps = 2 a snr^2 sigma(t)^2``, the snr rule evaluated on the
  Gaussian score of the problem's noise level ``sigma(t)`` (``||s||^2 -> D / sigma^2``,
  ``||z||^2 -> E||z||^2 = D``). ``sigma(t)`` is the problem's own (a
  :class:`flowsde.SemiLinearSDE`/``ODE``: every problem of ``flowsde.adapters``) or
  ``PC(sigma=...)``. The step depends on the time only: the same for every sample and state,
  so no sample depends on its batch, the chain has no state-dependent-step bias, and no
  sample gets a step that a small ``||s||`` blew up. A problem without ``sigma(t)`` (a plain
  :class:`flowsde.SDE` with a score, no ``sigma=``) falls back to ``"per_sample"``.
* ``"per_sample"``: each sample's own norms, computed at the first corrector step of each
  grid time and held for the ``corrector_steps`` steps; batch-independent, but right only
  where ``||s||`` concentrates (from ~64 event dimensions): in 1-D and 2-D a sample near a
  mode gets a huge step and the chain diverges (docs/solvers.md quotes the errors).
* ``"score_sde"`` (opt-in, couples the batch): score_sde's batch means of per-sample L2
  norms at every step, for parity with published numbers; ``"auto"``: ``"per_sample"`` from
  64 event dimensions on and ``"score_sde"`` below. With either a sample depends on the
  others in its batch. See :func:`langevin` for why a per-sample step is not recomputed at
  every step.

Orders: none. The corrector is an MCMC step whose size is set by the
signal-to-noise ratio, not by the grid, so PC does not converge to the SDE's
solution as the grid is refined (its predictor alone, Euler–Maruyama, has
strong order 0.5 and weak order 1); ``order``, ``strong_order`` and
``weak_order`` are ``None``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .._errors import InputError
from .._utils import check_positive
from .base import Solver
from .euler_maruyama import EulerMaruyama, EulerMaruyamaState

_PREDICTOR = EulerMaruyama()

STEP_RULES = ("sigma", "auto", "per_sample", "score_sde")

#: ``step_rule="auto"`` uses per-sample steps from this many event dimensions on: there the
#: relative spread of ||s||^2 across samples (about sqrt(2/d)) is at most ~18 %.
AUTO_PER_SAMPLE_MIN_DIM = 64


def resolve_step_rule(step_rule: str, x) -> str:
    """``"auto"`` -> ``"per_sample"`` for ``prod(event_shape) >= 64``, else ``"score_sde"``."""
    if step_rule != "auto":
        return step_rule
    return "per_sample" if x[0].numel() >= AUTO_PER_SAMPLE_MIN_DIM else "score_sde"


def _sigma_at(sigma, t, x):
    """``sigma(t)`` (a callable of the float64 time, or a number / tensor) as a tensor in ``x``'s
    dtype and device: 0-dim, or ``(B, 1, ..., 1)`` for a ``(B,)`` value."""
    if callable(sigma):
        t64 = t.to(torch.float64) if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
        sigma = sigma(t64)
    sig = torch.as_tensor(sigma).to(dtype=x.dtype, device=x.device)
    if sig.dim() == 1 and sig.shape[0] == x.shape[0] and x.dim() > 1:
        sig = sig.reshape((x.shape[0],) + (1,) * (x.dim() - 1))
    elif sig.dim() != 0 and tuple(sig.shape) != (x.shape[0],) + (1,) * (x.dim() - 1):
        raise InputError(f"sigma: expected a number, a 0-dim or a (B,) tensor, got shape {tuple(sig.shape)}.")
    return sig


def langevin_step_size(s, z, *, snr: float, a=1.0, step_rule: str = "per_sample", sigma=None):
    """The signal-to-noise step ``eps = 2 a (snr ||z|| / ||s||)^2``.

    ``s`` and ``z`` are ``(B, *event_shape)``; returns ``(B, 1, ..., 1)`` for
    ``"per_sample"`` (per-sample L2 norms) and a 0-dim tensor for ``"score_sde"``
    (batch means of the per-sample norms, as score_sde's ``LangevinCorrector``).
    ``"sigma"``: ``2 a snr^2 sigma^2``, the rule on the Gaussian score of noise level
    ``sigma`` (``||s||^2 = D / sigma^2``, ``||z||^2 = D``); ``s`` and ``z`` are not read and
    ``sigma`` (a number, a 0-dim or ``(B,)`` tensor; not a function here) is required.
    ``a`` is a number or a 0-dim tensor. A sample whose score is exactly zero
    gets step 0 (no direction, and an infinite step otherwise).
    """
    if step_rule == "sigma":
        if sigma is None or callable(sigma):
            raise InputError("langevin_step_size(step_rule='sigma'): give sigma, the noise level at this time "
                             "(a number or tensor).")
        sig = _sigma_at(sigma, None, s)
        return 2 * a * snr ** 2 * sig * sig
    B = s.shape[0]
    s_norm = s.reshape(B, -1).norm(dim=1)
    z_norm = z.reshape(B, -1).norm(dim=1)
    if step_rule == "score_sde":
        s_norm, z_norm = s_norm.mean(), z_norm.mean()
    tiny = torch.finfo(s.dtype).tiny
    eps = 2 * a * (snr * z_norm / s_norm.clamp_min(tiny)) ** 2
    eps = torch.where(s_norm > 0, eps, torch.zeros_like(eps))
    if eps.dim() == 1:
        eps = eps.reshape((B,) + (1,) * (s.dim() - 1))
    return eps


def langevin(score_fn, t, x, generator=None, *, steps: int = 1, snr: float = 0.16,
             a: Union[float, Callable] = 1.0, step_rule: Optional[str] = None, sigma=None):
    """``steps`` Langevin MCMC steps at time ``t`` (the corrector of :class:`PC`); returns ``x``.

        x <- x + eps s(t, x) + sqrt(2 eps) z,      z ~ N(0, I)

    Step size (see :func:`langevin_step_size`):

    * ``"sigma"`` (the default when ``sigma`` is given): ``eps = 2 a snr^2 sigma(t)^2``, the
      same for every sample and state. Every sample is an unadjusted Langevin chain with a
      constant step, which targets ``p_t`` (up to the O(eps) bias of any unadjusted chain), in
      any dimension, and no sample depends on another.
    * ``"per_sample"`` (the default without ``sigma``, as before): each sample's ``eps`` is
      computed once, at the first step, and held for the ``steps``. It relies on ``||s||``
      concentrating (high dimension, d of a few tens and up): in low dimension a sample that
      starts near a mode gets a huge step and the chain can diverge (in 2-D about 1 % of
      particles got a step over 5 times the marginal variance) — use ``"sigma"`` there.
      Recomputing a per-sample step from the current state at every step would not help: a
      step ``eps(x)`` that depends on the state makes the chain a discretization of
      ``dx = eps(x) s dt + sqrt(2 eps(x)) dW``, whose stationary law is ``p(x) / eps(x)``, not
      ``p`` — for a standard Gaussian in ``d = 4`` we measured a variance 2.4 times the
      target's (docs/solvers.md); for the same reason a per-sample step clipped at the
      ``"sigma"`` step stays biased in 1-D and 2-D (covariance error 0.03–0.1, measured).
    * ``"score_sde"`` (opt-in, couples the batch): recomputed at every step from
      batch means of the norms, exactly as score_sde's ``LangevinCorrector`` (the
      batch mean makes the step nearly state-independent, but a sample's result
      depends on the other samples of its batch).
    * ``"auto"`` (opt-in): ``"per_sample"`` when ``prod(event_shape) >= 64``, else
      ``"score_sde"`` (so below 64 dimensions it couples the batch).

    Arguments:
        score_fn: ``s(t, x)``, shape of ``x``.
        t: 0-dim tensor.
        x: ``(B, *event_shape)``.
        generator: where ``z`` comes from: ``None``, a ``torch.Generator``, per-sample generators
            (as :func:`flowsde.solve`'s ``generator``) or a solver's noise source.
        steps, snr, a: see :class:`PC`.
        step_rule: ``None`` (``"sigma"`` if ``sigma`` is given, else ``"per_sample"``) or a rule.
        sigma: the noise level of ``p_t`` for ``"sigma"``: a number, a 0-dim or ``(B,)`` tensor,
            or a function of the (float64) time.
    """
    from .._noise import make_noise_source

    if step_rule is None:
        step_rule = "per_sample" if sigma is None else "sigma"
    if step_rule not in STEP_RULES:
        raise InputError(f"langevin(step_rule={step_rule!r}): must be one of {STEP_RULES}.")
    if step_rule == "sigma" and sigma is None:
        raise InputError("langevin(step_rule='sigma'): give sigma=, the noise level of p_t (a number or a function "
                         "of t), or choose step_rule='per_sample' or 'score_sde'.")
    noise = make_noise_source(generator, x)
    step_rule = resolve_step_rule(step_rule, x)
    a_t = a(t) if callable(a) else a
    eps = None
    if step_rule == "sigma":
        eps = langevin_step_size(x, x, snr=snr, a=a_t, step_rule="sigma", sigma=_sigma_at(sigma, t, x))
    for _ in range(steps):
        s = score_fn(t, x)
        z = noise.randn_like(x)
        if eps is None or step_rule == "score_sde":
            eps = langevin_step_size(s, z, snr=snr, a=a_t, step_rule=step_rule)
        x = x + eps * s + (2 * eps).sqrt() * z
    return x


def _problem_sigma(problem):
    """The problem's noise level ``sigma(t)`` (a semi-linear problem's), or ``None``."""
    raw = getattr(problem, "problem", problem)  # the user's problem behind solve's checked wrapper
    return raw.sigma if getattr(raw, "is_semilinear", False) else None


class PC(Solver):
    """Predictor (Euler–Maruyama) + Langevin corrector.

    Arguments:
        snr: signal-to-noise ratio of the corrector (score_sde default 0.16).
        corrector_steps: corrector steps per grid time (score_sde default 1).
        a: the step factor ``a`` (number or ``a(t)``), see the module docstring.
        step_rule: ``"sigma"`` (default: ``eps = 2 a snr^2 sigma(t)^2``, the same for every sample;
            right in every dimension; a problem without ``sigma(t)`` and no ``sigma=`` falls back to
            ``"per_sample"``), ``"per_sample"`` (held per-sample norms: each sample independent of
            its batch, diverges in low dimension), ``"score_sde"`` (score_sde's batch-mean rule,
            couples the batch) or ``"auto"`` (``"per_sample"`` from 64 event dimensions on,
            ``"score_sde"`` below).
        sigma: the noise level ``sigma(t)`` of the marginal ``p_t`` for ``"sigma"`` (a function of
            the float64 time, or a number); default: the problem's own ``sigma`` (every
            ``flowsde.adapters`` problem and :class:`flowsde.SemiLinearSDE` has one).
    """

    name = "pc"
    order = None
    strong_order = None
    weak_order = None
    noise_types = ("scalar", "diagonal")
    requires_score = True

    def __init__(self, snr: float = 0.16, corrector_steps: int = 1, a: Union[float, Callable] = 1.0,
                 step_rule: str = "sigma", sigma: Union[None, float, Callable] = None):
        snr = check_positive("snr", snr, where="PC")
        if not (isinstance(corrector_steps, int) and not isinstance(corrector_steps, bool) and corrector_steps >= 0):
            raise InputError(f"PC(corrector_steps={corrector_steps!r}): must be an int >= 0.")
        if step_rule not in STEP_RULES:
            raise InputError(f"PC(step_rule={step_rule!r}): must be one of {STEP_RULES}.")
        if not callable(a) and not (isinstance(a, (int, float)) and a > 0):
            raise InputError(f"PC(a={a!r}): a must be a number > 0 or a function of t.")
        if sigma is not None and not callable(sigma) and not (
                isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma >= 0):
            raise InputError(f"PC(sigma={sigma!r}): sigma must be a number >= 0 or a function of t.")
        if sigma is not None and step_rule != "sigma":
            raise InputError(f"PC(sigma=..., step_rule={step_rule!r}): sigma is used by step_rule='sigma' only.")
        self.snr = float(snr)
        self.corrector_steps = corrector_steps
        self.a = a
        self.step_rule = step_rule
        self.sigma = sigma

    @property
    def evals_per_step(self) -> int:
        """One drift evaluation (predictor) and ``corrector_steps`` score evaluations."""
        return 1 + self.corrector_steps

    def init(self, problem, x, grid) -> Optional[EulerMaruyamaState]:
        """The predictor's state (``sqrt|h|`` per step); the corrector keeps none."""
        return _PREDICTOR.init(problem, x, grid)

    def step(self, problem, x, t0, t1, h, i, noise, state: Optional[EulerMaruyamaState]):
        if self.corrector_steps:
            rule, sigma = self.step_rule, None
            if rule == "sigma":
                sigma = self.sigma if self.sigma is not None else _problem_sigma(problem)
                if sigma is None:
                    rule = "per_sample"
            x = langevin(problem.score, t0, x, noise, steps=self.corrector_steps, snr=self.snr, a=self.a,
                         step_rule=rule, sigma=sigma)
        return _PREDICTOR.step(problem, x, t0, t1, h, i, noise, state)

    def __repr__(self) -> str:
        sigma = "" if self.sigma is None else f", sigma={self.sigma!r}"
        return (f"PC(snr={self.snr}, corrector_steps={self.corrector_steps}, a={self.a!r}, "
                f"step_rule={self.step_rule!r}{sigma})")
