"""flowsde.validation: analytic references, Fokker–Planck residuals, marginal tests,
convergence orders and hypothesis strategies, for flowsde's tests and its users'."""

from ._compare import Comparison, ComparisonRow, compare_solvers, default_methods, default_mixture, known_methods, \
    sliced_w2, steps_for_budget
from ._fokker_planck import (
    FokkerPlanckTerms,
    assert_fokker_planck,
    fokker_planck_residual,
    fokker_planck_terms,
    reverse_time_log_prob,
    reverse_time_sde,
)
from ._orders import OrderResult, convergence_order
from ._marginals import MarginalTestResult, assert_marginals, check_marginals, required_samples
from .references import DiracMixture, GaussianMixture, OU

__all__ = [
    "GaussianMixture",
    "DiracMixture",
    "OU",
    "fokker_planck_residual",
    "fokker_planck_terms",
    "assert_fokker_planck",
    "reverse_time_sde",
    "reverse_time_log_prob",
    "FokkerPlanckTerms",
    "check_marginals",
    "assert_marginals",
    "required_samples",
    "MarginalTestResult",
    "convergence_order",
    "OrderResult",
    "strategies",
    # the solver-comparison harness (validation/_compare.py)
    "compare_solvers",
    "Comparison",
    "ComparisonRow",
    "default_methods",
    "default_mixture",
    "known_methods",
    "sliced_w2",
    "steps_for_budget",
]
from ._nll import DatasetNLLError, NLLResult, NLLRow, dataset_nll  # data-set NLL (docs/nll.md)
__all__ += ["dataset_nll", "NLLResult", "NLLRow", "DatasetNLLError"]
from .peers import k_diffusion_sampling  # peers loaded for tests and benchmarks (validation/peers.py)
__all__ += ["k_diffusion_sampling"]
from ._likelihood_cases import likelihood_mixture, schedule_predictions  # exact likelihood problems
__all__ += ["likelihood_mixture", "schedule_predictions"]


def __getattr__(name):
    # hypothesis is a test-only dependency: ``flowsde.validation.strategies`` is imported on first use,
    # so the command line and users' code run without it.
    if name == "strategies":
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
