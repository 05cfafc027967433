"""The divergence of a drift, exact or by Hutchinson's estimator, for the likelihood's augmented ODE.

:class:`Divergence` evaluates ``u = drift(t, x)`` and ``div u`` (``(B, k)`` float64: the exact trace,
``k = 1``, or ``k`` Hutchinson probes ``z^T J z``) in one call, keeping no autograd graph:

* exact trace: ``div u = sum_i (J^T e_i)_i`` by ``D`` vector-Jacobian products batched in one
  backward call (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. vmap; a loop if the
  model does not support vmap). Memory: a ``(D, B, D)`` tensor (:func:`exact_trace_bytes`).
* Hutchinson: the ``k`` VJPs ``z_j^T J`` with the probes held for the whole solve.
"""

from __future__ import annotations

import math
import warnings

import torch

from ._errors import InputError


def exact_trace_bytes(shape, dtype) -> int:
    """Memory of the batched VJPs of the exact trace: ``B * D * D * itemsize`` bytes."""
    B, D = shape[0], math.prod(shape[1:])
    return B * D * D * torch.empty((), dtype=dtype).element_size()


def exact_cotangents(x: torch.Tensor, exact_max_bytes: int) -> torch.Tensor:
    """``(D, B, *event)``: the ``D`` basis vectors of the exact trace (refused above ``exact_max_bytes``)."""
    B, event, dtype, device = x.shape[0], tuple(x.shape[1:]), x.dtype, x.device
    D = math.prod(event)
    need = exact_trace_bytes(x.shape, dtype)
    if need > exact_max_bytes:
        raise InputError(
            f"trace='exact' for B={B}, D={D} needs B*D*D*itemsize = {need / 2**20:.0f} MiB of batched "
            f"vector-Jacobian products (> exact_max_bytes = {exact_max_bytes / 2**20:.0f} MiB). Use "
            "trace='hutchinson' (with probes=k for a standard error), a smaller batch, or raise "
            "exact_max_bytes if the memory is there.")
    eye = torch.eye(D, dtype=dtype, device=device)
    return eye.reshape((D, 1) + event).expand((D, B) + event)


def _batched_vjp(out: torch.Tensor, x: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """``(J^T c_j)`` for each cotangent ``c_j`` in ``cot`` (``(n, B, *event)``), keeping no graph."""
    if cot.shape[0] == 1:
        (g,) = torch.autograd.grad(out, x, cot[0])
        return g.unsqueeze(0)
    try:
        with warnings.catch_warnings():
            # vmap may warn that an op falls back to a slow loop; the result is still exact
            warnings.simplefilter("ignore", UserWarning)
            (g,) = torch.autograd.grad(out, x, cot, is_grads_batched=True, retain_graph=True)
        return g
    except RuntimeError:  # an op without a vmap rule: one VJP at a time
        gs = [torch.autograd.grad(out, x, c, retain_graph=True)[0] for c in cot]
        return torch.stack(gs)


class Divergence:
    """``(u, div u)`` of a drift at ``(t, x)``: ``cot`` holds the ``D`` basis vectors (``exact``) or the
    ``k`` probes, ``(n, B, *event)``."""

    def __init__(self, cot: torch.Tensor, exact: bool):
        self.cot, self.exact = cot, exact
        self.k = 1 if exact else cot.shape[0]

    def __call__(self, drift, t: torch.Tensor, x: torch.Tensor):
        """``u`` (detached, the shape and dtype of ``x``) and ``div u`` ``(B, k)`` float64."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            u = drift(t, xg)
            div = self._divergence(u, xg)
        # the log-density is accumulated in float64: at |logp| ~ 3000 float32 resolves only 2e-4 nats
        return u.detach(), div.detach().to(torch.float64)

    def _divergence(self, u: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        B, D, k = xg.shape[0], math.prod(xg.shape[1:]), self.k
        if not u.requires_grad:  # a drift that does not depend on x (divergence 0)
            return torch.zeros(B, k, dtype=torch.float64, device=xg.device)
        g = _batched_vjp(u, xg, self.cot)
        if self.exact:
            return torch.diagonal(g.reshape(D, B, D), dim1=0, dim2=2).sum(-1).unsqueeze(1)  # (B, 1)
        return (g * self.cot).reshape(k, B, D).sum(-1).transpose(0, 1)  # (B, k)
