"""The discrete (DDPM-style) schedule; exported from :mod:`flowsde.adapters.schedules`
(this module imports only :mod:`._schedule`, never ``schedules``)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Union

import torch

from flowsde import InputError

from ._schedule import Schedule, _as_tensor, _logsigmoid

__all__ = ["Discrete"]

# ---------------------------------------------------------------------------------------
# Discrete (DDPM-style) schedules
# ---------------------------------------------------------------------------------------

_LABELS = ("index", "score_sde", "dpm_solver")


@dataclasses.dataclass(frozen=True, eq=False)
class Discrete(Schedule):
    """A schedule given by ``alphas_cumprod`` (``abar_n``, n = 0..N-1) of a model trained on integer steps.

    Continuous time: step ``n`` sits at ``t_n = (n + 1)/N`` (DPM-Solver's convention), so
    ``t`` in ``[t_min, t_max] = [1/N, 1]`` and the fractional index is ``k = N t - 1``.
    Between steps the log-SNR ``lambda = logit(abar)`` is interpolated *linearly in t*
    (so in k); below ``t = 1/N`` ``log alpha`` is linear from 0 at ``t = 0`` to
    ``log alpha_0`` at ``1/N`` (``sigma(0) = 0``, the data end); above ``t = 1`` the last
    segment is extrapolated. ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``
    (variance preserving), and ``d_alpha``, ``d_sigma`` are the exact derivatives of this
    interpolant (one-sided at the knots, where the slope jumps).

    ``label`` fixes the time the network is called with, ``net_time(t)``:

    - ``"index"``: the fractional step index ``N t - 1`` (integer ``n`` at step ``n``;
      DDPM / diffusers UNets);
    - ``"score_sde"``: ``(N - 1) t`` (score_sde_pytorch's ``999 t`` for N = 1000);
    - ``"dpm_solver"``: ``1000 (t - 1/N)`` (DPM-Solver's ``model_wrapper``; equals the
      index when N = 1000, see LuChengTHU/dpm-solver#60);
    - or a callable ``label(t) -> tensor``.

    Math runs in float64 and is cast back to ``t``'s dtype. ``alphas_cumprod`` is copied at
    construction and must not be modified in place afterwards (refused at the next evaluation).
    """

    alphas_cumprod: torch.Tensor
    label: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "index"
    #: per device: the log-SNR table and ``log abar_0``, functions of ``alphas_cumprod`` only (a private
    #: float64 copy made at construction; an in-place change of it is refused, see :meth:`_tables`)
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    _version: int = dataclasses.field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self):
        ac = self.alphas_cumprod
        if not isinstance(ac, torch.Tensor):
            try:
                ac = torch.as_tensor(ac, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as e:
                raise InputError(f"Discrete: alphas_cumprod must be a 1-D tensor, got {type(ac).__name__}.") from e
        ac = ac.detach().to(device="cpu", dtype=torch.float64).clone()
        if ac.dim() != 1 or ac.shape[0] < 2:
            raise InputError(f"Discrete: alphas_cumprod must be 1-D with >= 2 entries, got shape {tuple(ac.shape)}.")
        bad = ~(torch.isfinite(ac) & (ac > 0) & (ac < 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise InputError(f"Discrete: alphas_cumprod must lie in (0, 1); entry {i} is {float(ac[i])!r}.")
        inc = ac[1:] >= ac[:-1]
        if inc.any():
            i = int(inc.nonzero()[0])
            raise InputError(f"Discrete: alphas_cumprod must be strictly decreasing; entries {i}, {i + 1} are "
                             f"{float(ac[i])!r}, {float(ac[i + 1])!r}.")
        if not (callable(self.label) or self.label in _LABELS):
            raise InputError(f"Discrete: label must be one of {_LABELS} or a callable t -> label, got {self.label!r}.")
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "_version", ac._version)

    @classmethod
    def from_betas(cls, betas, label="index") -> "Discrete":
        """``abar_n = prod_{i <= n} (1 - beta_i)`` (DDPM)."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        if b.dim() != 1 or not bool(((b > 0) & (b < 1)).all()):
            raise InputError("Discrete.from_betas: betas must be a 1-D tensor with entries in (0, 1).")
        return cls(torch.cumprod(1 - b, 0), label=label)

    @property
    def N(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def t_min(self) -> float:
        return 1.0 / self.N

    @property
    def t_max(self) -> float:
        return 1.0

    @property
    def variance_preserving(self):
        return True

    def _tables(self, device):
        if self.alphas_cumprod._version != self._version:
            raise InputError("Discrete: alphas_cumprod was modified in place after construction; a schedule is "
                             "immutable (what was derived from it, here and in a Diffusion, would be stale). Build "
                             "a new Discrete(alphas_cumprod) instead.")
        key = str(device)
        if key not in self._cache:
            ac = self.alphas_cumprod.to(device)
            self._cache[key] = (torch.log(ac) - torch.log1p(-ac), float(torch.log(self.alphas_cumprod[0])))
        return self._cache[key]

    def _log_alpha_and_slope(self, t):
        """``(log alpha, d log alpha/dt)`` in float64, elementwise."""
        t = _as_tensor(t).to(torch.float64)
        lam_tab, log_ac0 = self._tables(t.device)
        N = self.N
        k = N * t - 1
        j = torch.clamp(torch.floor(k.detach()), 0, N - 2).long()
        l0, l1 = lam_tab[j], lam_tab[j + 1]
        lam = l0 + (k - j) * (l1 - l0)
        la_seg = 0.5 * _logsigmoid(lam)
        dla_seg = 0.5 * torch.sigmoid(-lam) * N * (l1 - l0)
        first = k < 0
        la = torch.where(first, 0.5 * N * log_ac0 * t, la_seg)
        dla = torch.where(first, torch.full_like(t, 0.5 * N * log_ac0), dla_seg)
        return la, dla, lam, first

    def alpha(self, t):
        t = _as_tensor(t)
        return torch.exp(self._log_alpha_and_slope(t)[0]).to(t.dtype)

    def sigma(self, t):
        t = _as_tensor(t)
        return torch.sqrt(-torch.expm1(2 * self._log_alpha_and_slope(t)[0])).to(t.dtype)

    def d_alpha(self, t):
        t = _as_tensor(t)
        la, dla, _, _ = self._log_alpha_and_slope(t)
        return (torch.exp(la) * dla).to(t.dtype)

    def d_sigma(self, t):
        t = _as_tensor(t)
        la, dla, _, _ = self._log_alpha_and_slope(t)
        return (-torch.exp(2 * la) * dla / torch.sqrt(-torch.expm1(2 * la))).to(t.dtype)

    def log_snr(self, t):
        t = _as_tensor(t)
        la, _, lam, first = self._log_alpha_and_slope(t)
        lam_first = 2 * la - torch.log(-torch.expm1(2 * la))
        return torch.where(first, lam_first, lam).to(t.dtype)

    def t_from_log_snr(self, lam):
        lam_in = _as_tensor(lam)
        lam = lam_in.to(torch.float64)
        lam_tab, log_ac0 = self._tables(lam.device)
        N = self.N
        # first index i with lam_tab[i] <= lam (lam_tab is decreasing); segment j = i - 1
        i = torch.searchsorted(-lam_tab, -lam.detach().reshape(-1)).reshape(lam.shape)
        j = torch.clamp(i - 1, 0, N - 2)
        l0, l1 = lam_tab[j], lam_tab[j + 1]
        k = j + (l0 - lam) / (l0 - l1)
        t_seg = (k + 1) / N
        t_first = _logsigmoid(lam) / (N * log_ac0)
        return torch.where(lam > lam_tab[0], t_first, t_seg).to(lam_in.dtype)

    def index_from_t(self, t):
        """Fractional step index ``k = N t - 1``."""
        return self.N * _as_tensor(t) - 1

    def t_from_index(self, k):
        """Continuous time of (fractional) step index ``k``: ``(k + 1)/N``."""
        return (_as_tensor(k) + 1) / self.N

    def net_time(self, t):
        t = _as_tensor(t)
        if callable(self.label):
            return self.label(t)
        if self.label == "index":
            return self.N * t - 1
        if self.label == "score_sde":
            return (self.N - 1) * t
        return 1000.0 * (t - 1.0 / self.N)
