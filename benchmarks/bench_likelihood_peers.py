"""Likelihood at equal worst-case error: flowsde's defaults against three peers, side by side (issue 19, item 7).

Every method solves the same probability-flow ODE of the same model, from the same data (the same
dequantization noise), with the same prior ``N(0, sigma(T)^2 I)`` (k-diffusion's own, mapped to the
model's space), the same ``t_eps`` and the exact trace (``D`` vector-Jacobian products per evaluation), in
float64:

* ``flowsde``: ``Diffusion.log_likelihood(x, levels=..., dequantize=False, bpd_tol=target)`` at every other
  default (the engine, the integration variable, the step control and the error estimate are whatever the
  library's defaults are), one call per target with ``bpd_tol = target``; the data are dequantized once,
  beforehand, with ``flowsde.dequantize`` and the listed seed, and handed to every method.
* ``kdiff``: k-diffusion's own ``sampling.log_likelihood(model, x, sigma_min, sigma_max, atol=tol, rtol=tol)``
  (its file, loaded by ``flowsde.validation.k_diffusion_sampling``) on ``model = to_denoiser(diffusion)``
  at its default ``outside``: torchdiffeq dopri5 in EDM's ``sigma = sigma(t)/alpha(t)`` on the scaled state
  ``x / alpha``, its prior ``N(0, sigma_max^2 I)``. Its Hutchinson probe is made exact by handing it a
  model whose vector-Jacobian product is ``diag(J) * c`` (value unchanged: ``D(x) + diag(J) (x - x.detach())``):
  with ``v_i^2 = 1`` its estimate ``v^T J_d v`` is then ``tr J_d`` exactly. Its ``log p`` of the scaled
  data is turned into the model's by the change of variables ``- D log alpha(t_eps)``. Not applicable where
  ``sigma(t_eps)/alpha(t_eps) = 0`` or ``alpha(T) = 0`` (a flow-matching velocity model from ``t = 0`` to 1).
  A tolerance at which it raises is recorded as ``raises``.
* ``tde``: the FFJORD / flow_matching recipe: ``torchdiffeq.odeint(f, (x, logp), [t_eps, T],
  method="dopri5", rtol=tol, atol=tol)`` on the tuple state in the model's own ``t`` (torchdiffeq's mixed
  norm: the max over the two tensors of their RMS), batched. torchdiffeq's last step passes ``T`` and is
  interpolated back; its stages beyond ``T`` evaluate the model at ``T`` (flowsde's models refuse a time
  outside their range; ``to_denoiser`` clamps k-diffusion's stages the same way).
* ``scipy``: score_sde's recipe (``likelihood.py``, ``get_likelihood_fn``): ``scipy.integrate.solve_ivp(
  ode_func, (t_eps, T), init, rtol=tol, atol=tol, method="RK45")`` on the flattened ``(B D + B,)`` numpy
  state in ``t``, batched as score_sde runs it (one RMS norm over every entry), ``nfev`` evaluations.
* ``flowsde1`` (``--peers ... flowsde1``; not a peer, not in the mean): flowsde's own single solve,
  ``error_estimate="embedded"`` at ``bpd_tol = tol``, swept and tuned in hindsight like a peer. flowsde /
  flowsde1 is the price of the per-sample promise; flowsde1 / a peer is what flowsde's integrator alone gains.

NFE are network evaluations per sample: for a batched peer the evaluations of its batch; for flowsde the
mean of ``stats["nfe_per_sample"]`` (the table also shows its max and the batch's count). Each peer is swept
over ``rtol = atol = 1e-2 .. 1e-9`` (half decades, stopping once two tolerances in a row reach the
smallest target: the NFE grow as the tolerance tightens, so a tighter one cannot be cheapest) and
gets, for each target, the cheapest swept tolerance whose worst sample reaches it (in hindsight; the
table adds the "reliable" NFE, from which on every tighter swept tolerance reaches it, where that
differs). flowsde is run once per target with ``bpd_tol = target`` and is held to item 1 (fraction of
samples beyond ``bpd_tol``, any beyond 2x) and item 2 (fraction whose true error is at most the
reported ``solver_error_bpd``; median of reported / max(true, bpd_tol/100)). A last table gives each peer
without hindsight on the samples it is scored on: its tolerance chosen on the first half of the samples, its
worst error and the count beyond the target on the second half.

Reference per sample: torchdiffeq ``dopri8`` at ``rtol = atol = 1e-10`` (``--ref-tol``) on the
concatenated ``(B, D + 1)`` state, in ``s = log t`` (``t = s`` where ``t_eps = 0``; stages past ``T`` at
``T``). Trusted when the same solve at 100x the tolerance agrees with it to ``min(targets) / 100`` (printed;
the script says when not); also printed: its distance to flowsde's own solve at
``bpd_tol = min(targets) / 1000`` (the cross-check; that distance is flowsde's error there).

Problems: ``digits-eps``, ``digits-velocity``, ``digits-unet`` (skipped with a note when not registered)
on the held-out digits ``flowsde.models.digits("test")`` (297; the first ``--samples``), dequantized with
seed ``--seed`` (0); ``image-mixture``: the D = 3072 (3x32x32) diagonal Gaussian mixture of
``bench_likelihood_image.py`` (its ``diag_mixture`` seed 0, ``sample_mixture`` seed 1) under EDM (sigma
0.002 .. 80), in chunks of 8 samples (the exact trace's ``(D, B, D)`` cotangents; flowsde's default
``exact_max_bytes`` allows 14). Its exact trace is the closed form (``mixture_jac_diag``, checked against
autograd at start): the denoiser every method sees has the vector-Jacobian product ``diag(J) c``, so
k-diffusion needs no wrapper and the peers take the closed form (autograd's ``D`` VJPs through the mixture
take ~50 s per evaluation of 8 samples on one CPU core). flowsde's exact trace still does its ``D`` VJPs
(~1 s per evaluation of one sample on a CPU core: a GPU run); ``--image-trace probe`` gives flowsde one
Rademacher probe instead, which for this diagonal Jacobian is the exact trace (checked at start: same
``log p`` to 1e-9 relative and the same NFE as ``trace="exact"`` on one sample).

Run: ``python benchmarks/bench_likelihood_peers.py --quick`` (development: 4 digits, two targets);
``--samples 12 --problems digits-eps`` (a medium run: 12-13 min per digits problem on a contended
2-core machine; the cost of an evaluation grows with the samples);
``python benchmarks/bench_likelihood_peers.py --out peers.json`` (all problems, 297 digits / 256 mixture
samples, targets 1e-2 1e-3 1e-4: hours on a CPU; add ``--image-trace probe`` on a CPU, or
``--device cuda`` where there is one). ``--peers`` with no name runs flowsde's cells alone (items 1 and 2:
``--peers --problems digits-eps digits-velocity`` on all 297 digits takes about 15 minutes per problem on a
CPU core); ``--flowsde-dtype float32`` runs them on the float32 network and data, against the float64
reference.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
import flowsde.models as M
from flowsde.adapters import from_denoiser, to_denoiser
from flowsde.validation import k_diffusion_sampling

from bench_likelihood import machine

F64 = torch.float64
LN2 = math.log(2)
PEERS = ("kdiff", "tde", "scipy")
#: not a peer: flowsde's own single solve (``error_estimate="embedded"``, no certificate) swept like the peers and
#: given its tolerance in hindsight. flowsde (the ladder) / this row is the price of the per-sample promise;
#: this row / a peer is what the integrator (warp, integration variable, per-sample steps) alone saves.
SELF = "flowsde1"
DIGITS = ("digits-eps", "digits-velocity", "digits-unet")
PROBLEMS = DIGITS + ("image-mixture",)
#: peers' rtol = atol, loosest first: 1e-2 .. 1e-9 in half decades
PEER_TOLS = [float(f"{10 ** (-2 - k / 2):.3g}") for k in range(15)]
#: bytes of cotangents per batched backward call in the exact trace of the peers and the reference
COT_BYTES = 2**28


# ----------------------------------------------------------------------------------------------
# the exact Jacobian diagonal (every peer's and the reference's trace)
def jac_diag(fn, x: torch.Tensor):
    """``(fn(x) detached, diag of d fn_b / d x_b (B, D))`` for a per-sample map ``fn``, by ``D`` VJPs batched
    in chunks of at most ``COT_BYTES`` of cotangents (one at a time if the model has no vmap rule)."""
    B, D = x.shape[0], x[0].numel()
    n = max(1, min(D, COT_BYTES // max(1, B * D * x.element_size())))
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        diag = torch.empty(B, D, dtype=x.dtype, device=x.device)
        for j0 in range(0, D, n):
            j = torch.arange(j0, min(D, j0 + n), device=x.device)
            cot = torch.zeros(len(j), B, D, dtype=x.dtype, device=x.device)
            cot[torch.arange(len(j)), :, j] = 1
            cot = cot.reshape((len(j),) + tuple(x.shape))
            try:
                (g,) = torch.autograd.grad(out, xg, cot, is_grads_batched=True, retain_graph=True)
            except RuntimeError:  # no vmap rule (e.g. some UNets): one VJP at a time
                g = torch.stack([torch.autograd.grad(out, xg, c, retain_graph=True)[0] for c in cot])
            diag[:, j0:j0 + len(j)] = g.reshape(len(j), B, D)[torch.arange(len(j)), :, j].T
    return out.detach(), diag


def velocity_and_div(P, t, x):
    """PF-ODE drift ``u(t, x)`` and its exact divergence ``(B,)`` (the problem's closed form where it has one)."""
    if "velocity_div" in P:
        return P["velocity_div"](t, x)
    u, diag = jac_diag(lambda z: P["dif"].velocity(t, z), x)
    return u, diag.sum(1)


# ----------------------------------------------------------------------------------------------
# problems
def digits_problem(name, samples, seed, device):
    if name not in M.names():
        return None
    info = M.info(name)
    dif = M.load(name, device=device, net_dtype=F64)
    x = M.digits("test")[:samples].to(F64)
    x = x.reshape((x.shape[0],) + tuple(info.event_shape)).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    xq = flowsde.dequantize(x, levels=info.levels, data_range=tuple(info.data_range), generator=g)
    return dict(name=name, dif=dif, x=xq, levels=info.levels, data_range=tuple(info.data_range), chunk=None,
                data=f"flowsde.models.digits('test')[:{samples}], flowsde.dequantize(levels={info.levels}, "
                     f"generator=torch.Generator().manual_seed({seed}))")


def mixture_jac_diag(params, x, sigma):
    """``(B, D)``: the diagonal of the Jacobian of ``bench_likelihood_image.mixture_denoiser`` in closed form.

    ``D(x) = x + sigma^2 s(x)``, ``s = sum_k r_k s_k``, ``s_k = -(x - m_k) / var_k``, ``var_k = v_k + sigma^2``,
    ``d r_k / d x_i = r_k (s_ki - s_i)``: ``d D_i / d x_i = 1 + sigma^2 (sum_k r_k (s_ki^2 - 1/var_ki) - s_i^2)``."""
    w, m, v = params
    B = x.shape[0]
    s = sigma.reshape(-1, 1, 1) if sigma.dim() else sigma
    xf = x.reshape(B, 1, -1)
    var = v + s**2
    comp = (-0.5 * (xf - m).square() / var - 0.5 * torch.log(var)).sum(-1) + torch.log(w)
    r = torch.softmax(comp, 1).unsqueeze(-1)
    sk = -(xf - m) / var
    sbar = (r * sk).sum(1)
    return 1 + s.reshape(-1, 1) ** 2 * ((r * (sk.square() - 1 / var)).sum(1) - sbar.square())


def image_problem(samples, device, chunk=8, probe=False):
    """The mixture, with a denoiser whose vector-Jacobian product is ``diag(J) c`` (value unchanged): every
    method's exact trace is then the closed-form trace (flowsde's ``D`` VJPs stay exact and cost an
    elementwise product; k-diffusion's one Rademacher probe is exact); the peers and the reference take the
    closed form directly. Checked against autograd's ``D`` VJPs of the real denoiser before use."""
    from bench_likelihood_image import SIGMA_MAX, SIGMA_MIN, diag_mixture, mixture_denoiser, sample_mixture

    shape = (3, 32, 32)
    D = math.prod(shape)
    params = tuple(p.to(device) for p in diag_mixture(D))  # seed 0
    x = sample_mixture(diag_mixture(D), samples, shape).to(device)  # seed 1
    den = mixture_denoiser(params, shape)

    def proxy(y, sigma):
        with torch.no_grad():
            out = den(y, sigma)
            dg = mixture_jac_diag(params, y, sigma.to(y.dtype)).reshape(y.shape)
        return out + dg * (y - y.detach())

    for sg in (0.01, 3.0):  # the closed form against autograd, one sample
        sgt = torch.tensor(sg, dtype=F64, device=device)
        _, auto = jac_diag(lambda z: den(z, sgt), x[:1])
        diff = float((auto - mixture_jac_diag(params, x[:1], sgt)).abs().max())
        if diff > 1e-9:
            raise SystemExit(f"image-mixture: closed-form Jacobian diagonal off autograd's by {diff:.1e} at sigma {sg}")
    dif = from_denoiser(proxy, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)

    def velocity_div(t, y):  # EDM: u = (y - D(y, t)) / t, div u = (D - tr J_D) / t
        with torch.no_grad():
            u = dif.velocity(t, y)
        return u, (D - mixture_jac_diag(params, y, t).sum(1)) / t

    if probe:  # flowsde's trace by one probe equals its exact trace here: checked, value and NFE, on one sample
        r = [dif.log_likelihood(x[:1], bpd_tol=1e-2, **kw) for kw in ({}, dict(trace="hutchinson", generator=0))]
        gap = float((r[0].logp - r[1].logp).abs().max())
        if gap > 1e-9 * float(r[0].logp.abs().max()) or r[0].nfe != r[1].nfe:
            raise SystemExit(f"image-mixture: flowsde's one-probe trace differs from its exact trace by {gap:.1e} nats "
                             f"(NFE {r[0].nfe} vs {r[1].nfe}); run with --image-trace exact")
        print(f"  flowsde's one-probe trace = its exact trace here: |diff| {gap:.1e} nats, NFE {r[0].nfe} both",
              flush=True)
    return dict(name="image-mixture", dif=dif, x=x, levels=None, data_range=None, chunk=chunk,
                velocity_div=velocity_div, vjp_is_diag=True, flowsde_probe=probe,
                data=f"bench_likelihood_image.sample_mixture(diag_mixture(3072), {samples}, (3, 32, 32), seed=1)")


def span(dif):
    """``(t_eps, T)``: flowsde's defaults (``schedule.t_min``, ``0`` for a velocity model; ``schedule.t_max``)."""
    s = dif.schedule
    t_eps = 0.0 if dif.prediction == "velocity" else float(s.t_min)
    return t_eps, float(s.t_max)


def prior_logp(dif, z):
    """flowsde's default prior ``N(0, sigma(T)^2 I)``, float64 ``(B,)``."""
    return dif.prior().log_prob(z).to(F64)


def chunks(P):
    B = P["x"].shape[0]
    c = P["chunk"] or B
    return [P["x"][i:i + c] for i in range(0, B, c)]


def run_chunked(P, fn):
    """``fn(x_chunk) -> (logp, nfe per sample (B,))`` over the chunks; concatenated."""
    lp, nf = [], []
    for xc in chunks(P):
        a, b = fn(xc)
        lp.append(a.to(F64).cpu())
        nf.append(torch.as_tensor(b).reshape(-1).expand(xc.shape[0]).to(torch.float64).cpu())
    return torch.cat(lp), torch.cat(nf)


# ----------------------------------------------------------------------------------------------
# methods: logp (B,) float64 in the model's space, NFE per sample (B,)
def flowsde_options(P):
    """The options of every flowsde call on ``P``: the data are dequantized already; on the image mixture with
    ``--image-trace probe``, one Rademacher probe of its diagonal Jacobian (the exact trace, one VJP)."""
    kw = dict(levels=P["levels"], dequantize=False) if P["levels"] else {}
    if P.get("flowsde_probe"):
        kw.update(trace="hutchinson", probes=1, generator=0)
    return kw


def run_flowsde(P, bpd_tol):
    extra = {"se": [], "batch_nfe": [], "stats": None}

    def one(x):
        r = P["dif"].log_likelihood(x, bpd_tol=bpd_tol, **flowsde_options(P))
        extra["se"].append(r.solver_error_bpd.to(F64).cpu())
        extra["batch_nfe"].append(int(r.nfe))
        extra["stats"] = {k: v for k, v in r.stats.items() if isinstance(v, (int, float, str, bool, type(None)))}
        return r.logp, r.stats["nfe_per_sample"]

    logp, nfe = run_chunked(P, one)
    return logp, nfe, dict(solver_error_bpd=torch.cat(extra["se"]), batch_nfe=max(extra["batch_nfe"]),
                           stats=extra["stats"])


def run_flowsde_single(P, bpd_tol):
    """flowsde's single solve at ``bpd_tol`` (``error_estimate="embedded"``): the row :data:`SELF`."""

    def one(x):
        r = P["dif"].log_likelihood(x, bpd_tol=bpd_tol, error_estimate="embedded", **flowsde_options(P))
        return r.logp, r.stats["nfe_per_sample"]

    return run_chunked(P, one)


def run_tde(P, tol):
    from torchdiffeq import odeint

    dif = P["dif"]
    t_eps, T = span(dif)

    def one(x):
        nfe = 0

        def f(t, state):
            nonlocal nfe
            nfe += 1
            # torchdiffeq's last step passes T (its stages past it, then it interpolates back): evaluated at T,
            # as to_denoiser clamps k-diffusion's stages
            u, div = velocity_and_div(P, t.to(F64).clamp(t_eps, T), state[0])
            return u, div

        ts = torch.tensor([t_eps, T], dtype=F64, device=x.device)
        z, dl = odeint(f, (x, x.new_zeros(x.shape[0])), ts, rtol=tol, atol=tol, method="dopri5")
        return prior_logp(dif, z[-1]) + dl[-1], nfe

    return run_chunked(P, one)


def run_scipy(P, tol):
    from scipy import integrate

    dif = P["dif"]
    t_eps, T = span(dif)

    def one(x):
        shape, B = tuple(x.shape), x.shape[0]

        def ode_func(t, y):  # score_sde likelihood.py: flattened numpy state, one host round trip per call
            sample = torch.from_numpy(y[:-B].reshape(shape)).to(x.device)
            u, div = velocity_and_div(P, torch.tensor(t, dtype=F64, device=x.device), sample)
            return np.concatenate([u.cpu().numpy().reshape(-1), div.cpu().numpy()])

        init = np.concatenate([x.cpu().numpy().reshape(-1), np.zeros(B)])
        sol = integrate.solve_ivp(ode_func, (t_eps, T), init, rtol=tol, atol=tol, method="RK45")
        zp = sol.y[:, -1]
        z = torch.from_numpy(zp[:-B].reshape(shape)).to(x.device)
        return prior_logp(dif, z).cpu() + torch.from_numpy(zp[-B:]), sol.nfev

    return run_chunked(P, one)


def kdiff_applicable(dif):
    t_eps, T = span(dif)
    s = dif.schedule
    a0, aT = (float(s.alpha(torch.tensor(v, dtype=F64))) for v in (t_eps, T))
    r0 = float(s.sigma(torch.tensor(t_eps, dtype=F64))) / a0 if a0 > 0 else math.inf
    if aT <= 0 or not r0 > 0:
        return (f"n/a: k-diffusion integrates in sigma = sigma(t)/alpha(t) from {r0:g} to "
                f"{'inf' if aT <= 0 else 'finite'}; it needs 0 < sigma_min < sigma_max < inf")
    return None


def run_kdiff(P, tol):
    kd = k_diffusion_sampling()
    dif = P["dif"]
    den = to_denoiser(dif)
    t_eps, _ = span(dif)
    a0 = float(dif.schedule.alpha(torch.tensor(t_eps, dtype=F64)))
    D = P["x"][0].numel()

    def model(y, sigma):  # value D(y, sigma); vector-Jacobian product diag(J) * c: Hutchinson made exact
        if P.get("vjp_is_diag"):
            return den(y, sigma)
        out, diag = jac_diag(lambda z: den(z, sigma), y)
        return out + diag.reshape(y.shape) * (y - y.detach())

    def one(x):
        ll, info = kd.log_likelihood(model, x / a0, den.sigma_min, den.sigma_max, atol=tol, rtol=tol)
        return ll.to(F64) - D * math.log(a0), info["fevals"]

    return run_chunked(P, one)


def run_reference(P, tol):
    """torchdiffeq dopri8 on the (B, D + 1) state in s = log t (s = t where t_eps = 0)."""
    from torchdiffeq import odeint

    dif = P["dif"]
    t_eps, T = span(dif)
    log = t_eps > 0

    def one(x):
        B, D = x.shape[0], x[0].numel()
        nfe = 0

        def f(s, y):
            nonlocal nfe
            nfe += 1
            t = (torch.exp(s) if log else s).to(F64).clamp(t_eps, T)  # stages past T: evaluated at T
            u, div = velocity_and_div(P, t, y[:, :D].reshape(x.shape))
            dt = t if log else 1.0
            return torch.cat([u.reshape(B, D), div[:, None]], 1) * dt

        ends = [math.log(t_eps), math.log(T)] if log else [t_eps, T]
        y = odeint(f, torch.cat([x.reshape(B, D), x.new_zeros(B, 1)], 1), torch.tensor(ends, dtype=F64,
                   device=x.device), rtol=tol, atol=tol, method="dopri8")[-1]
        return prior_logp(dif, y[:, :D].reshape(x.shape)) + y[:, D], nfe

    return run_chunked(P, one)


# ----------------------------------------------------------------------------------------------
def errors_bpd(logp, ref, D):
    return ((logp - ref).abs() / (D * LN2))


def sweep_peer(P, name, ref, D, targets, tols):
    fn = dict(kdiff=run_kdiff, tde=run_tde, scipy=run_scipy, **{SELF: run_flowsde_single})[name]
    pts, inside = [], 0
    for tol in tols:
        t0 = time.perf_counter()
        try:
            logp, nfe = fn(P, tol)
        except Exception as e:  # noqa: BLE001  (recorded: k-diffusion raising through to_denoiser)
            pts.append(dict(tol=tol, raises=f"{type(e).__name__}: {str(e)[:300]}"))
            print(f"  {name} tol {tol:g}: raises {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        err = errors_bpd(logp, ref, D)
        pt = dict(tol=tol, worst=float(err.max()), median=float(err.median()), nfe=float(nfe.mean()),
                  wall_s=time.perf_counter() - t0, err_bpd=err.tolist())
        pts.append(pt)
        print(f"  {name} tol {tol:g}: worst {pt['worst']:.2e} bits/dim, NFE {pt['nfe']:g}, "
              f"{pt['wall_s']:.1f} s", flush=True)
        # NFE grow as the tolerance tightens: once two tolerances in a row reach the smallest target, a tighter
        # one cannot be the cheapest for any target
        inside = inside + 1 if pt["worst"] <= min(targets) else 0
        if inside >= 2:
            break
    return pts


def cheapest(pts, target, n=None):
    """The swept point with the fewest NFE whose worst sample reaches ``target``, or None: over every sample
    (hindsight), or over the first ``n`` (:func:`held_out`)."""
    ok = [p for p in pts if "worst" in p and (p["worst"] if n is None else max(p["err_bpd"][:n])) <= target]
    return min(ok, key=lambda p: p["nfe"]) if ok else None


def reliable(pts, target):
    """The fewest NFE from which every swept point with as many or more NFE reaches ``target`` (or None)."""
    done = sorted((p for p in pts if "worst" in p), key=lambda p: p["nfe"])
    for i, p in enumerate(done):
        if all(q["worst"] <= target for q in done[i:]):
            return p["nfe"]
    return None


def flowsde_cell(P, ref, D, target, dtype=F64):
    t0 = time.perf_counter()
    if dtype != F64:  # the same model and data in float32 (the reference stays float64)
        P = dict(P, dif=M.load(P["name"], device=P["x"].device, net_dtype=dtype), x=P["x"].to(dtype))
    logp, nfe, extra = run_flowsde(P, target)
    wall = time.perf_counter() - t0
    err = errors_bpd(logp, ref, D)
    rep = extra["solver_error_bpd"]
    ratio = rep / torch.clamp(err, min=target / 100)
    cell = dict(bpd_tol=target, worst=float(err.max()), median=float(err.median()),
                frac_beyond_tol=float((err > target).double().mean()), n_beyond_2x=int((err > 2 * target).sum()),
                frac_bounded=float((err <= rep).double().mean()), median_reported_over_true=float(ratio.median()),
                nfe=float(nfe.mean()), nfe_max=float(nfe.max()), batch_nfe=extra["batch_nfe"], wall_s=wall,
                stats=extra["stats"], err_bpd=err.tolist(), reported_bpd=rep.tolist(), nfe_per_sample=nfe.tolist())
    print(f"  flowsde bpd_tol {target:g}: worst {cell['worst']:.2e} bits/dim, NFE {cell['nfe']:.1f} "
          f"(max {cell['nfe_max']:g}, batch {cell['batch_nfe']}), {wall:.1f} s", flush=True)
    return cell


def table(name, res, targets, D, B):
    peers = [p for p in PEERS + (SELF,) if p in res["peers"]]
    print(f"\n### {name} (D = {D}, {B} samples): NFE per sample at worst-case error <= target")
    print("| target (bits/dim) | flowsde | " + " | ".join(peers) + " | "
          + " | ".join(f"flowsde / {p}" for p in peers) + " |")
    print("|---" * (2 + 2 * len(peers)) + "|")
    ratios = []
    for tg in targets:
        fc = res["flowsde"][f"{tg:g}"]
        ok = "" if fc["worst"] <= tg else " (misses)"
        cells, rcells = [], []
        for p in peers:
            pr = res["peers"][p]
            if isinstance(pr, str):
                cells.append(pr.split(":")[0])
                rcells.append("-")
                continue
            c = cheapest(pr, tg)
            raised = [q["tol"] for q in pr if "raises" in q]
            note = f"; raises at {', '.join(f'{r:g}' for r in raised)}" if raised else ""
            if c is None:
                cells.append("not reached" + note)
                rcells.append("-")
                continue
            c_rel = reliable(pr, tg)
            rel = "" if c_rel == c["nfe"] else f"; reliable {c_rel:g}" if c_rel else "; reliable: none"
            cells.append(f"{c['nfe']:g} (tol {c['tol']:g}{rel}{note})")
            r = fc["nfe"] / c["nfe"]
            if p != SELF:  # item 7 compares with the peers; the row SELF prices the certificate
                ratios.append(r)
            rcells.append(f"{r:.2f}")
        print(f"| {tg:g} | {fc['nfe']:.1f}{ok} | " + " | ".join(cells) + " | " + " | ".join(rcells) + " |")
    gm = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    mx = max(ratios) if ratios else float("nan")
    print(f"\ngeometric mean of flowsde / peer over {len(ratios)} cells: {gm:.2f}; max: {mx:.2f} "
          "(issue target: <= 0.7, no cell above 1.0)")
    if SELF in peers:
        print(f"({SELF}: flowsde's single solve, no certificate, its tolerance in hindsight; flowsde / {SELF} is "
              "the price of the per-sample promise; not in the mean)")
    print(f"\nflowsde at bpd_tol = target (items 1 and 2), {B} samples:")
    print("| bpd_tol | worst err / bpd_tol | beyond bpd_tol | beyond 2x | true <= reported | "
          "median reported / max(true, bpd_tol/100) | NFE mean / max / batch |")
    print("|---|---|---|---|---|---|---|")
    for tg in targets:
        fc = res["flowsde"][f"{tg:g}"]
        print(f"| {tg:g} | {fc['worst'] / tg:.2f} | {100 * fc['frac_beyond_tol']:.1f} % | {fc['n_beyond_2x']} | "
              f"{100 * fc['frac_bounded']:.1f} % | {fc['median_reported_over_true']:.2f} | "
              f"{fc['nfe']:.1f} / {fc['nfe_max']:g} / {fc['batch_nfe']} |")
    res["summary"] = dict(geomean_ratio=gm, max_ratio=mx, ratios=ratios)
    held_out_table(res, targets, peers)


def held_out(pts, target, n_cal):
    """A peer's tolerance chosen without hindsight on the samples it is scored on: the cheapest swept point whose
    worst error over the first ``n_cal`` samples reaches ``target``; ``(point, worst error over the others)``."""
    q = cheapest(pts, target, n_cal)
    return (None, None) if q is None else (q, max(q["err_bpd"][n_cal:]))


def held_out_table(res, targets, peers):
    """Each peer tuned on the first half of the samples and scored on the second (the fair version of the
    hindsight above): the worst held-out error / target, and the share of held-out samples beyond it."""
    B = res["samples"]
    n_cal = B // 2
    if n_cal < 2:
        return
    print(f"\neach peer tuned on samples 0..{n_cal - 1}, scored on {n_cal}..{B - 1} (no hindsight on these): "
          "NFE, worst held-out error / target, held-out samples beyond the target")
    print("| target (bits/dim) | " + " | ".join(peers) + " |")
    print("|---" * (1 + len(peers)) + "|")
    rows = {}
    for tg in targets:
        cells = []
        for p in peers:
            pr = res["peers"][p]
            q, worst = (None, None) if isinstance(pr, str) else held_out(pr, tg, n_cal)
            if q is None:
                cells.append("-")
                continue
            beyond = sum(e > tg for e in q["err_bpd"][n_cal:])
            cells.append(f"{q['nfe']:g} (tol {q['tol']:g}): {worst / tg:.2f}, {beyond}/{B - n_cal}")
            rows[f"{p} {tg:g}"] = dict(tol=q["tol"], nfe=q["nfe"], worst_over_target=worst / tg, beyond=beyond)
        print(f"| {tg:g} | " + " | ".join(cells) + " |")
    res["held_out"] = rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    ap.add_argument("--samples", type=int, default=None,
                    help="held-out digits (default all 297) / mixture samples (default 256)")
    ap.add_argument("--targets", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4], help="bits/dim")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS + (SELF,),
                    help=f"the peers to sweep (none: flowsde's cells only, items 1 and 2); '{SELF}' adds flowsde's "
                         "own single solve, swept and tuned in hindsight like a peer (the price of the certificate)")
    ap.add_argument("--flowsde-dtype", choices=("float64", "float32"), default="float64",
                    help="flowsde's cells in float32 (the network and data; the reference stays float64): the "
                         "float32 promise holds from 10x its floor, bpd_tol >= 1e-5")
    ap.add_argument("--tols", type=float, nargs="+", default=PEER_TOLS, help="peers' rtol = atol, loosest first")
    ap.add_argument("--ref-tol", type=float, default=1e-10)
    ap.add_argument("--seed", type=int, default=0, help="dequantization noise of the digits")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-trace", choices=("exact", "probe"), default="exact",
                    help="flowsde's trace on image-mixture: 'exact' (D VJPs, ~1 s per evaluation of one sample on a "
                         "CPU core) or 'probe' (one Rademacher probe, exact for its diagonal-Jacobian denoiser; "
                         "checked equal to 'exact' at start)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="4 samples, targets 1e-2 1e-3, the digits models")
    ap.add_argument("--out", default=None, help="JSON of every number")
    a = ap.parse_args(argv)
    if a.quick:
        a.samples, a.targets = a.samples or 4, [1e-2, 1e-3]
        if a.problems == list(PROBLEMS):
            a.problems = ["digits-eps", "digits-velocity"]
    torch.set_num_threads(a.threads)
    targets = sorted(a.targets, reverse=True)
    print(f"machine: {machine()}; device {a.device}; float64 (flowsde's cells: {a.flowsde_dtype}); exact trace")
    print(f"targets {targets} bits/dim; peers {a.peers} at rtol = atol in {a.tols}", flush=True)
    out = dict(machine=machine(), device=a.device, targets=targets, tols=a.tols, ref_tol=a.ref_tol, seed=a.seed,
               flowsde_dtype=a.flowsde_dtype,
               argv=argv, problems={})
    t_all = time.perf_counter()
    for name in a.problems:
        t_prob = time.perf_counter()
        if name == "image-mixture":
            P = image_problem(a.samples or 256, a.device, probe=a.image_trace == "probe")
        else:
            P = digits_problem(name, a.samples or 297, a.seed, a.device)
            if P is None:
                print(f"\n### {name}: not registered in flowsde.models ({M.names()}); skipped", flush=True)
                out["problems"][name] = "not registered"
                continue
        D, B = P["x"][0].numel(), P["x"].shape[0]
        t_eps, T = span(P["dif"])
        print(f"\n## {name}: D = {D}, {B} samples, t_span = ({t_eps:g}, {T:g}), {P['data']}", flush=True)
        t0 = time.perf_counter()
        ref, ref_nfe = run_reference(P, a.ref_tol)
        ref_wall = time.perf_counter() - t0
        ref2, ref2_nfe = run_reference(P, 100 * a.ref_tol)
        self_diff = float(errors_bpd(ref2, ref, D).max())
        check = flowsde_cell(P, ref, D, min(targets) / 1000)
        diff = check["worst"]
        ok = self_diff <= min(targets) / 100
        print(f"  reference: dopri8 rtol = atol = {a.ref_tol:g}, NFE {float(ref_nfe.mean()):g}, {ref_wall:.1f} s; "
              f"max |ref - dopri8 at {100 * a.ref_tol:g} (NFE {float(ref2_nfe.mean()):g})| = {self_diff:.1e} bits/dim "
              f"({'ok' if ok else 'LARGER THAN min(target)/100: the reference is not trusted'}); "
              f"max |ref - flowsde(bpd_tol={min(targets) / 1000:g})| = {diff:.1e} bits/dim", flush=True)
        res = dict(D=D, samples=B, t_span=[t_eps, T], data=P["data"], chunk=P["chunk"],
                   reference=dict(method="torchdiffeq dopri8", tol=a.ref_tol, nfe=float(ref_nfe.mean()),
                                  wall_s=ref_wall, logp=ref.tolist(), self_check_tol=100 * a.ref_tol,
                                  self_check_bpd=self_diff, trusted=ok, check_vs_flowsde_bpd=diff,
                                  check_bpd_tol=min(targets) / 1000, check_nfe=check["nfe"],
                                  check_err_bpd=check["err_bpd"]),
                   flowsde={}, peers={})
        for tg in targets:
            res["flowsde"][f"{tg:g}"] = flowsde_cell(P, ref, D, tg, getattr(torch, a.flowsde_dtype))
        for p in a.peers:
            why = kdiff_applicable(P["dif"]) if p == "kdiff" else None
            if why:
                print(f"  kdiff: {why}", flush=True)
                res["peers"][p] = why
                continue
            res["peers"][p] = sweep_peer(P, p, ref, D, targets, a.tols)
        table(name, res, targets, D, B)
        res["wall_s"] = time.perf_counter() - t_prob
        print(f"\n{name}: {res['wall_s']:.0f} s", flush=True)
        out["problems"][name] = res
    out["wall_s"] = time.perf_counter() - t_all
    print(f"\ntotal {out['wall_s']:.0f} s")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
