"""flowsde.adapters: schedules x parameterizations -> core problems.

A network ``net(x, t)`` that predicts a score, eps, x0, v or a flow velocity,
under a noise schedule, becomes a :class:`Diffusion` whose ``forward_sde``,
``reverse_sde``, ``pf_ode`` and ``prior`` are core ``flowsde`` objects.
"""

from . import schedules
from ._diffusion import PREDICTIONS, Diffusion
from ._prior import GaussianPrior
from ._schedule import ROUNDING, time_in_range
from .schedules import EDM, VE, VP, Cosine, Discrete, Linear, Schedule, SubVP
from ._likelihood import DiffusionLikelihood
from ._precond import Denoiser, EDMPrecond, Precond, VEPrecond, VPPrecond, from_denoiser, to_denoiser
from ._edm import LAST_STEPS, edm_heun, edm_sampler
from ._diffusers import DIFFUSERS_PREDICTIONS, diffusers_alphas_cumprod, from_diffusers
from ._flow_matching import FlowMatchingSchedule, from_flow_matching, to_flow_matching

__all__ = ["schedules", "Schedule", "VP", "SubVP", "Cosine", "VE", "EDM", "Linear", "Discrete",
           "Diffusion", "PREDICTIONS", "ROUNDING", "time_in_range", "GaussianPrior", "DiffusionLikelihood",
           # EDM samplers, k-diffusion / EDM conventions, diffusers and flow-matching bridges
           "edm_sampler", "edm_heun", "LAST_STEPS", "Denoiser", "to_denoiser", "from_denoiser",
           "Precond", "EDMPrecond", "VPPrecond", "VEPrecond",
           "from_diffusers", "diffusers_alphas_cumprod", "DIFFUSERS_PREDICTIONS",
           "from_flow_matching", "to_flow_matching", "FlowMatchingSchedule"]

# Semi-linear problems of the samplers (docs/samplers.md): Diffusion.pf_ode() / reverse_sde() build them
from ._edm import edm_ode  # noqa: E402

__all__ += ["edm_ode"]
