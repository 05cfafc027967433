"""The shipped architecture: a full-covariance Gaussian's exact prediction plus an MLP residual.

For data ``x_0 ~ N(mu, C)``, ``C = U diag(d) U^T``, and ``x_t = alpha x_0 + sigma eps``, the exact
predictions are linear in ``x_t`` (Tweedie): with ``v = alpha^2 d + sigma^2`` and the whitened
coordinates ``z = U^T (x_t - alpha mu) / sqrt(v)``,

    E[eps | x_t] = U (sigma z / sqrt(v)),     E[x_0 | x_t] = mu + U (alpha d z / sqrt(v)).

:class:`GaussianResidualMLP` returns that prediction (for the Gaussian fitted to the dequantized
training data) plus ``F(z, lambda)``, an MLP of the whitened state and Fourier features of the
log-SNR ``lambda = log(alpha^2/sigma^2)``, whose last layer starts at zero: the untrained network
*is* the Gaussian model, and training learns what the data has beyond it.

Kinds (what ``forward(x, t)`` takes and returns):

* ``"eps-vp"``: ``t`` is the VP time, output ``eps`` (noise prediction).
* ``"velocity-fm"``: ``t`` is the flow-matching time ``s`` (noise at ``s = 0``, data at ``s = 1``,
  ``x_s = s x_0 + (1 - s) eps``), output the velocity ``u = x_0 - eps`` towards the data
  (flow_matching's convention; :func:`flowsde.adapters.from_flow_matching` maps it to flowsde time).
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from flowsde import InputError
from flowsde.adapters import VP

__all__ = ["GaussianResidualMLP", "KINDS"]

KINDS = ("eps-vp", "velocity-fm")
LOG_SNR_CLAMP = 30.0


class GaussianResidualMLP(nn.Module):
    """``net(x, t) -> (B, D)``: Gaussian prediction + MLP residual (see the module docstring).

    Arguments:
        dim: ``D``, the data dimension (``x`` is ``(B, D)``).
        kind: ``"eps-vp"`` or ``"velocity-fm"``.
        width: hidden width ``W``.
        depth: number of residual hidden layers.
        n_freq: number of Fourier frequencies of the log-SNR features (``2 n_freq`` features).
        beta_min, beta_max: the VP schedule (``"eps-vp"`` only).
        dropout: dropout rate on each residual branch (training only; ``eval()`` turns it off).

    Buffers ``mean`` ``(D,)``, ``basis`` ``(D, D)`` (orthonormal columns) and ``var`` ``(D,)``
    (eigenvalues, > 0) hold the Gaussian; :meth:`set_gaussian` sets them.
    """

    def __init__(self, dim: int, *, kind: str, width: int = 256, depth: int = 3, n_freq: int = 16,
                 beta_min: float = 0.1, beta_max: float = 20.0, dropout: float = 0.0, inputs: str = "z",
                 skip: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"GaussianResidualMLP(kind={kind!r}): choose one of {KINDS}.")
        for name, v in (("dim", dim), ("width", width), ("depth", depth), ("n_freq", n_freq)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"GaussianResidualMLP({name}={v!r}): must be a positive int.")
        self.config: Dict[str, object] = dict(dim=dim, kind=kind, width=width, depth=depth, n_freq=n_freq,
                                              beta_min=float(beta_min), beta_max=float(beta_max),
                                              dropout=float(dropout), inputs=inputs, skip=bool(skip))
        if inputs not in ("z", "x"):
            raise InputError(f"GaussianResidualMLP(inputs={inputs!r}): 'z' (whitened) or 'x' (raw state).")
        self.inputs, self.skip = inputs, bool(skip)
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"GaussianResidualMLP(dropout={dropout!r}): must be in [0, 1).")
        self.dim, self.kind = dim, kind
        self._vp = VP(beta_min=beta_min, beta_max=beta_max) if kind == "eps-vp" else None
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.eye(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("freqs", torch.logspace(math.log10(0.05), math.log10(3.0), n_freq))
        n_emb = 2 * n_freq
        self.inp = nn.Linear(dim + n_emb, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.temb = nn.ModuleList(nn.Linear(n_emb, width) for _ in range(depth))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @torch.no_grad()
    def set_gaussian(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        """Set the Gaussian part: ``mean`` ``(D,)`` and covariance ``cov`` ``(D, D)`` (eigen-decomposed in float64)."""
        if tuple(mean.shape) != (self.dim,) or tuple(cov.shape) != (self.dim, self.dim):
            raise InputError(f"set_gaussian: expected mean ({self.dim},) and cov ({self.dim}, {self.dim}), got "
                             f"{tuple(mean.shape)} and {tuple(cov.shape)}.")
        mu = mean.to(torch.float64)
        d, U = torch.linalg.eigh(cov.to(torch.float64))
        if not bool((d > 0).all()):
            raise InputError("set_gaussian: the covariance is singular; dequantize the data first.")
        self.mean.copy_(mu)
        self.basis.copy_(U)
        self.var.copy_(d)

    def _coefficients(self, t: torch.Tensor):
        """``alpha, sigma`` ``(B, 1)`` of the path at the network's time ``t`` ``(B,)``."""
        if self.kind == "eps-vp":
            a, s = self._vp.alpha(t), self._vp.sigma(t)
        else:  # flow-matching time s: x_s = s x_0 + (1 - s) eps
            a, s = t, 1 - t
        return a[:, None], s[:, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        t = t.to(x.dtype)
        a, s = self._coefficients(t)
        lam = (2 * (torch.log(a) - torch.log(s))).clamp(-LOG_SNR_CLAMP, LOG_SNR_CLAMP)
        v = a * a * self.var + s * s
        r = torch.rsqrt(v)
        z = ((x - a * self.mean) @ self.basis) * r
        eps_g = (s * r * z) @ self.basis.T
        ph = lam * self.freqs
        emb = torch.cat([torch.sin(ph), torch.cos(ph)], dim=1)
        h = nn.functional.silu(self.inp(torch.cat([z if self.inputs == "z" else x, emb], dim=1)))
        for lin, tl in zip(self.hidden, self.temb):
            h = h + self.drop(nn.functional.silu(lin(h) + tl(emb)))
        res = self.out(h)
        if not self.skip:
            return res
        if self.kind == "eps-vp":
            return eps_g + res
        x0_g = self.mean + (a * self.var * r * z) @ self.basis.T
        return x0_g - eps_g + res
