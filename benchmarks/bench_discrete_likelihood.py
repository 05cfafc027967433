"""The ``Discrete`` (diffusers / DDPM) likelihood against the continuous ``VP`` one, NFE at equal error.

Issue 19, item 4. A random full-covariance Gaussian mixture (D = 16, K = 3:
:func:`flowsde.validation.likelihood_mixture`) with its exact eps-network under

* ``Discrete``: the table of ``diffusers.DDPMScheduler()`` (linear betas 1e-4 .. 0.02, N = 1000),
  integrated by default in VP time (``time="vp_time"``: the continuous ``VP()`` schedule's time at the same
  log-SNR, with the default warp 1.5; ``adapters/_likelihood.py``: its drift in t jumps at each knot), and in
  log-SNR (``time="log_snr"``, unwarped; the default before);
* ``VP()``: score_sde's continuous limit of that schedule (beta 0.1 .. 20), integrated in t with the
  default time warp 1.5;
* for the record, ``Discrete`` integrated in t (the core on its PF-ODE directly: the adapter refuses it),

each from ``t_eps = 1e-3`` (the Discrete table's first step) to ``T = 1`` with the exact marginal as the
prior, so the only error is the solver's: true error = ``max |logp - log p_{t_eps}(x)| / (D ln 2)`` bits/dim
over the samples. ``bpd_tol`` is swept; the NFE is the mean per sample. The "equal error" ratio
interpolates each Discrete variable's NFE at each VP point's error, log-linearly between the bracketing
Discrete points. Also printed: the largest difference of log p between integrating ``Discrete`` in log-SNR
and in t at the tightest tolerance (the two variables agree).

Run: ``python benchmarks/bench_discrete_likelihood.py`` (about three minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import math

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
from flowsde import log_likelihood
from flowsde.adapters import VP, Diffusion
from flowsde.adapters.schedules import Discrete
from flowsde.validation import likelihood_mixture

DT = torch.float64
D = 16
T_EPS = 1e-3


def ddpm_discrete() -> Discrete:
    """diffusers' default ``DDPMScheduler()`` table (linear betas, 1000 steps) as a ``Discrete`` schedule."""
    from diffusers import DDPMScheduler

    return Discrete(DDPMScheduler().alphas_cumprod.to(DT))


def run(gm, x, sched, tol: float, in_t: bool = False, time=None):
    """``(mean NFE per sample, max error in bits/dim, logp)`` of one likelihood call (``time``: the adapter's
    integration variable, default its default)."""
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    T = torch.tensor(1.0, dtype=DT)
    prior = lambda z: gm.log_prob_t(sched, T, z)  # noqa: E731 - the exact marginal at T
    if in_t:  # the PF-ODE in t, unwarped (the adapter refuses time='t' on Discrete)
        r = log_likelihood(dif.pf_ode(), x, (T_EPS, 1.0), prior, bpd_tol=tol, time_warp=1.0)
    else:
        r = dif.log_likelihood(x, t_eps=T_EPS, prior_logp=prior, bpd_tol=tol, time=time)
    exact = gm.log_prob_t(sched, torch.tensor(T_EPS, dtype=DT), x)
    nfe = float(r.stats["nfe_per_sample"].double().mean())
    return nfe, float((r.logp - exact).abs().max()) / (D * math.log(2)), r.logp


def nfe_at(points, err: float) -> float:
    """NFE interpolated log-linearly in the error between the bracketing ``(nfe, err)`` points (NaN outside)."""
    pts = sorted(points, key=lambda p: -p[1])
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if e1 <= err <= e0 and e0 > e1:
            w = (math.log(e0) - math.log(err)) / (math.log(e0) - math.log(e1))
            return n0 + w * (n1 - n0)
    return math.nan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    ap.add_argument("--skip-t", action="store_true", help="leave out Discrete integrated in t (slow)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gm, g = likelihood_mixture(D)
    x = gm.sample(args.samples, generator=g)
    disc, vp = ddpm_discrete(), VP()
    print(f"D = {D}, {args.samples} samples, t_eps = {T_EPS:g}; NFE: mean per sample; error: max over samples, "
          "bits/dim")
    print(f"{'bpd_tol':>8} | {'VP (t, warp 1.5)':>20} | {'Discrete (VP time)':>20} | {'Discrete (log-SNR)':>20} | "
          f"{'Discrete (t)':>20}")
    vp_pts, d_pts, l_pts, last = [], [], [], None
    for tol in args.tols:
        nv, ev, _ = run(gm, x, vp, tol)
        nd, ed, lp_tau = run(gm, x, disc, tol)
        nl, el, lp_lam = run(gm, x, disc, tol, time="log_snr")
        vp_pts.append((nv, ev))
        d_pts.append((nd, ed))
        l_pts.append((nl, el))
        t_cell = "-"
        if not args.skip_t and tol >= 1e-5:
            nt, et, lp_t = run(gm, x, disc, tol, in_t=True)
            t_cell = f"{nt:7.0f} NFE {et:8.1e}"
            last = (tol, float((lp_tau - lp_t).abs().max()) / (D * math.log(2)))
        print(f"{tol:8.0e} | {nv:7.0f} NFE {ev:8.1e} | {nd:7.0f} NFE {ed:8.1e} | {nl:7.0f} NFE {el:8.1e} | "
              f"{t_cell:>20}", flush=True)
    print("equal error: Discrete NFE / VP NFE at each VP point's error (VP time, the default; log-SNR)")
    for nv, ev in vp_pts:
        nd, nl = nfe_at(d_pts, ev), nfe_at(l_pts, ev)
        print(f"  error {ev:8.1e}: VP {nv:5.0f}, Discrete in VP time {nd:7.1f} (ratio {nd / nv:.2f}), "
              f"in log-SNR {nl:7.1f} (ratio {nl / nv:.2f})")
    print(f"Discrete, VP time vs log-SNR at bpd_tol {args.tols[-1]:.0e}: max |logp difference| = "
          f"{float((lp_tau - lp_lam).abs().max()) / (D * math.log(2)):.1e} bits/dim")
    if last is not None:
        print(f"Discrete, VP time vs t at bpd_tol {last[0]:.0e}: max |logp difference| = {last[1]:.1e} bits/dim")


if __name__ == "__main__":
    main()
