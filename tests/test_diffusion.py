"""Diffusion math: noising, parameterisations, schedules, the VLB, guidance, deterministic DDIM."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UnCLIPScheduler

from unclip.config import (
    BetaSchedule,
    DiffusionConfig,
    Prediction,
    Variance,
    load_stage_config,
)
from unclip.diffusion.guidance import guided
from unclip.diffusion.losses import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from unclip.diffusion.sampling import sample_loop, set_timesteps
from unclip.diffusion.schedule import (
    Sampler,
    inverse_scheduler,
    make_scheduler,
    noised_start,
)

COSINE = DiffusionConfig(beta_schedule=BetaSchedule.cosine)
LINEAR = DiffusionConfig(beta_schedule=BetaSchedule.linear)


def cosine_betas(T=1000, s=0.008):
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64)


def test_x0_eps_round_trip():
    d = GaussianDiffusion(COSINE)
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 990])  # at t=999 ᾱ≈1e-8: float32 rounding of x_t dominates
    x_t = d.q_sample(x0, t, eps)
    assert torch.allclose(d.x0_from_eps(x_t, t, eps), x0, atol=1e-3)
    assert torch.allclose(d.eps_from_x0(x_t, t, x0), eps, atol=1e-3)


def test_q_sample_matches_alphas_cumprod_and_diffusers_add_noise():
    d = GaussianDiffusion(COSINE)
    x0, eps, t = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([1, 250, 998])
    a = d.alphas_cumprod[t].float()[:, None]
    assert torch.allclose(d.q_sample(x0, t, eps), a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    ref = make_scheduler(COSINE, Sampler.ddpm).add_noise(x0, eps, t)
    assert torch.allclose(d.q_sample(x0, t, eps), ref, atol=1e-5)


def test_cosine_and_linear_betas():
    assert torch.allclose(GaussianDiffusion(COSINE).betas, cosine_betas(), atol=1e-6)
    assert torch.allclose(GaussianDiffusion(LINEAR).betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64),
                          atol=1e-7)


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_has_the_stage_betas(sampler):
    """The trap: DDPMScheduler.from_config(UnCLIPScheduler.config) silently gives linear betas."""
    s = make_scheduler(COSINE, sampler)
    assert torch.allclose(s.betas.double(), cosine_betas(), atol=1e-6)
    trap = DDPMScheduler.from_config(UnCLIPScheduler().config)
    assert not torch.allclose(trap.betas.double(), cosine_betas(), atol=1e-3)


@pytest.mark.parametrize("stage,schedule", [("decoder", "squaredcos_cap_v2"), ("prior", "squaredcos_cap_v2"),
                                            ("upsampler_256", "squaredcos_cap_v2"), ("upsampler_1024", "linear")])
def test_each_paper_stage_uses_its_schedule(stage, schedule):
    from pathlib import Path

    cfg = load_stage_config(Path(__file__).parents[1] / f"configs/paper/{stage}.yaml")
    assert make_scheduler(cfg.diffusion, Sampler.ddpm).config.beta_schedule == schedule


def test_linear_schedule_refuses_unclip_scheduler():
    with pytest.raises(ValueError, match="cosine"):
        make_scheduler(LINEAR, Sampler.unclip)


def test_linspace_timesteps_match_unclip_scheduler():
    ours = make_scheduler(COSINE, Sampler.ddpm)
    ours.set_timesteps(25)
    ref = UnCLIPScheduler()
    ref.set_timesteps(25)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()


def test_ddim_eta_zero_is_deterministic_and_eta_positive_is_not():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 6, 3, padding=1)
    fn = lambda x, t: net(x)  # noqa: E731  (6 channels: the variance must be stripped for DDIM)
    x_T = torch.randn(2, 3, 8, 8)
    run = lambda eta, seed: sample_loop(fn, make_scheduler(COSINE, Sampler.ddim), x_T, 5, channels=3,  # noqa: E731
                                        eta=eta, generator=torch.Generator().manual_seed(seed), progress=False)
    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert not torch.allclose(run(1.0, 1), run(1.0, 2))


def test_sample_loop_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        sample_loop(lambda x, t: x, make_scheduler(COSINE), torch.zeros(1, 3), 0, progress=False)


def test_guidance_mixes_eps_only_and_keeps_conditional_variance():
    def model(x, t):  # doubled batch: [uncond; cond]
        b = len(x) // 2
        eps = torch.cat([torch.zeros(b, 3), torch.ones(b, 3)])
        var = torch.cat([torch.full((b, 3), -5.0), torch.full((b, 3), 0.5)])
        return torch.cat([eps, var], 1)

    out = guided(model, 3.0, guide_channels=3)(torch.zeros(2, 3), torch.tensor(5))
    assert out.shape == (2, 6)
    assert torch.allclose(out[:, :3], torch.full((2, 3), 3.0))  # u + 3(c − u)
    assert torch.allclose(out[:, 3:], torch.full((2, 3), 0.5))  # conditional variance, unguided
    full = guided(model, 2.0)(torch.zeros(2, 3), torch.tensor([5, 5]))  # every channel guided (the prior)
    assert torch.allclose(full[:, :3], torch.full((2, 3), 2.0))
    assert torch.allclose(full[:, 3:], torch.full((2, 3), -5.0 + 2.0 * 5.5))


def test_vlb_is_zero_for_the_true_posterior_and_positive_otherwise():
    cfg = DiffusionConfig(variance=Variance.learned)
    d = GaussianDiffusion(cfg)
    x0, eps = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([5, 50, 500, 900])
    x_t = d.q_sample(x0, t, eps)
    v_min = -torch.ones_like(x0)  # frac 0: log Σ = log β̃_t, the true posterior variance
    exact = d.vlb_bits(torch.cat([eps, v_min], 1), x0, x_t, t)
    assert exact.abs().max() < 1e-3
    wrong = d.vlb_bits(torch.cat([eps + 0.5, torch.ones_like(x0)], 1), x0, x_t, t)
    assert (wrong > 1e-3).all()


def test_hybrid_loss_trains_variance_only_through_vlb():
    d = GaussianDiffusion(DiffusionConfig(variance=Variance.learned), vlb_weight=0.001)
    x0, eps, t = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4), torch.tensor([3, 400])
    out = torch.randn(2, 6, 4, 4, requires_grad=True)
    losses = d.loss(out, x0, d.q_sample(x0, t, eps), t, eps)
    assert set(losses) == {"loss", "mse", "vlb"}
    grad_vlb = torch.autograd.grad(losses["vlb"], out, retain_graph=True)[0]
    assert grad_vlb[:, :3].abs().sum() == 0 and grad_vlb[:, 3:].abs().sum() > 0
    grad_mse = torch.autograd.grad(losses["mse"], out, retain_graph=True)[0]
    assert grad_mse[:, 3:].abs().sum() == 0
    # the loss the optimiser sees is improved-DDPM's hybrid: mse + λ·T·vlb (mean over the batch)
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.001 * d.num_timesteps * losses["vlb"])
    grad_loss = torch.autograd.grad(losses["loss"], out)[0]
    assert grad_loss[:, 3:].abs().sum() > 0  # the variance channels are trained through it


def test_x0_prediction_targets_x0():
    d = GaussianDiffusion(DiffusionConfig(prediction=Prediction.x0))
    x0, eps, t = torch.randn(3, 8), torch.randn(3, 8), torch.tensor([1, 2, 3])
    assert d.loss(x0.clone(), x0, d.q_sample(x0, t, eps), t, eps)["loss"] == 0
    wrong = d.loss(eps.clone(), x0, d.q_sample(x0, t, eps), t, eps)  # an eps output, scored as an x_0
    assert set(wrong) == {"loss", "mse"}  # fixed variance: no VLB term
    torch.testing.assert_close(wrong["loss"], ((eps - x0) ** 2).mean())


def test_kl_and_discretized_likelihood_basics():
    m, lv = torch.randn(10), torch.randn(10)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(10), atol=1e-7)
    # closed form, in nats: KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = log(σ₂/σ₁) + (σ₁² + (μ₁ − μ₂)²) / (2σ₂²) − ½
    m1, s1, m2, s2 = torch.tensor([0.0, 1.0, -0.5]), torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1.0, 1.0, 0.5]), \
        torch.tensor([2.0, 1.5, 0.3])
    expected = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    torch.testing.assert_close(normal_kl(m1, 2 * s1.log(), m2, 2 * s2.log()), expected)
    assert normal_kl(m1, 2 * s1.log(), m2, 2 * s2.log())[0] == pytest.approx(math.log(2) + 2 / 8 - 0.5, abs=1e-6)
    levels = torch.linspace(-1, 1, 256)
    mean, sigma = torch.full((256,), 0.2), 0.3
    probs = discretized_gaussian_log_likelihood(levels, mean, torch.full((256,), math.log(sigma))).exp()
    assert abs(probs.sum().item() - 1.0) < 1e-3  # the 256 bins hold all the mass
    # each level's bin [x − 1/255, x + 1/255] under the exact normal CDF; the edge bins run to ±∞
    cdf = torch.distributions.Normal(0.2, sigma).cdf
    upper = torch.where(levels > 0.999, torch.ones(256), cdf(levels + 1 / 255))
    lower = torch.where(levels < -0.999, torch.zeros(256), cdf(levels - 1 / 255))
    torch.testing.assert_close(probs, upper - lower, atol=2e-4, rtol=0)  # the tanh CDF approximation
    assert probs.argmax() == (levels - 0.2).abs().argmin()  # the most likely level is the mean's


def test_ddim_scheduler_config_has_no_variance_handling():
    """DDIM's scheduler takes eps alone (no variance_type; a 6-channel output does not fit its step),
    so sample_loop drops a learned variance for it, and keeps it for DDPM, whose noise it scales."""
    cfg = DiffusionConfig(beta_schedule=BetaSchedule.cosine, variance=Variance.learned)
    ddim = make_scheduler(cfg, Sampler.ddim)
    assert isinstance(ddim, DDIMScheduler) and "variance_type" not in ddim.config
    assert make_scheduler(cfg, Sampler.ddpm).config.variance_type == "learned_range"
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1).requires_grad_(False)
    x_T = torch.randn(2, 3, 8, 8)

    def eps_and_variance(v):  # v = −1: log β̃_t (the small variance); v = +1: log β_t
        return lambda x, t: torch.cat([net(x), torch.full_like(x, v)], 1)

    def run(sampler, fn, channels=3):
        return sample_loop(fn, make_scheduler(cfg, sampler), x_T, 5, channels=channels,
                           generator=torch.Generator().manual_seed(0), progress=False)

    eps_only = run(Sampler.ddim, lambda x, t: net(x), channels=None)
    assert torch.equal(run(Sampler.ddim, eps_and_variance(-1.0)), eps_only)
    assert torch.equal(run(Sampler.ddim, eps_and_variance(1.0)), eps_only)
    with pytest.raises(RuntimeError):  # left in, the variance channels break DDIM's step
        run(Sampler.ddim, eps_and_variance(1.0), channels=None)
    small, large = run(Sampler.ddpm, eps_and_variance(-1.0)), run(Sampler.ddpm, eps_and_variance(1.0))
    assert (small - large).abs().max() > 1e-2  # DDPM's ancestral noise follows the learned variance


def test_sampling_can_start_part_way_from_a_noised_image():
    cfg = DiffusionConfig(variance=Variance.fixed_small, sample_start=700)
    scheduler = make_scheduler(cfg, Sampler.ddpm)
    assert set_timesteps(scheduler, 7, 700).tolist() == [700, 583, 467, 350, 233, 117, 0]
    assert set_timesteps(make_scheduler(cfg, Sampler.ddpm), 7).tolist()[0] == 999  # no start: from T
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn(2, 3, 8, 8)
    a = make_scheduler(cfg).alphas_cumprod[700]
    assert torch.allclose(noised_start(cfg, image, noise), a.sqrt() * image + (1 - a).sqrt() * noise)
    assert noised_start(DiffusionConfig(), image, noise) is noise
    # a perfect denoiser of one known image recovers it from t = 700 in a few steps
    diffusion = GaussianDiffusion(cfg)

    def oracle(x_t, t):
        return diffusion.eps_from_x0(x_t, t, image)

    x0 = sample_loop(oracle, scheduler, noised_start(cfg, image, noise), 4, start=700, progress=False)
    assert torch.allclose(x0, image, atol=1e-3)


@pytest.mark.parametrize("sampler, ok", [(Sampler.ddpm, True), (Sampler.dpmpp, True), (Sampler.ddim, False)])
def test_a_part_way_start_needs_a_scheduler_that_takes_timesteps(sampler, ok):
    scheduler = make_scheduler(DiffusionConfig(variance=Variance.fixed_small), sampler)
    if ok:
        assert int(set_timesteps(scheduler, 5, 500)[0]) == 500
    else:
        with pytest.raises(ValueError, match="cannot start part-way"):
            set_timesteps(scheduler, 5, 500)
    with pytest.raises(ValueError, match="expected a timestep in 0..999"):
        set_timesteps(make_scheduler(DiffusionConfig(), Sampler.ddpm), 5, 1000)


@pytest.mark.parametrize("sampler, first", [(Sampler.ddpm, 999), (Sampler.dpmpp, 999), (Sampler.ddim, 0)])
def test_one_step_from_pure_noise_runs_at_the_last_timestep_where_the_scheduler_allows(sampler, first):
    # "linspace" and "leading" grids put a single step at t = 0; DDIM takes no explicit timesteps
    scheduler = make_scheduler(DiffusionConfig(variance=Variance.fixed_small), sampler)
    assert [int(t) for t in set_timesteps(scheduler, 1)] == [first]


@pytest.mark.parametrize("sampler", [Sampler.ddpm, Sampler.dpmpp])
def test_an_x0_models_output_is_clipped_to_its_range_by_every_sampler(sampler):
    cfg = DiffusionConfig(prediction=Prediction.x0, clip_sample_range=10.0, variance=Variance.fixed_small)
    far = lambda x, t: torch.full_like(x, 50.0)  # noqa: E731  an x0 estimate outside the prior's ±10
    x0 = sample_loop(far, make_scheduler(cfg, sampler), torch.zeros(1, 4), 5, progress=False,
                     generator=torch.Generator().manual_seed(0))
    assert x0.abs().max() <= 10.0 + 1e-4 and x0.min() > 9.0, x0


def test_dpmpp_survives_an_imperfect_eps_model_at_the_end_of_the_cosine_schedule():
    cfg = DiffusionConfig(beta_schedule=BetaSchedule.cosine)
    diffusion = GaussianDiffusion(cfg)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)

    def slightly_wrong(x_t, t):  # an eps model biased by 1%: at t ≈ T its x_0 estimate is off by ~10²
        return diffusion.eps_from_x0(x_t, t, image) + 0.01

    x0 = sample_loop(slightly_wrong, make_scheduler(cfg, Sampler.dpmpp), torch.randn(image.shape, generator=g), 10,
                     progress=False)
    assert x0.abs().max() < 1.5 and ((x0 - image) ** 2).mean() < 0.01
    # image stages clip x_0 to ±1 (thresholding at ratio 1); the prior's x_0 range (10) is left alone
    assert make_scheduler(cfg, Sampler.dpmpp).config.thresholding
    prior = DiffusionConfig(prediction=Prediction.x0, clip_sample_range=10.0)
    assert not make_scheduler(prior, Sampler.dpmpp).config.thresholding


def test_v_prediction_targets_v_and_every_sampler_recovers_an_image_from_an_oracle():
    cfg = DiffusionConfig(beta_schedule=BetaSchedule.cosine, prediction=Prediction.v, variance=Variance.learned)
    d = GaussianDiffusion(cfg)
    x0, eps, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([3, 999])
    x_t = d.q_sample(x0, t, eps)
    v = d.v_target(x0, t, eps)
    assert torch.allclose(v[1], -x0[1], atol=1e-3)  # at t = T, v is −x_0: the image itself is the target
    assert torch.allclose(d.x0_from_prediction(x_t, t, v), x0, atol=1e-4)
    zero_var = -torch.ones_like(x0)
    assert d.loss(torch.cat([v, zero_var], 1), x0, x_t, t, eps)["mse"] < 1e-10
    assert d.loss(torch.cat([eps, zero_var], 1), x0, x_t, t, eps)["mse"] > 0.1  # eps is not v

    def oracle(x_t, t):  # the v of the one known image, plus the variance channels
        t = t.expand(len(x_t)) if t.dim() else t.reshape(1).expand(len(x_t))
        a = d.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([a.sqrt() * eps - (1 - a).sqrt() * x0, torch.zeros_like(x0)], 1)

    for sampler in (Sampler.ddpm, Sampler.ddim, Sampler.dpmpp, Sampler.dpmpp_sde):
        g = torch.Generator().manual_seed(0)
        out = sample_loop(oracle, make_scheduler(cfg, sampler), torch.randn(x0.shape, generator=g), 10,
                          channels=3, generator=g, progress=False)
        assert (out - x0).abs().max() < 0.02, sampler
    with pytest.raises(ValueError, match="does not support v prediction"):
        make_scheduler(cfg, Sampler.unclip)


@pytest.mark.parametrize("sampler", [Sampler.ddpm, Sampler.dpmpp, Sampler.dpmpp_sde])
def test_stochastic_samplers_draw_fresh_noise_and_dpm_solvers_keep_the_data_variance(sampler):
    """Gaussian data N(0, s²) has an exact denoiser, x̂_0 = √ᾱ s² x_t / (ᾱ s² + 1 − ᾱ). The DPM
    solvers end with the data's spread s in 25 steps (DDPM with the small fixed variance falls
    short at so few steps: 0.84 s); the stochastic samplers (DDPM, SDE-DPM-Solver++) draw another
    sample from the same x_T under another generator, DPM-Solver++ the same one."""
    cfg = DiffusionConfig(beta_schedule=BetaSchedule.cosine, variance=Variance.fixed_small)
    d, s = GaussianDiffusion(cfg), 0.3

    def exact(x_t, t):
        a = d.alphas_cumprod[t.reshape(-1)[:1]].float().reshape(-1, 1, 1, 1)
        x0 = a.sqrt() * s**2 * x_t / (a * s**2 + 1 - a)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    x_T = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = (sample_loop(exact, make_scheduler(cfg, sampler), x_T, 25, generator=torch.Generator().manual_seed(seed),
                        progress=False) for seed in (1, 2))
    if sampler is not Sampler.ddpm:
        assert abs(float(a.std()) / s - 1) < 0.05, float(a.std())
    fresh = float((a - b).abs().mean())
    assert (fresh > 0.05) if sampler is not Sampler.dpmpp else (fresh < 1e-6), fresh


def test_ddim_starts_at_t_for_v_models_and_one_stride_below_for_eps_models():
    v = DiffusionConfig(beta_schedule=BetaSchedule.cosine, prediction=Prediction.v)
    for cfg, first in ((v, 999), (COSINE, 900)):
        assert set_timesteps(make_scheduler(cfg, Sampler.ddim), 10).tolist()[0] == first
        inverse = inverse_scheduler(cfg)
        inverse.set_timesteps(10)
        assert int(inverse.timesteps[-1]) == first  # inversion ends where decoding starts


def test_ddim_with_clipping_is_dpm_solver_first_order_on_the_same_grid():
    """DDIM (η = 0) and first-order DPM-Solver++ are one update when both re-derive eps from the
    clipped x_0 (guided-diffusion's DDIM): x_{t'} = α'·x̂_0 + σ'·(x_t − α·x̂_0)/σ. A v model whose x_0
    estimates leave [−1, 1] near T tells this apart from diffusers' default, which pairs the
    clipped x_0 with the network's own eps."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = DiffusionConfig(beta_schedule=BetaSchedule.cosine, prediction=Prediction.v)

    def overshooting(x_t, t):  # near T, x_0 ≈ −v reaches ±2.3
        return 2 * torch.tanh(3 * x_t) + 0.3

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ddim = make_scheduler(cfg, Sampler.ddim)
    grid = set_timesteps(ddim, 10).tolist()
    a = sample_loop(overshooting, ddim, x_T, 10, progress=False)
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule.value,
                                      prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=1,
                                      thresholding=True, dynamic_thresholding_ratio=1.0, sample_max_value=1.0)
    dpm.set_timesteps(timesteps=grid)
    b = x_T.clone()
    for t in dpm.timesteps:
        b = dpm.step(overshooting(b, t), t, b).prev_sample
    assert (a - b).abs().max() < 1e-4

