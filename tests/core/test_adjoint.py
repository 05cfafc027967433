"""The adjoint gradient of the log-likelihood (flowsde._adjoint) against independently computed gradients.

* dx/dt = W x + b (a ``torch.nn.Linear`` drift): x_T = expm(T M) [x; 1] with M = [[W, b], [0, 0]] and
  div u = tr W, so log p_0(x) = log N(x_T; 0, I) + T tr W in closed form; its gradient with respect to
  x, W and b is autograd through ``torch.linalg.matrix_exp`` (the exact log-density's exact gradient).
* A small time-dependent MLP drift: autograd (backprop) through a fixed-step RK4 solve of the augmented
  ODE with 400 steps (its error ~h^4, far below 1e-6), the divergence built with its graph, the exact
  trace and, with the same probes, Hutchinson's estimator.
* Hutchinson gradients are unbiased: the mean of per-sample gradients over independent probes against
  the exact trace's gradient (slow, fixed seeds).
Tolerances: 1e-6 relative at bpd_tol = 1e-10, grad_tol = 1e-8 (the adjoint's own estimate is asserted
too, and that it bounds the measured error).
"""

import math

import pytest
import torch

import flowsde
from flowsde import InputError
from flowsde._internal import adjoint_log_likelihood, adjoint_logp, attach_adjoint, draw_probes

LOG2PI = math.log(2 * math.pi)
F64 = torch.float64


def std_normal_logp(z):
    D = z[0].numel()
    return -0.5 * z.reshape(z.shape[0], -1).square().sum(1) - 0.5 * D * LOG2PI


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _linear(D=3, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(D, D).double()
    with torch.no_grad():
        lin.weight.mul_(0.6)
    return lin


def _linear_exact(x, W, b, T):
    """The closed-form log-density of dx/dt = W x + b carried over [0, T] to N(0, I)."""
    D = x.shape[1]
    M = torch.zeros(D + 1, D + 1, dtype=x.dtype)
    M[:D, :D], M[:D, D] = W, b
    E = torch.linalg.matrix_exp(T * M)
    return std_normal_logp(x @ E[:D, :D].T + E[:D, D]) + T * torch.trace(W)


def _linear_exact_grads(x, lin, T):
    xr = x.clone().requires_grad_(True)
    W = lin.weight.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True)
    lp = _linear_exact(xr, W, b, T)
    lp.sum().backward()
    return lp.detach(), xr.grad, W.grad, b.grad


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("time_warp", [None, 1.0])
def test_linear_gaussian_gradient_equals_closed_form(per_sample, time_warp):
    lin, T = _linear(), 1.0
    ode = flowsde.ODE(lambda t, x: lin(x))
    x = torch.randn(4, 3, dtype=F64)
    lp, gx, gW, gb = _linear_exact_grads(x, lin, T)
    r = adjoint_log_likelihood(ode, x, (0.0, T), std_normal_logp, params=tuple(lin.parameters()), bpd_tol=1e-10,
                               grad_tol=1e-8, per_sample=per_sample, time_warp=time_warp)
    assert (r.result.logp - lp).abs().max() < 1e-8
    err = max(rel(r.dx, gx), rel(r.dparams[0], gW), rel(r.dparams[1], gb))
    assert err < 1e-6
    assert r.grad_error_rel <= 1e-8 and r.stats["met"]
    if per_sample:  # each sample's own parameter gradient, summing to the batch's
        assert r.dparams_per_sample.shape == (4, 12)
        assert torch.allclose(r.dparams_per_sample.sum(0), torch.cat([r.dparams[0].flatten(), r.dparams[1]]))
    else:  # steps shared by the batch: the parameters' adjoint is the batch's
        assert r.dparams_per_sample is None
    assert not r.dx.requires_grad and lin.weight.grad is None  # eager: nothing is accumulated in .grad


