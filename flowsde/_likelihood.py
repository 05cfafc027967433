"""Exact log-likelihoods along an ODE: the instantaneous change of variables.

For ``dx/dt = u(t, x)`` carried from ``t_data`` to ``t_prior``,

    log p_{t_data}(x) = log p_{t_prior}(x(t_prior)) + int_{t_data}^{t_prior} div u(t, x(t)) dt

(Chen et al. 2018, "Neural ODEs", Thm. 1; Song et al. 2021, score_sde, eq. (39)).
The augmented state ``(x, L)`` with ``dL/dt = div u`` (``L`` of shape ``(B, k)``,
one channel per Hutchinson probe, ``k = 1`` for the exact trace) is solved by an
adaptive engine (:class:`flowsde.solvers.RK45` by default, or torchdiffeq's solvers through
:class:`flowsde.solvers.TorchDiffEq`). The accuracy is asked for in bits per dimension
(``bpd_tol``): each log-density channel is held, in absolute terms, to
``|local error of L| <= bpd_tol * D * ln 2`` nats per step (a log-density error is
measured in nats; ``L`` starts at 0 and its size says nothing about the accuracy needed,
so a relative tolerance would loosen the control exactly when the divergence integral is
large), the state ``x`` to ``atol + rtol |x|`` (RMS over the event; default ``bpd_tol``).
``L`` is accumulated in float64 whatever the state's dtype, and the sum of its embedded
error estimates over the accepted steps is reported as ``solver_error``
(``docs/likelihood.md``).

Divergence:

* ``trace="exact"``: ``div u = sum_i (J^T e_i)_i`` by :class:`flowsde._divergence.Divergence`: the ``D``
  vector-Jacobian products batched in one backward call (vmap) where the model supports it, else one
  forward and backward over ``D x B`` replicated inputs (a network whose samples are independent in the
  batch) or a loop of VJPs, whichever the first call measures faster; chunked to ``exact_max_bytes``
  per chunk; a network that couples its batch (BatchNorm in training mode, ``batch_coupled=True`` on the
  ODE) falls back to the VJPs, with a warning. Any event shape.
* ``trace="hutchinson"``: ``div u ~ z^T J z`` with ``k`` probes ``z`` (Rademacher
  or Gaussian, ``E[z z^T] = I``) drawn once from the caller's generator and held
  for the whole solve (score_sde issue #10), the ``k`` estimates integrated in the
  same solve; the standard error is ``std_j(logp_j) / sqrt(k)``.

No autograd graph survives a step: ``x`` is detached and gradients are taken
under a local ``torch.enable_grad()``, so memory stays O(batch x state).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import torch

from ._checks import check_state
from ._divergence import Divergence, exact_cotangents
from ._error_control import Climb, Ladder, climb, fold, take
from ._solvers.rk45 import check_tolerances
from ._utils import batch_broadcast, rademacher, rand, randn
from ._errors import InputError
from ._solution import Status

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


ERROR_ESTIMATES = ("global", "embedded")
#: what ``solver_error`` promises, per ``error_estimate`` (``stats["guarantee"]``; ``docs/likelihood.md``)
GUARANTEES = {
    "global": "global error per sample: each sample is solved until its estimate is <= bpd_tol, and solver_error "
              "bounds the true error of logp for most samples (95-100% measured on 297 digits of the shipped digits "
              "models and on an image-sized mixture; 88.6% for digits-velocity at bpd_tol=1e-6, whose network "
              "oscillates near t = 0: docs/likelihood.md, 'Where the estimate can miss')",
    "embedded": "local error only: the sum of the embedded estimates; NOT a bound on the true error, and bpd_tol "
                "is a per-step tolerance",
}
#: the error of log p left in a dtype at any tolerance (bits/dim): float32 on digits-eps against float64 leaves
#: 3e-7 (median) to 1.2e-6 (largest over 16 digits) at bpd_tol 1e-7 to 1e-9 (docs/likelihood.md, "What bpd_tol
#: promises"); ``bpd_tol`` is refused below 10x this
BPD_FLOOR = {torch.float32: 1e-6}
#: the diagnosis of a rough data end: warn when more than NEAR_SHARE of the steps start within NEAR_FRACTION
#: of the engine's span (in the warped time) from the data end (``docs/likelihood.md``, "A model that misbehaves at the data end")
NEAR_FRACTION = 0.01
NEAR_SHARE = 0.5
#: the likelihood's default step control: per sample, so a sample's numbers do not depend on its batch
LIKELIHOOD_PER_SAMPLE = True
#: default accuracy of the log-density in bits per dimension (see ``docs/likelihood.md``, "Error control")
DEFAULT_BPD_TOL = 1e-5
#: default time warp where the span is in ``t >= 0`` (see ``docs/likelihood.md``, "Time warp")
DEFAULT_TIME_WARP = 1.5


@dataclass
class LikelihoodResult:
    """What :func:`log_likelihood` returns.

    The log-densities are float64 whatever the data's dtype (they are accumulated in float64: at
    ``|logp| ~ 3000`` float32 resolves only 2e-4 nats).

    A failed sample (``status`` not ``SUCCESS``; only with ``throw=False``, else the call raises) has
    NaN in every number of its own: ``logp``, ``stderr``, ``solver_error``, ``prior_logp``, ``delta_logp``,
    its row of ``logp_probes``, and the adapter's ``bpd``, ``*_corrected`` and ``residual``; its
    ``status`` says why (a partial integral is not an answer). Its counts (``nfe_per_sample``) and its
    ``z`` and ``t_final`` (the state and time where the solve stopped) are kept, for diagnosis. The other
    samples' numbers are those of a run without the failure's NaNs (bit-identical).

    Attributes:
        logp: ``(B,)`` log-density (nats) of the data at ``t_data`` (mean over probes for Hutchinson).
        stderr: ``(B,)`` standard error of ``logp`` from the probes (Hutchinson; NaN with one probe: no
            spread to measure), ``None`` for the exact trace.
        solver_error: ``(B,)`` estimate of the ODE solver's error on ``logp`` (nats): the sum of the
            embedded error estimates of the log-density channel over the accepted steps
            (``docs/likelihood.md`` measures how it tracks the true error).
        nfe: evaluations of the ODE's drift (each with its D or k vector-Jacobian products), for the batch.
        dims: ``D``, the number of data dimensions (for the per-dimension figures).
        prior_logp: ``(B,)`` ``log p_{t_prior}(z)``.
        delta_logp: ``(B,)`` ``int div u dt`` (mean over probes).
        z: ``(B, *event)`` the state reached at ``t_prior``.
        status, t_final: per-sample :class:`flowsde.Status` and time reached (float64).
        steps, accepted, rejected: solver counts (max over samples in per-sample mode).
        logp_probes: ``(B, k)`` one estimate per probe (Hutchinson) or ``None``.
        stats: extras (engine, mode, tolerances, trace, probes, ...), and ``nfe_per_sample``: ``(B,)`` int64
            on the data's device, the evaluations each sample took (RK45: its first evaluation, the
            initial-step probe and 6 per step while it ran; both solves with ``error_estimate="resolve"``).
            With batch-shared steps (and torchdiffeq) it is ``nfe`` for every sample that did not fail;
            in per-sample mode each sample's own count (``nfe`` is then the batch's, >= the max).

    ``Diffusion.log_likelihood`` (``flowsde.adapters``) returns the same type and fills in
    what it knows of the data (``None`` otherwise):

        bpd: ``(B,)`` bits/dim (:func:`bits_per_dim`), when ``levels``/``bits`` is given.
        logp_corrected, stderr_corrected, bpd_corrected: the t_eps-corrected numbers (``corrected=True``).
        solver_error_corrected: ``(B,)`` the second solve's error estimate on ``logp_corrected`` (nats).
        residual: ``(B,)`` decoder log-likelihood + entropy of the correction.
    """

    logp: torch.Tensor
    stderr: Optional[torch.Tensor]
    solver_error: torch.Tensor
    nfe: int
    dims: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    z: torch.Tensor
    status: torch.Tensor
    t_final: torch.Tensor
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    logp_probes: Optional[torch.Tensor] = None
    stats: dict = field(default_factory=dict)
    bpd: Optional[torch.Tensor] = None
    logp_corrected: Optional[torch.Tensor] = None
    stderr_corrected: Optional[torch.Tensor] = None
    bpd_corrected: Optional[torch.Tensor] = None
    solver_error_corrected: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None

    #: the per-sample numbers set to NaN where a sample failed (``_nan_where_failed``)
    _PER_SAMPLE_NUMBERS = ("logp", "stderr", "solver_error", "prior_logp", "delta_logp", "logp_probes", "bpd",
                           "logp_corrected", "stderr_corrected", "bpd_corrected", "solver_error_corrected",
                           "residual")

    def _nan_where_failed(self) -> None:
        """Set every per-sample number of the samples whose ``status`` is not ``SUCCESS`` to NaN (the
        others are left untouched, bit for bit)."""
        failed = self.status != Status.SUCCESS
        for name in self._PER_SAMPLE_NUMBERS:
            v = getattr(self, name)
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.shape[:1] == failed.shape:
                mask = failed.to(v.device).reshape(failed.shape + (1,) * (v.dim() - 1))
                setattr(self, name, v.masked_fill(mask, float("nan")))

    @property
    def solver_error_bpd(self) -> torch.Tensor:
        """``solver_error`` in bits per dimension: ``solver_error / (D ln 2)``."""
        return self.solver_error / (self.dims * math.log(2))

    @property
    def success(self) -> bool:
        return bool((self.status == Status.SUCCESS).all())

    def __repr__(self) -> str:
        ok = int((self.status == Status.SUCCESS).sum())
        return (f"{type(self).__name__}(B={self.logp.shape[0]}, mean logp={float(self.logp.mean()):.6g}, "
                f"solver_error<={float(self.solver_error.max()):.2g} nats, nfe={self.nfe}, "
                f"trace={self.stats.get('trace')!r}, success={ok}/{self.status.numel()})")


def check_data(x, name="x") -> None:
    """Refuse what cannot be data: the solver's checks of a state plus an event dimension."""
    check_state(x, name)  # tensor, floating (not half precision), batch-first, finite, real device: the solver's checks
    if x.dim() < 2:
        raise InputError(f"{name}: expected a batch-first tensor (B, *event_shape) with an event dimension, got "
                         f"shape {tuple(x.shape)}; add one, e.g. x[:, None].")


