"""flowsde: SDE/ODE solvers, exact log-likelihoods and marginal checks for
diffusion and flow models.

The core knows nothing of noise schedules or networks; ``flowsde.adapters``
turns a network and schedule into core problems, ``flowsde.validation`` holds
analytic references and checks, and ``flowsde.workloads`` the command line's
jobs. The solvers live in ``flowsde.solvers``, the time grids in ``flowsde.grids``.
The names and what each means: docs/design.md, "Vocabulary".
"""

from . import grids, solvers
from ._errors import FlowSDEError, InputError, SolveError
from ._likelihood import LikelihoodResult, bits_per_dim, dequantize, log_likelihood
from ._noise import BrownianPath, per_sample_generators
from ._problem import ODE, SDE
from ._semilinear import SemiLinearODE, SemiLinearSDE
from ._solution import Solution, Status
from ._solve import solve

__version__ = "0.1.0"

__all__ = [
    # problems
    "ODE",
    "SDE",
    "SemiLinearODE",
    "SemiLinearSDE",
    # solving
    "solve",
    "Solution",
    "Status",
    "solvers",
    "grids",
    "BrownianPath",
    "per_sample_generators",
    # errors
    "FlowSDEError",
    "InputError",
    "SolveError",
    # exact log-likelihoods (docs/likelihood.md)
    "log_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "dequantize",
]
