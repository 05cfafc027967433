"""Analytic reference problems: Gaussian mixtures, finite data sets, OU.

Under the linear forward process ``x_t = alpha(t) x_0 + sigma(t) eps`` (any
:class:`flowsde.adapters.schedules.Schedule`: only ``alpha(t)`` and
``sigma(t)`` are used) a Gaussian mixture stays a Gaussian mixture:

    p_0 = sum_k w_k N(mu_k, Sigma_k)
    p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)

so the marginal density, its score and the posterior mean ``E[x_0 | x_t]``
(the ideal denoiser) are closed forms (seed 003, linear SDEs; seed 000, the
ideal denoiser of a finite data set). Each covariance is diagonalised once,
``Sigma_k = U_k diag(l_k) U_k^T``, so that

    C_k(t) = U_k diag(alpha^2 l_k + sigma^2) U_k^T

is inverted and log-determined exactly at any ``t`` without a per-time
Cholesky, and the result is differentiable in ``t`` and ``x`` (autograd
through the schedule). Responsibilities use ``logsumexp``. Everything is
float64 by default; a network-style oracle returns the dtype of its input.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from flowsde import SDE, InputError
from flowsde._internal import as_generator

__all__ = ["GaussianMixture", "DiracMixture", "OU", "PREDICTIONS"]

PREDICTIONS = ("eps", "score", "x0", "v", "velocity")
_LOG_2PI = math.log(2 * math.pi)


def _as_tensor(name, value, dtype):
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=dtype).clone()
    try:
        return torch.as_tensor(value, dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{name}: expected a tensor or array, got {type(value).__name__}.") from e


def _check_finite(name, tensor):
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name}: contains NaN/Inf: {tensor}.")


class _Mixture:
    """Shared engine: components ``N(mu_k, U_k diag(l_k) U_k^T)`` (``U=None``: isotropic
    ``l_k I`` with ``l`` of shape ``(K,)``)."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    _U: Optional[torch.Tensor]  # (K, D, D) or None
    _l: torch.Tensor  # (K, D) or (K,)

    @property
    def dim(self) -> int:
        """The data dimension ``D``."""
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    # ----------------------------------------------------------------- input
    def _flat(self, x, name="x"):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor (B, *event) with prod(event) = {self.dim}, got "
                             f"{type(x).__name__}.")
        if x.dim() < 1 or x[0].numel() != self.dim:
            raise InputError(f"{name}: shape {tuple(x.shape)} is not (B, *event) with prod(event) = "
                             f"{self.dim} (the mixture's dimension).")
        return x.reshape(x.shape[0], self.dim).to(self.dtype)

    def _times(self, t, B, device):
        """``t`` (number, 0-dim or (B,)) -> ``(B,)`` tensor of the mixture dtype."""
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(float(t), dtype=self.dtype, device=device)
        if t.dim() == 0:
            return t.to(self.dtype).expand(B)
        if t.dim() == 1 and t.shape[0] == B:
            return t.to(self.dtype)
        raise InputError(f"t: expected a number, a 0-dim tensor or a (B,) = ({B},) tensor, got shape "
                         f"{tuple(t.shape)}.")

    def _coeffs(self, schedule, t, B, device):
        tt = self._times(t, B, device)
        a = schedule.alpha(tt).to(self.dtype)
        s = schedule.sigma(tt).to(self.dtype)
        # contiguous: stride-0 (expanded) coefficients hit slow broadcasting kernels (~20x on CPU)
        return tt, a.expand(B).contiguous(), s.expand(B).contiguous()

    # ---------------------------------------------------------------- kernel
    def _components(self, a, s, x):
        """Per component: log N_k(x) ``(B, K)``, ``C_k^{-1}(x - a mu_k)`` ``(B, K, D)`` and the
        posterior mean ``E[x0 | x, k]`` ``(B, K, D)``, at coefficients ``a, s`` ``(B,)``."""
        mu = self.means.to(x.device)
        diff = x[:, None, :] - a[:, None, None] * mu[None]  # (B, K, D)
        a2, s2 = (a * a)[:, None], (s * s)[:, None]
        D = self.dim
        if self._U is None:
            l = self._l.to(x.device)  # (K,)
            var = a2 * l[None] + s2  # (B, K)
            _check_var(var)
            maha = (diff * diff).sum(-1) / var
            logn = -0.5 * (D * (_LOG_2PI + var.log()) + maha)
            prec_diff = diff / var[..., None]
            post = mu[None] + (a[:, None] * l[None])[..., None] * prec_diff
            return logn, prec_diff, post
        U, l = self._U.to(x.device), self._l.to(x.device)  # (K, D, D), (K, D)
        y = torch.einsum("kdj,bkd->bkj", U, diff)  # U^T diff
        var = a2[..., None] * l[None] + s2[..., None]  # (B, K, D)
        _check_var(var)
        logn = -0.5 * (D * _LOG_2PI + var.log().sum(-1) + (y * y / var).sum(-1))
        prec_diff = torch.einsum("kdj,bkj->bkd", U, y / var)
        post = mu[None] + a[:, None, None] * torch.einsum("kdj,bkj->bkd", U, l[None] * y / var)
        return logn, prec_diff, post

    def _posterior(self, a, s, x):
        logn, prec_diff, post = self._components(a, s, x)
        logw = self.weights.to(x.device).log()
        joint = logw[None] + logn
        logp = torch.logsumexp(joint, dim=1)
        r = torch.softmax(joint, dim=1)  # responsibilities (B, K)
        score = -(r[..., None] * prec_diff).sum(1)
        x0 = (r[..., None] * post).sum(1)
        return logp, score, x0, r

    # ----------------------------------------------------------------- public
    def log_prob_t(self, schedule, t, x) -> torch.Tensor:
        """``log p_t(x)``, ``(B,)``, differentiable in ``t`` and ``x``.

        Arguments:
            schedule: a ``Schedule`` (``alpha(t)``, ``sigma(t)``).
            t: a number, a 0-dim tensor or a ``(B,)`` tensor (the schedule's time).
            x: ``(B, *event)`` with ``prod(event) = D``.
        """
        xf = self._flat(x)
        _, a, s = self._coeffs(schedule, t, xf.shape[0], xf.device)
        return self._posterior(a, s, xf)[0]

    def score_t(self, schedule, t, x) -> torch.Tensor:
        """``grad_x log p_t(x)`` in closed form, ``(B, D)`` (reshape to ``x``'s shape if needed)."""
        xf = self._flat(x)
        _, a, s = self._coeffs(schedule, t, xf.shape[0], xf.device)
        return self._posterior(a, s, xf)[1]

    def posterior_mean(self, schedule, t, x) -> torch.Tensor:
        """``E[x_0 | x_t = x]`` (the ideal denoiser) in closed form, ``(B, D)``:
        ``sum_k r_k(x) (mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k))``."""
        xf = self._flat(x)
        _, a, s = self._coeffs(schedule, t, xf.shape[0], xf.device)
        return self._posterior(a, s, xf)[2]

    def oracle(self, schedule, prediction: str, *, time: str = "net") -> Callable[[torch.Tensor, torch.Tensor],
                                                                                   torch.Tensor]:
        """The exact network ``net(x, t)`` of a prediction type, for ``schedule``.

        ``x``: ``(B, *event)`` (``prod(event) = D``); ``t``: ``(B,)`` or 0-dim. With
        ``time="net"`` (default) ``t`` is the label ``schedule.net_time(t)`` that
        :class:`flowsde.adapters.Diffusion` calls its network with (the schedule's time for
        every schedule but ``Discrete``, whose step labels are mapped back to its
        continuous time); with ``time="schedule"`` it is the schedule's continuous time.
        Returns the shape and dtype of ``x``:

        * ``"score"``: ``grad_x log p_t(x)``;
        * ``"x0"``: ``E[x_0 | x_t]`` (posterior mean, no division by alpha);
        * ``"eps"``: ``E[eps | x_t] = -sigma score``;
        * ``"v"``: ``alpha eps - sigma x0`` (Salimans & Ho 2022; the v of
          diffusers for alpha^2 + sigma^2 = 1, applied as written for any schedule);
        * ``"velocity"``: ``E[dx_t/dt | x_t] = alpha' x0 + sigma' eps`` (the
          flow-matching velocity = the probability-flow drift).
        """
        if prediction not in PREDICTIONS:
            raise InputError(f"oracle(prediction={prediction!r}): must be one of {PREDICTIONS}.")
        if time not in ("net", "schedule"):
            raise InputError(f"oracle(time={time!r}): must be 'net' or 'schedule'.")
        to_t = _inverse_net_time(schedule) if time == "net" else None

        def net(x, t):
            xf = self._flat(x)
            if to_t is not None:
                t = to_t(torch.as_tensor(t, dtype=self.dtype))
            tt, a, s = self._coeffs(schedule, t, xf.shape[0], xf.device)
            _, score, x0, _ = self._posterior(a, s, xf)
            eps = -s[:, None] * score
            if prediction == "score":
                out = score
            elif prediction == "x0":
                out = x0
            elif prediction == "eps":
                out = eps
            elif prediction == "v":
                out = a[:, None] * eps - s[:, None] * x0
            else:
                da = schedule.d_alpha(tt).to(self.dtype).expand(xf.shape[0])
                ds = schedule.d_sigma(tt).to(self.dtype).expand(xf.shape[0])
                out = da[:, None] * x0 + ds[:, None] * eps
            return out.reshape(x.shape).to(x.dtype)

        net.__name__ = f"{type(self).__name__}_oracle_{prediction}"
        return net


