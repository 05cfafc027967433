"""flowsde.adapters: schedules x parameterizations -> core problems.

A network ``net(x, t)`` that predicts a score, eps, x0, v or a flow velocity,
under a noise schedule, becomes a :class:`Diffusion` whose ``forward_sde``,
``reverse_sde``, ``pf_ode`` and ``prior`` are core ``flowsde`` objects.
"""

from . import schedules
from ._diffusion import PREDICTIONS, Diffusion
from ._prior import GaussianPrior
from .schedules import EDM, VE, VP, Cosine, Discrete, Linear, Schedule, SubVP

__all__ = ["schedules", "Schedule", "VP", "SubVP", "Cosine", "VE", "EDM", "Linear", "Discrete",
           "Diffusion", "PREDICTIONS", "GaussianPrior"]