def _check_tol(name, v) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not v > 0:
        raise InputError(f"log_likelihood: {name} must be a finite number > 0, got {v!r}.")
    return float(v)


def draw_probes(shape: Tuple[int, ...], k: int, probe: str, generator, dtype, device) -> torch.Tensor:
    """Hutchinson probes ``(k, B, *event)`` with ``E[z z^T] = I``, drawn once.

    ``generator``: ``None`` (global RNG), a ``torch.Generator``, or a list of ``B``
    generators (one per sample: a sample's probes then do not depend on its batch).
    """
    draw = rademacher if probe == "rademacher" else randn
    return draw((shape[0], k) + tuple(shape[1:]), generator, dtype, device).transpose(0, 1).contiguous()


def quantization_levels(levels, bits, *, default_bits: Optional[int] = 8, where: str = "") -> Optional[int]:
    """The number of quantization bins ``L``: ``levels`` if given, else ``2**bits`` (``bits`` defaults
    to ``default_bits``; ``None`` when neither is given and ``default_bits`` is ``None``)."""
    pre = f"{where}: " if where else ""
    if levels is not None:
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
            raise InputError(f"{pre}levels must be an int >= 2 (the number of quantization bins, e.g. 17 for "
                             f"values 0..16), got {levels!r}.")
    if bits is not None:
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
            raise InputError(f"{pre}bits must be a positive int (the bit depth), got {bits!r}.")
        if levels is not None and levels != 2**bits:
            raise InputError(f"{pre}levels={levels} contradicts bits={bits} (2**bits = {2**bits}); pass one of them.")
    if levels is not None:
        return levels
    if bits is None:
        bits = default_bits
    return None if bits is None else 2**bits


def bin_width(levels: int, data_range: Tuple[float, float]) -> float:
    """``Delta = (hi - lo) / (L - 1)``: the spacing of the data grid and the width of each dequantization bin."""
    lo, hi = check_data_range(data_range)
    return (hi - lo) / (levels - 1)


