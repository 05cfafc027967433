"""Sampling a 2-D Gaussian mixture through the adapters reproduces its exact marginal (slow, statistical).

The network is the exact oracle of the mixture (``flowsde.validation.GaussianMixture``), so the only
errors are the solver's discretization and Monte-Carlo noise. Samplers start from the exact
marginal at T and stop at t_end, where the exact target is ``gm.marginal(schedule, t_end)``.

Statistical test (inline, independent of ``flowsde.validation``'s helpers), per sampler: KS tests of
3 fixed 1-D projections against the projected mixture CDF (closed form), a chi^2 test of the mean
(exact covariance), and z tests of the projected second moments (exact E y^2, E y^4): 7 p-values
with Bonferroni at a family-wise false-alarm rate ALPHA = 1e-3 (fixed seeds: the outcome is
deterministic). With n = 4000 the KS test detects a CDF error of ~0.035, so a discretization bias
well below that passes (EM, 400 steps: weak error O(1/400)); a negative control (a sampler using
a wrong score) must be rejected, which shows the test has power.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import flowsde
from flowsde.adapters import Diffusion
from flowsde.adapters.schedules import VP, Cosine, Linear
from flowsde.validation import GaussianMixture

pytestmark = pytest.mark.slow

f64 = torch.float64
ALPHA = 1e-3
N_SAMPLES = 4000
ANGLES = (0.0, math.pi / 3, 2 * math.pi / 3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """(4000, 2) tensors gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
    stalls cost ~8 ms per op; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mixture(shift: float = 0.0) -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=f64),
        torch.tensor([[-1.5 + shift, 0.5], [1.0, -0.5 + shift]], dtype=f64),
        torch.tensor([[[0.25, 0.1], [0.1, 0.2]], [[0.3, -0.12], [-0.12, 0.15]]], dtype=f64),
    )


def _oracle(gm, sch, pred):
    try:
        return gm.oracle(sch, pred, time="schedule")
    except TypeError:  # references.py without the ``time`` option: always schedule time
        return gm.oracle(sch, pred)


def marginal_pvalues(samples: torch.Tensor, ref: GaussianMixture) -> np.ndarray:
    """7 p-values of H0: samples ~ ref (exact for KS, CLT for the moment tests)."""
    x = samples.detach().to(f64).numpy()
    w, mu, cov = ref.weights.numpy(), ref.means.numpy(), ref.covs.numpy()
    n = x.shape[0]
    pv = []
    for th in ANGLES:
        u = np.array([math.cos(th), math.sin(th)])
        m_k, s_k = mu @ u, np.sqrt(np.einsum("i,kij,j->k", u, cov, u))
        y = x @ u
        cdf = lambda z: np.sum(w * stats.norm.cdf((np.asarray(z)[:, None] - m_k) / s_k), axis=1)  # noqa: E731
        pv.append(stats.kstest(y, cdf).pvalue)
        v_k = s_k**2
        ey2 = np.sum(w * (m_k**2 + v_k))
        ey4 = np.sum(w * (m_k**4 + 6 * m_k**2 * v_k + 3 * v_k**2))
        z = (np.mean(y**2) - ey2) / math.sqrt((ey4 - ey2**2) / n)
        pv.append(2 * stats.norm.sf(abs(z)))
    mean = np.sum(w[:, None] * mu, 0)
    dm = mu - mean
    C = np.sum(w[:, None, None] * (cov + dm[:, :, None] * dm[:, None, :]), 0)
    d = x.mean(0) - mean
    pv.append(stats.chi2.sf(n * d @ np.linalg.solve(C, d), df=2))
    return np.array(pv)


def _passes(samples, ref) -> bool:
    return bool(marginal_pvalues(samples, ref).min() > ALPHA / 7)  # Bonferroni over the 7 tests


def _start(gm, sch, t):
    return gm.marginal(sch, t).sample(N_SAMPLES, generator=torch.Generator().manual_seed(11))


def test_reverse_sde_beta1_euler_maruyama_vp_eps():
    gm, sch = _mixture(), VP()
    dif = Diffusion(_oracle(gm, sch, "eps"), sch, "eps")
    t_end = 1e-3
    ts = flowsde.grids.uniform(1.0, t_end, 400)
    sol = flowsde.solve(dif.reverse_sde(1.0), _start(gm, sch, 1.0), ts, method="euler_maruyama",
                        generator=torch.Generator().manual_seed(5))
    assert sol.success and sol.nfe == 400  # one network call per step
    assert _passes(sol.x, gm.marginal(sch, t_end))


def test_forward_sde_family_cosine_v():
    """The forward-time family with beta = 0.5 (a v-model on the cosine schedule), from t_min up to
    t = 0.5, keeps the exact marginals too."""
    gm, sch = _mixture(), Cosine()
    dif = Diffusion(_oracle(gm, sch, "v"), sch, "v")
    t0, t1 = 1e-3, 0.5
    sol = flowsde.solve(dif.forward_sde(0.5), _start(gm, sch, t0), flowsde.grids.uniform(t0, t1, 200),
                        method="euler_maruyama", generator=torch.Generator().manual_seed(8))
    assert sol.success
    assert _passes(sol.x, gm.marginal(sch, t1))


def test_pf_ode_heun_vp_x0():
    gm, sch = _mixture(), VP()
    dif = Diffusion(_oracle(gm, sch, "x0"), sch, "x0")
    t_end = 1e-3
    sol = flowsde.solve(dif.pf_ode(), _start(gm, sch, 1.0), flowsde.grids.uniform(1.0, t_end, 100), method="heun")
    assert sol.success
    assert _passes(sol.x, gm.marginal(sch, t_end))


def test_velocity_model_reverse_sde_linear():
    """A flow-matching velocity model (Linear path) sampled with its reverse SDE, beta = 1 (time-varying
    beta(t) = t for the second half of the check)."""
    gm, sch = _mixture(), Linear()
    dif = Diffusion(_oracle(gm, sch, "velocity"), sch, "velocity")
    t0, t_end = 0.99, 1e-3  # g^2 = 2t/(1-t) is infinite at t = 1: start just below
    for beta in (1.0, lambda t: t):
        sol = flowsde.solve(dif.reverse_sde(beta), _start(gm, sch, t0), flowsde.grids.uniform(t0, t_end, 400),
                            method="euler_maruyama", generator=torch.Generator().manual_seed(6))
        assert sol.success
        assert _passes(sol.x, gm.marginal(sch, t_end))


def test_negative_control_has_power():
    """A sampler driven by the score of a shifted mixture (means moved by 0.15) must be rejected."""
    gm, wrong, sch = _mixture(), _mixture(shift=0.15), VP()
    dif = Diffusion(_oracle(wrong, sch, "eps"), sch, "eps")
    sol = flowsde.solve(dif.pf_ode(), _start(gm, sch, 1.0), flowsde.grids.uniform(1.0, 1e-3, 100), method="heun")
    assert not _passes(sol.x, gm.marginal(sch, 1e-3))
    # and exact samples pass (the false-alarm rate is <= ALPHA; fixed seed)
    assert _passes(gm.marginal(sch, 1e-3).sample(N_SAMPLES, generator=torch.Generator().manual_seed(12)),
                   gm.marginal(sch, 1e-3))
