"""Ecosystem bridges: the k-diffusion denoiser convention and EDM preconditioning, diffusers (UNet2DModel + scheduler -> Diffusion over Discrete) and the
flow-matching convention (noise at s = 0, data at s = 1). Correctness against diffusers' own
scheduler code and against closed forms of an exact Gaussian mixture."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsde import InputError
from flowsde.adapters import (
    Diffusion,
    EDMPrecond,
    FlowMatchingSchedule,
    VEPrecond,
    VPPrecond,
    from_denoiser,
    from_diffusers,
    scheduler_grid,
    from_flow_matching,
    to_denoiser,
    to_flow_matching,
)
from flowsde.adapters.schedules import EDM, VP, Discrete, Linear
from flowsde.validation import GaussianMixture
from _adapters_peers import kd_sampling

F64 = torch.float64


def mixture():
    return GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]]),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]]),
    )


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ============================================================================ k-diffusion / EDM conventions
def edm_denoiser(gm):
    """The exact denoiser D(x, sigma) = E[x0 | x0 + sigma eps = x] (EDM schedule: t = sigma)."""
    return gm.oracle(EDM(), "x0")


# float64 round-off scale (states/values O(10); measured differences <= 2e-15): ~100 ulps of margin
RTOL64 = 1e-12


def test_denoiser_view_equals_oracle_denoiser():
    gm = mixture()
    sched = VP()
    den = to_denoiser(Diffusion(gm.oracle(sched, "eps"), sched, prediction="eps"))
    x = torch.randn(7, 2, dtype=F64, generator=_gen(10)) * 3
    r = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 20.0, 80.0], dtype=F64)
    torch.testing.assert_close(den(x, r), edm_denoiser(gm)(x, r), rtol=RTOL64, atol=RTOL64)
    with pytest.raises(InputError, match="outside the schedule's range"):
        den(x, torch.full((7,), 1e4, dtype=F64))


def test_from_denoiser_is_x0_diffusion_under_edm():
    gm = mixture()
    d = from_denoiser(edm_denoiser(gm))
    x = torch.randn(5, 2, dtype=F64, generator=_gen(11))
    t = torch.tensor(0.7, dtype=F64)
    torch.testing.assert_close(d.score(t, x), gm.score_t(EDM(), t, x), rtol=1e-12, atol=1e-12)
    assert d.schedule.t_min == 0.002 and d.schedule.t_max == 80.0


# ------------------------------------------------------------------ preconditioning
@settings(max_examples=30, deadline=None, derandomize=True)
@given(sigma=st.floats(1e-3, 200.0), sd=st.floats(0.1, 2.0))
def test_edm_precond_table(sigma, sd):
    p = EDMPrecond(lambda x, c: x, sigma_data=sd)
    s = torch.tensor(sigma, dtype=F64)
    c_skip, c_out, c_in, c_noise = p.coefficients(s)
    # Karras et al. 2022, eqs. (7)-(8), Table 1
    assert float(c_skip) == pytest.approx(sd ** 2 / (sigma ** 2 + sd ** 2), rel=1e-14)
    assert float(c_out) == pytest.approx(sigma * sd / math.sqrt(sigma ** 2 + sd ** 2), rel=1e-14)
    assert float(c_in) == pytest.approx(1 / math.sqrt(sigma ** 2 + sd ** 2), rel=1e-14)
    assert float(c_noise) == pytest.approx(math.log(sigma) / 4, rel=1e-14, abs=1e-15)
    # the design criteria: unit-variance input, unit-variance training target (EDM appendix B.6)
    assert float(c_in ** 2 * (sd ** 2 + sigma ** 2)) == pytest.approx(1.0, rel=1e-14)
    target_var = (sd ** 2 * (1 - c_skip) ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2
    assert float(target_var) == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(sigma=st.floats(0.01, 150.0))
def test_vp_ve_precond_tables(sigma):
    s = torch.tensor(sigma, dtype=F64)
    vp = VPPrecond(lambda x, c: x)
    c_skip, c_out, c_in, c_noise = vp.coefficients(s)
    t = (math.sqrt(0.1 ** 2 + 2 * 19.9 * math.log1p(sigma ** 2)) - 0.1) / 19.9
    assert (float(c_skip), float(c_out)) == (1.0, -sigma)
    assert float(c_in) == pytest.approx(1 / math.sqrt(sigma ** 2 + 1), rel=1e-14)
    assert float(c_noise) == pytest.approx(999 * t, rel=1e-12)
    # sigma^-1 inverts sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1); NVlabs/edm's exp() - 1
    # (kept as published, not expm1) loses log10(1/sigma^2) digits: <= 1e-12 relative at sigma = 0.01
    assert float(vp.sigma(torch.tensor(t, dtype=F64))) == pytest.approx(sigma, rel=1e-10)
    ve = VEPrecond(lambda x, c: x)
    c_skip, c_out, c_in, c_noise = ve.coefficients(s)
    assert (float(c_skip), float(c_out), float(c_in)) == (1.0, sigma, 1.0)
    assert float(c_noise) == pytest.approx(math.log(sigma / 2), rel=1e-14, abs=1e-15)


def test_precond_ranges():
    vp = VPPrecond(lambda x, c: x)
    # exp() - 1 at an argument of 1e-6 (NVlabs/edm's formula) keeps ~10 digits; the reference uses expm1
    assert vp.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)), rel=1e-9)
    assert vp.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-12)
    assert (VEPrecond(lambda x, c: x).sigma_min, VEPrecond(lambda x, c: x).sigma_max) == (0.02, 100.0)


def _exact_F(precond, D):
    """The F for which precond(F) = D: invert c_noise and c_in, then F = (D - c_skip x) / c_out."""

    def F(x_in, c_noise):
        sigma = precond.sigma_from_noise(c_noise)
        c_skip, c_out, c_in, _ = precond.coefficients(sigma)
        x = x_in / c_in[:, None]
        return (D(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    return F


@pytest.mark.parametrize("cls", [EDMPrecond, VPPrecond, VEPrecond])
def test_precond_of_exact_F_is_exact(cls):
    gm = mixture()
    D = edm_denoiser(gm)
    p = cls(lambda x, c: x)
    p = cls(_exact_F(p, D))
    x = torch.randn(6, 2, dtype=F64, generator=_gen(12)) * 4
    sigma = torch.tensor([0.03, 0.2, 1.0, 3.0, 10.0, 60.0], dtype=F64)
    # round-off only: c_noise inversions (exp/log1p/sqrt, a few ulps in sigma) times dD/dsigma
    # (measured <= 2e-15)
    torch.testing.assert_close(p(x, sigma), D(x, sigma), rtol=RTOL64, atol=RTOL64)


def test_precond_as_diffusion():
    gm = mixture()
    p = EDMPrecond(lambda x, c: x)
    p = EDMPrecond(_exact_F(p, edm_denoiser(gm)))
    d = p.diffusion()
    x = torch.randn(3, 2, dtype=F64, generator=_gen(15))
    t = torch.tensor(1.3, dtype=F64)
    torch.testing.assert_close(d.score(t, x), gm.score_t(EDM(), t, x), rtol=RTOL64, atol=RTOL64)


def test_convention_bad_input():
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(InputError, match="callable"):
        EDMPrecond(None)
    with pytest.raises(InputError, match="sigma has shape"):
        EDMPrecond(lambda y, c: y)(x, torch.ones(2, dtype=F64))
    with pytest.raises(InputError, match="returned shape"):
        EDMPrecond(lambda y, c: y[:, :1])(x, 1.0)
    with pytest.raises(InputError, match="sigma_data"):
        EDMPrecond(lambda y, c: y, sigma_data=0.0)
    with pytest.raises(InputError, match="sigma_min < sigma_max"):
        VEPrecond(lambda y, c: y, sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(InputError, match="Diffusion"):
        to_denoiser(lambda y, s: y)
    with pytest.raises(InputError, match="sigma_min < sigma_max"):
        from_denoiser(lambda y, s: y, sigma_min=1.0, sigma_max=0.5)


# ============================================================================ diffusers
def _diffusers():
    return pytest.importorskip(
        "diffusers", reason="diffusers is an optional extra (pip install flowsde[diffusers]); bridge untested here")


def tiny_unet():
    diffusers = _diffusers()
    torch.manual_seed(0)  # randomly initialised, nothing downloaded
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def _f32_tol(ac_n, *tensors):
    """float32 round-off of diffusers' own arithmetic (ours is float64): a handful of roundings
    (8 ulps of 2^-24) of the operands, amplified by the 1/alpha = 1/sqrt(abar_n) of
    x0 = (x - sigma eps)/alpha. In the DDIM update the eps error of a sample-model
    (1/sqrt(1 - abar_n)) is multiplied by sqrt(1 - abar_prev) <= sqrt(1 - abar_n)."""
    scale = max(float(t.abs().max()) for t in tensors)
    return 8 * 2.0 ** -24 * scale / math.sqrt(ac_n)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_from_config_matches_diffusers(beta_schedule):
    diffusers = _diffusers()
    from flowsde.adapters._diffusers import diffusers_alphas_cumprod

    sched = diffusers.DDIMScheduler(num_train_timesteps=200, beta_schedule=beta_schedule)
    from_cfg = diffusers_alphas_cumprod(dict(sched.config))
    assert torch.equal(from_cfg, sched.alphas_cumprod.to(F64))
    assert torch.equal(diffusers_alphas_cumprod(sched), sched.alphas_cumprod.to(F64))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_unet_diffusion_matches_ddim_step(ptype):
    """Our eps / x0 of the wrapped UNet equal diffusers' DDIMScheduler.step (eta = 0):
    pred_original_sample = x0 and prev_sample = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps."""
    diffusers = _diffusers()
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type=ptype, clip_sample=False,
                                    set_alpha_to_one=False)
    sched.set_timesteps(10)
    d = from_diffusers(unet, sched)
    assert isinstance(d.schedule, Discrete) and d.schedule.N == 1000
    x = torch.randn(2, 2, 8, 8, generator=_gen(0))
    N = 1000
    with torch.no_grad():
        for n in (0, 37, 500, 999):
            t = torch.tensor((n + 1) / N, dtype=F64)  # Discrete: step n sits at t = (n + 1)/N
            out = unet(x, torch.full((2,), n)).sample
            # the network sees the integer training index n
            if ptype == "epsilon":  # same UNet call, same inputs: identical
                assert torch.equal(d.eps(t, x.to(F64)).float(), out)
            step = sched.step(out, n, x, eta=0.0)
            prev = max(n - N // 10, 0)
            ac = sched.alphas_cumprod.to(F64)
            ac_prev = float(ac[prev]) if n - N // 10 >= 0 else float(sched.final_alpha_cumprod)
            x0 = d.x0(t, x.to(F64))
            eps = d.eps(t, x.to(F64))
            tol = _f32_tol(float(ac[n]), x, out)
            torch.testing.assert_close(x0, step.pred_original_sample.to(F64), rtol=0, atol=tol)
            ours_prev = math.sqrt(ac_prev) * x0 + math.sqrt(1 - ac_prev) * eps
            torch.testing.assert_close(ours_prev, step.prev_sample.to(F64), rtol=0, atol=tol)


def test_v_matches_diffusers_get_velocity():
    """diffusers' v target get_velocity(x0, noise, n) is our v: an eps-model that returns the noise
    used by add_noise has v = get_velocity and x0 = the clean sample."""
    diffusers = _diffusers()
    sched = diffusers.DDPMScheduler(num_train_timesteps=100)
    x0 = torch.randn(3, 2, 4, 4, generator=_gen(1))
    noise = torch.randn(3, 2, 4, 4, generator=_gen(2))
    n = torch.tensor([3, 40, 99])
    xt = sched.add_noise(x0, noise, n)
    target = sched.get_velocity(x0, noise, n)
    d = from_diffusers(lambda x, label: noise.to(x.dtype), sched)
    t = (n + 1).to(F64) / 100
    # float32 round-off of diffusers' add_noise / get_velocity: a few ulps (6e-8) of O(4) values,
    # amplified by 1/alpha <= 1/sqrt(abar_99) = 1.7 in x0 = (x - sigma eps)/alpha (measured: 2.6e-7).
    torch.testing.assert_close(d.v(t, xt.to(F64)), target.to(F64), rtol=0, atol=2e-6)
    torch.testing.assert_close(d.x0(t, xt.to(F64)), x0.to(F64), rtol=0, atol=2e-6)


def test_fractional_time_calls_fractional_index():
    _diffusers()
    seen = []

    def net(x, n):
        seen.append(n.clone())
        return torch.zeros_like(x)

    d = from_diffusers(net, {"num_train_timesteps": 100, "prediction_type": "epsilon"})
    x = torch.zeros(2, 1, 2, 2, dtype=F64)
    d.eps(torch.tensor([0.105, 0.5], dtype=F64), x)
    torch.testing.assert_close(seen[-1].to(F64), torch.tensor([9.5, 49.0], dtype=F64), rtol=0, atol=1e-9)


def test_learned_variance_channels_are_split():
    _diffusers()
    x = torch.randn(2, 3, 4, 4, dtype=F64, generator=_gen(3))

    def net(xx, n):
        return torch.cat([torch.ones_like(xx), 5 * torch.ones_like(xx)], 1)

    d = from_diffusers(net, {"num_train_timesteps": 50, "variance_type": "learned_range"})
    assert torch.equal(d.eps(torch.tensor(0.5, dtype=F64), x), torch.ones_like(x))


def test_diffusers_bad_input():
    _diffusers()
    with pytest.raises(InputError, match="prediction_type"):
        from_diffusers(lambda x, n: x, {"num_train_timesteps": 10, "prediction_type": "flow"})
    with pytest.raises(InputError, match="zero-terminal-SNR"):
        from_diffusers(lambda x, n: x, {"num_train_timesteps": 10, "rescale_betas_zero_snr": True})
    with pytest.raises(InputError, match="callable"):
        from_diffusers(None, {"num_train_timesteps": 10})


# ---------------------------------------------------------------- the scheduler's class fixes the model
def _f32_rel(*tensors):
    """float32 round-off of diffusers' own arithmetic against ours in float64: a handful of roundings
    (16 ulps of 2^-24) of the largest operand (measured <= 2e-7 relative)."""
    return 16 * 2.0 ** -24 * max(float(t.abs().max()) for t in tensors)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler_is_linear_velocity(shift):
    """FlowMatchEulerDiscreteScheduler: x = (1 - sigma) x0 + sigma eps, the UNet at timestep sigma N
    predicts eps - x0; flowsde's Euler step on the scheduler's sigmas is scheduler.step (shift only
    moves the sigmas, which both sides read from the same table)."""
    diffusers = _diffusers()
    unet = tiny_unet()
    sch = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sch.set_timesteps(6)
    d = from_diffusers(unet, sch)
    assert isinstance(d.schedule, Linear) and d.prediction == "velocity"
    assert d.schedule.t_min == pytest.approx(shift / 1000 / (1 + (shift - 1) / 1000), rel=1e-12)
    x = torch.randn(2, 2, 8, 8, generator=_gen(40))
    with torch.no_grad():
        for i in (0, 3, 5):  # the last step lands on sigma = 0
            sch._step_index = i
            k, s0, s1 = sch.timesteps[i], sch.sigmas[i].to(F64), sch.sigmas[i + 1].to(F64)
            out = unet(x, k.expand(2)).sample
            ref = sch.step(out, k, x).prev_sample.to(F64)
            assert torch.equal(d.velocity(s0, x.to(F64)).float(), out)  # the same UNet call
            import flowsde

            ours = flowsde.solve(d.pf_ode(), x.to(F64), torch.stack([s0, s1]), method="euler").x
            torch.testing.assert_close(ours, ref, rtol=0, atol=_f32_rel(x, ref))
            # x0 = x - sigma v (the scheduler's stochastic_sampling branch)
            torch.testing.assert_close(d.x0(s0, x.to(F64)), (x - sch.sigmas[i] * out).to(F64), rtol=0,
                                       atol=_f32_rel(x, out))


def test_score_sde_ve_is_ve_score():
    """ScoreSdeVeScheduler: ScoreSdeVePipeline calls the UNet at timestep sigma_t = sigma_min
    (sigma_max/sigma_min)^t and step_pred uses its output as the score."""
    diffusers = _diffusers()
    from flowsde.adapters.schedules import VE

    unet = tiny_unet()
    sch = diffusers.ScoreSdeVeScheduler(num_train_timesteps=100, sigma_min=0.01, sigma_max=50.0)
    n = 10
    sch.set_timesteps(n)
    sch.set_sigmas(n)
    d = from_diffusers(unet, sch)
    assert d.schedule == VE(sigma_min=0.01, sigma_max=50.0, t_min=1e-5, t_max=1.0) and d.prediction == "score"
    x = 5 * torch.randn(2, 2, 8, 8, generator=_gen(41))
    with torch.no_grad():
        for i in (0, 5, 9):
            t = sch.timesteps[i]
            sigma = sch.sigmas[i]
            assert float(d.schedule.sigma(t.to(F64))) == pytest.approx(float(sigma), rel=1e-6)
            out = unet(x, sigma.expand(2)).sample
            score = d.score(t.to(F64), x.to(F64))
            # the same UNet call up to the float32 rounding of sigma_t (ours from float64)
            torch.testing.assert_close(score, out.to(F64), rtol=0, atol=_f32_rel(out) * 100)
            mean = sch.step_pred(out, t, x, generator=_gen(0)).prev_sample_mean.to(F64)
            j = int((t * (n - 1)).long())
            s, a = sch.discrete_sigmas[j].to(F64), (sch.discrete_sigmas[j - 1].to(F64) if j > 0 else 0.0)
            torch.testing.assert_close(x.to(F64) + (s ** 2 - a ** 2) * score, mean, rtol=0, atol=_f32_rel(mean) * 100)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("cls", ["EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"])
def test_edm_schedulers_are_preconditioned_denoisers(cls, ptype):
    """EDM schedulers: x0 = c_skip x + c_out F(c_in x, ln(sigma)/4), c_out's sign from prediction_type;
    our x0 is the scheduler's precondition_outputs, and one Euler step is EDMEulerScheduler.step."""
    diffusers = _diffusers()
    import flowsde

    unet = tiny_unet()
    sch = getattr(diffusers, cls)(sigma_min=0.002, sigma_max=80.0, sigma_data=0.7, prediction_type=ptype)
    sch.set_timesteps(8)
    d = from_diffusers(unet, sch)
    assert d.schedule == EDM(0.002, 80.0) and d.prediction == "x0"
    x = torch.randn(2, 2, 8, 8, generator=_gen(42))
    with torch.no_grad():
        for i in (0, 4, 7):
            sigma = sch.sigmas[i]
            xs = x * sigma
            out = unet(sch.precondition_inputs(xs, sigma), sch.timesteps[i].expand(2)).sample
            x0 = sch.precondition_outputs(xs, out, sigma).to(F64)
            torch.testing.assert_close(d.x0(sigma.to(F64), xs.to(F64)), x0, rtol=0, atol=_f32_rel(x0, x) * 4)
            if cls == "EDMEulerScheduler" and i < 7:
                sch._step_index, sch.is_scale_input_called = i, True
                ref = sch.step(out, sch.timesteps[i], xs).prev_sample.to(F64)
                grid = torch.stack([sigma.to(F64), sch.sigmas[i + 1].to(F64)])
                ours = flowsde.solve(d.pf_ode(), xs.to(F64), grid, method="euler").x
                torch.testing.assert_close(ours, ref, rtol=0, atol=_f32_rel(xs, ref) * 4)


