"""``Diffusion.log_likelihood``: exact log-likelihoods and bits/dim of data under a diffusion model.

Builds the probability-flow ODE ``dx/dt = f x - g^2/2 score`` of the model, the prior
at ``T = schedule.t_max`` and calls :func:`flowsde.log_likelihood` on
``t_span = (t_eps, T)`` with ``t_eps = schedule.t_min`` by default (score_sde
integrates from 1e-5). Two labelled numbers (``docs/likelihood.md`` derives them):

* ``logp`` / ``bpd`` — **score_sde-comparable**: the ODE is started at the clean
  (dequantized) data ``x`` at ``t_eps``, i.e. ``log p^ODE_{t_eps}(x)`` — what published
  tables report (score_sde ``get_likelihood_fn``; Soft-Truncation's "wrong" mode).
* ``logp_corrected`` / ``bpd_corrected`` — **corrected for the noise at t_eps**
  (ScoreFlow ``get_likelihood_offset_fn``; Soft-Truncation's "correct" mode): with
  ``x_eps = alpha x + sigma e``, ``e ~ N(0, I)`` (alpha, sigma at ``t_eps``),

      log p(x) >= E_e[ log p^ODE_{t_eps}(x_eps) + log N(x; m, (sigma/alpha)^2 I) ] + D/2 (1 + log(2 pi sigma^2)),
      m = (x_eps + sigma^2 score(t_eps, x_eps)) / alpha          (Tweedie's denoiser as Gaussian decoder)

  estimated with one draw of ``e`` per sample.

Time variable: ``time="t"`` integrates in the schedule's own time; ``time="log_snr"``
in ``lambda = log(alpha^2 / sigma^2)`` (the ODE ``dx/dlambda = u / (dlambda/dt)``); ``time="vp_time"`` in
``tau``, the time at which score_sde's continuous VP schedule (``VP()``: beta 0.1 .. 20, the limit of DDPM's
linear 1000-step table) has the same log-SNR, ``tau = VP().t_from_log_snr(lambda)``. The default
(``time=None``) is :func:`default_time`: ``"vp_time"`` for a :class:`flowsde.adapters.schedules.Discrete`
schedule (DDPM / diffusers tables), ``"t"`` for the others.

Why not ``t`` for ``Discrete``: its log-SNR is linear in ``t`` between the N knots, so ``d lambda/dt``
and with it the PF-ODE drift in ``t`` jump at every knot, and an embedded pair's step control pays
for each jump (``docs/bridges.md``, "Discrete schedules"). In ``lambda`` the drift
``dx/dlambda`` depends on ``lambda`` only through ``alpha(lambda)``, ``sigma(lambda)``,
which are smooth (``alpha^2 = sigmoid(lambda)``), and through the network's time ``t(lambda)``, whose
kinks are those of the network's input only. ``tau`` is a smooth (analytic) function of ``lambda``, so the
drift in ``tau`` is as continuous as in ``lambda``; it is also a *time* (``tau ~ sigma^2`` at the data end, as
``t`` of a VP schedule), so the default ``time_warp`` (``tau = s^rho``, ``rho`` 1.5) applies to it as it does
to ``t``, and on DDPM's linear table the solve costs what the continuous VP one costs (``docs/likelihood.md``,
"diffusers models"; in log-SNR it took 1.2-1.3x). Each reparametrisation is exact: the variables integrate the
same ODE, and the answer is the same up to the tolerance.
A ``Discrete`` problem in ``t`` is refused (``time="t"``): stepping it knot-aware would restart the
solver at each of up to 1000 knots inside the span (>= 1000 steps). ``time_warp`` is a warp of ``t`` or
``tau`` (the data end stretched where ``sigma ~ sqrt(t)``); in log-SNR the data end is already stretched
(``lambda ~ -log t``), so the warp is not applied there: ``time_warp`` must be ``None`` or ``1`` with
``time="log_snr"``. Where log-SNR is infinite at an end of the span (``alpha = 0`` at ``t_max`` of a
zero-terminal-SNR table, ``rescale_betas_zero_snr``), neither ``lambda`` nor ``tau`` reaches it: the call is
refused, asking for a ``t_max`` where ``alpha > 0``.
"""