def bits_per_dim(logp: torch.Tensor, dims: int, *, levels: Optional[int] = None, bits: Optional[int] = None,
                 data_range: Tuple[float, float] = (-1.0, 1.0)):
    """Bits per dimension of discrete data from the log-density of its dequantized version.

    Convention (``docs/likelihood.md``): the ``L`` values ``k = 0..L-1`` of each dimension sit on the grid
    ``x_k = lo + k Delta``, ``Delta = (hi - lo) / (L - 1)`` (``lo`` and ``hi`` included: ``ToTensor()``
    then ``2x - 1``, or digits' ``k / 16`` scaled). Bin ``k`` is ``[x_k - Delta/2, x_k + Delta/2)``;
    the bins tile ``[lo - Delta/2, hi + Delta/2)``, so ``P(k) = int_bin p_y`` is a distribution over the
    ``L^D`` values and Jensen gives ``log P(k) >= E_U log p_y(y) + D log Delta``, hence

        bpd = -logp / (D ln 2) - log2(Delta) = -logp / (D ln 2) - log2(hi - lo) + log2(L - 1)

    (a uniform density over the bins gives ``log2 L`` bits/dim).

    Arguments:
        logp: ``(B,)`` log-density (nats) of the dequantized data ``y`` (:func:`dequantize`).
        dims: ``D``, the number of data dimensions.
        levels: the number of quantization bins ``L`` (e.g. 17 for values 0..16); overrides ``bits``.
        bits: bit depth ``n`` (``L = 2^n``); default 8 when ``levels`` is not given.
        data_range: ``(lo, hi)``: the values of ``k = 0`` and ``k = L - 1``.
    """
    L = quantization_levels(levels, bits, where="bits_per_dim")
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise InputError(f"bits_per_dim: dims must be a positive int, got {dims!r}.")
    return -logp / (dims * math.log(2)) - math.log2(bin_width(L, data_range))


def check_data_range(data_range):
    """``(lo, hi)`` as floats; refuse anything but finite ``lo < hi``."""
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError) as e:
        raise InputError(f"data_range: expected (lo, hi), got {data_range!r}.") from e
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"data_range: expected finite lo < hi, got {(lo, hi)}.")
    return lo, hi


def check_in_range(x: torch.Tensor, data_range, *, levels: Optional[int] = None, where: str = "x") -> None:
    """Refuse data outside ``data_range`` (widened by half a bin when ``levels`` is given: the support of
    dequantized data)."""
    lo, hi = check_data_range(data_range)
    half = 0.0 if levels is None else 0.5 * (hi - lo) / (levels - 1)
    # relative slack for the rounding of the scaling to the data range
    slack = 8 * torch.finfo(x.dtype).eps * max(abs(lo), abs(hi), hi - lo)
    mn, mx = (float(v) for v in torch.stack([x.amin(), x.amax()]).tolist())
    if mn < lo - half - slack or mx > hi + half + slack:
        bad = ((x < lo - half - slack) | (x > hi + half + slack)).reshape(x.shape[0], -1).any(1)
        idx = bad.nonzero().flatten().tolist()
        support = (f"[{lo!r}, {hi!r}]" if levels is None else
                   f"[{lo - half!r}, {hi + half!r}] (data_range {(lo, hi)} widened by half a bin, the support "
                   f"of data dequantized into {levels} levels)")
        raise InputError(f"{where}: values in [{mn:.6g}, {mx:.6g}] lie outside {support} in samples "
                         f"{idx[:10]}{' ...' if len(idx) > 10 else ''}; bits/dim of such data is meaningless. "
                         "Scale the data into data_range, or pass the data_range it was scaled to.")


def dequantize(x: torch.Tensor, *, levels: Optional[int] = None, bits: Optional[int] = None,
               data_range: Tuple[float, float] = (-1.0, 1.0), generator=None, grid_tol: float = 1e-3) -> torch.Tensor:
    """Uniform dequantization of discrete data given on its grid.

    ``x = lo + k Delta``, ``Delta = (hi - lo) / (L - 1)``, ``k in 0..L-1`` (e.g. ``ToTensor()`` then
    ``2x - 1`` for ``L = 256``; digits' values ``0..16`` scaled for ``L = 17``) is mapped to
    ``y = x + (U - 1/2) Delta``, ``U ~ Uniform[0, 1)^D``: uniform over bin ``k``, centred on the value the
    model was trained on (see :func:`bits_per_dim` for the matching bits/dim).

    Arguments:
        x: ``(B, *event)`` data on the grid.
        levels: the number of quantization bins ``L``; overrides ``bits``.
        bits: bit depth (``L = 2^bits``); default 8 when ``levels`` is not given.
        data_range: ``(lo, hi)``, the values of ``k = 0`` and ``k = L - 1``.
        generator: ``None``, a ``torch.Generator`` or a list of per-sample generators (one per sample:
            a sample's noise then does not depend on its batch).
        grid_tol: how far (in bins) ``x`` may be off the grid (rounding of the scaling).

    Raises:
        InputError: ``x`` outside ``data_range`` or off the grid.
    """
    check_data(x)
    L = quantization_levels(levels, bits, where="dequantize")
    lo, hi = check_data_range(data_range)
    check_in_range(x, data_range, where="dequantize")
    delta = (hi - lo) / (L - 1)
    kf = (x - lo) / delta
    k = kf.round()
    off = float((kf - k).abs().amax())
    if off > grid_tol:
        raise InputError(f"dequantize: x is not on the grid of {L} levels lo + k (hi - lo) / {L - 1} with "
                         f"(lo, hi) = {(lo, hi)} (off by up to {off:.3g} bins; not {L}-level data). Pass levels/bits/"
                         "data_range matching the data, or dequantize=False for already-continuous data.")
    U = rand(x.shape, generator, x.dtype, x.device)
    return lo + (k + U - 0.5) * delta