def test_unsupported_schedulers_and_settings_are_refused():
    diffusers = _diffusers()
    from flowsde.adapters._diffusers import SUPPORTED_SCHEDULERS

    net = lambda x, n: x  # noqa: E731
    for cls in ("LCMScheduler", "TCDScheduler", "DDPMWuerstchenScheduler", "CMStochasticIterativeScheduler"):
        with pytest.raises(InputError, match=f"scheduler {cls} is not supported.*FlowMatchEulerDiscreteScheduler"):
            from_diffusers(net, {"_class_name": cls, "num_train_timesteps": 10})
    with pytest.raises(InputError, match="scheduler LCMScheduler is not supported"):
        from_diffusers(net, diffusers.LCMScheduler(num_train_timesteps=10))
    assert "ScoreSdeVeScheduler" in SUPPORTED_SCHEDULERS and "EDMEulerScheduler" in SUPPORTED_SCHEDULERS
    cases = [
        ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous", "prediction_type": "v_prediction"},
         "timestep_type='continuous' is not supported"),
        ({"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True}, "use_flow_sigmas=True"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}, "invert_sigmas=True"),
        ({"_class_name": "EDMEulerScheduler", "prediction_type": "sample"}, "'sample' is not one of them"),
        ({"_class_name": "DDIMScheduler", "prediction_type": "flow_prediction"}, "prediction_type 'flow_prediction'"),
        ({"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ]
    for cfg, msg in cases:
        with pytest.raises(InputError, match=msg):
            from_diffusers(net, dict(cfg, num_train_timesteps=10))
    # an Euler scheduler object stores 2^-24 for the zero terminal SNR: still refused by its config
    with pytest.raises(InputError, match="rescale_betas_zero_snr=True"):
        from_diffusers(net, diffusers.EulerDiscreteScheduler(num_train_timesteps=10, rescale_betas_zero_snr=True))
    with pytest.raises(InputError, match="predicts the flow velocity"):
        from_diffusers(net, {"_class_name": "FlowMatchEulerDiscreteScheduler"}, prediction="eps")


def test_prediction_type_defines_the_ddpm_model():
    """prediction_type from a config dict (as the command line reads scheduler_config.json)."""
    _diffusers()
    net = lambda x, n: torch.ones_like(x)  # noqa: E731
    for ptype, ours in (("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")):
        d = from_diffusers(net, {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 10,
                                 "prediction_type": ptype})
        assert d.prediction == ours


def test_conditional_unet_is_refused_by_name():
    diffusers = _diffusers()
    torch.manual_seed(0)
    cond = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2)
    with pytest.raises(InputError, match="UNet2DConditionModel is a conditional model: it needs encoder_hidden_states"):
        from_diffusers(cond, diffusers.DDPMScheduler(num_train_timesteps=10))
    d = from_diffusers(cond, diffusers.DDPMScheduler(num_train_timesteps=10),
                       encoder_hidden_states=torch.zeros(2, 3, 8))
    assert d.eps(torch.tensor(0.5, dtype=F64), torch.zeros(2, 1, 8, 8, dtype=F64)).shape == (2, 1, 8, 8)
    classy = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                   block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=3,
                                   down_block_types=("DownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(InputError, match="class-conditional.*class_labels"):
        from_diffusers(classy, diffusers.DDPMScheduler(num_train_timesteps=10))


def test_module_dtype_is_followed_at_call_time():
    """from_diffusers(unet, sch) then unet.double(): the UNet is called in float64 (the input dtype is
    not captured at construction), and back in float32 after unet.float()."""
    diffusers = _diffusers()
    unet = tiny_unet()
    d = from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=100))
    x = torch.randn(2, 2, 8, 8, dtype=F64, generator=_gen(43))
    t = torch.tensor(0.5, dtype=F64)
    with torch.no_grad():
        e32 = d.eps(t, x)
        unet.double()
        e64 = d.eps(t, x)
        torch.testing.assert_close(e64, unet(x, torch.full((2,), 49.0, dtype=F64)).sample, rtol=1e-12, atol=1e-12)
        unet.float()
        assert torch.equal(d.eps(t, x), e32)
    assert e64.dtype == e32.dtype == F64 and not torch.equal(e64, e32)


class _KDiscrete:
    """k-diffusion 0.1.1.post1 external.py `DiscreteSchedule.sigma_to_t` (quantize=False) and the
    forward passes of `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser` (sigma_data = 1),
    re-derived in float64 (k-diffusion's package __init__ is too heavy to import in tests)."""

    def __init__(self, model, alphas_cumprod, v):
        self.model, self.v = model, v
        self.log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def __call__(self, x, sigma):
        s = sigma[:, None]
        c_in = 1 / (s ** 2 + 1) ** 0.5
        out = self.model(x * c_in, self.sigma_to_t(sigma))
        if self.v:
            return out * (-s / (s ** 2 + 1) ** 0.5) + x / (s ** 2 + 1)
        return x + out * (-s)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_discrete_denoiser_matches_kdiffusion_external(ptype):
    """A DDPM-style model through from_diffusers -> Discrete -> to_denoiser is k-diffusion's
    Discrete{Eps,V}DDPMDenoiser: both interpolate log sigma (= -log-SNR/2) linearly in the index."""
    N = 1000
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, N, dtype=F64), 0)

    def net(x, idx):  # smooth, index-dependent stand-in for a UNet
        return torch.tanh(x) * torch.cos(idx / 300)[:, None] + 0.1 * x * (idx / N)[:, None]

    class Sched:  # a duck-typed diffusers scheduler: no diffusers needed
        alphas_cumprod = ac
        config = {"prediction_type": ptype}

    ours = to_denoiser(from_diffusers(net, Sched()))
    ref = _KDiscrete(net, ac, v=ptype == "v_prediction")
    table = (((1 - ac) / ac) ** 0.5)
    sigma = torch.cat([table[[0, 1, 10, 500, 998, 999]],
                       torch.tensor([0.0173, 0.3, 1.0, 7.5, 80.0], dtype=F64)])
    x = 3 * torch.randn(sigma.shape[0], 2, dtype=F64, generator=_gen(30))
    assert ours.sigma_min == pytest.approx(float(table[0]), rel=1e-12)
    assert ours.sigma_max == pytest.approx(float(table[-1]), rel=1e-12)
    # the fractional index: Discrete's label N t - 1 at t = t_from_sigma_ratio(sigma)
    idx = N * ours.time(sigma) - 1
    # index O(1000), ulp 1.1e-13 (measured 1.1e-13): 100 ulps
    torch.testing.assert_close(idx, ref.sigma_to_t(sigma), rtol=0, atol=1e-11)
    # values O(10) (x ~ 3, sigma up to 157 times an O(1) eps): RTOL64 on both
    torch.testing.assert_close(ours(x, sigma), ref(x, sigma), rtol=RTOL64, atol=RTOL64)


