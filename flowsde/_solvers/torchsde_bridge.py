"""torchsde's Itô methods through ``flowsde.solve`` (``method="milstein"``,
``"srk"``, ``"torchsde_euler"``).

torchsde takes ``(B, D)`` states and increasing times only. The bridge
flattens the event dimensions and, for a decreasing grid, solves in
``s = -t``: ``dx = -f(-s, x) ds + g(-s, x) dW_s`` (a backward Brownian motion
has the law of a forward one, so the diffusion keeps its sign). flowsde's
``noise_type="scalar"`` (one ``g`` per sample times the identity, independent
noise per coordinate) is torchsde's ``"diagonal"`` with ``g`` broadcast.

Each grid interval is one call of torchsde's public ``torchsde.sdeint`` on the two
times of the interval (``dt=inf``: one step, exactly to its end), with the
increments of that interval (a one-interval Brownian motion) read from the
solve's noise: a :class:`flowsde.BrownianPath` (srk needs its space-time Lévy
area), a generator or per-sample generators. ``sdeint`` first calls drift and
diffusion once at the interval's start to check their shapes; those calls
(made before the step queries its Brownian increment) get the state back as
a placeholder of the right shape instead of evaluating the user's functions,
so a step costs exactly the method's evaluations. ``sdeint`` returns the end
point through its linear interpolation at the last time, ``0 * y0 + 1 * y1``,
which is the step's result (bit for bit, up to the sign of a zero; a state already
Inf comes back NaN, as 0 * Inf is, and is non-finite either way). On an
accelerator, ``sdeint`` reads its times on the host (a few syncs per step).

Valid combinations: ``milstein`` (strong 1.0) and ``srk`` (strong 1.5,
Rößler 2010) for scalar and diagonal noise; ``torchsde_euler`` (strong 0.5)
for both. ODEs: use euler / heun / rk45. The declared orders of ``milstein`` and
``srk`` assume torchsde's diagonal-noise structure, each ``g_i`` a function of
``t`` and ``x_i`` only (commutative noise); a ``g`` that couples coordinates, such
as ``noise_type="scalar"`` with ``g(t, x)`` depending on ``x`` in more than one
dimension, is non-commutative noise and both fall to strong order 0.5 (measured:
0.59 for each with ``g = 0.8 |x| / sqrt(2)``, ``d = 2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._errors import InputError
from .base import Solver


class _TorchSDEProblem(torch.nn.Module):
    """The checked problem as torchsde's ``(B, D)`` Itô SDE with diagonal noise, in ``s = sign * t``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, problem, shape, sign: float):
        super().__init__()
        self.problem, self.shape, self.sign = problem, tuple(shape), sign
        self.bm = None  # the current step's Brownian increment (_IncrementBM)

    def f(self, s, y):
        if not self.bm.queried:  # sdeint's shape check, before the step: no evaluation
            return y
        return self.sign * self.problem.drift(self.sign * s, y.reshape(self.shape)).reshape(y.shape)

    def g(self, s, y):
        if not self.bm.queried:
            return y
        return self.problem.diffusion(self.sign * s, y.reshape(self.shape)).expand(self.shape).reshape(y.shape)


@dataclass(frozen=True)
class TorchSDEState:
    """Per solve: the grid as Python floats (the Brownian increments' interval, read without a
    device sync), the grid in ``s = sign * t`` (increasing, float64: ``sdeint``'s times) and the
    problem as torchsde sees it."""

    host: list
    s_grid: torch.Tensor
    sde: _TorchSDEProblem


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

    def init(self, problem, x, grid) -> TorchSDEState:
        host = grid.tolist()
        sign = 1.0 if host[-1] > host[0] else -1.0
        return TorchSDEState(host, sign * grid, _TorchSDEProblem(problem, x.shape, sign))

    def step(self, problem, x, t0, t1, h, i, noise, state: TorchSDEState):
        import torchsde

        B = x.shape[0]
        sde = state.sde  # built once per solve; it learns this step's increment (see _TorchSDEProblem.f)
        sde.bm = bm = _IncrementBM(noise, state.host[i], state.host[i + 1], x, self.needs_levy_area)
        ys = torchsde.sdeint(sde, x.reshape(B, -1), state.s_grid[i:i + 2], bm=bm, method=self.torchsde_method,
                             dt=math.inf, adaptive=False)
        sde.bm = None
        return ys[-1].reshape(x.shape), state

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
        self.queried = False  # becomes True when the step reads its increment

    # torchsde's BaseBrownian protocol
    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        self.queried = True
        if return_U:
            return self.W, self.U
        return self.W

    def __repr__(self) -> str:
        return f"_IncrementBM(shape={self.shape})"

    def size(self):
        return self.shape
