"""Predictor–corrector sampling (Song et al., 2021, "Score-Based Generative
Modeling through SDEs", Algorithms 2-3; score_sde ``pc_sampler``).

At every grid time ``t_i``: ``n_corrector`` Langevin MCMC steps on the
problem's marginal score at ``t_i`` (corrector), then one Euler–Maruyama
step of the problem from ``t_i`` to ``t_{i+1}`` (predictor). The corrector
step is

    x <- x + eps s(t, x) + sqrt(2 eps) z,     eps = 2 a (snr ||z|| / ||s(t, x)||)^2,

with ``z ~ N(0, I)``. ``a`` is score_sde's ``alpha_i``: 1 for VE, ``1 - beta_i``
for VP/sub-VP, where ``beta_i`` is the discrete DDPM beta of a 1000-step grid
(score_sde #41, #73). Its only role is to shrink the step near ``t = 0`` for
VP; we default to ``a = 1`` (the signal-to-noise rule alone sets the step) and
accept a number or a function ``a(t)``.

Norms: by default per sample (each sample gets its own step size, so samples
do not influence each other and the result does not depend on the batch);
``step_rule="score_sde"`` uses score_sde's batch means of per-sample L2 norms,
for parity with published numbers.

Strong order 0.5 / weak order 1 refer to the predictor alone; the corrector
is an MCMC step, not a discretization of the SDE.
"""

from __future__ import annotations

from typing import Callable, Union

import torch

from .._errors import InputError
from .base import Solver
from .euler_maruyama import EulerMaruyama

_PREDICTOR = EulerMaruyama()

STEP_RULES = ("per_sample", "score_sde")


def langevin_step(score_fn, t, x, noise, *, snr: float = 0.16, a: Union[float, Callable] = 1.0,
                  step_rule: str = "per_sample"):
    """One Langevin corrector step at time ``t``; returns the new ``x``.

    Arguments:
        score_fn: ``s(t, x)``, the marginal score at ``t`` (shape of ``x``).
        t: 0-dim tensor.
        x: ``(B, *event_shape)``.
        noise: a noise source (``flowsde._noise``) or a ``torch.Generator`` / ``None``.
        snr: the signal-to-noise ratio ``r`` of the step rule.
        a: the factor ``a`` (number or function of ``t``).
        step_rule: ``"per_sample"`` or ``"score_sde"`` (batch-mean norms).
    """
    from .._noise import _Noise, make_noise

    if not isinstance(noise, _Noise):
        noise = make_noise(noise, x)
    s = score_fn(t, x)
    z = noise.randn_like(x)
    B = x.shape[0]
    s_norm = s.reshape(B, -1).norm(dim=1)
    z_norm = z.reshape(B, -1).norm(dim=1)
    if step_rule == "score_sde":
        s_norm, z_norm = s_norm.mean(), z_norm.mean()
    a_t = a(t) if callable(a) else a
    tiny = torch.finfo(x.dtype).tiny
    eps = 2 * a_t * (snr * z_norm / s_norm.clamp_min(tiny)) ** 2
    if eps.dim() == 1:
        eps = eps.reshape((B,) + (1,) * (x.dim() - 1))
    return x + eps * s + (2 * eps).sqrt() * z


class PC(Solver):
    """Predictor (Euler–Maruyama) + Langevin corrector.

    Arguments:
        snr: signal-to-noise ratio of the corrector (score_sde default 0.16).
        n_corrector: corrector steps per grid time (score_sde default 1).
        a: the step factor ``a`` (number or ``a(t)``), see the module docstring.
        step_rule: ``"per_sample"`` (default) or ``"score_sde"``.
    """

    name = "pc"
    order = 1
    strong_order = 0.5
    weak_order = 1.0
    noise_types = ("scalar", "diagonal")
    requires_score = True

    def __init__(self, snr: float = 0.16, n_corrector: int = 1, a: Union[float, Callable] = 1.0,
                 step_rule: str = "per_sample"):
        if not (isinstance(snr, (int, float)) and snr > 0):
            raise InputError(f"PC(snr={snr!r}): snr must be a number > 0.")
        if not (isinstance(n_corrector, int) and n_corrector >= 0):
            raise InputError(f"PC(n_corrector={n_corrector!r}): must be an int >= 0.")
        if step_rule not in STEP_RULES:
            raise InputError(f"PC(step_rule={step_rule!r}): must be one of {STEP_RULES}.")
        if not callable(a) and not (isinstance(a, (int, float)) and a > 0):
            raise InputError(f"PC(a={a!r}): a must be a number > 0 or a function of t.")
        self.snr = float(snr)
        self.n_corrector = n_corrector
        self.a = a
        self.step_rule = step_rule

    def step(self, problem, t0, t1, x, noise, last):
        for _ in range(self.n_corrector):
            x = langevin_step(problem.score, t0, x, noise, snr=self.snr, a=self.a, step_rule=self.step_rule)
        return _PREDICTOR.step(problem, t0, t1, x, noise, last)

    def __repr__(self) -> str:
        return f"PC(snr={self.snr}, n_corrector={self.n_corrector}, a={self.a!r}, step_rule={self.step_rule!r})"
