"""The solvers. One file per method; each states its order as class attributes."""

from .base import Solver
from .euler import Euler
from .euler_maruyama import EulerMaruyama
from .heun import Heun
from .pc import PC, langevin, langevin_step_size
from .torchsde_bridge import TorchSDE

__all__ = ["Solver", "Euler", "EulerMaruyama", "Heun", "PC", "TorchSDE", "langevin", "langevin_step_size"]

from .rk45 import RK45  # noqa: E402

__all__ += ["RK45"]
