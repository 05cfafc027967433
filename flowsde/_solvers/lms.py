"""Linear multistep sampling (k-diffusion ``sample_lms``), on any schedule.

In the scaled state ``y = x/alpha`` at noise level ``r = sigma/alpha``, ``dy/dr = d(r, y) =
(y - D)/r``. Step ``i`` is the Adams–Bashforth step of order ``p = min(i + 1, order)`` in ``r`` on
the (non-uniform) grid:

    y_{i+1} = y_i + sum_{j<p} c_ij d_{i-j},
    c_ij = int_{r_i}^{r_{i+1}} prod_{k<p, k!=j} (r - r_{i-k})/(r_{i-j} - r_{i-k}) dr,

the integral of the Lagrange basis through the last ``p`` nodes. k-diffusion integrates the basis
with ``scipy.integrate.quad`` at every step; here the polynomial is integrated exactly, once per
solve on the host (the same numbers to round-off).

Global order 2 for ``order >= 2`` (measured): the lower-order start (an Euler first step, local
error ``O(h^2)``) caps it, as in k-diffusion; ``order=1`` is Euler in ``r``. 1 NFE per step. The
step to zero noise is the same formula with ``r_{i+1} = 0``, as k-diffusion (the model is never
evaluated at zero noise).
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import InputError
from .sampler import SamplerState, SemiLinearSolver, denoise, scale, unscale


@dataclass
class LMSState(SamplerState):
    coef: list  #: per step, the weights of ``d_i, d_{i-1}, ...``
    ds: tuple = ()  #: the last derivatives ``d_i = (y_i - D)/r_i``, newest first


def lms_coefficients(r, i: int, p: int) -> list:
    """``[c_i0, ..., c_i(p-1)]`` for nodes ``r[i], r[i-1], ...`` and the step ``r[i] -> r[i+1]``: the
    Lagrange basis polynomials, multiplied out in ``u = r - r[i]`` (pure Python, ``p <= order``
    small) and integrated exactly over ``[0, r[i+1] - r[i]]``."""
    nodes = [r[i - k] - r[i] for k in range(p)]
    h = r[i + 1] - r[i]
    out = []
    for j in range(p):
        poly, denom = [1.0], 1.0  # coefficients of prod_{k != j} (u - u_k), lowest degree first
        for k in range(p):
            if k == j:
                continue
            poly = [(poly[m - 1] if m > 0 else 0.0) - nodes[k] * (poly[m] if m < len(poly) else 0.0)
                    for m in range(len(poly) + 1)]
            denom *= nodes[j] - nodes[k]
        out.append(sum(c * h ** (m + 1) / (m + 1) for m, c in enumerate(poly)) / denom)
    return out


class LMS(SemiLinearSolver):
    name = "lms"
    order = 2
    scaled = True

    def __init__(self, order: int = 4):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise InputError(f"LMS(order={order!r}): order must be an int >= 1 (k-diffusion's default is 4).")
        self.lms_order = order
        self.order = 1 if order == 1 else 2

    def prepare(self, problem, host, eta) -> LMSState:
        return LMSState(host, eta, [lms_coefficients(host.r, i, min(i + 1, self.lms_order)) for i in range(host.steps)])

    def step(self, problem, x, t0, t1, h, i, noise, state: LMSState):
        g = state.host
        y = unscale(x, g.a[i])
        ds = ((y - denoise(problem, t0, x)) / g.r[i],) + state.ds[:self.lms_order - 1]
        for c, d in zip(state.coef[i], ds):
            y = y + c * d
        return scale(g.a[i + 1], y), LMSState(g, state.eta, state.coef, ds)

    def __repr__(self) -> str:
        return f"LMS(order={self.lms_order})"
