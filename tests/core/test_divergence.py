"""The divergence of the likelihood's augmented ODE (``flowsde._divergence``): the exact trace by one
pass over ``D`` replicated batches, by vmap and by a loop of VJPs, against the definition (a VJP per
basis vector over the batch) and an analytic trace; the detection of a batch-coupled drift."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsde
from flowsde._internal import DIVERGENCE_METHODS as METHODS
from flowsde._internal import Divergence, ExactBasis, exact_cotangents, replica_bytes

F64 = torch.float64
EXACT_METHODS = list(METHODS)


def reference_trace(drift, t, x):
    """``(B,)``: ``sum_i (J^T e_i)_i`` by one VJP per basis vector over the batch (the definition; the path
    ``log_likelihood`` took before the replicated pass, where vmap fails)."""
    B, D = x.shape[0], math.prod(x.shape[1:])
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        u = drift(t, xg)
        div = torch.zeros(B, dtype=F64)
        if not u.requires_grad:
            return u.detach(), div
        for i in range(D):
            e = torch.zeros(D, dtype=x.dtype)
            e[i] = 1
            (g,) = torch.autograd.grad(u, xg, e.reshape(x.shape[1:]).expand(x.shape), retain_graph=True,
                                       allow_unused=True)
            if g is not None:
                div += g.reshape(B, D)[:, i].to(F64)
    return u.detach(), div


class NoVmap(torch.autograd.Function):
    """``2 x``, whose backward has no vmap rule (as some ops of a diffusers UNet): vmap fails on it."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return torch.from_numpy(g.detach().numpy() * 2)


class MLP(torch.nn.Module):
    """A small time-conditioned MLP on any event shape; ``no_vmap`` routes it through :class:`NoVmap`."""

    def __init__(self, D, width=16, no_vmap=False, batch_norm=False):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(D + 1, width), torch.nn.Linear(width, D)
        self.norm = torch.nn.BatchNorm1d(width) if batch_norm else torch.nn.Identity()
        self.no_vmap = no_vmap

    def forward(self, t, x):
        B = x.shape[0]
        h = x.reshape(B, -1)
        if self.no_vmap:
            h = NoVmap.apply(h)
        tt = t.reshape(-1, 1).expand(B, 1) if t.dim() else t.expand(B, 1)
        h = torch.tanh(self.norm(self.inp(torch.cat([h, tt.to(h.dtype)], 1))))
        return (self.out(h) * (1 + tt)).reshape(x.shape) + torch.sin(x)


def divergence(drift, t, x, method="auto", max_bytes=2**30, **kw):
    dv = Divergence(exact_cotangents(x, max_bytes), True, method=method, **kw)
    return dv, dv(drift, t, x)


def close(a, b, rel=1e-12):
    return float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1.0)


@settings(max_examples=30, derandomize=True, deadline=None)
@given(B=st.integers(1, 4), event=st.sampled_from([(3,), (2, 3), (1, 4, 4)]), per_sample_t=st.booleans(),
       method=st.sampled_from(EXACT_METHODS), no_vmap=st.booleans(), budget=st.sampled_from([None, 2, 6]))
def test_exact_trace_equals_the_definition(B, event, per_sample_t, method, no_vmap, budget):
    """Every method, chunked to a budget or not, with a 0-dim or per-sample ``t``, where vmap works or
    fails: the definition's trace to 1e-12 relative in float64, and ``u`` the drift's on the batch."""
    torch.manual_seed(B)
    D = math.prod(event)
    net = MLP(D, no_vmap=no_vmap).double()
    x = torch.randn((B,) + event, dtype=F64)
    t = torch.rand(B, dtype=F64) if per_sample_t else torch.tensor(0.3, dtype=F64)
    u0, ref = reference_trace(net, t, x)
    max_bytes = 2**30 if budget is None else budget * replica_bytes(x.shape, x.dtype)  # 2: one replica a chunk
    for _ in range(2):  # the first call decides, the second uses the decision
        dv, (u, div) = divergence(net, t, x, method, max_bytes) if _ == 0 else (dv, dv(net, t, x))
        assert div.shape == (B, 1) and div.dtype == F64 and u.shape == x.shape and not u.requires_grad
        assert close(div[:, 0], ref) and close(u, u0)
    assert dv.mode in ("vmap", "loop", "replicated") and 1 <= dv.chunk <= D
    if budget == 2:  # a replica's activations come on top of its 4 B D itemsize: one replica a chunk
        assert dv.chunk == 1


