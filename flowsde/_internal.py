"""The one internal module other flowsde packages import (docs/design.md, "Layers").

Checks and helpers that every layer shares but that are not part of the public API:
``flowsde.adapters``, ``flowsde.validation``, ``flowsde.models``, ``flowsde.workloads``,
the command line and the tests import them from here, and from no other private
module of another package. Each name is defined once, in the core module named
beside it.
"""

from ._checks import CheckedProblem, broadcast_diffusion, check_grid, check_state  # the solver's input checks
from ._likelihood import _check_warp as check_warp  # the likelihood's resolution of its options
from ._likelihood import _Tolerances as Tolerances
from ._likelihood import (  # data and quantization checks of the likelihood
    DEFAULT_BPD_TOL,
    DEFAULT_TIME_WARP,
    LIKELIHOOD_PER_SAMPLE,
    bin_width,
    check_data,
    check_data_range,
    check_in_range,
    quantization_levels,
)
from ._adjoint import adjoint_log_likelihood, adjoint_logp, attach_adjoint  # the likelihood's adjoint, unexported
from ._divergence import METHODS as DIVERGENCE_METHODS  # the exact trace's methods, for tests and benchmarks
from ._divergence import Divergence, ExactBasis, exact_cotangents, replica_bytes
from ._likelihood import draw_probes
from ._noise import NoiseSource, make_noise_source
from ._solvers.adaptive_sde import BrownianMemory  # the Brownian bridge of rejected tries, for its tests
from ._solvers.deis import deis_weights
from ._solve import _fixed_step_loop as fixed_step_loop  # the loop of solve, for tests of the checks' knobs
from ._solvers.pc import resolve_step_rule
from ._utils import (  # random draws, broadcasting, numbers and times
    ROUNDING,
    as_generator,
    as_seed,
    batch_broadcast,
    check_generators,
    check_positive,
    check_time_and_state,
    rademacher,
    rand,
    randn,
    rounding_slack,
    time_in_range,
)

__all__ = [
    "adjoint_log_likelihood",
    "adjoint_logp",
    "attach_adjoint",
    "DIVERGENCE_METHODS",
    "Divergence",
    "ExactBasis",
    "exact_cotangents",
    "replica_bytes",
    "draw_probes",
    "deis_weights",
    "BrownianMemory",
    "check_state",
    "check_grid",
    "broadcast_diffusion",
    "CheckedProblem",
    "fixed_step_loop",
    "make_noise_source",
    "resolve_step_rule",
    "check_data",
    "check_data_range",
    "check_in_range",
    "quantization_levels",
    "bin_width",
    "DEFAULT_BPD_TOL",
    "DEFAULT_TIME_WARP",
    "LIKELIHOOD_PER_SAMPLE",
    "Tolerances",
    "check_warp",
    "NoiseSource",
    "randn",
    "rand",
    "rademacher",
    "as_generator",
    "as_seed",
    "check_generators",
    "batch_broadcast",
    "check_positive",
    "check_time_and_state",
    "ROUNDING",
    "rounding_slack",
    "time_in_range",
]
