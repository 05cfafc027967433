"""The divergence of a drift, exact or by Hutchinson's estimator, for the likelihood's augmented ODE.

:class:`Divergence` evaluates ``u = drift(t, x)`` and ``div u`` (``(B, k)`` float64: the exact trace,
``k = 1``, or ``k`` Hutchinson probes ``z^T J z``) in one call, keeping no autograd graph.

Exact trace, ``div u = sum_i (J^T e_i)_i`` over the ``D`` basis vectors ``e_i`` of the event, by one of:

* ``"vmap"``: the ``D`` vector-Jacobian products of one evaluation over the batch, batched by vmap
  (``torch.autograd.grad(..., is_grads_batched=True)``): one forward over ``B`` and a batched backward.
* ``"loop"``: the same ``D`` VJPs one at a time (where vmap fails: an op without a vmap rule, as in a
  diffusers ``UNet2DModel``).
* ``"replicated"``: ``x`` replicated ``D`` times, ``x_rep`` of shape ``(D B, *event)`` (replica ``i``
  holds the whole batch; a per-sample ``t`` ``(B,)`` is replicated alongside, a 0-dim ``t`` stays 0-dim),
  the drift evaluated once on it, and one backward of ``sum(u_rep * E)``, ``E`` holding ``e_i`` on
  replica ``i``, gives every ``J^T e_i`` at once: one forward and one backward over ``D B`` inputs;
  ``u`` is read off replica 0. Exact when the drift treats the samples of its batch independently (any
  UNet or MLP in eval mode), for then the Jacobian of ``x_rep -> u_rep`` is block diagonal.

``method="auto"`` (the default) takes ``"vmap"`` where it works (it skips the ``D - 1`` extra forwards:
0.5-0.75x the anchor below on the digits MLP, against 1.0-1.25x for the replicated pass); where vmap
fails, the faster of ``"replicated"`` and ``"loop"``, both timed on the first call (the replicated pass
wins for small batches, where each VJP is mostly overhead: 2x at B = 2 on the UNet on a CPU; the loop
for large batches on a CPU, which skips the extra forwards: 2x at B = 64); ``"loop"`` where the batch
is coupled. Measured in ``benchmarks/bench_divergence.py`` against one forward and one backward over
``D B`` inputs (the anchor).

Memory: the basis is chunked to a budget ``max_bytes`` (``log_likelihood(exact_max_bytes=...)``,
default 1 GiB): a chunk holds ``c`` basis vectors (replicas), ``c = clamp(floor(max_bytes / m), 1, D)``,
``m`` the memory of one replica, ``m = A + 4 B D itemsize``: ``A`` the bytes the drift saves for its
backward on one forward over the batch (measured on the first call with
``torch.autograd.graph.saved_tensors_hooks``, the reachable modules' parameters and buffers not
counted), and the replica's input, basis cotangent, gradient and output. ``c = 1`` is the loop.

Batch coupling (``batch_coupled``, only the replicated pass needs independent samples): ``True``
rules the replicated pass out; ``False`` trusts the samples to be independent (no detection);
``None`` (default) reads a ``batch_coupled`` attribute on the objects the drift reaches (the ODE, a
``Diffusion``, a module), then detects, structurally, a ``torch.nn`` batch norm in training mode among
the modules the drift reaches (through bound methods, closures, the globals a function names,
``functools.partial`` and attributes), and, numerically on the first call, a replicated ``u`` or two
rows ``J^T e_i`` that differ from the batch's own to more than ``sqrt(eps)``; a drift that fails on
the replicated batch (e.g. conditioning tensors of batch ``B``) is set aside alike. Each fallback warns
once, naming why.

Hutchinson: the ``k`` VJPs ``z_j^T J`` with the probes held for the whole solve, batched by vmap.
"""

from __future__ import annotations

import functools
import math
import time
import types
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ._errors import InputError