def test_linear_decreasing_span_and_weights():
    """A span given prior-first (t_data > t_prior) and per-sample weights: the gradient of sum w_b logp_b."""
    lin, T = _linear(seed=3), -0.7
    ode = flowsde.ODE(lambda t, x: lin(x))
    x = torch.randn(3, 3, dtype=F64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    xr = x.clone().requires_grad_(True)
    W = lin.weight.detach().clone().requires_grad_(True)
    (w * _linear_exact(xr, W, lin.bias.detach(), T)).sum().backward()
    r = adjoint_log_likelihood(ode, x, (1.0, 1.0 + T), std_normal_logp, params=(lin.weight,), weights=w,
                               bpd_tol=1e-10, grad_tol=1e-8)
    assert rel(r.dx, xr.grad) < 1e-6 and rel(r.dparams[0], W.grad) < 1e-6


def test_error_estimate_bounds_the_true_error():
    """At a loose grad_tol the reported relative error is at least the measured one (and within grad_tol)."""
    lin, T = _linear(seed=1), 1.5
    ode = flowsde.ODE(lambda t, x: lin(x))
    x = torch.randn(6, 3, dtype=F64)
    _, gx, gW, gb = _linear_exact_grads(x, lin, T)
    r = adjoint_log_likelihood(ode, x, (0.0, T), std_normal_logp, params=tuple(lin.parameters()), bpd_tol=1e-4,
                               grad_tol=1e-3)
    true_x, true_p = rel(r.dx, gx), rel(torch.cat([r.dparams[0].flatten(), r.dparams[1]]),
                                        torch.cat([gW.flatten(), gb]))
    assert r.x_error_rel >= true_x and r.params_error_rel >= true_p
    assert r.grad_error_rel == max(r.x_error_rel, r.params_error_rel) <= 1e-3


class _MLP(torch.nn.Module):
    def __init__(self, D=2, H=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(D + 1, H).double()
        self.l2 = torch.nn.Linear(H, D).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=F64))

    def forward(self, t, x):
        tt = (t.reshape(-1, 1) if t.dim() else t.reshape(1, 1)).to(x.dtype).expand(x.shape[0], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([x, tt], 1))))


def _rk4_backprop(net, x, T, probes=None, steps=400, w=None):
    """logp and the gradients of sum_b w_b logp_b (w = 1) by autograd through a fixed-step RK4 solve of
    (x, L), the divergence built with its graph."""
    xr = x.clone().requires_grad_(True)
    params = tuple(net.parameters())
    D = x.shape[1]

    def f(t, y):
        u = net(t, y)
        cot = torch.eye(D, dtype=F64)[:, None].expand(D, y.shape[0], D) if probes is None else probes
        g = torch.stack([torch.autograd.grad(u, y, c, create_graph=True)[0] for c in cot])
        per = (g * cot).sum(-1)
        return u, per.sum(0) if probes is None else per.mean(0)

    h = T / steps
    y, L = xr, torch.zeros(x.shape[0], dtype=F64)
    for i in range(steps):
        t = torch.tensor(i * h, dtype=F64)
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1[0])
        k3 = f(t + h / 2, y + h / 2 * k2[0])
        k4 = f(t + h, y + h * k3[0])
        L = L + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        y = y + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
    lp = std_normal_logp(y) + L
    grads = torch.autograd.grad((lp if w is None else w * lp).sum(), (xr,) + params)
    return lp.detach(), grads[0], grads[1:]


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_mlp_gradient_equals_backprop_through_fixed_step_solve(trace):
    net, T = _MLP(), 1.0
    ode = flowsde.ODE(net)
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    opts = dict(trace=trace, probes=2, generator=7) if trace == "hutchinson" else {}
    probes = draw_probes(tuple(x.shape), 2, "rademacher", 7, F64, x.device) if trace == "hutchinson" else None
    lp, gx, gp = _rk4_backprop(net, x, T, probes)
    r = adjoint_log_likelihood(ode, x, (0.0, T), std_normal_logp, params=tuple(net.parameters()), bpd_tol=1e-10,
                               grad_tol=1e-8, **opts)
    assert (r.result.logp - lp).abs().max() < 1e-8
    assert rel(r.dx, gx) < 1e-6
    for a, b in zip(r.dparams, gp):
        assert rel(a, b) < 1e-6
    assert r.grad_error_rel <= 1e-8