# ============================================================================ flow matching
class CosineFM:
    """flow_matching's CosineScheduler written out: alpha_s = sin(pi s/2), sigma_s = cos(pi s/2)."""

    class Out:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def __call__(self, s):
        h = math.pi / 2
        return self.Out(alpha_t=torch.sin(h * s), sigma_t=torch.cos(h * s), d_alpha_t=h * torch.cos(h * s),
                        d_sigma_t=-h * torch.sin(h * s))

    def snr_inverse(self, snr):
        return 2.0 * torch.atan(snr) / math.pi


class PolyFM(CosineFM):
    """flow_matching's PolynomialConvexScheduler(n): alpha_s = s^n, sigma_s = 1 - s^n (no snr_inverse: bisection)."""

    n = 2.0

    def __call__(self, s):
        return self.Out(alpha_t=s ** self.n, sigma_t=1 - s ** self.n, d_alpha_t=self.n * s ** (self.n - 1),
                        d_sigma_t=-self.n * s ** (self.n - 1))

    snr_inverse = None


def fm_velocity(gm, fm_sched):
    """The exact flow-matching velocity of the mixture in the FM convention, from its closed form
    u = alpha'_s x1^ + sigma'_s eps^ with x1^ = E[x1 | x_s] (the mixture's posterior mean, computed at
    flowsde time 1 - s by the reference) and eps^ = (x - alpha_s x1^)/sigma_s (flow_matching
    AffineProbPath conversions)."""
    ours = Linear() if fm_sched is None else FlowMatchingSchedule(fm_sched)

    def u(x, s):
        s = torch.as_tensor(s, dtype=x.dtype).expand(x.shape[0])
        if fm_sched is None:
            a, sg, da, ds = s, 1 - s, torch.ones_like(s), -torch.ones_like(s)
        else:
            o = fm_sched(s)
            a, sg, da, ds = o.alpha_t, o.sigma_t, o.d_alpha_t, o.d_sigma_t
        x1 = gm.posterior_mean(ours, 1 - s, x)
        eps = (x - a[:, None] * x1) / sg[:, None]
        return da[:, None] * x1 + ds[:, None] * eps

    return u


