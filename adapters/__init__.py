"""flowsde.adapters: schedules x parameterizations -> core problems.

A network ``net(x, t)`` that predicts a score, eps, x0, v or a flow velocity,
under a noise schedule, becomes a :class:`Diffusion` whose ``forward_sde``,
``reverse_sde``, ``pf_ode`` and ``prior`` are core ``flowsde`` objects.
"""

from . import schedules
from ._diffusers import from_diffusers, scheduler_grid
from ._diffusion import PREDICTIONS, Diffusion
from ._edm import edm_ode, edm_sampler
from ._flow_matching import FlowMatchingSchedule, from_flow_matching, to_flow_matching
from ._grids import GRID_NAMES, named_grid
from ._likelihood import adaptive_pf_ode, likelihood_settings
from ._precond import Denoiser, EDMPrecond, Precond, VEPrecond, VPPrecond, from_denoiser, to_denoiser
from ._prior import GaussianPrior
from .schedules import EDM, VE, VP, Cosine, Discrete, Linear, Schedule, SubVP

__all__ = [
    # schedules (also as flowsde.adapters.schedules.<name>)
    "schedules",
    "Schedule",
    "VP",
    "SubVP",
    "Cosine",
    "VE",
    "EDM",
    "Linear",
    "Discrete",
    # a network and a schedule -> core problems
    "Diffusion",
    "PREDICTIONS",
    "GaussianPrior",
    # EDM / k-diffusion conventions (docs/bridges.md)
    "edm_sampler",
    "edm_ode",
    "Denoiser",
    "to_denoiser",
    "from_denoiser",
    "Precond",
    "EDMPrecond",
    "VPPrecond",
    "VEPrecond",
    # the variable an adaptive solve of a diffusion integrates in; the likelihood's resolved options
    "adaptive_pf_ode",
    "likelihood_settings",
    # named grids of a schedule (flowsde.grids.named with its noise-level map)
    "named_grid",
    "GRID_NAMES",
    # diffusers and flow matching (docs/bridges.md)
    "from_diffusers",
    "scheduler_grid",
    "from_flow_matching",
    "to_flow_matching",
    "FlowMatchingSchedule",
]