from __future__ import annotations

import inspect
import math
from typing import Optional, Tuple

import torch

from flowsde import ODE, InputError, LikelihoodResult, bits_per_dim
from flowsde import dequantize as _dequantize
from flowsde import log_likelihood as _core_log_likelihood
from flowsde._internal import batch_broadcast, randn
from flowsde._internal import check_data, check_data_range, check_in_range, quantization_levels

from flowsde._internal import DEFAULT_BPD_TOL, LIKELIHOOD_PER_SAMPLE, Tolerances, check_warp, time_in_range

TIMES = ("t", "log_snr", "vp_time")


def default_time(schedule) -> str:
    """The likelihood's default integration variable for ``schedule``: ``"vp_time"`` for a
    :class:`~flowsde.adapters.schedules.Discrete` schedule (its drift in ``t`` jumps at every knot; see the
    module docstring), ``"t"`` for every other. Compare's float64 reference and adaptive rows use it too."""
    from ._discrete import Discrete

    return "vp_time" if isinstance(schedule, Discrete) else "t"


def check_time(schedule, time: str, where: str) -> None:
    """Refuse ``time="t"`` on a :class:`~flowsde.adapters.schedules.Discrete` schedule, with the reason."""
    if time not in TIMES:
        raise InputError(f"{where}: time={time!r}: choose one of {TIMES} (default: {default_time(schedule)!r}).")
    if time == "t" and default_time(schedule) != "t":
        raise InputError(
            f"{where}: time='t' on a Discrete schedule ({schedule.N} knots): its log-SNR is piecewise linear in t, "
            "so the PF-ODE drift in t jumps at every knot and an adaptive solve pays for each jump (hundreds to "
            "thousands of NFE, with an error estimate that misses the jumps). Integrate in a smooth function of "
            "log-SNR instead (time='vp_time', the default for Discrete, or time='log_snr'): the same ODE, "
            "reparametrised, with a continuous drift.")
LOG2PI = math.log(2 * math.pi)

#: the core's keyword options (probes, tolerances, engine, throw, ...), passed through unchanged
CORE_OPTIONS = tuple(n for n, p in inspect.signature(_core_log_likelihood).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)


def log_snr_ode(ode: ODE, schedule, t_range: Tuple[float, float]) -> ODE:
    """The ODE ``dx/dt = u(t, x)`` rewritten in ``lambda = log(alpha^2/sigma^2)``:
    ``dx/dlambda = u(t(lambda), x) / (dlambda/dt)``, ``dlambda/dt = 2 (alpha'/alpha - sigma'/sigma)``.
    ``t(lambda)`` is clamped to ``t_range`` (the round trip ``t -> lambda -> t`` may round outside it)."""

    def drift(lam, x):
        t = schedule.t_from_log_snr(lam).clamp(min(t_range), max(t_range))
        dlam_dt = 2 * (schedule.d_alpha(t) / schedule.alpha(t) - schedule.d_sigma(t) / schedule.sigma(t))
        return ode.drift(t, x) / batch_broadcast(dlam_dt, x)

    return ODE(drift)


def vp_time_ode(ode: ODE, schedule, t_range: Tuple[float, float]) -> ODE:
    """The ODE ``dx/dt = u(t, x)`` rewritten in ``tau``, the time of ``VP()`` with the same log-SNR:
    ``dx/dtau = dx/dlambda (lambda_VP(tau)) * dlambda_VP/dtau`` (:func:`log_snr_ode` for ``dx/dlambda``)."""
    from .schedules import VP

    vp, in_lam = VP(), log_snr_ode(ode, schedule, t_range)

    def drift(tau, x):
        return in_lam.drift(vp.log_snr(tau), x) * batch_broadcast(vp.d_log_snr(tau), x)

    return ODE(drift)