@dataclass(frozen=True)
class TimeWarp:
    """The engine's time variable ``s`` with ``t = s^rho`` (``rho = 1``: ``t`` itself); see ``time_warp``.

    ``dx/ds = (dt/ds) u(s^rho, x)``, ``dt/ds = rho s^(rho - 1)``, the divergence scaled alike: the
    integral, hence the answer, is that in ``t``.
    """

    rho: float
    t_data: float
    t_prior: float

    @property
    def t_range(self) -> Tuple[float, float]:
        return min(self.t_data, self.t_prior), max(self.t_data, self.t_prior)

    @property
    def s_span(self) -> Tuple[float, float]:
        """``(s_data, s_prior)``, the engine's span."""
        if self.rho == 1.0:
            return self.t_data, self.t_prior
        return self.t_data ** (1.0 / self.rho), self.t_prior ** (1.0 / self.rho)

    def s_of(self, t: float) -> float:
        """``s = t^(1/rho)`` of a time ``t`` (the engine's time)."""
        return t if self.rho == 1.0 else t ** (1.0 / self.rho)

    def near_data_end(self, fraction: float = NEAR_FRACTION) -> float:
        """``fraction`` of the engine's span (in ``s``: a warp already spreads the steps over the data end)."""
        s0, s1 = self.s_span
        return fraction * abs(s1 - s0)

    def t_of(self, s: torch.Tensor) -> torch.Tensor:
        """``t = s^rho`` in float64, clamped to the span (``s^rho`` may round just outside it)."""
        return s.pow(self.rho).clamp(*self.t_range)

    def dt_ds(self, s: torch.Tensor) -> torch.Tensor:
        return self.rho * s.pow(self.rho - 1.0)

    def report_in_t(self, out) -> None:
        """Turn the engine's time reached and last step (in ``s``) into ``t``."""
        if self.rho == 1.0:
            return
        s_lo, s_hi = min(self.s_span), max(self.s_span)
        sf = out.t_final
        t_of = lambda v: self.t_of(v.clamp(s_lo, s_hi))  # noqa: E731
        out.t_final = torch.where(sf == self.s_span[1], self.t_prior, t_of(sf))  # the end exactly, not s_end^rho
        out.h = t_of(sf + out.h) - t_of(sf)