#: how the exact trace is taken (module docstring)
METHODS = ("auto", "replicated", "vmap", "loop")
#: the tensors of one replica beyond the network's activations: input, basis cotangent, gradient, output
_REPLICA_TENSORS = 4
#: bounds of the search of the objects a drift reaches (modules, a ``batch_coupled`` flag)
_WALK_DEPTH, _WALK_OBJECTS, _WALK_ITEMS = 8, 512, 64


@dataclass(frozen=True)
class ExactBasis:
    """The ``D`` basis vectors of the exact trace over a batch ``(B, *event)``, built a chunk at a time
    (never the ``D x D`` identity), and the memory budget ``max_bytes`` of one chunk."""

    batch_shape: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    max_bytes: int

    @property
    def shape(self) -> Tuple[int, ...]:
        """``(D, B, *event)``, the shape of the whole basis over the batch."""
        return (self.D,) + self.batch_shape

    @property
    def D(self) -> int:
        return math.prod(self.batch_shape[1:])

    def rows(self, i0: int, i1: int) -> torch.Tensor:
        """``(i1 - i0, D)``: ``e_i0, ..., e_{i1-1}``."""
        c = i1 - i0
        e = torch.zeros(c, self.D, dtype=self.dtype, device=self.device)
        e[torch.arange(c, device=self.device), torch.arange(i0, i1, device=self.device)] = 1
        return e

    def chunk(self, i0: int, i1: int) -> torch.Tensor:
        """``(i1 - i0, B, *event)``: ``e_i`` broadcast over the batch, for ``i`` in ``[i0, i1)``."""
        B, event = self.batch_shape[0], self.batch_shape[1:]
        return self.rows(i0, i1)[:, None].expand(i1 - i0, B, self.D).reshape((i1 - i0, B) + event)


def replica_bytes(shape, dtype) -> int:
    """The tensors of one replica of the batch beyond the network's activations (input, basis
    cotangent, gradient and output): ``4 * B * D * itemsize`` bytes."""
    return _REPLICA_TENSORS * math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def exact_cotangents(x: torch.Tensor, exact_max_bytes: int) -> ExactBasis:
    """The ``D`` basis vectors of the exact trace over ``x``'s batch, chunked to ``exact_max_bytes``.

    Refused when even one replica of the batch (its input, cotangent, gradient and output:
    :func:`replica_bytes`) exceeds ``exact_max_bytes``.
    """
    if not isinstance(exact_max_bytes, int) or isinstance(exact_max_bytes, bool) or exact_max_bytes < 1:
        raise InputError(f"exact_max_bytes must be a positive int (bytes), got {exact_max_bytes!r}.")
    B, D = x.shape[0], math.prod(x.shape[1:])
    need = replica_bytes(x.shape, x.dtype)
    if need > exact_max_bytes:
        raise InputError(
            f"trace='exact' for B={B}, D={D} needs at least {need / 2**20:.1f} MiB for one replica of the batch "
            f"(its input, basis cotangent, gradient and output, 4*B*D*itemsize; the network's activations come "
            f"on top) > exact_max_bytes = {exact_max_bytes / 2**20:.1f} MiB. Use a smaller batch, "
            "trace='hutchinson' (with probes=k for a standard error), or raise exact_max_bytes if the memory "
            "is there.")
    return ExactBasis(tuple(x.shape), x.dtype, x.device, exact_max_bytes)


