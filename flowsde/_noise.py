"""Sources of Gaussian noise and Brownian increments for the SDE solvers.

``solve(..., generator=...)`` accepts:

* ``None``: torch's global RNG;
* a ``torch.Generator``: one stream for the whole batch (reproducible, but a
  sample's noise depends on its position in the batch);
* a list of ``torch.Generator`` (one per sample, see
  :func:`per_sample_generators`): each sample draws from its own stream, so a
  result does not change when the batch is split (as EDM's
  ``StackedRandomGenerator``);
* a :class:`BrownianPath`: increments are read off one Brownian path, the same
  whatever the solver, step size or query order, so two solvers can be driven
  by the same path (strong-error comparisons).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ._errors import InputError
from ._utils import as_generator, as_seed, check_generators, randn


def per_sample_generators(seeds: Union[Sequence[int], torch.Tensor], device: Union[str, torch.device] = "cpu"):
    """One ``torch.Generator`` per sample, seeded with ``seeds[i]``.

    Pass the result as ``generator=`` to :func:`flowsde.solve`; sample ``i``'s
    noise then depends on ``seeds[i]`` alone, not on the batch it is in.
    """
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


class BrownianPath:
    """A Brownian motion on ``[min(t0, t1), max(t0, t1)]`` that gives the same path
    whatever the order, number or spacing of its queries.

    Built on torchsde's ``BrownianInterval(halfway_tree=True, tol > 0)`` (a
    virtual Brownian tree; the plain interval depends on query order).

    Arguments:
        t0, t1: the end points (either order).
        shape: the shape of ``W(t)``, i.e. of the state ``x``: ``(B, *event_shape)``.
        dtype, device: of the increments.
        generator: the path's entropy: an int seed, a ``torch.Generator`` (one seed is drawn
            from it) or ``None`` (drawn from torch's global RNG).
        tol: resolution of the tree (default ``1e-6 * |t1 - t0|``): queries closer
            than ``tol`` are approximated by a Brownian bridge.
        levy_area: also produce space-time Lévy area (needed by ``method="srk"``).
    """

    def __init__(self, t0, t1, shape, *, dtype=torch.float64, device="cpu", generator=None, tol=None,
                 levy_area: bool = False):
        import torchsde

        lo, hi = sorted((float(t0), float(t1)))
        if not hi > lo:
            raise InputError(f"BrownianPath: t0={t0} and t1={t1} must differ.")
        self.t_lo, self.t_hi = lo, hi
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self.seed = as_seed(generator, "BrownianPath")
        self.tol = float(tol) if tol is not None else 1e-6 * (hi - lo)
        self.levy_area = levy_area
        self._bm = torchsde.BrownianInterval(
            t0=lo, t1=hi, size=self.shape, dtype=dtype, device=self.device, entropy=self.seed,
            tol=self.tol, halfway_tree=True,
            levy_area_approximation="space-time" if levy_area else "none",
        )

    def increment(self, ta, tb) -> torch.Tensor:
        """``W(max(ta, tb)) - W(min(ta, tb))``: the increment over the interval, whatever
        the direction of travel (a backward step uses ``|dt|``)."""
        a, b = sorted((float(ta), float(tb)))
        a = max(a, self.t_lo)
        b = min(b, self.t_hi)
        return self._bm(a, b)

    def __call__(self, t) -> torch.Tensor:
        """``W(t) - W(t_lo)``."""
        t = float(t)
        if t <= self.t_lo:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return self._bm(self.t_lo, min(t, self.t_hi))

    def __repr__(self) -> str:
        return f"BrownianPath([{self.t_lo}, {self.t_hi}], shape={self.shape}, seed={self.seed}, tol={self.tol})"


class NoiseSource:
    """The noise a solver draws from (built by :func:`make_noise_source` from ``solve``'s
    ``generator``): ``randn_like(x)`` standard normals shaped like ``x`` and
    ``dW(t0, t1, sqrt_abs_dt, x)`` the Brownian increment over ``[t0, t1]``."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement randn_like(x).")

    def dW(self, t0: torch.Tensor, t1: torch.Tensor, sqrt_abs_dt, x: torch.Tensor) -> torch.Tensor:
        """``W(t1) - W(t0)`` shaped like ``x``; ``sqrt_abs_dt = sqrt(|t1 - t0|)`` (a float or tensor)."""
        return self.randn_like(x).mul_(sqrt_abs_dt)

    def snapshot(self, x: torch.Tensor):
        """A function that puts this source back where it is now, so that a second run draws the
        same noise (``solve`` replays a failed solve to name its first failing step; docs/design.md,
        "Errors"); ``None`` where it cannot (torch's global RNG on an accelerator other than CUDA:
        ``solve`` then checks every output as it goes)."""
        return None


