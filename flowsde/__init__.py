"""flowsde: SDE/ODE solvers, exact log-likelihoods and marginal checks for
diffusion and flow models.

The core knows nothing of noise schedules or networks; ``flowsde.adapters``
turns a network and schedule into core problems, and ``flowsde.validation``
holds analytic references and checks.
"""

from . import grids, utils
from ._errors import FlowSDEError, InputError, SolveError
from ._noise import BrownianPath, per_sample_generators
from ._problem import ODE, SDE
from ._solution import Solution, Status
from ._solve import METHODS, get_solver, solve
from ._solvers import PC, Euler, EulerMaruyama, Heun, Solver, TorchSDE, langevin, langevin_step_size

__version__ = "0.1.0"

__all__ = [
    "ODE",
    "SDE",
    "solve",
    "Solution",
    "Status",
    "grids",
    "utils",
    "BrownianPath",
    "per_sample_generators",
    "Solver",
    "Euler",
    "Heun",
    "EulerMaruyama",
    "PC",
    "TorchSDE",
    "langevin",
    "langevin_step_size",
    "get_solver",
    "METHODS",
    "FlowSDEError",
    "InputError",
    "SolveError",
]

# Adaptive RK45 and exact log-likelihoods (docs/likelihood.md)
from ._likelihood import LikelihoodResult, bits_per_dim, dequantize, log_likelihood  # noqa: E402
from ._solvers.rk45 import RK45  # noqa: E402
from ._solvers.torchdiffeq_engine import TorchDiffEq  # noqa: E402
from ._solvers.torchdiffeq_engine import methods as _torchdiffeq_methods  # noqa: E402

METHODS.update(_torchdiffeq_methods())  # "torchdiffeq:dopri5", ... (torchdiffeq's adaptive solvers)

__all__ += ["TorchDiffEq", "RK45", "log_likelihood", "LikelihoodResult", "bits_per_dim", "dequantize"]

# Semi-linear problems and their samplers (docs/samplers.md)
from ._semilinear import SemiLinear, SemiLinearODE, SemiLinearSDE  # noqa: E402
from ._solvers import (  # noqa: E402
    DDIM, DPM2, EDM, LMS, DPMpp2M, DPMpp2MSDE, DPMpp2SAncestral, DPMpp3MSDE, EulerAncestral, SemiLinearSolver, UniPC,
)

__all__ += ["SemiLinear", "SemiLinearODE", "SemiLinearSDE", "SemiLinearSolver", "DDIM", "EulerAncestral", "DPM2",
            "DPMpp2M", "DPMpp2SAncestral", "DPMpp2MSDE", "DPMpp3MSDE", "LMS", "UniPC", "EDM"]
