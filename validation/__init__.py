"""flowsde.validation: analytic references, Fokker–Planck residuals, marginal tests,
convergence orders and hypothesis strategies, for flowsde's tests and its users'.

The command line's jobs (solver comparison, data-set NLL) are in ``flowsde.workloads``.
"""

from ._fokker_planck import (
    FokkerPlanckResult,
    assert_fokker_planck,
    fokker_planck_residual,
    fokker_planck_terms,
    reverse_time_log_prob,
    reverse_time_sde,
)
from ._likelihood_cases import likelihood_mixture, schedule_predictions
from ._marginals import MarginalsResult, assert_marginals, check_marginals, required_samples, sliced_w2
from ._orders import OrderResult, convergence_order, fit_order
from .peers import k_diffusion_sampling
from .references import OU, DiracMixture, GaussianMixture

__all__ = [
    # exact references
    "GaussianMixture",
    "DiracMixture",
    "OU",
    "likelihood_mixture",
    "schedule_predictions",
    # Fokker-Planck residuals
    "fokker_planck_residual",
    "fokker_planck_terms",
    "assert_fokker_planck",
    "FokkerPlanckResult",
    "reverse_time_sde",
    "reverse_time_log_prob",
    # marginals
    "check_marginals",
    "assert_marginals",
    "required_samples",
    "MarginalsResult",
    "sliced_w2",
    # convergence orders
    "convergence_order",
    "fit_order",
    "OrderResult",
    # hypothesis strategies (imported on first use) and peers loaded for tests and benchmarks
    "strategies",
    "k_diffusion_sampling",
]


def __getattr__(name):
    # hypothesis is a test-only dependency: ``flowsde.validation.strategies`` is imported on first use,
    # so the command line and users' code run without it.
    if name == "strategies":
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