def _inverse_net_time(schedule):
    """Map a network time label back to the schedule's time (``None``: identity)."""
    label = getattr(schedule, "label", None)
    if label is None or not hasattr(schedule, "alphas_cumprod"):
        return None  # continuous schedules call the net with their own time
    N = int(schedule.alphas_cumprod.shape[0])
    if label == "index":
        return lambda k: (k + 1) / N
    if label == "score_sde":
        return lambda k: k / (N - 1)
    if label == "dpm_solver":
        return lambda k: k / 1000.0 + 1.0 / N
    raise InputError(f"oracle(time='net'): cannot invert the custom net_time label {label!r} of {schedule!r}; "
                     "use time='schedule' and wrap the oracle yourself.")


def _check_var(var):
    # A zero variance means sigma = 0 on a singular component (data end of a Dirac
    # mixture): the density does not exist there. One host check per call.
    if not bool((var > 0).all()):
        raise InputError(
            "the marginal covariance is singular at this t (sigma(t) = 0 on a singular component): the density, "
            "score and eps are undefined there; evaluate at t >= schedule.t_min."
        )


class GaussianMixture(_Mixture):
    """``p_0 = sum_k w_k N(mu_k, Sigma_k)`` in ``D`` dimensions.

    Arguments:
        weights: ``(K,)``, positive (normalised here).
        means: ``(K, D)``.
        covs: ``(K, D, D)`` symmetric positive definite (also accepted: ``(K, D)``
            diagonals or ``(K,)`` isotropic variances).
        dtype: default ``torch.float64``.
    """

    def __init__(self, weights, means, covs, *, dtype=torch.float64):
        w = _as_tensor("weights", weights, dtype)
        mu = _as_tensor("means", means, dtype)
        C = _as_tensor("covs", covs, dtype)
        if mu.dim() != 2:
            raise InputError(f"GaussianMixture: means must be (K, D), got shape {tuple(mu.shape)}.")
        K, D = mu.shape
        if w.shape != (K,):
            raise InputError(f"GaussianMixture: weights must be ({K},) to match means {tuple(mu.shape)}, got "
                             f"{tuple(w.shape)}.")
        for name, v in (("weights", w), ("means", mu), ("covs", C)):
            _check_finite(f"GaussianMixture: {name}", v)
        if not bool((w > 0).all()):
            raise InputError(f"GaussianMixture: weights must be > 0, got {w.tolist()}.")
        if C.shape == (K,):
            C = C[:, None, None] * torch.eye(D, dtype=dtype)
        elif C.shape == (K, D):
            C = torch.diag_embed(C)
        if C.shape != (K, D, D):
            raise InputError(f"GaussianMixture: covs must be ({K}, {D}, {D}) (or ({K}, {D}) / ({K},)), got "
                             f"{tuple(C.shape)}.")
        if not torch.allclose(C, C.transpose(1, 2), rtol=1e-10, atol=1e-12 * float(C.abs().max())):
            raise InputError("GaussianMixture: covs must be symmetric.")
        C = 0.5 * (C + C.transpose(1, 2))
        l, U = torch.linalg.eigh(C)
        if not bool((l > 0).all()):
            k = int((l <= 0).any(1).nonzero()[0])
            raise InputError(f"GaussianMixture: covs[{k}] is not positive definite (eigenvalues "
                             f"{l[k].tolist()}).")
        self.weights = w / w.sum()
        self.means = mu
        self.covs = C
        self._U, self._l = U, l
        self._chol = torch.linalg.cholesky(C)

    def sample(self, samples: int, generator=None) -> torch.Tensor:
        """``samples`` exact draws of ``p_0``, ``(samples, D)``; ``generator``: ``None``, an int seed or a
        ``torch.Generator``."""
        if not (isinstance(samples, int) and samples >= 1):
            raise InputError(f"sample(samples={samples!r}): samples must be an int >= 1.")
        n, generator = samples, as_generator(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=self.dtype, generator=generator)
        return self.means[k] + torch.einsum("nij,nj->ni", self._chol[k], z)

    def log_prob(self, x) -> torch.Tensor:
        """``log p_0(x)``, ``(B,)`` (``x``: ``(B, *event)``)."""
        xf = self._flat(x)
        one = torch.ones(xf.shape[0], dtype=self.dtype, device=xf.device)
        return self._posterior(one, 0 * one, xf)[0]

    def marginal(self, schedule, t: float) -> "GaussianMixture":
        """``p_t`` as a mixture: weights kept, means ``alpha mu_k``, covs ``alpha^2 Sigma_k + sigma^2 I``."""
        tt = torch.as_tensor(float(t), dtype=self.dtype)
        a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
        eye = torch.eye(self.dim, dtype=self.dtype)
        return GaussianMixture(self.weights, a * self.means, a * a * self.covs + s * s * eye, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.weights.shape[0]}, D={self.dim}, dtype={self.dtype})"