def adaptive_pf_ode(diffusion, t_span, time: Optional[str] = None, *, ode: Optional[ODE] = None):
    """``(ode, span, time)``: a diffusion's PF-ODE for an adaptive solve over ``t_span = (t_from, t_to)`` (either
    order), in the integration variable ``time`` (default :func:`default_time`: ``"vp_time"`` for a ``Discrete``
    schedule, whose drift in ``t`` jumps at every knot). ``span`` is ``t_span`` in that variable; the solution at
    its end is the state at ``t_to`` (the reparametrisation changes the path's speed, not its points). ``ode``:
    the PF-ODE to rewrite (default ``diffusion.pf_ode()``). Used by ``compare``'s float64 reference and its
    adaptive rows, so every adaptive solve of a ``Discrete`` problem integrates where its drift is continuous."""
    schedule = diffusion.schedule
    time = default_time(schedule) if time is None else time
    check_time(schedule, time, "adaptive_pf_ode")
    pf = diffusion.pf_ode() if ode is None else ode
    a, b = (float(v) for v in t_span)
    if time == "t":
        return pf, (a, b), time
    lam = schedule.log_snr(torch.tensor([a, b], dtype=torch.float64))
    if not bool(torch.isfinite(lam).all()):
        also = "" if default_time(schedule) != "t" else ", or time='t'"
        raise InputError(f"time={time!r}: log-SNR is {lam.tolist()} at t = {(a, b)} for {schedule!r}; integrate "
                         "between times where alpha and sigma are both > 0 (a zero-terminal-SNR table: t_max "
                         f"below its last step){also}.")
    t_range = (min(a, b), max(a, b))
    if time == "log_snr":
        return log_snr_ode(pf, schedule, t_range), (float(lam[0]), float(lam[1])), time
    from .schedules import VP

    tau = VP().t_from_log_snr(lam)
    return vp_time_ode(pf, schedule, t_range), (float(tau[0]), float(tau[1])), time


