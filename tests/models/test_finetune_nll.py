"""scripts/finetune_nll.py (issue 23, item 4): a few steps of exact-NLL fine-tuning on a tiny batch, the paired
evaluation and the weights it writes."""

import importlib.util
import json
import math
import pathlib
import sys

import pytest
import torch

from flowsde import InputError
from flowsde import models as M
from flowsde.models._registry import read_weights

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "finetune_nll.py"


@pytest.fixture(scope="module")
def ft():
    spec = importlib.util.spec_from_file_location("finetune_nll", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def tiny(ft, **kw):
    """Two steps on 4 digits, loose tolerances: seconds, not minutes."""
    base = dict(steps=2, minutes=None, batch_size=4, lr=1e-3, mix=0.5, bpd_tol=0.1, grad_tol=1.0, ema=0.0)
    return ft.FinetuneConfig(**dict(base, **kw))


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def runs(ft):
    torch.set_num_threads(1)
    shipped = M.load("digits-eps")
    before = state(shipped.net)
    r1 = ft.finetune(shipped, tiny(ft), generator=0, log=None)
    r2 = ft.finetune(shipped, tiny(ft), generator=0, log=None)
    return shipped, before, r1, r2


def test_finetune_trains_a_copy_and_leaves_the_shipped_model(runs):
    shipped, before, r1, _ = runs
    assert r1["steps"] == 2 and len(r1["losses"]) == 2
    for total, nll, den, norm in r1["losses"]:
        assert all(math.isfinite(v) for v in (total, nll, den, norm)) and norm > 0
        # the loss is the NLL (nats/dim) plus mix x the denoising loss, both computed
        assert den > 0 and total == pytest.approx(nll + 0.5 * den, rel=1e-6, abs=1e-7)
    tuned = r1["diffusion"].net
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])]
    assert "out.weight" in changed and "inp.weight" in changed
    # the Gaussian part is buffers, not parameters: left as shipped
    assert not any(k in changed for k in ("mean", "basis", "var"))
    # the object load() returned is untouched: same weights, still frozen
    assert all(torch.equal(v, before[k]) for k, v in shipped.net.state_dict().items())
    assert not any(p.requires_grad for p in shipped.net.parameters())
    assert not any(p.requires_grad for p in tuned.parameters()) and not tuned.training


def test_finetune_is_seeded(runs):
    _, _, r1, r2 = runs
    assert r1["losses"] == r2["losses"]
    s2 = r2["diffusion"].net.state_dict()
    assert all(torch.equal(v, s2[k]) for k, v in r1["diffusion"].net.state_dict().items())


def test_evaluation_is_paired(ft):
    shipped = M.load("digits-eps")
    r = ft.finetune(shipped, tiny(ft, steps=0), generator=0, log=None)
    assert r["steps"] == 0
    x = M.digits("test")[:3]
    b = ft.digits_bpd(shipped, x, seed=0, bpd_tol=1e-2)
    a = ft.digits_bpd(r["diffusion"], x, seed=0, bpd_tol=1e-2)
    assert torch.equal(a, b)  # zero steps, same dequantization: the same numbers, difference 0
    p = ft.paired(b, a)
    assert p["diff"] == 0 and p["se"] == 0 and p["z"] == 0
    other = ft.digits_bpd(shipped, x, seed=1, bpd_tol=1e-2)
    assert not torch.equal(other, b)  # the noise is the seed's


def test_paired_statistics(ft):
    before = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    after = torch.tensor([0.9, 2.1, 2.7, 3.9], dtype=torch.float64)
    p = ft.paired(before, after)
    # d = (-0.1, 0.1, -0.3, -0.1): mean -0.1, sample std sqrt(0.08 / 3), se = std / 2
    se = math.sqrt(0.08 / 3) / 2
    assert p["n"] == 4 and p["before"] == pytest.approx(2.5) and p["after"] == pytest.approx(2.4)
    assert p["diff"] == pytest.approx(-0.1) and p["se"] == pytest.approx(se) and p["z"] == pytest.approx(-0.1 / se)
    with pytest.raises(InputError, match="paired"):
        ft.paired(before, after[:3])


@pytest.mark.parametrize("kw, match", [(dict(steps=None, minutes=None), "never stop"), (dict(lr=0.0), "lr"),
                                       (dict(trace="diag"), "trace"), (dict(ema=1.0), "ema")])
def test_config_refuses_bad_values(ft, kw, match):
    with pytest.raises(InputError, match=match):
        tiny(ft, **kw).check()


def test_main_writes_loadable_weights_only_when_asked(ft, tmp_path, capsys):
    out = tmp_path / "mle.safetensors"
    args = ["--steps", "1", "--minutes", "0", "--batch-size", "4", "--bpd-tol", "0.1", "--grad-tol", "1",
            "--holdout", "0", "--limit", "2", "--eval-bpd-tol", "0.01"]
    assert ft.main(args) == 0
    assert not out.exists() and "wrote" not in capsys.readouterr().out
    assert ft.main(args + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "paired difference" in printed and f"wrote {out}" in printed
    st, config = read_weights(out)
    shipped = M.load("digits-eps")
    assert config == shipped.net.config and set(st) == set(shipped.net.state_dict())
    net = M.GaussianResidualMLP(**config)
    net.load_state_dict(st)
    assert not torch.equal(net.out.weight, shipped.net.out.weight)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["name"] == "digits-eps-mle" and meta["base"] == "digits-eps" and meta["steps"] == "1"
    assert json.loads(meta["recipe"])["batch_size"] == 4 and math.isfinite(float(meta["test_paired_diff"]))


def test_alignment_reports_cosines_of_real_gradients(ft):
    out = ft.alignment(M.load("digits-eps"), holdout=4, samples=4, log=None)
    for k in ("seen_fresh_a", "seen_fresh_b", "fresh_a_fresh_b"):
        assert -1.0 <= out[k] <= 1.0 and out[k] != 0.0
    assert set(out["norms"]) == {"seen", "fresh_a", "fresh_b"} and all(v > 0 for v in out["norms"].values())


def test_denoising_loss_matches_its_closed_form_on_gaussian_data():
    """``flowsde.models.denoising_loss`` with the exact eps of standard normal data under VP
    (``eps_hat = sigma x_t``) has expectation ``0.5 int sigmoid(lambda) dlambda`` over the schedule's
    log-SNR span, ``0.5 (softplus(hi) - softplus(lo))`` nats/dim (VDM eq. 17 with
    ``E||eps - sigma x_t||^2 / D = alpha^2``); a batch of 20,000 agrees within 4 standard errors."""
    from flowsde.adapters import VP, Diffusion
    from flowsde.models._train import _lambda_range

    sch = VP(t_min=1e-3)
    dif = Diffusion(lambda x, t: sch.sigma(t)[:, None] * x, sch, prediction="eps")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    losses = torch.stack([M.denoising_loss(dif, x[i::10], generator=g) for i in range(10)])
    lo, hi = _lambda_range(sch)
    sp = torch.nn.functional.softplus(torch.tensor([hi, lo], dtype=torch.float64))
    exact = 0.5 * float(sp[0] - sp[1])
    se = float(losses.std() / len(losses) ** 0.5)
    print(f"\ndenoising_loss {float(losses.mean()):.5f} +- {se:.5f}, exact {exact:.5f}")
    assert abs(float(losses.mean()) - exact) < 4 * se + 1e-12 and se < 0.02 * exact, (losses.mean(), exact, se)