def _vjps(out: torch.Tensor, x: torch.Tensor, cot: torch.Tensor, vmap: bool = True,
          loop: bool = True, create_graph: bool = False) -> Tuple[Optional[torch.Tensor], bool]:
    """``(J^T c_j)_j`` for the cotangents ``c_j`` in ``cot`` (``(n, B, *event)``), and whether vmap failed:
    batched by vmap, or one VJP at a time where ``vmap`` is ``False`` or fails (``None`` then if ``loop`` is
    ``False``). The graph of ``out`` is kept; a drift that does not use ``x`` has rows 0. ``create_graph``: the
    rows keep their own graph (the adjoint's derivatives of the divergence, :mod:`flowsde._adjoint`)."""
    if vmap and cot.shape[0] > 1:
        try:
            with warnings.catch_warnings():
                # vmap may warn that an op falls back to a slow loop; the result is still exact
                warnings.simplefilter("ignore", UserWarning)
                (g,) = torch.autograd.grad(out, x, cot, is_grads_batched=True, retain_graph=True, allow_unused=True,
                                           create_graph=create_graph)
            return (torch.zeros_like(cot) if g is None else g), False
        except RuntimeError:  # an op without a vmap rule: one VJP at a time
            if not loop:
                return None, True
            failed = True
    else:
        failed = False
    gs = [torch.autograd.grad(out, x, c, retain_graph=True, allow_unused=True, create_graph=create_graph)[0]
          for c in cot]
    return torch.stack([torch.zeros_like(x) if g is None else g for g in gs]), failed


def _diagonal(g: torch.Tensor, i0: int, B: int, D: int) -> torch.Tensor:
    """``(B,)`` float64 ``sum_r g[r, :, i0 + r]`` of a chunk ``g`` ``(c, B, *event)`` of rows ``J^T e_i``."""
    c = g.shape[0]
    return torch.diagonal(g.reshape(c, B, D)[:, :, i0:i0 + c], dim1=0, dim2=2).to(torch.float64).sum(-1)


def _replicate(v: torch.Tensor, c: int, B: int) -> torch.Tensor:
    """``v`` with a leading batch ``B`` replicated ``c`` times, ``(c B, ...)`` (replica-major); a 0-dim or
    batch-broadcast (leading 1) ``v`` is returned as is."""
    if v.dim() == 0 or v.shape[0] != B or c == 1:
        return v
    return v.unsqueeze(0).expand((c,) + tuple(v.shape)).reshape((c * B,) + tuple(v.shape[1:]))


class _Reach:
    """The modules and the ``batch_coupled`` flag reachable from a drift (bounded walk through bound
    methods, closures, ``functools.partial``, containers and instance attributes)."""

    def __init__(self, drift):
        self.modules, self.flag, self.flag_owner = [], None, None
        seen, frontier = set(), [drift]
        for _ in range(_WALK_DEPTH):
            nxt = []
            for obj in frontier:
                if id(obj) in seen or len(seen) >= _WALK_OBJECTS or obj is None:
                    continue
                seen.add(id(obj))
                nxt.extend(self._visit(obj))
            frontier = nxt

    def _visit(self, obj) -> list:
        if isinstance(obj, (torch.Tensor, str, bytes, int, float, complex, bool, type, types.ModuleType)):
            return []
        try:
            flag = obj.__dict__.get("batch_coupled") if hasattr(obj, "__dict__") else None
        except (AttributeError, TypeError):
            flag = None
        if isinstance(flag, bool) and self.flag is None:
            self.flag, self.flag_owner = flag, type(obj).__name__
        if isinstance(obj, torch.nn.Module):
            self.modules.append(obj)
            return []
        if isinstance(obj, types.MethodType):
            return [obj.__self__, obj.__func__]
        if isinstance(obj, types.FunctionType):
            cells = [cell.cell_contents for cell in (obj.__closure__ or ()) if _filled(cell)]
            names = [obj.__globals__[n] for n in obj.__code__.co_names if n in obj.__globals__]  # globals it uses
            return cells + names[:_WALK_ITEMS] + [getattr(obj, "__wrapped__", None)]
        if isinstance(obj, functools.partial):
            return [obj.func, *obj.args, *obj.keywords.values()]
        if isinstance(obj, (tuple, list, set, frozenset)):
            return list(obj)[:_WALK_ITEMS]
        if isinstance(obj, dict):
            return list(obj.values())[:_WALK_ITEMS]
        d = getattr(obj, "__dict__", None)
        return list(d.values())[:_WALK_ITEMS] if isinstance(d, dict) else []

    def batch_norm_in_training(self) -> Optional[str]:
        """The first batch norm in training mode among the modules, as ``"Class 'name' of Owner"``."""
        for m in self.modules:
            for name, sub in m.named_modules():
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub.training:
                    return f"{type(sub).__name__} {name or '(the network itself)'!r} of {type(m).__name__}"
        return None

    def parameter_storages(self) -> set:
        ptrs = set()
        for m in self.modules:
            for p in list(m.parameters()) + list(m.buffers()):
                ptrs.add(_storage_ptr(p))
        return ptrs


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:  # an empty cell
        return False


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return t.data_ptr()


