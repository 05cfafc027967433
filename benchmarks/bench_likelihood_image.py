"""Likelihood at image scale: solver error (bits/dim) against NFE, flowsde vs k-diffusion vs torchdiffeq.

Problems (EDM PF-ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``, sigma from 0.002 to 80, one fixed
Rademacher probe held for the solve, the same probe for every method):

* ``mixture``: a Gaussian mixture with diagonal covariances in ``D = C x H x W`` (3x32x32 = 3072 by
  default; ``--dims 64`` for digits size), whose denoiser ``D(x, sigma) = x + sigma^2 score`` and
  log-density ``log p_sigma`` are closed forms: ``p_sigma = sum_k w_k N(m_k, diag(v_k) + sigma^2 I)``.
* ``convnet``: a small conv net with random weights as the denoiser (3x32x32); no closed form.

Solver error = ``|logp(tol) - logp_ref|`` for the same probe, ``logp_ref`` from flowsde's RK45 at
``bpd_tol = rtol = atol = 1e-10`` in float64 (for the mixture also reported: the distance of the
reference to the closed form, which is the probe's estimator error, not the solver's).

Methods:

* ``flowsde``: ``flowsde.log_likelihood`` with its defaults except ``bpd_tol`` (swept): the engine
  integrates in ``s = sigma^(1/1.5)`` (``time_warp`` 1.5, the default on a span in ``t >= 0``);
* ``flowsde-warp``: the same call with ``time_warp=WARP`` (``--warp``, default 1: in ``sigma`` itself);
* ``flowsde-dopri8``: the same call with ``method="torchdiffeq:dopri8"`` (the documented engine knob);
* ``kdiff``: k-diffusion's ``log_likelihood`` (crowsonkb/k-diffusion ``sampling.py``, loaded from the
  installed package without its ``__init__``, which needs scikit-image), ``rtol = atol`` swept;
* ``tde``: torchdiffeq ``odeint(method="dopri5")`` on the concatenated ``(B, D + 1)`` augmented state
  (one RMS norm over all entries), ``rtol = atol`` swept.

For each method the script prints (error, NFE) per tolerance and, for each target error (1e-3 and
1e-5 bits/dim), the fewest NFE at which the method's error is at or below the target from there on
(the "reliable" NFE: every looser tolerance that reached the target is ignored if a tighter one
missed it), and flowsde's NFE ratio to k-diffusion's.

Run: ``python benchmarks/bench_likelihood_image.py`` (float64 and float32, D = 3072 and 64, both
problems; a few minutes on 2 cores) or ``--quick``; ``--plot docs/img/lik_image.png`` writes the figure.
"""

from __future__ import annotations

import argparse
import math
import platform

import torch

import _checkout  # noqa: F401  (first: refuses a flowsde installed from another checkout)
import flowsde
from flowsde.validation import k_diffusion_sampling

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
LN2 = math.log(2)


# ----------------------------------------------------------------------------------------------
# problems
def diag_mixture(D: int, K: int = 3, seed: int = 0):
    """Weights, means ``(K, D)`` and diagonal variances ``(K, D)`` of an image-like mixture in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    m = 0.6 * torch.tanh(torch.randn(K, D, generator=g, dtype=torch.float64))
    v = 0.01 + 0.05 * torch.rand(K, D, generator=g, dtype=torch.float64)
    return w, m, v


def mixture_logp(params, x, sigma):
    """``log p_sigma(x)``, ``x`` of shape ``(B, *event)``; float64."""
    w, m, v = params
    xf = x.reshape(x.shape[0], 1, -1).to(torch.float64)
    var = v + sigma**2
    comp = (-0.5 * (xf - m).square() / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)
    return torch.logsumexp(comp + torch.log(w), 1)


def mixture_denoiser(params, shape):
    w, m, v = params

    def denoise(x, sigma):  # sigma: 0-dim or (B,)
        B = x.shape[0]
        dt = x.dtype
        s = sigma.reshape(-1, 1, 1).to(dt) if sigma.dim() else sigma.to(dt)
        xf = x.reshape(B, 1, -1)
        var = v.to(dt) + s**2
        comp = (-0.5 * (xf - m.to(dt)).square() / var - 0.5 * torch.log(var)).sum(-1) + torch.log(w.to(dt))
        r = torch.softmax(comp, 1).unsqueeze(-1)  # (B, K, 1)
        score = (r * (-(xf - m.to(dt)) / var)).sum(1)  # (B, D)
        return (x.reshape(B, -1) + (s.reshape(-1, 1) if sigma.dim() else s) ** 2 * score).reshape(x.shape)

    return denoise


def sample_mixture(params, B, shape, seed=1):
    w, m, v = params
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(w, B, replacement=True, generator=g)
    x = m[k] + v[k].sqrt() * torch.randn(B, m.shape[1], generator=g, dtype=torch.float64)
    return x.reshape((B,) + shape)


def convnet_denoiser(C=3, width=32, seed=0):
    """A small random-weight conv net ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM
    preconditioning, sigma_data = 0.5), float64 weights cast to the state's dtype."""
    g = torch.Generator().manual_seed(seed)

    def conv(cin, cout):
        return (torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64) / math.sqrt(9 * cin),
                torch.zeros(cout, dtype=torch.float64))

    layers = [conv(C + 1, width), conv(width, width), conv(width, C)]
    sd = 0.5

    def denoise(x, sigma):
        dt = x.dtype
        B = x.shape[0]
        s = (sigma.to(dt).reshape(-1) if sigma.dim() else sigma.to(dt).expand(B)).reshape(B, 1, 1, 1)
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), torch.log(s) / 4
        h = torch.cat([c_in * x, c_noise.expand(B, 1, *x.shape[2:])], 1)
        for i, (W, b) in enumerate(layers):
            h = torch.nn.functional.conv2d(h, W.to(dt), b.to(dt), padding=1)
            if i < len(layers) - 1:
                h = torch.nn.functional.silu(h)
        return c_skip * x + c_out * h

    return denoise