@settings(max_examples=20, deadline=None, derandomize=True)
@given(t=st.floats(0.02, 0.98), seed=st.integers(0, 2 ** 16))
def test_cond_ot_conversions(t, seed):
    gm = mixture()
    u = fm_velocity(gm, None)
    d = from_flow_matching(u)
    assert isinstance(d.schedule, Linear)
    x = 2 * torch.randn(5, 2, dtype=F64, generator=_gen(seed))
    tt = torch.tensor(t, dtype=F64)
    s = 1 - t
    # flow_matching's CondOT conversions (AffineProbPath): x1 = x + (1 - s) u, eps = x - s u
    u_s = u(x, torch.tensor(s, dtype=F64))
    # float64 round-off, relative: the conversions divide by min(t, 1 - t) >= 0.02 at most twice
    # (<= 2500 ulps = 6e-13 relative; measured <= 2e-12 absolute on scores of size O(100))
    tol = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.x0(tt, x), x + (1 - s) * u_s, **tol)
    torch.testing.assert_close(d.eps(tt, x), x - s * u_s, **tol)
    torch.testing.assert_close(d.velocity(tt, x), -u_s, **tol)
    # the FM-convention velocity is the sign-flipped, time-reversed exact mixture velocity oracle
    torch.testing.assert_close(gm.oracle(Linear(), "velocity")(x, tt.expand(5)), -u_s, **tol)
    torch.testing.assert_close(d.score(tt, x), gm.score_t(Linear(), tt, x), **tol)
    torch.testing.assert_close(d.pf_ode().drift(tt, x), -u_s, **tol)
    torch.testing.assert_close(to_flow_matching(d)(x, torch.tensor(s, dtype=F64)), u_s, **tol)