class _SavedBytes:
    """Bytes saved for backward during a forward (``saved_tensors_hooks``), each storage counted once,
    the storages in ``skip`` (the modules' parameters and buffers) not counted."""

    def __init__(self, skip: set):
        self.skip, self.seen, self.bytes = skip, set(), 0

    def pack(self, t: torch.Tensor):
        ptr = _storage_ptr(t)
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            try:
                self.bytes += t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):
                self.bytes += t.numel() * t.element_size()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


class Divergence:
    """``(u, div u)`` of a drift at ``(t, x)``.

    Arguments:
        cot: an :class:`ExactBasis` (``exact``; from :func:`exact_cotangents`) or the ``k`` probes
            ``(k, B, *event)``.
        exact: the exact trace (``True``) or Hutchinson's estimator.
        method: the exact trace's method (module docstring): ``"auto"`` (default: ``"vmap"`` where it works,
            else the faster of ``"replicated"`` and ``"loop"`` as timed on the first call; ``"loop"`` where
            the batch is coupled), ``"replicated"`` (neither checked numerically nor timed; per-batch VJPs
            where the batch is known to be coupled), ``"vmap"`` (``"loop"`` where vmap fails) or ``"loop"``.
        batch_coupled: ``True`` (the drift couples the samples of its batch: no replicated pass), ``False``
            (they are independent: no detection) or ``None`` (a ``batch_coupled`` attribute on an object
            the drift reaches, else detection).

    After the first call, ``mode`` is the method in use and ``reason`` why the replicated pass was not
    (a coupled batch), if it was set aside.
    """

    def __init__(self, cot, exact: bool, *, method: str = "auto", batch_coupled: Optional[bool] = None):
        if method not in METHODS:
            raise InputError(f"Divergence(method={method!r}): choose one of {METHODS}.")
        if batch_coupled not in (None, True, False):
            raise InputError(f"Divergence(batch_coupled={batch_coupled!r}): must be None, True or False.")
        if exact and not isinstance(cot, ExactBasis):
            raise InputError(f"Divergence: the exact trace takes the ExactBasis of exact_cotangents, got "
                             f"{type(cot).__name__}.")
        self.cot, self.exact = cot, exact
        self.k = 1 if exact else cot.shape[0]
        self.method, self.batch_coupled = method, batch_coupled
        self.mode: Optional[str] = None  # "vmap", "loop" or "replicated", fixed on the first call
        self.reason: Optional[str] = None  # why not "replicated" (a coupled batch), if it was set aside
        self.chunk: Optional[int] = None  # basis vectors (replicas) per chunk

    def __call__(self, drift, t: torch.Tensor, x: torch.Tensor):
        """``u`` (detached, the shape and dtype of ``x``) and ``div u`` ``(B, k)`` float64."""
        with torch.enable_grad():
            if not self.exact:
                u, div = self._hutchinson(drift, t, x)
            elif self.mode is None:
                u, div = self._first(drift, t, x)
            elif self.mode == "replicated":
                u, div = self._replicated(drift, t, x)
            else:
                xg = x.detach().requires_grad_(True)
                u = drift(t, xg)
                div = self._per_batch(u, xg, vmap=self.mode == "vmap")
        # the log-density is accumulated in float64: at |logp| ~ 3000 float32 resolves only 2e-4 nats
        return u.detach(), div.detach().to(torch.float64).reshape(x.shape[0], self.k)

    # -- Hutchinson -------------------------------------------------------------------------
    def _hutchinson(self, drift, t, x):
        B, D, k = x.shape[0], math.prod(x.shape[1:]), self.k
        xg = x.detach().requires_grad_(True)
        u = drift(t, xg)
        if not u.requires_grad:  # a drift that does not depend on x (divergence 0)
            return u, torch.zeros(B, k, dtype=torch.float64, device=x.device)
        g, _ = _vjps(u, xg, self.cot)
        return u, (g * self.cot).reshape(k, B, D).sum(-1).transpose(0, 1)

    # -- exact: the first call decides ---------------------------------------------------------
    def _first(self, drift, t, x):
        """Evaluate on the batch alone (the drift's checks see the data's own shape), measure the memory
        of a replica, and pick the method (:class:`Divergence`, ``method``)."""
        B, D = x.shape[0], math.prod(x.shape[1:])
        reach = _Reach(drift)
        saved = _SavedBytes(reach.parameter_storages())
        xg = x.detach().requires_grad_(True)
        with saved.hooks():
            u = drift(t, xg)
        self.chunk = int(min(D, max(1, self.cot.max_bytes // (saved.bytes + replica_bytes(x.shape, x.dtype)))))
        if not u.requires_grad:  # a drift that does not depend on x (divergence 0): decide on a later call
            return u, torch.zeros(B, dtype=torch.float64, device=x.device)
        if self.method in ("auto", "vmap"):  # "auto" gives up at the first chunk if vmap fails
            div = self._per_batch(u, xg, vmap=True, give_up=self.method == "auto")
            if div is not None:
                return u, div
        if self.method == "loop" or D == 1 or self.chunk == 1:  # one replica per chunk: the loop, less forwards
            self.mode = "loop"
            return u, self._per_batch(u, xg, vmap=False)
        reason = self._coupling(reach)
        out = None
        if reason is None:
            reason, out, t_rep, t_vjp = self._try_replicated(drift, t, x, u, xg)
        if reason is not None:
            self.reason, self.mode = reason, "loop"
            warnings.warn(f"log_likelihood: the exact trace falls back to the D = {D} vector-Jacobian products of "
                          f"the batch instead of one pass over D x B = {D * B} replicated samples: {reason}.",
                          UserWarning, stacklevel=4)
            return u, self._per_batch(u, xg, vmap=self.method == "replicated")  # "auto": vmap failed already
        # the faster of the two, as timed on this call (both exact; measured in benchmarks/bench_divergence.py)
        self.mode = "loop" if self.method == "auto" and t_vjp is not None and D * t_vjp < t_rep else "replicated"
        return out

    def _coupling(self, reach: _Reach) -> Optional[str]:
        """Why the batch is coupled, known before any replicated evaluation (``None``: not known)."""
        flag = self.batch_coupled if self.batch_coupled is not None else reach.flag
        if flag is True:
            where = "Divergence" if self.batch_coupled is not None else reach.flag_owner
            return f"batch_coupled=True on the {where} (the drift couples the samples of its batch)"
        if flag is False:
            return None
        bn = reach.batch_norm_in_training()
        if bn is not None:
            return (f"{bn} is in training mode, so its batch statistics couple the samples; call .eval() on "
                    "the network for the likelihood of a trained model")
        return None

    def _try_replicated(self, drift, t, x, u, xg):
        """``(None, (u, div), t_rep, t_vjp)`` from the replicated pass (``t_rep`` its time, ``t_vjp`` that of
        one VJP over the batch, ``None`` for ``method="replicated"``), checked against the batch alone unless
        asked for or declared independent; or ``(reason, None, None, None)``."""
        B = x.shape[0]
        try:
            t0 = time.perf_counter()
            u_rep, div, g0 = self._replicated(drift, t, x, keep_first=True)
            t_rep = time.perf_counter() - t0
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            return (f"the drift failed on the replicated batch of {self.chunk * B} samples ({type(e).__name__}: "
                    f"{msg}); a drift holding per-sample tensors of batch B (e.g. conditioning) cannot be "
                    "replicated"), None, None, None
        if self.method == "replicated":  # asked for: neither checked nor timed
            return None, (u_rep, div), t_rep, None
        idx = sorted({0, g0.shape[0] - 1})  # two rows by per-batch VJPs: the check and the loop's time
        t0 = time.perf_counter()
        ref, _ = _vjps(u, xg, self.cot.chunk(0, g0.shape[0])[idx], vmap=False)
        t_vjp = (time.perf_counter() - t0) / len(idx)
        if self.batch_coupled is False:  # declared independent: not checked
            return None, (u_rep, div), t_rep, t_vjp
        # the Jacobian of the replicated batch is block diagonal, and u the same, iff the samples are uncoupled
        tol, tiny = math.sqrt(torch.finfo(x.dtype).eps), torch.finfo(x.dtype).tiny
        for name, a, b in (("u", u.detach(), u_rep), ("J^T e_i", ref, g0[idx])):
            err, scale = float((a - b).norm()), float(a.norm() + b.norm())
            if not err <= tol * scale + tiny:
                return (f"{name} on the batch replicated {g0.shape[0]} times differs from {name} on the batch "
                        f"alone by {err / max(scale, tiny):.1e} relative (> sqrt(eps) = {tol:.1e}): the drift "
                        "couples the samples of its batch or is not deterministic"), None, None, None
        return None, (u_rep, div), t_rep, t_vjp

    # -- exact: the methods --------------------------------------------------------------------
    def _replicated(self, drift, t, x, keep_first: bool = False):
        """One forward and one backward over ``D B`` replicated samples, ``self.chunk`` replicas at a time;
        ``keep_first``: also the first chunk's rows ``(c, B, *event)``."""
        B, D, c = x.shape[0], math.prod(x.shape[1:]), self.chunk
        div, u, g0 = torch.zeros(B, dtype=torch.float64, device=x.device), None, None
        for i0 in range(0, D, c):
            i1 = min(D, i0 + c)
            xr = _replicate(x.detach(), i1 - i0, B).requires_grad_(True)
            ur = drift(_replicate(t, i1 - i0, B), xr)
            if u is None:
                u = ur[:B].detach()
            g = None
            if ur.requires_grad:
                (g,) = torch.autograd.grad(ur, xr, self.cot.chunk(i0, i1).reshape(ur.shape), allow_unused=True)
            if g is None:  # a drift that does not depend on x (divergence 0)
                g = torch.zeros_like(xr)
            g = g.reshape((i1 - i0,) + tuple(x.shape))
            div = div + _diagonal(g, i0, B, D)
            if keep_first and g0 is None:
                g0 = g.detach()
        return (u, div, g0) if keep_first else (u, div)

    def _per_batch(self, u, xg, vmap: bool, give_up: bool = False) -> Optional[torch.Tensor]:
        """``(B,)`` float64: the trace by the VJPs of ``u`` over the batch, ``self.chunk`` at a time, batched
        by vmap (``self.mode`` becomes ``"loop"`` where it fails; ``give_up``: then ``None``) or one at a time."""
        B, D = xg.shape[0], math.prod(xg.shape[1:])
        div = torch.zeros(B, dtype=torch.float64, device=xg.device)
        self.mode = "vmap" if vmap else "loop"
        if not u.requires_grad:
            return div
        for i0 in range(0, D, self.chunk):
            i1 = min(D, i0 + self.chunk)
            g, failed = _vjps(u, xg, self.cot.chunk(i0, i1), vmap=self.mode == "vmap", loop=not give_up)
            if failed:  # an op without a vmap rule: one VJP at a time from now on
                self.mode = "loop"
            if g is None:
                return None
            div = div + _diagonal(g, i0, B, D)
        return div