def log_likelihood(
    diffusion,
    x: torch.Tensor,
    *,
    t_eps: Optional[float] = None,
    t_max: Optional[float] = None,
    time: Optional[str] = None,
    prior_logp=None,
    levels: Optional[int] = None,
    bits: Optional[int] = None,
    data_range: Optional[Tuple[float, float]] = None,
    dequantize: Optional[bool] = None,
    corrected: bool = False,
    **options,
) -> LikelihoodResult:
    # 11 parameters and the core's options: the data's description (levels/bits/data_range/dequantize) and the
    # schedule's span, one keyword each as score_sde's likelihood takes them; the core's keyword-only options pass
    # through **options (their names are spelled out in the signature by _signature below)
    """``log p(x)`` (nats per sample) and bits/dim of data under a diffusion model's PF-ODE.

    Arguments:
        diffusion: a :class:`flowsde.adapters.Diffusion`.
        x: data ``(B, *event)`` in the model's data space (e.g. scaled to ``[-1, 1]``).
        t_eps: data-end time of the ODE (default ``schedule.t_min``, and ``0`` for a ``"velocity"`` model,
            whose drift is defined at ``t = 0``; a value off the range by rounding only is clamped:
            :func:`flowsde.adapters.time_in_range`).
        t_max: prior-end time (default ``schedule.t_max``).
        time: integration variable, ``"t"``, ``"log_snr"`` or ``"vp_time"`` (default: :func:`default_time`,
            ``"vp_time"`` for a ``Discrete`` schedule, which refuses ``"t"``; ``"t"`` otherwise). In ``"log_snr"``
            the core's ``time_warp`` is not applied (``None`` or ``1`` only); in ``"vp_time"`` it is, as in ``t``:
            the module docstring says why.
        prior_logp: ``z -> (B,)`` log-density at ``t_max`` (default ``diffusion.prior().log_prob``;
            pass the exact marginal to remove the prior mismatch in tests).
        levels: the number of quantization bins ``L`` of discrete data (e.g. 17 for values 0..16);
            enables ``bpd`` (and dequantization). Overrides ``bits``.
        bits: bit depth of discrete data (``L = 2^bits``).
        data_range: ``(lo, hi)``, the values the discrete data's ``k = 0`` and ``k = L - 1`` were scaled to
            (default ``(-1, 1)`` when ``levels``/``bits`` is given; refused without them). Data outside it
            are refused. Convention and bits/dim formula: :func:`flowsde.bits_per_dim`.
        dequantize: add uniform noise within each quantization bin first (default: ``True`` when
            ``levels``/``bits`` is given). ``x`` must then lie on the grid ``lo + k (hi - lo) / (L - 1)``;
            with ``False`` the (already continuous) data must lie within the bins' support
            ``[lo - Delta/2, hi + Delta/2]``.
        corrected: also compute the t_eps-corrected ``logp_corrected`` / ``bpd_corrected``
            (a second ODE solve from the noised data).
        **options: the keyword options of :func:`flowsde.log_likelihood` (one definition, listed in this
            function's signature): ``trace``, ``probes``, ``probe``, ``bpd_tol``, ``rtol``, ``atol``,
            ``method``, ``generator``, ``per_sample``, ``max_steps``, ``throw``, ``progress``,
            ``exact_max_bytes``, ``error_estimate``, ``time_warp``. ``generator`` also draws, in order, the dequantization noise, then the
            probes, then (``corrected``) ``e`` and its probes.

    Returns:
        :class:`LikelihoodResult`: ``logp`` (score_sde-comparable), ``stderr``, ``solver_error``
        (nats; ``solver_error_bpd`` per dimension), ``bpd`` (if ``levels``/``bits``), and with
        ``corrected``: ``logp_corrected``, ``stderr_corrected``, ``bpd_corrected``, ``residual``
        (decoder log-likelihood + entropy); ``nfe`` (and ``stats["nfe_per_sample"]``) count both solves.
    """
    unknown = sorted(set(options) - set(CORE_OPTIONS))
    if unknown:
        raise InputError(f"log_likelihood: unknown option(s) {unknown}; the options are those of "
                         f"flowsde.log_likelihood: {list(CORE_OPTIONS)}.")
    schedule = getattr(diffusion, "schedule", None)
    if schedule is None or not hasattr(diffusion, "pf_ode"):
        raise InputError(f"log_likelihood: expected a flowsde.adapters.Diffusion, got {type(diffusion).__name__}.")
    check_data(x)
    time = default_time(schedule) if time is None else time
    check_time(schedule, time, "log_likelihood")
    options = _log_snr_warp(time, options)
    t_eps, T = _time_span(diffusion, t_eps, t_max)
    L, data_range, dequantize = _quantization(x, levels, bits, data_range, dequantize)
    if prior_logp is None:
        prior_logp = diffusion.prior().log_prob

    generator = options.get("generator")
    D = x[0].numel()
    data = _dequantize(x, levels=L, data_range=data_range, generator=generator) if dequantize else x
    ode, span = _ode_and_span(diffusion, time, t_eps, T)
    core = _core_log_likelihood(ode, data, span, prior_logp, **options)
    res = LikelihoodResult(**{f: getattr(core, f) for f in LikelihoodResult.__dataclass_fields__})
    res.stats.update(time=time, t_eps=t_eps, t_max=T, dequantized=bool(dequantize), levels=L,
                     data_range=tuple(data_range) if L is not None else None)
    if L is not None:
        res.bpd = bits_per_dim(res.logp, D, levels=L, data_range=data_range)
    if corrected:
        _add_corrected(res, diffusion, data, ode, span, prior_logp, t_eps, options)
        if L is not None:
            res.bpd_corrected = bits_per_dim(res.logp_corrected, D, levels=L, data_range=data_range)
        res._nan_where_failed()  # the status of both solves: a sample that failed in either has no numbers
    return res


def _log_snr_warp(time: str, options: dict) -> dict:
    """The core's options for ``time``: in log-SNR, ``time_warp`` is ``1`` (refused otherwise, with the reason)."""
    if time != "log_snr":
        return options
    rho = options.get("time_warp")
    if rho is not None and not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and rho == 1):
        raise InputError(f"log_likelihood: time_warp={rho!r} with time='log_snr': the warp t = s^rho stretches the "
                         "data end of t, where sigma ~ sqrt(t); log-SNR stretches it already (lambda ~ -log t), so "
                         "no warp is applied there. Drop time_warp (or pass 1).")
    return dict(options, time_warp=1.0)


