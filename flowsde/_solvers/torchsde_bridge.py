"""torchsde's Itô methods through ``flowsde.solve`` (``method="milstein"``,
``"srk"``, ``"torchsde_euler"``).

torchsde takes ``(B, D)`` states and increasing times only. The bridge
flattens the event dimensions and, for a decreasing grid, solves in
``s = -t``: ``dx = -f(-s, x) ds + g(-s, x) dW_s`` (a backward Brownian motion
has the law of a forward one, so the diffusion keeps its sign). flowsde's
``noise_type="scalar"`` (one ``g`` per sample times the identity, independent
noise per coordinate) is torchsde's ``"diagonal"`` with ``g`` broadcast.

Each grid interval is one step of torchsde's solver object (its ``step``
method; ``sdeint`` would evaluate drift and diffusion once more per call to
check its contract). Increments come from a
:class:`flowsde.BrownianPath` (srk needs its space-time Lévy area); with a
generator the path's seed is drawn from it.

Valid combinations: ``milstein`` (strong 1.0) and ``srk`` (strong 1.5,
Rößler 2010) for scalar and diagonal noise; ``torchsde_euler`` (strong 0.5)
for both. ODEs: use euler / heun / rk45.
"""

from __future__ import annotations

import torch

from .._errors import InputError
from .base import Solver


class TorchSDE(Solver):
    """A torchsde Itô method, one step per grid interval."""

    noise_types = ("scalar", "diagonal")
    solves_ode = False

    _ORDERS = {"euler": (0.5, 1.0), "milstein": (1.0, 1.0), "srk": (1.5, 1.5)}
    #: drift evaluations per step: torchsde's srk (Rößler's SRI2, 4 stages) re-evaluates the
    #: drift at every earlier stage inside each stage, 1 + 2 + 3 + 4 = 10 (counted by a test)
    _EVALS = {"euler": 1, "milstein": 1, "srk": 10}

    def __init__(self, method: str):
        if method not in self._ORDERS:
            raise InputError(f"TorchSDE(method={method!r}): supported Itô methods are {tuple(self._ORDERS)}.")
        self.torchsde_method = method
        self.name = "torchsde_euler" if method == "euler" else method
        self.strong_order, self.weak_order = self._ORDERS[method]
        # additive noise: Euler-Maruyama is Milstein there (strong 1); the others keep their order
        self.strong_orders = {"scalar": self.strong_order, "diagonal": self.strong_order,
                              "additive": max(self.strong_order, 1.0)}
        self.evals_per_step = self._EVALS[method]
        self.needs_levy_area = method == "srk"

    def step(self, problem, t0, t1, x, noise, last, state):
        from torchsde._core import base_sde, methods

        B = x.shape[0]
        if "ts_host" in state:  # host floats of the grid: no device sync per step
            a, b = state["ts_host"][state["i"]], state["ts_host"][state["i"] + 1]
        else:
            a, b = float(t0), float(t1)
        sign = 1.0 if b > a else -1.0

        class _F(torch.nn.Module):
            noise_type = "diagonal"
            sde_type = "ito"

            def f(self_, s, y):
                return sign * problem.drift(sign * s, y.reshape(x.shape)).reshape(B, -1)

            def g(self_, s, y):
                return problem.diffusion(sign * s, y.reshape(x.shape)).expand(x.shape).reshape(B, -1)

        bm = _IncrementBM(noise, a, b, x, self.needs_levy_area)
        solver = methods.select(self.torchsde_method, "ito")(
            sde=base_sde.ForwardSDE(_F()), bm=bm, dt=None, adaptive=False, rtol=0.0, atol=0.0, dt_min=0.0,
            options={},
        )
        y1, _ = solver.step(sign * t0, sign * t1, x.reshape(B, -1), ())
        return y1.reshape(x.shape)

    def __repr__(self) -> str:
        return f"TorchSDE({self.torchsde_method!r})"


class _IncrementBM:
    """A one-interval Brownian motion for torchsde, read from flowsde's noise source."""

    def __init__(self, noise, t0: float, t1: float, x, levy):
        from .._noise import _PathNoise

        B = x.shape[0]
        self.shape = (B, x[0].numel())
        self.dtype, self.device = x.dtype, x.device
        h = abs(float(t1) - float(t0))
        if isinstance(noise, _PathNoise):
            path = noise.path
            a, b = sorted((float(t0), float(t1)))
            if levy:
                if not path.levy_area:
                    raise InputError("method='srk' needs a BrownianPath built with levy_area=True.")
                W, U = path._bm(a, b, return_U=True)
                W, U = W.reshape(self.shape), U.reshape(self.shape)
                if float(t1) < float(t0):
                    # Travelling backward, the path seen in s = -t is W~(u) = W(b) - W(b - u):
                    # same increment, space-time integral h W - U.
                    U = h * W - U
                self.W, self.U = W, U.to(self.dtype)
            else:
                self.W = path.increment(a, b).reshape(self.shape)
                self.U = None
            self.W = self.W.to(self.dtype)
        else:
            z = noise.randn_like(x).reshape(self.shape)
            self.W = z * h ** 0.5
            if levy:
                # Space-time Lévy area H ~ N(0, h/12) independent of W; torchsde's U = h (W/2 + H).
                Hh = noise.randn_like(x).reshape(self.shape) * (h / 12) ** 0.5
                self.U = h * (self.W / 2 + Hh)
            else:
                self.U = None
        self.levy_area_approximation = "space-time" if levy else "none"

    # torchsde's BaseBrownian protocol
    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U:
            return self.W, self.U
        return self.W

    def __repr__(self) -> str:
        return f"_IncrementBM(shape={self.shape})"

    def size(self):
        return self.shape