class DiracMixture(_Mixture):
    """The empirical distribution of a finite data set, ``p_0 = 1/N sum_n delta(x - y_n)``.

    Its marginal is ``p_t = 1/N sum_n N(alpha y_n, sigma^2 I)`` and its posterior
    mean is EDM's ideal denoiser (Karras et al. 2022, eq. 57; seed 000): a
    softmax-weighted average of the data. Defined for ``sigma(t) > 0`` only.

    Arguments:
        data: ``(N, D)`` (or ``(N, *event)``, flattened).
        weights: optional ``(N,)`` positive weights (default uniform).
    """

    def __init__(self, data, *, weights=None, dtype=torch.float64):
        y = _as_tensor("data", data, dtype)
        if y.dim() < 2 or y.shape[0] < 1:
            raise InputError(f"DiracMixture: data must be (N, D) with N >= 1, got shape {tuple(y.shape)}.")
        y = y.reshape(y.shape[0], -1)
        _check_finite("DiracMixture: data", y)
        N = y.shape[0]
        w = torch.full((N,), 1.0 / N, dtype=dtype) if weights is None else _as_tensor("weights", weights, dtype)
        if w.shape != (N,) or not bool((w > 0).all()):
            raise InputError(f"DiracMixture: weights must be ({N},) and > 0, got shape {tuple(w.shape)}.")
        self.weights = w / w.sum()
        self.means = y
        self.data = y
        self._U, self._l = None, torch.zeros(N, dtype=dtype)

    def sample(self, samples: int, generator=None) -> torch.Tensor:
        """``samples`` draws (with replacement) from the data, ``(samples, D)``."""
        if not (isinstance(samples, int) and samples >= 1):
            raise InputError(f"sample(samples={samples!r}): samples must be an int >= 1.")
        return self.data[torch.multinomial(self.weights, samples, replacement=True, generator=as_generator(generator))]

    def log_prob(self, x) -> torch.Tensor:
        """A finite data set has no density at ``t = 0``: raises. Use ``log_prob_t`` at ``sigma(t) > 0``."""
        raise InputError("DiracMixture.log_prob: the data distribution is a sum of Dirac masses and has no density; "
                         "use log_prob_t(schedule, t, x) at a time with sigma(t) > 0.")

    def marginal(self, schedule, t: float) -> GaussianMixture:
        """``p_t = sum_n w_n N(alpha y_n, sigma^2 I)`` (needs ``sigma(t) > 0``)."""
        tt = torch.as_tensor(float(t), dtype=self.dtype)
        a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
        if not s > 0:
            raise InputError(f"DiracMixture.marginal: sigma({t}) = {s}; the marginal is a Dirac mixture there.")
        return GaussianMixture(self.weights, a * self.data, torch.full_like(self.weights, s * s), dtype=self.dtype)

    def denoiser(self, schedule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The ideal denoiser ``D(x, t) = E[x_0 | x_t = x] = sum_n softmax_n(-|x - alpha y_n|^2 /
        (2 sigma^2)) y_n`` as ``net(x, t)`` (same as ``oracle(schedule, "x0")``)."""
        return self.oracle(schedule, "x0")

    def __repr__(self) -> str:
        return f"DiracMixture(N={self.data.shape[0]}, D={self.dim}, dtype={self.dtype})"


class OU:
    """The Ornstein–Uhlenbeck process ``dX = -b X dt + s dW`` (seed 002), elementwise.

    Exact solution: ``X_t | X_0 ~ N(X_0 e^{-b t}, s^2 (1 - e^{-2 b t}) / (2 b))``
    (``s^2 t`` when ``b = 0``).

    Arguments:
        b: mean-reversion rate (a number, may be 0 or negative).
        s: diffusion coefficient (a number >= 0).
    """

    def __init__(self, b: float = 1.0, s: float = 1.0):
        if not (isinstance(b, (int, float)) and math.isfinite(b)):
            raise InputError(f"OU(b={b!r}): b must be a finite number.")
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s >= 0):
            raise InputError(f"OU(s={s!r}): s must be a finite number >= 0.")
        self.b, self.s = float(b), float(s)

    def sde(self) -> SDE:
        """The SDE as a :class:`flowsde.SDE` (scalar noise)."""
        b, s = self.b, self.s
        return SDE(lambda t, x: -b * x, lambda t, x: torch.full((), s, dtype=x.dtype, device=x.device),
                   noise_type="scalar")

    def mean(self, t, x: torch.Tensor) -> torch.Tensor:
        """``E[X_t | X_0 = x] = x e^{-b t}`` (``t`` number or tensor broadcastable to ``x``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return x * torch.exp(-self.b * t)

    def var(self, t) -> torch.Tensor:
        """``Var[X_t | X_0] = s^2 (1 - e^{-2 b t}) / (2 b)`` (``s^2 t`` for ``b = 0``); ``-expm1`` keeps it
        accurate for small ``b t``."""
        t = torch.as_tensor(t, dtype=torch.float64) if not isinstance(t, torch.Tensor) else t
        if self.b == 0:
            return self.s ** 2 * t
        return self.s ** 2 * (-torch.expm1(-2 * self.b * t)) / (2 * self.b)

    def sample(self, t, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Exact draws of ``X_t`` given ``X_0 = x`` (shape of ``x``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        z = torch.randn(x.shape, generator=as_generator(generator, x.device), dtype=x.dtype, device=x.device)
        return self.mean(t, x) + self.var(t).sqrt() * z

    def __repr__(self) -> str:
        return f"OU(b={self.b}, s={self.s})"