def _time_span(diffusion, t_eps: Optional[float], t_max: Optional[float]) -> Tuple[float, float]:
    """``(t_eps, t_max)`` checked against the schedule's range (defaults: its ends; ``t_eps = 0`` for a
    velocity model); refuses a prior end where a non-velocity model's drift divides by ``alpha = 0``."""
    schedule = diffusion.schedule
    t_lo, t_hi = float(schedule.t_min), float(schedule.t_max)
    velocity = getattr(diffusion, "prediction", None) == "velocity"
    if velocity:
        # a velocity model's PF-ODE drift is the network's output itself, defined at t = 0 (nothing
        # divides by sigma): the likelihood is taken at the data end, as flow_matching does
        t_lo = 0.0
    t_eps = t_lo if t_eps is None else time_in_range(float(t_eps), t_lo, t_hi, name="t_eps", where="log_likelihood")
    T = t_hi if t_max is None else time_in_range(float(t_max), t_lo, t_hi, name="t_max", where="log_likelihood")
    if not t_eps < T:
        raise InputError(f"log_likelihood: need t_eps = {t_eps!r} < t_max = {T!r}.")
    alpha_T = float(schedule.alpha(torch.tensor(T, dtype=torch.float64)))
    if alpha_T <= 0.0 and not velocity:
        raise InputError(
            f"log_likelihood: the PF-ODE is integrated to t_max = {T!r}, where alpha = 0 for {schedule!r}: a "
            f"{diffusion.prediction!r} model's velocity divides by alpha there, so the ODE cannot reach the "
            "prior. Pass t_max < schedule.t_max with a prior_logp that is the model's marginal there (at "
            "t_max < 1 the data term alpha(t_max) x_0 remains, so the prior is not N(0, sigma^2 I)), or use a "
            "'velocity' model, whose velocity is defined at alpha = 0.")
    return t_eps, T


def _quantization(x: torch.Tensor, levels, bits, data_range, dequantize):
    """``(L, data_range, dequantize)``: the number of quantization bins (``None`` for continuous data) and the
    defaults that follow from it; refuses data outside the bins' support when it is not dequantized."""
    L = quantization_levels(levels, bits, default_bits=None, where="log_likelihood")
    if L is None:
        if data_range is not None:
            raise InputError(f"log_likelihood: data_range={data_range!r} given without levels= or bits=: bits/dim "
                             "needs the number of quantization bins of the data (e.g. levels=17 for values "
                             "0..16, bits=8 for 8-bit images); pass one, or drop data_range for nats only.")
        if dequantize:
            raise InputError("log_likelihood: dequantize=True needs levels= or bits= (the number of quantization "
                             "bins of the data).")
        return None, None, False
    data_range = (-1.0, 1.0) if data_range is None else check_data_range(data_range)
    if dequantize is None:
        dequantize = True
    if not dequantize:
        check_in_range(x, data_range, levels=L, where="log_likelihood")
    return L, data_range, dequantize


def _ode_and_span(diffusion, time: str, t_eps: float, T: float):
    """The PF-ODE in the integration variable ``time`` and its span ``(data end, prior end)``."""
    return adaptive_pf_ode(diffusion, (t_eps, T), time)[:2]


def _add_corrected(res: LikelihoodResult, diffusion, data, ode, span, prior_logp, t_eps: float, options) -> None:
    """The t_eps-corrected numbers (module docstring): a second solve from ``x_eps = alpha x + sigma e`` plus the
    Gaussian decoder's residual; the counts and status of both solves."""
    B, dtype, device = data.shape[0], data.dtype, data.device
    schedule = diffusion.schedule
    te = torch.full((B,), t_eps, dtype=dtype, device=device)
    a = batch_broadcast(schedule.alpha(te), data)
    s = batch_broadcast(schedule.sigma(te), data)
    e = randn(data.shape, options.get("generator"), dtype, device)
    x_eps = a * data + s * e
    res2 = _core_log_likelihood(ode, x_eps, span, prior_logp, **options)
    with torch.no_grad():
        score = diffusion.score(te, x_eps)
    res.residual = decoder_residual(data, x_eps, score, a, s)
    res.logp_corrected = res2.logp + res.residual
    res.stderr_corrected = res2.stderr
    res.solver_error_corrected = res2.solver_error
    res.nfe += res2.nfe + 1
    res.stats["nfe_per_sample"] = res.stats["nfe_per_sample"] + res2.stats["nfe_per_sample"] + 1
    res.status = torch.maximum(res.status, res2.status)