@pytest.mark.parametrize("fm", [CosineFM(), PolyFM()], ids=["cosine_snr_inverse", "poly_bisection"])
def test_general_fm_scheduler(fm):
    gm = mixture()
    sched = FlowMatchingSchedule(fm)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=F64)
    s = 1 - t
    o = fm(s)
    torch.testing.assert_close(sched.alpha(t), o.alpha_t)
    torch.testing.assert_close(sched.sigma(t), o.sigma_t)
    # derivatives in flowsde time = -d/ds, checked against autograd
    tg = t.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(sched.alpha(tg).sum(), tg)
    (gs,) = torch.autograd.grad(sched.sigma(tg).sum(), tg)
    torch.testing.assert_close(sched.d_alpha(t), ga, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sched.d_sigma(t), gs, rtol=1e-12, atol=1e-12)
    # inverse maps: closed form (cosine) to round-off; bisection (poly) to its 2^-60 resolution
    torch.testing.assert_close(sched.t_from_sigma_ratio(sched.sigma_ratio(t)), t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, rtol=1e-12, atol=1e-12)
    d = from_flow_matching(fm_velocity(gm, fm), path=fm)
    x = 2 * torch.randn(4, 2, dtype=F64, generator=_gen(4))
    # round-off as in test_cond_ot_conversions (measured <= 5e-14)
    torch.testing.assert_close(d.score(t, x), gm.score_t(sched, t, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.x0(t, x), gm.posterior_mean(sched, t, x), rtol=1e-12, atol=1e-12)


def test_flow_matching_bad_input():
    with pytest.raises(InputError, match="path"):
        from_flow_matching(lambda x, s: x, path="vp")
    with pytest.raises(InputError, match="callable"):
        from_flow_matching(None)
    with pytest.raises(InputError, match="SchedulerOutput"):
        from_flow_matching(lambda x, s: x, path=lambda s: s)
    from flowsde.adapters import Diffusion
    from flowsde.adapters.schedules import EDM

    with pytest.raises(InputError, match=r"\[0, 1\]"):
        to_flow_matching(Diffusion(lambda x, t: x, EDM(), prediction="x0"))


# ---------------------------------------------------------------- the scheduler's own grid (timestep_spacing)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")  # numpy 2 and torch's __array__ (peer code)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_scheduler_grid_runs_the_ddim_pipeline_grid(spacing):
    """timestep_spacing only places the scheduler's steps: scheduler_grid turns them into flowsde's t, and
    flowsde's DDIM on that grid is the scheduler's loop (float64 on both sides, round-off)."""
    diffusers = _diffusers()
    sch = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="linear", clip_sample=False,
                                  set_alpha_to_one=True, timestep_spacing=spacing)
    sch.alphas_cumprod = sch.alphas_cumprod.to(F64)
    sch.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)

    def unet(x, k):
        k = torch.as_tensor(k, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1)
        return torch.tanh(x) * (0.5 + k / 100)

    d = from_diffusers(unet, sch)
    before = sch.timesteps.clone()
    grid = scheduler_grid(sch, 10)
    assert torch.equal(sch.timesteps, before)  # the user's scheduler is not modified
    sch.set_timesteps(10)
    assert grid.shape == (11,) and float(grid[-1]) == 0.0
    assert torch.equal(grid[:-1], (sch.timesteps.to(F64) + 1) / 100)
    x = torch.randn(3, 4, dtype=F64, generator=_gen(7))
    ref = x.clone()
    for k in sch.timesteps:
        ref = sch.step(unet(ref, k), k, ref, eta=0.0).prev_sample
    import flowsde

    sol = flowsde.solve(d.pf_ode(), x, grid, method="ddim")
    torch.testing.assert_close(sol.x, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")
def test_scheduler_grid_ends_where_the_scheduler_lands():
    diffusers = _diffusers()
    # DDIM with "linspace" steps to k - N // steps but evaluates the next step at the next timestep
    with pytest.raises(InputError, match="no grid reproduces that"):
        scheduler_grid(diffusers.DDIMScheduler(num_train_timesteps=100, timestep_spacing="linspace"), 10)
    ddim = diffusers.DDIMScheduler(num_train_timesteps=50, set_alpha_to_one=False)
    assert float(scheduler_grid(ddim, 5)[-1]) == 1.0 / 50  # alphas_cumprod[0]: the first training step
    unipc = diffusers.UniPCMultistepScheduler(num_train_timesteps=50, final_sigmas_type="sigma_min")
    assert float(scheduler_grid(unipc, 5)[-1]) == 1.0 / 50
    fm = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    g = scheduler_grid(fm, 6)
    fm.set_timesteps(6)
    assert torch.equal(g, fm.sigmas.to(F64)) and float(g[-1]) == 0.0  # flow matching's t is its sigma
    edm = diffusers.EDMEulerScheduler()
    g = scheduler_grid(edm, 4)
    edm.set_timesteps(4)
    assert torch.equal(g, edm.sigmas.to(F64))
    with pytest.raises(InputError, match="steps must be a positive int"):
        scheduler_grid(ddim, 0)
    with pytest.raises(InputError, match="set_timesteps"):
        scheduler_grid({"num_train_timesteps": 10}, 5)
    with pytest.raises(InputError, match="not supported"):
        scheduler_grid(diffusers.LCMScheduler(), 4)


# ============================================================ k-diffusion log_likelihood on the shipped digits-eps
def _kd_ll(kd, den, x, v, tol, monkeypatch):
    """k-diffusion's ``log_likelihood`` of the scaled data ``x`` with its Rademacher probe set to ``v`` (it draws
    one with ``torch.randint_like``), the largest sigma it called the model with, over ``sigma_max``."""
    seen = []

    def model(xx, s):
        seen.append(float(s.max()))
        return den(xx, s)

    with monkeypatch.context() as m:
        m.setattr(torch, "randint_like", lambda like, high: ((v + 1) / 2).to(like.dtype))
        ll, info = kd.log_likelihood(model, x, den.sigma_min, den.sigma_max, atol=tol, rtol=tol)
    return ll, max(seen) / den.sigma_max, info["fevals"]


def test_kdiffusion_log_likelihood_through_to_denoiser_at_its_tolerances(monkeypatch):
    """Issue 19, item 8: k-diffusion's own ``log_likelihood`` (torchdiffeq dopri5 in sigma, one Rademacher probe)
    through ``to_denoiser(outside=math.inf)`` on the shipped digits-eps model runs at rtol = atol = 1e-2 and
    1e-3, where its stages reach past 2x sigma_max (refused by the default outside=2), and agrees with flowsde's
    own likelihood of the same model, the same probe and the same prior N(0, sigma_T^2).

    The two integrate the same Hutchinson integral: k-diffusion in the scaled state x/alpha and sigma = r, flowsde
    in x_t = alpha(t_min) x and t, so ``ll_kd(x) = logp(alpha x) + D log alpha`` (the trace term is invariant
    under the scalar change of variable). Bounds: at 1e-7 both are converged (1e-3 nats, D = 64, error per step
    ~1e-7 over < 1000 steps); at 1e-2 / 1e-3 the bound is that tolerance times D (the log-density channel is
    the peer's own local error control: dopri5 holds each accepted step's error to atol + rtol |state| per
    component, and the log-density channel's state is ``delta_ll = ll - log N(z; 0, sigma_max^2)``, of size
    below ``|ll| + D (log sigma_max + log(2 pi e)/2)`` (the latent's prior term at its typical radius), so the
    accumulated error is below ``tol (1 + that) x steps``, steps = fevals / 6 (dopri5, FSAL)."""
    from flowsde import models
    from flowsde.adapters import to_denoiser

    kd = kd_sampling()
    dif = models.load("digits-eps", net_dtype=torch.float64)
    from flowsde import dequantize

    x_t_min = dequantize(models.digits()[:2], levels=17, data_range=(-1, 1), generator=0)
    sched = dif.schedule
    a_min = float(sched.alpha(torch.tensor(sched.t_min, dtype=torch.float64)))
    gen = 7
    from flowsde._internal import draw_probes

    v = draw_probes(tuple(x_t_min.shape), 1, "rademacher", torch.Generator().manual_seed(gen), torch.float64,
                    "cpu")[0]
    ours = dif.log_likelihood(x_t_min, trace="hutchinson", probes=1, generator=torch.Generator().manual_seed(gen),
                              bpd_tol=1e-8).logp
    D = 64
    x = x_t_min / a_min  # k-diffusion's scaled state at sigma_min
    shifted = ours + D * math.log(a_min)
    with pytest.raises(InputError, match="outside = 2 "):  # the default band: the stage at 2.6x sigma_max
        _kd_ll(kd, to_denoiser(dif), x, v, 1e-2, monkeypatch)
    den = to_denoiser(dif, outside=math.inf)
    tight, _, _ = _kd_ll(kd, den, x, v, 1e-7, monkeypatch)
    torch.testing.assert_close(tight, shifted, rtol=0, atol=1e-3)
    reach = {}
    scale = 1 + float(shifted.abs().max()) + D * (math.log(den.sigma_max) + 0.5 * math.log(2 * math.pi * math.e))
    for tol in (1e-2, 1e-3):
        ll, reach[tol], fevals = _kd_ll(kd, den, x, v, tol, monkeypatch)
        assert torch.isfinite(ll).all()
        assert (ll - shifted).abs().max() < tol * scale * fevals / 6, (tol, ll - shifted, fevals)
    assert reach[1e-2] > 2.0  # the stages k-diffusion takes at 1e-2 are beyond the default band
    with pytest.raises(InputError, match="outside the schedule's range"):
        den(x, torch.zeros(2, dtype=torch.float64))  # sigma = 0 stays out of range with outside=inf
