"""The solvers. One file per method; each states its order as class attributes."""

from .base import Solver
from .euler import Euler
from .euler_maruyama import EulerMaruyama
from .heun import Heun
from .pc import PC, langevin, langevin_step_size
from .torchsde_bridge import TorchSDE

__all__ = ["Solver", "Euler", "EulerMaruyama", "Heun", "PC", "TorchSDE", "langevin", "langevin_step_size"]

from .rk45 import RK45, Bosh3, EmbeddedRK, Tsit5  # noqa: E402
from .runge_kutta import ButcherTableau  # noqa: E402

__all__ += ["EmbeddedRK", "ButcherTableau", "RK45", "Tsit5", "Bosh3"]

# Samplers of semi-linear problems (docs/samplers.md)
from .ddim import DDIM  # noqa: E402
from .dpm_2 import DPM2  # noqa: E402
from .dpmpp_2m import DPMpp2M  # noqa: E402
from .dpmpp_2m_sde import DPMpp2MSDE  # noqa: E402
from .dpmpp_2s_ancestral import DPMpp2SAncestral  # noqa: E402
from .dpmpp_3m_sde import DPMpp3MSDE  # noqa: E402
from .edm import EDMChurn  # noqa: E402
from .euler_ancestral import EulerAncestral  # noqa: E402
from .lms import LMS  # noqa: E402
from .sampler import SemiLinearSolver  # noqa: E402
from .unipc import UniPC  # noqa: E402

SAMPLERS = {cls.name: cls for cls in (DDIM, EulerAncestral, DPM2, DPMpp2M, DPMpp2SAncestral, DPMpp2MSDE, DPMpp3MSDE,
                                      LMS, UniPC, EDMChurn)}

__all__ += ["SemiLinearSolver", "DDIM", "EulerAncestral", "DPM2", "DPMpp2M", "DPMpp2SAncestral", "DPMpp2MSDE",
            "DPMpp3MSDE", "LMS", "UniPC", "EDMChurn", "SAMPLERS"]

# k-diffusion's remaining samplers (issue 22): two fixed-step samplers and two that choose their own
# steps between the grid's end points (adaptive family)
from .dpm_2_ancestral import DPM2Ancestral  # noqa: E402
from .dpm_adaptive import DPMAdaptive  # noqa: E402
from .dpm_fast import DPMFast  # noqa: E402
from .dpmpp_sde import DPMppSDE  # noqa: E402

SAMPLERS.update({cls.name: cls for cls in (DPM2Ancestral, DPMppSDE, DPMFast, DPMAdaptive)})
__all__ += ["DPM2Ancestral", "DPMppSDE", "DPMFast", "DPMAdaptive"]

# diffusers' remaining samplers (issue 22); its flow-matching Euler and Heun schedulers are euler and
# heun(final_euler=True) on a velocity model: aliases in flowsde._solve.METHODS (docs/samplers.md)
from .deis import DEIS  # noqa: E402
from .dpmpp_3m import DPMpp3M  # noqa: E402
from .dpmpp_single import DPMppSingle  # noqa: E402
from .sa_solver import SASolver  # noqa: E402

SAMPLERS.update({cls.name: cls for cls in (DEIS, DPMpp3M, DPMppSingle, SASolver)})
__all__ += ["DEIS", "DPMpp3M", "DPMppSingle", "SASolver"]

# Jolicoeur-Martineau et al.'s adaptive-step SDE sampler (issue 22): any SDE, per-sample steps (adaptive family)
from .adaptive_sde import AdaptiveSDE  # noqa: E402

__all__ += ["AdaptiveSDE"]
