"""flowsde.validation: analytic references, Fokker–Planck residuals, marginal tests,
convergence orders and hypothesis strategies, for flowsde's tests and its users'."""

from .references import DiracMixture, GaussianMixture, OU

__all__ = ["GaussianMixture", "DiracMixture", "OU"]