def _signature():
    """``log_likelihood``'s signature spelled out: its own parameters, then the core's keyword options."""
    own = [p for p in inspect.signature(log_likelihood).parameters.values() if p.kind is not p.VAR_KEYWORD]
    core = [p for n, p in inspect.signature(_core_log_likelihood).parameters.items() if n in CORE_OPTIONS]
    return inspect.Signature(own + core, return_annotation=LikelihoodResult)


log_likelihood.__signature__ = _signature()


def decoder_residual(x, x_eps, score, alpha, sigma) -> torch.Tensor:
    """``log N(x; (x_eps + sigma^2 score)/alpha, (sigma/alpha)^2 I) + D/2 (1 + log(2 pi sigma^2))``, ``(B,)``.

    The Gaussian-decoder reconstruction term plus the entropy of ``q(x_eps | x) = N(alpha x, sigma^2 I)``
    (ScoreFlow ``get_likelihood_offset_fn``, with the sign of a log-likelihood). ``alpha``, ``sigma``
    broadcast against ``x``.
    """
    B = x.shape[0]
    D = x[0].numel()
    mean = (x_eps + sigma**2 * score) / alpha
    std = (sigma / alpha).reshape(-1)[0] if (sigma / alpha).numel() == 1 else (sigma / alpha).reshape(B, -1)[:, 0]
    sq = (x - mean).reshape(B, -1).square().sum(1)
    s_eps = sigma.reshape(-1)[0] if sigma.numel() == 1 else sigma.reshape(B, -1)[:, 0]
    recon = -0.5 * sq / std**2 - D * torch.log(std) - 0.5 * D * LOG2PI
    entropy = 0.5 * D * (1 + LOG2PI) + D * torch.log(s_eps)
    return recon + entropy


def likelihood_settings(diffusion, dtype: torch.dtype, dims: int, **options) -> dict:
    """The options of :meth:`Diffusion.log_likelihood` with its defaults resolved for this model, dtype and number
    of data dimensions: ``levels`` (``bits`` folded in), ``data_range``, ``dequantize``, ``t_eps``, ``t_max``,
    ``time``, ``time_warp``, ``rtol``, ``atol``, ``bpd_tol`` and ``per_sample`` as the call will use them (the
    other options returned as given). Two spellings of one setting resolve to equal dicts (``dataset_nll``
    records and compares them). Raises :class:`InputError` where the call would."""
    kw = dict(options)
    L = quantization_levels(kw.get("levels"), kw.get("bits"), default_bits=None)
    kw.update(levels=L, bits=None)
    if L is not None:
        kw["data_range"] = tuple(float(v) for v in (kw.get("data_range") or (-1.0, 1.0)))
    if kw.get("dequantize") is None:
        kw["dequantize"] = L is not None
    t_eps, t_max = _time_span(diffusion, kw.get("t_eps"), kw.get("t_max"))
    kw.update(t_eps=t_eps, t_max=t_max)
    if kw.get("time") is None:
        kw["time"] = default_time(diffusion.schedule)
    check_time(diffusion.schedule, kw["time"], "log_likelihood")
    kw.update(_log_snr_warp(kw["time"], {"time_warp": kw.get("time_warp")}))
    _, span = _ode_and_span(diffusion, kw["time"], t_eps, t_max)
    kw["time_warp"] = check_warp(kw.get("time_warp"), *span)
    tol = Tolerances.of(kw.get("bpd_tol", DEFAULT_BPD_TOL), kw.get("rtol"), kw.get("atol"), dtype, dims)
    kw.update(rtol=tol.rtol, atol=tol.atol, bpd_tol=tol.bpd_tol)
    if kw.get("per_sample") is None and kw.get("method", "rk45") in ("rk45", "dopri5", "tsit5", "bosh3"):
        kw["per_sample"] = LIKELIHOOD_PER_SAMPLE
    return kw
