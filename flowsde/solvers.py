"""The solvers: one file per method under ``flowsde/_solvers/``, each stating its order.

``flowsde.solve(problem, x, grid, method=...)`` takes a name of :data:`METHODS` or an
instance of a class below (``flowsde.solvers.PC(snr=0.1)``). Fixed-step solvers follow the
typed contract of :class:`Solver` (``init(problem, x, grid) -> state`` once per solve,
``step(problem, x, t0, t1, h, i, noise, state) -> (x, state)``; docs/design.md, "Solvers");
adaptive ones implement ``solve``.
"""

from ._solve import METHODS, get_solver
from ._solvers import (
    AdaptiveSDE,
    DDIM,
    DPM2,
    LMS,
    DPM2Ancestral,
    DPMAdaptive,
    DPMFast,
    DPMppSDE,
    DEIS,
    DPMpp3M,
    DPMppSingle,
    SASolver,
    PC,
    RK45,
    Bosh3,
    ButcherTableau,
    EmbeddedRK,
    Tsit5,
    DPMpp2M,
    DPMpp2MSDE,
    DPMpp2SAncestral,
    DPMpp3MSDE,
    EDMChurn,
    Euler,
    EulerAncestral,
    EulerMaruyama,
    Heun,
    SemiLinearSolver,
    Solver,
    TorchSDE,
    UniPC,
    langevin,
    langevin_step_size,
)
from ._solvers.torchdiffeq_engine import TorchDiffEq

__all__ = [
    "METHODS",
    "get_solver",
    "Solver",
    # ODEs and SDEs
    "Euler",
    "Heun",
    "EulerMaruyama",
    "PC",
    "langevin",
    "langevin_step_size",
    "EmbeddedRK",
    "ButcherTableau",
    "RK45",
    "Tsit5",
    "Bosh3",
    "TorchDiffEq",
    "TorchSDE",
    # samplers of semi-linear problems (docs/samplers.md)
    "SemiLinearSolver",
    "DDIM",
    "EulerAncestral",
    "DPM2",
    "DPMpp2M",
    "DPMpp2SAncestral",
    "DPMpp2MSDE",
    "DPMpp3MSDE",
    "LMS",
    "UniPC",
    "EDMChurn",
    # k-diffusion's remaining samplers (issue 22)
    "DPM2Ancestral",
    "DPMppSDE",
    "DPMFast",
    "DPMAdaptive",
    # diffusers' remaining samplers (issue 22)
    "DEIS",
    "DPMpp3M",
    "DPMppSingle",
    "SASolver",
    # Jolicoeur-Martineau et al.'s adaptive-step SDE sampler (issue 22)
    "AdaptiveSDE",
]
