"""flowsde.workloads: the command line's two jobs as library calls.

* :func:`compare_solvers`: every sampler on a model, NFE for NFE, against references
  (tables, CSV, JSON, plots; ``docs/cli.md``);
* :func:`dataset_nll`: bits/dim of every sample of a data set, resumable and sharded over
  ``torchrun`` processes (``docs/nll.md``);
* :func:`tune_grid`: a sampler's grid fitted to a model at one NFE (``flowsde tune``, ``docs/cli.md``).

Layer (docs/design.md, "Layers"): they use ``flowsde``, ``flowsde.adapters``,
``flowsde.validation`` and ``flowsde.models``; only the command line imports them.
"""

from ._compare import (
    compare_solvers,
    default_grid,
    default_methods,
    default_mixture,
    known_methods,
    steps_for_budget,
)
from ._nll import NLLError, NLLResult, NLLRow, dataset_nll, sample_seeds
from ._report import CompareResult, CompareRow
from ._tune import TunedGrid, tune_grid

__all__ = [
    "compare_solvers",
    "CompareResult",
    "CompareRow",
    "default_grid",
    "default_methods",
    "default_mixture",
    "known_methods",
    "steps_for_budget",
    "tune_grid",
    "TunedGrid",
    "dataset_nll",
    "NLLResult",
    "NLLRow",
    "NLLError",
    "sample_seeds",
]