def test_autograd_function_fills_grads():
    """adjoint_logp: loss(logp).backward() fills x.grad and the parameters' .grad with the adjoint's gradient
    of the loss (the loss's weights reach the adjoint as the terminal condition)."""
    net, T = _MLP(seed=2), 1.0
    ode = flowsde.ODE(net)
    x0 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    w = torch.tensor([-1.0, -2.0, -3.0], dtype=F64)
    lp_ref, gx, gp = _rk4_backprop(net, x0, T, w=w)
    x = x0.clone().requires_grad_(True)
    logp, info = adjoint_logp(ode, x, (0.0, T), std_normal_logp, params=tuple(net.parameters()), bpd_tol=1e-10,
                              grad_tol=1e-8)
    assert logp.requires_grad and (logp.detach() - lp_ref).abs().max() < 1e-8
    (w * logp).sum().backward()
    assert rel(x.grad, gx) < 1e-6
    for p, ref in zip(net.parameters(), gp):
        assert rel(p.grad, ref) < 1e-6
    assert info["grad_error_rel"] <= 1e-8 and info["result"].logp.shape == (3,)


def test_attach_adjoint_to_log_likelihood():
    """The wiring of log_likelihood(adjoint=True): its logp (the forward ladder's) with the adjoint as backward,
    through the forward's own Hutchinson probes: backprop's gradient with the same probes."""
    net, T = _MLP(seed=6), 1.0
    ode = flowsde.ODE(net)
    x0 = torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    probes = draw_probes(tuple(x0.shape), 2, "rademacher", 9, F64, x0.device)
    lp_ref, gx, gp = _rk4_backprop(net, x0, T, probes)
    r = flowsde.log_likelihood(ode, x0, (0.0, T), std_normal_logp, trace="hutchinson", probes=2, generator=9,
                               bpd_tol=1e-10)
    x = x0.clone().requires_grad_(True)
    logp, info = attach_adjoint(r.logp, ode, x, (0.0, T), std_normal_logp, cot=probes, params=tuple(net.parameters()),
                                trace="hutchinson", probes=2, bpd_tol=1e-10, grad_tol=1e-8)
    assert torch.equal(logp.detach(), r.logp) and (logp.detach() - lp_ref).abs().max() < 1e-8
    logp.sum().backward()
    assert rel(x.grad, gx) < 1e-6
    for p, ref in zip(net.parameters(), gp):
        assert rel(p.grad, ref) < 1e-6


def test_input_errors():
    with pytest.raises(InputError, match="exact_max_bytes"):
        lin = _linear()
        adjoint_log_likelihood(flowsde.ODE(lambda t, x: lin(x)), torch.randn(2, 3, dtype=F64), (0.0, 1.0),
                               std_normal_logp, exact_max_bytes=100)
    lin = _linear()
    ode = flowsde.ODE(lambda t, x: lin(x))
    x = torch.randn(2, 3, dtype=F64)
    with pytest.raises(InputError, match="params\\[0\\]"):
        adjoint_log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, params=(torch.zeros(3),))
    with pytest.raises(InputError, match="checkpoints"):
        adjoint_log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, checkpoints=0)
    with pytest.raises(InputError, match="grad_tol"):
        adjoint_log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, grad_tol=-1.0)
    with pytest.raises(InputError, match="weights"):
        adjoint_log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, weights=torch.ones(3))
    with pytest.raises(InputError, match="embedded Runge-Kutta"):
        adjoint_log_likelihood(ode, x, (0.0, 1.0), std_normal_logp, method="torchdiffeq:dopri5")
    with pytest.raises(InputError, match="unknown options"):
        adjoint_logp(ode, x, (0.0, 1.0), std_normal_logp, rtoll=1e-3)