def problem(name: str, D: int, B: int, dtype):
    shape = (3, 32, 32) if D == 3072 else (1, 8, 8) if D == 64 else (D,)
    params = diag_mixture(math.prod(shape))
    x = sample_mixture(params, B, shape).to(dtype)
    if name == "mixture":
        den = mixture_denoiser(params, shape)
        exact = mixture_logp(params, x, SIGMA_MIN)
    else:
        den = convnet_denoiser(C=shape[0])
        exact = None
    return dict(name=name, den=den, x=x, shape=shape, D=math.prod(shape), exact=exact)


def prior_logp(z):  # k-diffusion's prior, N(0, sigma_max^2 I)
    zf = z.reshape(z.shape[0], -1).to(torch.float64)
    return (-0.5 * zf.square() / SIGMA_MAX**2 - 0.5 * math.log(2 * math.pi * SIGMA_MAX**2)).sum(1)


def probe_seed_tensor(x, seed):
    """The Rademacher probe k-diffusion draws after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return torch.randint_like(x, 2) * 2 - 1


# ----------------------------------------------------------------------------------------------
# methods: each returns (logp (B,) float64, nfe)
def run_flowsde(p, seed, method="rk45", **kw):
    den = p["den"]

    def u(sigma, x):
        return (x - den(x, sigma)) / (sigma.reshape((-1,) + (1,) * (x.dim() - 1)) if sigma.dim() else sigma)

    g = torch.Generator().manual_seed(seed)
    r = flowsde.log_likelihood(flowsde.ODE(u), p["x"], (SIGMA_MIN, SIGMA_MAX), prior_logp, trace="hutchinson",
                               generator=g, method=method, **kw)
    return r.logp.to(torch.float64), r.nfe, r.solver_error.to(torch.float64)


_KD = None


def run_kdiff(p, seed, tol):
    global _KD
    if _KD is None:
        _KD = k_diffusion_sampling()
    torch.manual_seed(seed)  # its probe: torch.randint_like(x, 2) * 2 - 1 from the global RNG
    ll, info = _KD.log_likelihood(lambda x, s: p["den"](x, s), p["x"], SIGMA_MIN, SIGMA_MAX, atol=tol, rtol=tol)
    # k-diffusion's prior is N(0, sigma_max^2 I) in the state's dtype: same as prior_logp up to round-off
    return ll.to(torch.float64), info["fevals"]


def run_tde(p, seed, tol, method="dopri5"):
    """torchdiffeq on the concatenated (B, D + 1) state: one RMS norm over every entry."""
    from torchdiffeq import odeint

    x = p["x"]
    B, D = x.shape[0], p["D"]
    v = probe_seed_tensor(x, seed)
    nfe = 0

    def f(sigma, y):
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            xx = y[:, :D].reshape(x.shape).detach().requires_grad_()
            d = (xx - p["den"](xx, sigma)) / sigma
            (gr,) = torch.autograd.grad((d * v).sum(), xx)
        return torch.cat([d.detach().reshape(B, D), (gr * v).reshape(B, D).sum(1, keepdim=True)], 1)

    y0 = torch.cat([x.reshape(B, D), x.new_zeros(B, 1)], 1)
    ts = torch.tensor([SIGMA_MIN, SIGMA_MAX], dtype=x.dtype)
    with torch.no_grad():
        y = odeint(f, y0, ts, rtol=tol, atol=tol, method=method)[-1]
    return (prior_logp(y[:, :D]) + y[:, D].to(torch.float64)), nfe


# ----------------------------------------------------------------------------------------------
def reliable_nfe(points, target):
    """Fewest NFE from which every point with more NFE has error <= target (None if never)."""
    pts = sorted(points, key=lambda q: q[1])
    best = None
    for i, (err, nfe) in enumerate(pts):
        if all(e <= target for e, _ in pts[i:]):
            best = nfe
            break
    return best


#: the time warp of the ``flowsde-warp`` method (``--warp``; 1: the engine integrates in sigma itself)
WARP = 1.0


def sweep(p, seed, ref, methods, tols_flowsde, tols_other):
    D = p["D"]
    out = {}
    for m in methods:
        pts = []
        tols = (tols_flowsde if m in ("flowsde", "flowsde-warp") else tols_flowsde[:-4:2] if m == "flowsde-dopri8"
                else tols_other)
        for tol in tols:
            if m == "flowsde":
                logp, nfe, est = run_flowsde(p, seed, bpd_tol=tol)
            elif m == "flowsde-warp":
                logp, nfe, est = run_flowsde(p, seed, bpd_tol=tol, time_warp=WARP)
            elif m == "flowsde-dopri8":
                logp, nfe, est = run_flowsde(p, seed, method="torchdiffeq:dopri8", bpd_tol=tol)
            elif m == "kdiff":
                (logp, nfe), est = run_kdiff(p, seed, tol), None
            else:
                (logp, nfe), est = run_tde(p, seed, tol), None
            err = float((logp - ref).abs().max()) / (D * LN2)
            est_b = None if est is None else float(est.max()) / (D * LN2)
            pts.append((err, nfe, tol, est_b))
        out[m] = pts
    return out


def main(argv=None):
    global WARP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dims", type=int, nargs="+", default=[3072, 64])
    ap.add_argument("--problems", nargs="+", default=["mixture", "convnet"])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=["flowsde", "flowsde-warp", "flowsde-dopri8", "kdiff", "tde"])
    ap.add_argument("--warp", type=float, default=WARP, help="time_warp of the flowsde-warp method")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    WARP = args.warp
    torch.set_num_threads(1)
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          "1 thread")
    tf = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7]
    to = [3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7]
    if args.quick:
        tf, to = tf[::3], to[::3]
    results = {}
    for prob in args.problems:
        for D in args.dims:
            if prob == "convnet" and D != 3072:
                continue
            ref_p = problem(prob, D, args.batch, torch.float64)
            ref, ref_nfe, _ = run_flowsde(ref_p, 0, bpd_tol=1e-10, rtol=1e-10, atol=1e-10)
            line = f"\n## {prob}, D = {D}, B = {args.batch}; reference NFE {ref_nfe}"
            if ref_p["exact"] is not None:
                line += (f"; reference - closed form (one probe's estimator error): "
                         f"{float((ref - ref_p['exact']).abs().max()) / (D * LN2):.2e} bits/dim")
            print(line)
            for dt in args.dtypes:
                p = problem(prob, D, args.batch, getattr(torch, dt))
                res = sweep(p, 0, ref, args.methods, tf, to)
                results[(prob, D, dt)] = res
                print(f"### {dt}")
                for m, pts in res.items():
                    print(f"{m:>8}: " + "  ".join(f"{e:.1e}/{n}" + (f"(est {s:.0e})" if s is not None else "")
                                                   for e, n, _, s in pts))
                for target in (1e-3, 1e-5):
                    nf = {m: reliable_nfe([(e, n) for e, n, _, _ in pts], target) for m, pts in res.items()}
                    ours = [n for m, n in nf.items() if m.startswith("flowsde") and n]
                    ratio = (f"{nf['flowsde'] / nf['kdiff']:.2f}" if nf.get("flowsde") and nf.get("kdiff")
                             else "n/a")
                    best = f"{min(ours) / nf['kdiff']:.2f}" if ours and nf.get("kdiff") else "n/a"
                    warp = (f"{nf['flowsde-warp'] / nf['kdiff']:.2f}" if nf.get("flowsde-warp") and nf.get("kdiff")
                            else "n/a")
                    print(f"  target {target:.0e} bits/dim: NFE " + ", ".join(f"{m} {n}" for m, n in nf.items())
                          + f"; flowsde (rk45) / kdiff = {ratio}; flowsde-warp / kdiff = {warp}; "
                          f"best flowsde / kdiff = {best}")
    if args.plot:
        plot(results, args.plot)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    ncol = min(3, len(keys))
    nrow = -(-len(keys) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        for m, pts in results[key].items():
            pts = sorted(pts, key=lambda q: q[1])
            ax.loglog([n for _, n, _, _ in pts], [max(e, 1e-12) for e, _, _, _ in pts], "o-", label=m, ms=3)
        ax.axhline(1e-3, color="gray", lw=0.5)
        ax.axhline(1e-5, color="gray", lw=0.5)
        ax.set_title(f"{key[0]} D={key[1]} {key[2]}", fontsize=9)
        ax.set_xlabel("NFE")
        ax.set_ylabel("solver error (bits/dim)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
