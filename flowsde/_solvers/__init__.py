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