@pytest.mark.slow
def test_mixture_oracle_gradient_equals_exact_score():
    """On the exact Gaussian-mixture oracle's PF-ODE (VP, eps prediction) log p_{t_eps} is known in closed form:
    the adjoint's d logp / dx is its score at t_eps (autograd through the mixture's density), and no parameters
    (the state is then (x, a) alone)."""
    from flowsde.adapters import VP, Diffusion
    from flowsde.validation import likelihood_mixture

    gm, g = likelihood_mixture(2)
    x = gm.sample(3, generator=g)
    sched = VP()
    dif = Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps")
    T, t_eps = torch.tensor(float(sched.t_max), dtype=F64), float(sched.t_min)
    r = adjoint_log_likelihood(dif.pf_ode(), x, (t_eps, float(T)), lambda z: gm.log_prob_t(sched, T, z),
                               bpd_tol=1e-8, grad_tol=1e-6)
    xr = x.clone().requires_grad_(True)
    exact = gm.log_prob_t(sched, torch.tensor(t_eps, dtype=F64), xr)
    exact.sum().backward()
    assert (r.result.logp - exact.detach()).abs().max() < 1e-6
    assert rel(r.dx, xr.grad) < 1e-5 and r.grad_error_rel <= 1e-6 and r.dparams == ()


@pytest.mark.slow
def test_hutchinson_gradients_are_unbiased():
    """The mean over independent probes of Hutchinson's gradients equals the exact trace's (z-test, fixed seed)."""
    net, T, n = _MLP(D=3, H=8, seed=4), 1.0, 256
    ode = flowsde.ODE(net)
    x1 = torch.randn(1, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    params = tuple(net.parameters())
    ex = adjoint_log_likelihood(ode, x1, (0.0, T), std_normal_logp, params=params, bpd_tol=1e-8, grad_tol=1e-6)
    h = adjoint_log_likelihood(ode, x1.expand(n, 3).contiguous(), (0.0, T), std_normal_logp, params=params,
                               trace="hutchinson", probes=1, generator=11, bpd_tol=1e-8, grad_tol=1e-5)
    for est, exact in ((h.dx, ex.dx[0]), (h.dparams_per_sample, ex.dparams_per_sample[0])):
        mean, se = est.mean(0), est.std(0) / math.sqrt(n)
        spread = se > 1e-12  # components the probes do not move (e.g. the last layer's bias) must match exactly
        assert (mean[~spread] - exact[~spread]).abs().max() < 1e-5 if (~spread).any() else True
        z = (mean[spread] - exact[spread]) / se[spread]
        # Bonferroni over the components at 1e-3 overall: |z| < 4.4 for up to ~100 components
        assert z.abs().max() < 4.4, z
        assert est.std(0)[spread].max() > 0  # the estimator does have spread: the test can fail


def test_log_likelihood_adjoint_true_gives_the_closed_form_gradients():
    # the switch of the vocabulary table: log_likelihood(..., adjoint=True) -> logp differentiable in x and params;
    # u = W x: z = expm(W) x, logp = log N(z) + tr(W) (closed form, differentiated by autograd)
    torch.manual_seed(0)
    D = 3
    W = torch.nn.Parameter(torch.randn(D, D, dtype=torch.float64) * 0.3)
    x = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    prior = lambda z: -0.5 * (z ** 2).sum(1)  # noqa: E731
    r = flowsde.log_likelihood(flowsde.ODE(lambda t, y: y @ W.T), x, (0.0, 1.0), prior, adjoint=True, params=(W,),
                               bpd_tol=1e-8, grad_tol=1e-7)
    r.logp.sum().backward()
    Wd, xd = W.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    (prior(xd @ torch.linalg.matrix_exp(Wd).T) + torch.trace(Wd)).sum().backward()
    assert torch.allclose(x.grad, xd.grad, rtol=1e-6, atol=1e-9)
    assert torch.allclose(W.grad, Wd.grad, rtol=1e-6, atol=1e-9)
    assert r.stats["adjoint"]["grad_error_rel"] <= 1e-7
    with pytest.raises(flowsde.InputError, match="throw=True"):
        flowsde.log_likelihood(flowsde.ODE(lambda t, y: y @ W.T), x, (0.0, 1.0), prior, adjoint=True, throw=False)
