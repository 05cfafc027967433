"""flowsde.workloads: the command line's two jobs as library calls.

* :func:`compare_solvers`: every sampler on a model, NFE for NFE, against references
  (tables, CSV, JSON, plots; ``docs/cli.md``);
* :func:`dataset_nll`: bits/dim of every sample of a data set, resumable and sharded over
  ``torchrun`` processes (``docs/nll.md``).

Layer (docs/design.md, "Layers"): they use ``flowsde``, ``flowsde.adapters``,
``flowsde.validation`` and ``flowsde.models``; only the command line imports them.
"""

from ._compare import (
    compare_solvers,
    default_methods,
    default_mixture,
    known_methods,
    steps_for_budget,
)
from ._nll import NLLError, NLLResult, NLLRow, dataset_nll, sample_seeds
from ._report import CompareResult, CompareRow

__all__ = [
    "compare_solvers",
    "CompareResult",
    "CompareRow",
    "default_methods",
    "default_mixture",
    "known_methods",
    "steps_for_budget",
    "dataset_nll",
    "NLLResult",
    "NLLRow",
    "NLLError",
    "sample_seeds",
]