def test_replicated_pass_on_an_image_event():
    """A convolutional drift on 1x8x8 (conv, group norm, per-sample t): the replicated pass, the loop and
    vmap agree with the definition to 1e-12 relative in float64."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(),
                               torch.nn.Conv2d(8, 1, 3, padding=1)).double()

    def drift(t, x):
        return conv(x) * (1 + t.reshape(-1, 1, 1, 1))

    x, t = torch.randn(3, 1, 8, 8, dtype=F64), torch.rand(3, dtype=F64)
    _, ref = reference_trace(drift, t, x)
    for method in ("replicated", "vmap", "loop", "auto"):
        dv, (_, div) = divergence(drift, t, x, method)
        assert dv.mode == ("vmap" if method == "auto" else method) and close(div[:, 0], ref), method


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_linear_drift_has_the_trace_of_its_matrix(method):
    """``u = A x`` (per sample, flattened event 2x3): ``div u = tr A`` exactly, for every sample and time."""
    torch.manual_seed(1)
    A = torch.randn(6, 6, dtype=F64)

    def drift(t, x):
        return (x.reshape(x.shape[0], -1) @ A.T).reshape(x.shape)

    x = torch.randn(5, 2, 3, dtype=F64)
    _, (u, div) = divergence(drift, torch.tensor(0.5, dtype=F64), x, method)
    assert torch.allclose(div, torch.full((5, 1), float(torch.trace(A)), dtype=F64), rtol=1e-13, atol=1e-13)
    assert close(u, drift(None, x))  # the replicated pass reads u off a larger matrix product


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("per_sample_t", [False, True])
def test_drift_independent_of_x_has_zero_divergence(method, per_sample_t):
    """A drift of ``t`` alone, and one of parameters but not of ``x``: divergence 0, ``u`` as given."""
    w = torch.nn.Parameter(torch.ones(4, dtype=F64))
    x = torch.randn(3, 4, dtype=F64)
    t = torch.rand(3, dtype=F64) if per_sample_t else torch.tensor(0.2, dtype=F64)
    for drift in (lambda t, x: torch.ones_like(x) * (t.reshape(-1, 1) if t.dim() else t),
                  lambda t, x: w.expand(x.shape) * 2):
        for _ in range(2):
            _, (u, div) = divergence(drift, t, x, method)
            assert torch.equal(div, torch.zeros(3, 1, dtype=F64)) and torch.equal(u, drift(t, x).detach())
            assert not u.requires_grad


def test_hutchinson_unchanged():
    """``k`` probes: ``z_j^T J z_j`` per sample and probe, as one VJP per probe gives it."""
    torch.manual_seed(2)
    net = MLP(6).double()
    x, t = torch.randn(4, 2, 3, dtype=F64), torch.rand(4, dtype=F64)
    z = torch.randn(3, 4, 2, 3, dtype=F64)
    u, div = Divergence(z, False)(net, t, x)
    xg = x.clone().requires_grad_(True)
    ref = torch.stack([(torch.autograd.grad(net(t, xg), xg, zj)[0] * zj).reshape(4, -1).sum(1) for zj in z], 1)
    assert div.shape == (4, 3) and close(div, ref) and close(u, net(t, x).detach())


def test_batch_norm_in_training_falls_back_and_says_so_once():
    """A BatchNorm in training mode couples the batch: the replicated pass would differentiate another
    function. Detected from the modules the drift reaches; the trace is the definition's, one warning."""
    torch.manual_seed(3)
    net = MLP(4, batch_norm=True, no_vmap=True).double().train()
    ode = flowsde.ODE(net)  # the drift reaches the module through the ODE's closure
    x, t = torch.randn(5, 4, dtype=F64), torch.tensor(0.4, dtype=F64)
    _, ref = reference_trace(ode.drift, t, x)
    for method in ("auto", "replicated"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dv = Divergence(exact_cotangents(x, 2**30), True, method=method)
            divs = [dv(ode.drift, t, x)[1] for _ in range(3)]
        msgs = [str(w.message) for w in caught if "replicated" in str(w.message)]
        assert len(msgs) == 1 and "BatchNorm1d 'norm' of MLP is in training mode" in msgs[0], msgs
        assert dv.mode in ("loop", "vmap") and all(close(d[:, 0], ref) for d in divs)
    net.eval()  # in eval mode the samples are independent: no warning, the replicated pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dv, (_, div) = divergence(ode.drift, t, x, "replicated")
    assert dv.mode == "replicated" and close(div[:, 0], reference_trace(ode.drift, t, x)[1])


def test_numerical_detection_of_a_coupled_drift():
    """A drift coupling its batch through a mean (``u`` unchanged by replication, its Jacobian not), with
    no module to see: the first call's check against per-batch VJPs catches it; the trace is right."""
    torch.manual_seed(4)
    x, t = torch.randn(4, 3, dtype=F64), torch.tensor(0.1, dtype=F64)

    def drift(t, x):
        return NoVmap.apply(x) * x.mean(0, keepdim=True)

    _, ref = reference_trace(drift, t, x)
    with pytest.warns(UserWarning, match=r"J\^T e_i on the batch replicated 3 times differs"):
        dv, (_, div) = divergence(drift, t, x, "auto")
    assert dv.mode == "loop" and close(div[:, 0], ref)


def test_user_flag():
    """``batch_coupled=True`` (on the ODE, or the option) forces the per-batch VJPs, saying so;
    ``batch_coupled=False`` trusts the samples to be independent (no detection, no warning)."""
    torch.manual_seed(5)
    net = MLP(4, no_vmap=True).double()
    ode = flowsde.ODE(net)
    ode.batch_coupled = True
    x, t = torch.randn(3, 4, dtype=F64), torch.tensor(0.7, dtype=F64)
    _, ref = reference_trace(ode.drift, t, x)
    with pytest.warns(UserWarning, match="batch_coupled=True on the ODE"):
        dv, (_, div) = divergence(ode.drift, t, x)
    assert dv.mode == "loop" and close(div[:, 0], ref)
    with pytest.warns(UserWarning, match="batch_coupled=True on the Divergence"):
        divergence(net, t, x, batch_coupled=True)
    bn = MLP(4, no_vmap=True, batch_norm=True).double().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dv, _ = divergence(bn, t, x, "replicated", batch_coupled=False)
    assert dv.mode == "replicated" and dv.reason is None


def test_drift_with_per_sample_tensors_falls_back():
    """A drift holding a tensor of batch ``B`` (conditioning) fails on the replicated batch: it falls back
    to the per-batch VJPs, naming the failure."""
    torch.manual_seed(6)
    net, cond = MLP(4, no_vmap=True).double(), torch.randn(3, 4, dtype=F64)

    def drift(t, x):
        return net(t, x) + cond * x

    x, t = torch.randn(3, 4, dtype=F64), torch.tensor(0.3, dtype=F64)
    with pytest.warns(UserWarning, match="the drift failed on the replicated batch of 12 samples"):
        dv, (_, div) = divergence(drift, t, x)
    assert dv.mode == "loop" and close(div[:, 0], reference_trace(drift, t, x)[1])


def test_exact_cotangents_budget():
    """``exact_max_bytes``: a positive int, at least one replica of the batch; the basis is built by chunk."""
    x = torch.zeros(4, 1, 2, 2, dtype=F64)
    basis = exact_cotangents(x, 2**20)
    assert isinstance(basis, ExactBasis) and basis.shape == (4, 4, 1, 2, 2) and basis.max_bytes == 2**20
    chunk = basis.chunk(1, 3)
    assert chunk.shape == (2, 4, 1, 2, 2) and torch.equal(chunk[1, 2].flatten(), torch.tensor([0, 0, 1, 0.]).double())
    need = replica_bytes(x.shape, x.dtype)
    assert need == 4 * 4 * 4 * 8
    with pytest.raises(flowsde.InputError, match=r"needs at least .* MiB for one replica of the batch"):
        exact_cotangents(x, need - 1)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(flowsde.InputError, match="exact_max_bytes must be a positive int"):
            exact_cotangents(x, bad)
    with pytest.raises(flowsde.InputError, match="method"):
        Divergence(basis, True, method="jvp")


def test_likelihood_equals_its_value_by_per_batch_vjps():
    """``log_likelihood`` on a drift where vmap fails (the replicated pass or the loop, whichever the
    first call times faster) equals the same solve by per-batch VJPs to 1e-12 in float64."""
    torch.manual_seed(7)
    net = MLP(4, no_vmap=True).double()
    x = torch.randn(3, 4, dtype=F64)
    prior = lambda z: -0.5 * (z**2).sum(1) - 2 * math.log(2 * math.pi)  # noqa: E731
    r = flowsde.log_likelihood(flowsde.ODE(lambda t, x: -net(t, x)), x, (0.0, 1.0), prior, bpd_tol=1e-4)
    coupled = flowsde.ODE(lambda t, x: -net(t, x))
    coupled.batch_coupled = True
    with pytest.warns(UserWarning, match="batch_coupled=True"):
        s = flowsde.log_likelihood(coupled, x, (0.0, 1.0), prior, bpd_tol=1e-4)
    assert r.nfe == s.nfe and close(r.logp, s.logp, 1e-12)