class AugmentedODE:
    """The augmented ODE of the instantaneous change of variables: ``d(x, L)/ds = (u, div u)`` (module docstring).

    ``L`` has one float64 channel per cotangent set: ``(B, 1)`` for the exact trace (``cot`` the ``D``
    basis vectors), ``(B, k)`` for ``k`` Hutchinson probes (``cot`` the probes). Called by the engine as
    ``f(s, (x, L))`` with ``s`` float64 in the warped time of ``warp``. The first call checks what the
    drift returns (an :class:`InputError` naming the data's shape for a model fed the wrong data).
    """

    def __init__(self, ode, x: torch.Tensor, cot: torch.Tensor, exact: bool, warp: TimeWarp,
                 div_method: str = "auto"):
        self.ode, self.cot, self.exact, self.warp = ode, cot, exact, warp
        self.shape, self.dtype, self.device = tuple(x.shape), x.dtype, x.device
        self.B, self.D = x.shape[0], math.prod(x.shape[1:])
        self.k = 1 if exact else cot.shape[0]
        self.time_dtype = getattr(ode, "time_dtype", None) or x.dtype
        self.div = Divergence(cot, exact, method=div_method, batch_coupled=getattr(ode, "batch_coupled", None))
        self._first = True

    def initial_state(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x.detach(), torch.zeros(self.B, self.k, dtype=torch.float64, device=self.device)

    def __call__(self, t: torch.Tensor, y) -> Tuple[torch.Tensor, torch.Tensor]:
        xs = y[0].detach()
        if self.warp.rho != 1.0:
            s = t
            t, dt_ds = self.warp.t_of(s), self.warp.dt_ds(s)
        tt = t.to(self.time_dtype)  # time is float64 in the solver; cast once here
        drift = self._first_drift if self._first else self.ode.drift
        u, div = self.div(drift, tt, xs)  # u detached, div (B, k) float64
        if self.warp.rho != 1.0:  # d/ds = (dt/ds) d/dt on both channels
            u = u * batch_broadcast(dt_ds.to(self.dtype), u)
            div = div * (dt_ds.unsqueeze(-1) if dt_ds.dim() else dt_ds)
        return u, div

    def _first_drift(self, tt: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        self._first = False
        shape, dtype = tuple(xg.shape), self.dtype  # the batch the divergence evaluates (may replicate x)
        try:
            u = self.ode.drift(tt, xg)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise InputError(f"the ODE's drift failed on the data x of shape {shape} {dtype} at t = "
                             f"{self.warp.t_data!r}: {e}. Is the data shaped and typed as the model expects?") from e
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != shape or u.dtype != dtype:
            got = (f"{tuple(u.shape)} {u.dtype}" if isinstance(u, torch.Tensor) else type(u).__name__)
            raise InputError(f"the ODE's drift returned {got} for x of shape {shape} {dtype}; it must return the "
                             "shape and dtype of x (is the data shaped for the model?).")
        return u


@dataclass(frozen=True)
class _Tolerances:
    """The engine's tolerances: the state's ``(rtol, atol)`` and the log-density channels' absolute
    ``logp_atol`` (nats per sample, per step), never below ``floor`` (10 eps of the dtype) for the state."""

    rtol: float
    atol: float
    logp_atol: float
    floor: float
    bpd_tol: float

    @classmethod
    def of(cls, bpd_tol, rtol, atol, dtype: torch.dtype, dims: int, promise: bool = False) -> "_Tolerances":
        bpd_tol = _check_tol("bpd_tol", bpd_tol)
        floor_bpd = BPD_FLOOR.get(dtype)
        if promise and floor_bpd is not None and bpd_tol < 10 * floor_bpd:
            raise InputError(f"log_likelihood: bpd_tol={bpd_tol:g} is below what {dtype} can promise: its floor "
                             f"(the error left at any tolerance, measured on the shipped digits models) is "
                             f"{floor_bpd:g} bits/dim, and bpd_tol is promised from 10x the floor, "
                             f"{10 * floor_bpd:g}. Ask for bpd_tol >= {10 * floor_bpd:g}, or pass float64 data "
                             "(and a float64 network) for tighter tolerances.")
        floor = 10 * torch.finfo(dtype).eps
        rtol = max(bpd_tol, floor) if rtol is None else _check_tol("rtol", rtol)
        atol = max(bpd_tol, floor) if atol is None else _check_tol("atol", atol)
        check_tolerances(rtol, atol, dtype, where="log_likelihood")
        return cls(rtol, atol, bpd_tol * dims * math.log(2), floor, bpd_tol)

    def divided(self, q: float) -> "_Tolerances":
        """Every tolerance divided by ``q`` (the state's kept at or above ``floor``)."""
        return _Tolerances(max(self.rtol / q, self.floor), max(self.atol / q, self.floor), self.logp_atol / q,
                           self.floor, self.bpd_tol / q)

    @property
    def pairs(self):
        """Per component ``(rtol, atol)``: the state's, and the log-density's absolute one."""
        return (self.rtol, self.atol), (0.0, self.logp_atol)


@dataclass
class _Run:
    """One solve of the augmented ODE: the engine's output, ``z`` and ``L`` at ``t_prior``, ``log p(z)``."""

    out: object  # flowsde._solvers.rk45.Integration
    z: torch.Tensor
    L: torch.Tensor
    prior_logp: torch.Tensor  # float64 (B,)

    @property
    def per_probe(self) -> torch.Tensor:
        """``(B, k)`` float64: ``log p(z) + L`` per channel."""
        return self.prior_logp.unsqueeze(1) + self.L


def log_likelihood(
    ode,
    x: torch.Tensor,
    t_span: Sequence[float],
    prior_logp: Callable[[torch.Tensor], torch.Tensor],
    *,
    trace: str = "exact",
    probes: int = 1,
    probe: str = "rademacher",
    bpd_tol: float = DEFAULT_BPD_TOL,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    method="rk45",
    generator=None,
    per_sample: Optional[bool] = None,
    max_steps: int = 10_000,
    throw: bool = True,
    progress: bool = False,
    exact_max_bytes: int = 2**30,
    error_estimate: str = "global",
    time_warp: Optional[float] = None,
    adjoint: bool = False,
    params: Sequence[torch.Tensor] = (),
    grad_tol: float = 1e-4,
    checkpoints: int = 8,
) -> LikelihoodResult:
    # 23 parameters, by design: one keyword per option, as score_sde's get_likelihood_fn and k-diffusion's
    # log_likelihood take theirs (torchdiffeq's rtol/atol/method, the probes' generator); Diffusion.log_likelihood
    # copies the keyword-only ones by signature. Grouping them would add a type per call site and no check.
    """``log p_{t_data}(x)`` by solving the ODE with the instantaneous change of variables.

    Arguments:
        ode: a :class:`flowsde.ODE` (its ``drift(t, x)`` is ``u``); for a diffusion, its PF-ODE.
        x: data ``(B, *event_shape)`` at ``t_data``, float32 or float64 (not modified, not
            differentiated through).
        t_span: ``(t_data, t_prior)``, either order.
        prior_logp: ``prior_logp(z) -> (B,)`` the log-density at ``t_prior`` (summed over the event).
        trace: ``"exact"`` or ``"hutchinson"``.
        probes: number of Hutchinson probes ``k``, integrated in one solve.
        probe: the probe distribution, ``"rademacher"`` or ``"gaussian"``.
        bpd_tol: accuracy of the log-density in **bits per dimension**: each log-density channel is
            held to the absolute local error ``bpd_tol * D * ln 2`` nats per step (``D`` the number of
            data dimensions); see ``docs/likelihood.md``, "Error control".
        rtol, atol: tolerances of the state ``x``: ``atol + rtol |x|``, RMS over the event (default:
            ``bpd_tol`` each, raised to ``10 eps`` of the dtype if below; measured in ``docs/likelihood.md``:
            the state's error reaches the log-density through the prior and the path).
        method: the engine: ``"rk45"`` (flowsde's Dormand-Prince, default; ``"tsit5"``, ``"bosh3"``: the same
            loop with Tsitouras' 5(4) or Bogacki-Shampine's 3(2) pair), a :class:`flowsde.solvers.RK45`
            (its ``per_sample``/``max_steps``/controller options; its rtol/atol are replaced by the
            arguments here), or ``"torchdiffeq:<name>"`` / :class:`flowsde.solvers.TorchDiffEq` (torchdiffeq's
            ``dopri5``, ``dopri8``, ``bosh3``, ``adaptive_heun``, ... with the same tolerances).
        generator: for the probes: ``None``, a ``torch.Generator`` or a list of per-sample ones.
        per_sample: RK45 error-control mode: ``True`` (default for the likelihood: every sample takes its own
            steps, so its numbers do not depend on its batch; torchode's mode) or ``False`` (one step size
            for the batch, as torchdiffeq: a sample's answer then depends on the rest of its batch).
        max_steps: per-sample step budget.
        throw: ``True``: raise :class:`flowsde.SolveError` on a failed sample (as :func:`flowsde.solve`);
            ``False``: never raise for a numerical failure, mark it in ``status`` (the failed sample's
            ``logp`` and other numbers are then NaN: see :class:`LikelihoodResult`).
        progress: tqdm progress bar (off by default).
        exact_max_bytes: refuse ``trace="exact"`` above this memory (see module docstring).
        error_estimate: what ``solver_error`` is and what ``bpd_tol`` promises (``stats["guarantee"]`` says it
            in words; ``docs/likelihood.md``, "What bpd_tol promises"):

            * ``"global"`` (default): per-sample **global** error control. Each sample is solved at the
              tolerances times 0.1, then 10x tighter, and again 10x tighter while its estimate
              ``solver_error = 3 |logp_k - logp_(k+1)| + 0.3 tau_k`` (``tau_k`` the level's log-density
              tolerance) exceeds ``bpd_tol`` (up to 5 solves; only the samples still above it are solved
              again): the answer is the first level whose estimate is within ``bpd_tol``. Measured on all 297
              test digits under the shipped digits models (``bpd_tol`` 1e-2 to 1e-6) and an image-sized
              mixture, every sample's true error was within 0.04-0.53x ``bpd_tol`` and the estimate bounded
              it for 95-100 % of samples but in one cell (digits-velocity at 1e-6: 88.6 %, its network
              oscillating near ``t = 0``; ``docs/likelihood.md``, "Where the estimate can miss";
              :mod:`flowsde._error_control`). It costs two to three solves.
            * ``"embedded"``: one solve; ``bpd_tol`` is a per-step (local) tolerance and ``solver_error``
              the sum of the log-density channel's embedded estimates: free, but NOT a bound (measured:
              the true error is up to ~30x ``bpd_tol`` and ~30x the estimate on trained models).
        time_warp: ``rho >= 1``: the engine integrates in ``s = t^(1/rho)`` instead of ``t``
            (``dx/ds = rho s^(rho-1) u(s^rho, x)``, the divergence scaled alike; the integral, hence the
            answer, is the same), which needs ``t >= 0`` on the span; ``1`` integrates in ``t``. Default
            (``None``): :data:`DEFAULT_TIME_WARP` (1.5) when the span is in ``t >= 0``, else 1. The warp
            stretches the data end, where the solutions of diffusion models are least smooth in ``t``
            (``sigma ~ sqrt(t)`` under VP, the data's small-variance directions resolving at small
            ``sigma``): on the shipped trained digits models it cuts the error at the default ``bpd_tol``
            from 2.5e-3 to 6e-5 bits/dim at the same NFE, and at image scale it takes 0.4-0.8x
            k-diffusion's NFE (``docs/likelihood.md``, "Time warp").

        adjoint: ``True``: ``logp`` is differentiable with respect to ``x`` and ``params``
            (``loss(r.logp).backward()`` fills ``x.grad`` and the parameters' ``.grad``) by the continuous
            adjoint (:mod:`flowsde._adjoint`; Chen et al. 2018, Alg. 1): the adjoint ODE is solved from
            ``t_prior`` to ``t_data`` with ``x`` restarted from ``checkpoints`` forward states, so memory does not
            grow with the number of steps; the gradient's relative error is estimated by a solve 10x tighter
            (tightened while above ``grad_tol``) and reported after the backward in
            ``r.stats["adjoint"]["grad_error_rel"]``. flowsde's embedded RK engines only, ``throw=True``. Not
            ``solve(grad=True)``, which backpropagates through the steps (``docs/likelihood.md``, "Gradients").
        params: (``adjoint=True``) the tensors the drift depends on, e.g. ``tuple(diffusion.net.parameters())``.
        grad_tol: (``adjoint=True``) relative accuracy asked of the gradient (default 1e-4).
        checkpoints: (``adjoint=True``) forward states the backward solve restarts ``x`` from (default 8).

    Returns:
        :class:`LikelihoodResult`, with ``solver_error`` the solver's error estimate (nats; in bits/dim
        as ``solver_error_bpd``) beside ``stderr``.

    Raises:
        InputError: bad data (shape, dtype, half precision, NaN), tolerances <= 0 or below what the
            dtype can meet, unknown options, exact trace too large, a drift or prior of the wrong
            shape/dtype.
        SolveError: NaN/Inf from the drift mid-solve (names the time and step) or ``max_steps``
            exhausted (names the time and step size), when ``throw=True``.
    """
    t_data, t_prior = _check_call(ode, x, t_span, prior_logp, trace=trace, probe=probe, probes=probes,
                                  error_estimate=error_estimate)
    warp = TimeWarp(_check_warp(time_warp, t_data, t_prior), t_data, t_prior)
    D = math.prod(x.shape[1:])
    tols = _Tolerances.of(bpd_tol, rtol, atol, x.dtype, D, promise=error_estimate == "global")
    engine = _engine(method, tols.rtol, tols.atol, per_sample, max_steps)
    cot = _cotangents(x, trace, probes, probe, generator, exact_max_bytes)
    exact = trace == "exact"
    stats = dict(engine=engine.name, trace=trace, probes=1 if exact else probes,
                 probe=probe if trace == "hutchinson" else None, bpd_tol=tols.bpd_tol,
                 logp_atol_per_step=tols.logp_atol, rtol=tols.rtol, atol=tols.atol, mode=engine.mode,
                 error_estimate=error_estimate, guarantee=GUARANTEES[error_estimate], time_warp=warp.rho,
                 t_span=(t_data, t_prior), vjps_per_eval=D if exact else probes)

    def solve(tol: _Tolerances, idx: Optional[torch.Tensor] = None, what: str = "flowsde log-likelihood") -> _Run:
        xs = x if idx is None else x[idx]
        # the samples' own cotangents: the basis (the same for every sample) or their probes
        cs = cot if idx is None else exact_cotangents(xs, exact_max_bytes) if exact else cot[:, idx]
        # the divergence's method is chosen (and any fallback warned about) once, on the first solve
        aug = AugmentedODE(ode, xs, cs, exact, warp, div_method=stats.get("divergence", "auto") if exact else "auto")
        eng = _engine(method, tol.rtol, tol.atol, per_sample, max_steps)
        run = _solve(eng, aug, xs, tol, prior_logp, throw=throw, progress=progress, what=what)
        stats["divergence"] = aug.div.mode if exact else "hutchinson"
        if "steps_near_data_end" not in stats:
            _diagnose_data_end(run.out, warp, stats)
        return run

    if adjoint:
        _check_adjoint(method, throw)

    def differentiable(res: LikelihoodResult) -> LikelihoodResult:
        if adjoint:  # the same estimator (cotangents) the forward used; the options as given
            from ._adjoint import attach_adjoint

            res.logp, res.stats["adjoint"] = attach_adjoint(
                res.logp, ode, x, t_span, prior_logp, cot=cot, params=params, trace=trace, probes=probes, probe=probe,
                bpd_tol=bpd_tol, grad_tol=grad_tol, rtol=rtol, atol=atol, method=method, per_sample=per_sample,
                max_steps=max_steps, exact_max_bytes=exact_max_bytes, time_warp=time_warp, checkpoints=checkpoints)
        return res

    if error_estimate == "embedded":
        return differentiable(_result(solve(tols), exact=exact, dims=D, stats=stats))
    ladder = Ladder()

    def level(k: int, idx: torch.Tensor) -> _Run:
        every = idx.numel() == x.shape[0]
        return solve(tols.divided(ladder.divisor(k)), None if every else idx,
                     f"flowsde log-likelihood (level {k})")

    c = climb(ladder, level, _answer, tols.logp_atol, x.shape[0], x.device)
    unmet = ~c.met & torch.isfinite(c.estimate)  # a failed sample has NaN numbers and its status
    if bool(unmet.any()):
        bad = unmet.nonzero().flatten().tolist()
        warnings.warn(f"log_likelihood: the global error estimate of samples {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                      f"is still above bpd_tol = {bpd_tol:g} after {ladder.max_solves} solves (see solver_error_bpd "
                      "and stats['met_per_sample']); the model may be rough along their paths.", RuntimeWarning,
                      stacklevel=2)
    stats.update(level_per_sample=c.level, met_per_sample=c.met, ladder=dict(start=ladder.start,
                 factor=ladder.factor, safety=ladder.safety, floor=ladder.floor, max_solves=ladder.max_solves))
    return differentiable(_result(_merged(c), exact=exact, dims=D, stats=stats, solver_error=c.estimate))


def _check_adjoint(method, throw: bool) -> None:
    """``adjoint=True`` needs flowsde's embedded RK engine and ``throw=True`` (a failed sample's NaN ``logp`` has
    no gradient)."""
    from ._solvers.rk45 import EMBEDDED_RK, EmbeddedRK

    if not ((isinstance(method, str) and method in EMBEDDED_RK) or isinstance(method, EmbeddedRK)):
        raise InputError(f"log_likelihood: adjoint=True solves the adjoint ODE with flowsde's embedded RK engines "
                         f"('rk45', 'tsit5', 'bosh3'), not method={method!r}.")
    if not throw:
        raise InputError("log_likelihood: adjoint=True needs throw=True: a failed sample's logp is NaN and has no "
                         "gradient.")


def _check_call(ode, x, t_span, prior_logp, *, trace, probe, probes, error_estimate) -> Tuple[float, float]:
    """Refuse what :func:`log_likelihood` cannot use; ``(t_data, t_prior)`` as floats."""
    from ._problem import ODE

    if not isinstance(ode, ODE) or ode.is_sde:
        raise InputError(f"log_likelihood: expected a flowsde.ODE (the probability-flow ODE), got "
                         f"{type(ode).__name__}; for a diffusion use Diffusion.pf_ode() or Diffusion.log_likelihood.")
    check_data(x)
    try:
        t_data, t_prior = (float(v) for v in t_span)
    except (TypeError, ValueError) as e:
        raise InputError(f"t_span: expected two numbers (t_data, t_prior), got {t_span!r}.") from e
    if not (math.isfinite(t_data) and math.isfinite(t_prior)) or t_data == t_prior:
        raise InputError(f"t_span: expected two distinct finite times, got {(t_data, t_prior)}.")
    if not callable(prior_logp):
        raise InputError(f"prior_logp: expected a callable z -> (B,) log-density, got {type(prior_logp).__name__}.")
    if trace not in TRACES:
        raise InputError(f"trace={trace!r}: choose one of {TRACES}.")
    if probe not in PROBES:
        raise InputError(f"probe={probe!r}: choose one of {PROBES}.")
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise InputError(f"probes must be a positive int, got {probes!r}.")
    if error_estimate not in ERROR_ESTIMATES:
        raise InputError(f"error_estimate={error_estimate!r}: choose one of {ERROR_ESTIMATES}.")
    if trace == "exact" and probes != 1:
        raise InputError(f"probes={probes} applies to trace='hutchinson'; the exact trace has no probes.")
    return t_data, t_prior


def _cotangents(x: torch.Tensor, trace: str, probes: int, probe: str, generator, exact_max_bytes: int):
    """``(n, B, *event)``: the ``D`` basis vectors of the exact trace, or ``k`` Hutchinson probes."""
    if trace == "hutchinson":
        return draw_probes(tuple(x.shape), probes, probe, generator, x.dtype, x.device)
    return exact_cotangents(x, exact_max_bytes)


def _solve(engine, aug: AugmentedODE, x: torch.Tensor, tols: _Tolerances, prior_logp, *, throw: bool,
           progress: bool, what: str) -> _Run:
    """One solve of the augmented ODE from ``x`` over the warp's span, then the prior at ``z``."""
    grid = torch.tensor(aug.warp.s_span, dtype=torch.float64, device=x.device)
    out = engine.integrate(aug, aug.initial_state(x), grid, norms=("rms", "abs"), tols=tols.pairs,
                           progress=progress, desc=what, near_start=aug.warp.near_data_end())
    aug.warp.report_in_t(out)  # the time reached and the last step in t, not in the warped s
    if throw:
        engine.raise_on_failure(out, what=f"log_likelihood ({engine.name})")
    z, L = out.y
    with torch.no_grad():
        lp = prior_logp(z)
    B = x.shape[0]
    if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (B,):
        got = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
        raise InputError(f"prior_logp returned {got}; it must return a (B,) = ({B},) tensor summed over the "
                         "event.")
    return _Run(out, z, L, lp.to(torch.float64))


def _result(run: _Run, *, exact: bool, dims: int, stats: dict,
            solver_error: Optional[torch.Tensor] = None) -> LikelihoodResult:
    """The :class:`LikelihoodResult` of a solve (or of the ladder's merged answer, with its estimate)."""
    out, per_probe = run.out, run.per_probe
    B, k = per_probe.shape
    f64 = dict(dtype=torch.float64, device=per_probe.device)
    logp = per_probe.mean(1)
    if exact:
        stderr = None
    elif k == 1:
        stderr = torch.full((B,), float("nan"), **f64)
    else:
        stderr = per_probe.std(1, unbiased=True) / math.sqrt(k)
    if solver_error is None:  # the embedded estimate: the sum of the log-density channel's local estimates
        err_L = out.err_sum[1]
        solver_error = err_L.mean(1).abs() if err_L is not None else torch.full((B,), float("nan"), **f64)
    res = LikelihoodResult(
        logp=logp, stderr=stderr, solver_error=solver_error, nfe=out.calls, dims=dims,
        prior_logp=run.prior_logp, delta_logp=run.L.mean(1), z=run.z, status=out.status,
        t_final=out.t_final, steps=out.steps, accepted=int(out.accepted.max()), rejected=int(out.rejected.max()),
        logp_probes=None if exact else per_probe,
        stats=dict(stats, nfe_per_sample=_calls_per_sample(out, B, per_probe.device)),
    )
    res._nan_where_failed()  # a failed sample's partial integral is not an answer
    return res


def _diagnose_data_end(out, warp: TimeWarp, stats: dict) -> None:
    """``stats["steps_near_data_end"]``: the share of the first solve's steps that started within
    :data:`NEAR_FRACTION` of the span from the data end; above :data:`NEAR_SHARE`, a warning says what it means."""
    near = out.near_start
    if near is None:
        return
    taken = int((out.accepted + out.rejected).sum())
    share = int(near.sum()) / max(taken, 1)
    stats["steps_near_data_end"] = share
    if share > NEAR_SHARE:
        s0, s1 = warp.s_span
        t_near = float(warp.t_of(torch.tensor(s0 + NEAR_FRACTION * (s1 - s0), dtype=torch.float64)))
        warnings.warn(
            f"log_likelihood: {share:.0%} of the solver's steps were taken in the last {NEAR_FRACTION:.0%} of the "
            f"span, t in [{min(warp.t_data, t_near):.3g}, {max(warp.t_data, t_near):.3g}] at the data end: the "
            "drift (or its divergence) is rough there, so the likelihood is slow and its steps are spent on "
            "that region. A network trained only away from the data end does this (train over the whole "
            "time range, as flow matching does); else start the likelihood at a larger t_eps, or raise "
            "time_warp to stretch the data end.", DataEndWarning, stacklevel=4)


class DataEndWarning(RuntimeWarning):
    """The likelihood spent most of its steps next to the data end (:func:`_diagnose_data_end`)."""


def _answer(run: _Run) -> torch.Tensor:
    """``(B,)`` float64 log-density of a solve, NaN where the sample failed."""
    return run.per_probe.mean(1).masked_fill(run.out.status != Status.SUCCESS, float("nan"))


def _merged(c: Climb) -> _Run:
    """One run holding each sample's answer level (its state, integral, prior, times, step counts), the
    evaluations of every solve it took part in, the worst status of those solves, and the batch's total
    evaluations and iterations."""
    first = c.solved[0][1]
    B, device = first.z.shape[0], first.z.device
    out = copy.copy(first.out)
    out.status = fold(c, lambda r: r.out.status, torch.maximum)
    out.t_final = take(c, lambda r: r.out.t_final)
    out.h = take(c, lambda r: r.out.h)
    out.accepted = take(c, lambda r: r.out.accepted)
    out.rejected = take(c, lambda r: r.out.rejected)
    out.calls_per_sample = fold(c, lambda r: _calls_per_sample(r.out, r.z.shape[0], device), torch.add)
    out.calls = sum(r.out.calls for _, r in c.solved)
    out.steps = sum(r.out.steps for _, r in c.solved)
    return _Run(out, take(c, lambda r: r.z), take(c, lambda r: r.L), take(c, lambda r: r.prior_logp))


def _check_warp(time_warp, t_data: float, t_prior: float) -> float:
    """``time_warp`` as a float ``rho >= 1`` (``None``: the default for the span); a warp needs a span
    in ``t >= 0``."""
    if time_warp is None:
        return DEFAULT_TIME_WARP if min(t_data, t_prior) >= 0 else 1.0
    if (not isinstance(time_warp, (int, float)) or isinstance(time_warp, bool) or not math.isfinite(time_warp)
            or time_warp < 1):
        raise InputError(f"log_likelihood: time_warp must be a finite number >= 1 (the exponent rho of "
                         f"t = s^rho; 1 integrates in t itself), got {time_warp!r}.")
    rho = float(time_warp)
    if rho != 1.0 and min(t_data, t_prior) < 0:
        raise InputError(f"log_likelihood: time_warp={rho:g} integrates in s = t^(1/rho), which needs t >= 0, "
                         f"but t_span = {(t_data, t_prior)}; shift the ODE's time or use time_warp=1.")
    return rho


def _calls_per_sample(out, B: int, device) -> torch.Tensor:
    """``(B,)`` int64: each sample's evaluations (RK45 counts them on the device; an engine taking one step
    for the batch, torchdiffeq, evaluates every sample at every call)."""
    per = out.calls_per_sample
    if per is None:
        per = torch.full((B,), out.calls, dtype=torch.int64, device=device)
    return per


def _engine(method, rtol, atol, per_sample, max_steps):
    """The ODE engine of the likelihood with the tolerances given here."""
    from ._solvers.rk45 import EMBEDDED_RK, EmbeddedRK

    if isinstance(method, str) and method in EMBEDDED_RK:  # per-sample steps unless asked otherwise
        return EMBEDDED_RK[method](rtol, atol, per_sample=LIKELIHOOD_PER_SAMPLE if per_sample is None else per_sample,
                                   max_steps=max_steps)
    if isinstance(method, EmbeddedRK):  # its mode, step budget and controller; the tolerances given here
        if per_sample is not None and bool(per_sample) != method.per_sample:
            raise InputError(f"log_likelihood: per_sample={per_sample} contradicts method={method!r}.")
        return method.with_tolerances(rtol, atol)
    from ._solvers.torchdiffeq_engine import TorchDiffEq, parse_method

    if isinstance(method, TorchDiffEq) or (isinstance(method, str) and method.startswith("torchdiffeq")):
        base = parse_method(method) if isinstance(method, str) else method
        if per_sample:
            raise InputError("log_likelihood: torchdiffeq takes one step for the batch; per_sample=True needs "
                             "method='rk45'.")
        return base.with_options(rtol=rtol, atol=atol, max_steps=max_steps)
    raise InputError(f"log_likelihood: method={method!r} is not an ODE engine for the likelihood; choose 'rk45' "
                     "(or 'bosh3', 'tsit5'), a flowsde.solvers.RK45(...), 'torchdiffeq:<name>' (e.g. "
                     "'torchdiffeq:dopri5') or a flowsde.solvers.TorchDiffEq(...).")
