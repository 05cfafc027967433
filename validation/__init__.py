"""flowsde.validation: analytic references, Fokker–Planck residuals, marginal tests,
convergence orders and hypothesis strategies, for flowsde's tests and its users'."""

from ._compare import Comparison, ComparisonRow, compare_solvers
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
from . import strategies
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
    # the solver-comparison harness (validation/_compare.py, owned by the lead)
    "compare_solvers",
    "Comparison",
    "ComparisonRow",
]
from ._nll import DatasetNLLError, NLLResult, NLLRow, dataset_nll  # data-set NLL (validation/_nll.py, owner dist)
__all__ += ["dataset_nll", "NLLResult", "NLLRow", "DatasetNLLError"]