class _GeneratorNoise(NoiseSource):
    """``None``, one ``torch.Generator`` or a list of per-sample generators (``flowsde._internal.randn``)."""

    def __init__(self, generator):
        self.generator = generator
        self._one_stream = generator is None or isinstance(generator, torch.Generator)

    def randn_like(self, x):
        if self._one_stream:  # utils.randn's own first case, called here without its layers (once per step)
            return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        return randn(x.shape, self.generator, x.dtype, x.device)

    def snapshot(self, x):
        g = self.generator
        if g is None:  # torch's global RNG: the CPU's, and the device's where x lives
            return _rng_snapshot(x.device)
        gens = g if isinstance(g, list) else [g]
        states = [gen.get_state() for gen in gens]

        def rewind():
            for gen, st in zip(gens, states):
                gen.set_state(st)

        return rewind


class _PathNoise(NoiseSource):
    def __init__(self, path: BrownianPath):
        self.path = path
        # Standard normals that are not increments (Langevin corrector, churn) come
        # from a generator seeded by the path, so the whole run stays reproducible.
        self._gen = torch.Generator(device=path.device)
        self._gen.manual_seed(path.seed + 1)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self._gen, dtype=x.dtype, device=x.device)

    def dW(self, t0, t1, sqrt_abs_dt, x):
        return self.path.increment(t0, t1).to(dtype=x.dtype, device=x.device)

    def snapshot(self, x):  # the path gives the same increments to any query; its generator is rewound
        state = self._gen.get_state()
        return lambda: self._gen.set_state(state)


def _rng_snapshot(device: torch.device):
    """Rewinding torch's global RNG: the CPU generator, and ``device``'s on CUDA (``None`` on
    another accelerator, whose global generator this does not reach)."""
    if device.type not in ("cpu", "cuda"):
        return None
    cpu = torch.get_rng_state()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        dev_state = torch.cuda.get_rng_state(index)

        def rewind():
            torch.set_rng_state(cpu)
            torch.cuda.set_rng_state(dev_state, index)

        return rewind
    return lambda: torch.set_rng_state(cpu)


def _check_path_covers(path: BrownianPath, grid: torch.Tensor) -> None:
    """A path must span the grid: outside ``[t_lo, t_hi]`` its increments are clipped to zero (torchsde
    only warns), which gives a wrong law without an error. Slack: float64 rounding of the ends."""
    g_lo, g_hi = float(grid.min()), float(grid.max())
    slack = 8 * torch.finfo(torch.float64).eps * max(abs(g_lo), abs(g_hi), abs(path.t_lo), abs(path.t_hi), 1.0)
    if g_lo < path.t_lo - slack or g_hi > path.t_hi + slack:
        raise InputError(
            f"generator: the BrownianPath spans [{path.t_lo!r}, {path.t_hi!r}] but the grid spans [{g_lo!r}, {g_hi!r}]; "
            "the path must cover the grid (its increments outside its span would be zero): build it as "
            "flowsde.BrownianPath(grid[0], grid[-1], x.shape, generator=seed)."
        )


def make_noise_source(generator, x: torch.Tensor, grid: Optional[torch.Tensor] = None) -> NoiseSource:
    """Turn ``solve``'s ``generator`` argument into a noise source (validated). With ``grid`` (the
    solve's float64 grid), a :class:`BrownianPath` must span it."""
    generator = as_generator(generator, x.device)
    if generator is None:
        return _GeneratorNoise(None)
    if isinstance(generator, NoiseSource):
        return generator
    if isinstance(generator, torch.Generator):
        if generator.device.type != x.device.type:
            raise InputError(
                f"generator: it lives on {generator.device} but x is on {x.device}; "
                f"create it with torch.Generator(device={str(x.device)!r})."
            )
        return _GeneratorNoise(generator)
    if isinstance(generator, BrownianPath):
        if tuple(generator.shape) != tuple(x.shape):
            raise InputError(
                f"generator: BrownianPath has shape {generator.shape} but x has shape {tuple(x.shape)}; "
                "build the path with shape=x.shape."
            )
        if grid is not None:
            _check_path_covers(generator, grid)
        return _PathNoise(generator)
    if isinstance(generator, (list, tuple)):
        check_generators(generator, x.shape[0], "generator")
        return _GeneratorNoise(list(generator))
    raise InputError(
        f"generator: expected None, an int seed, a torch.Generator, a list of them (one per sample) or a BrownianPath; "
        f"got {type(generator).__name__}."
    )

