"""Noise schedules, apart from any network: diffusers' schedulers with a stage's betas, and
q(x_t | x_0), written once here for the losses, the upsamplers' noised start and RePaint.

Betas come from diffusers' schedulers, so training and sampling share one definition; sampling
steps are diffusers' ``set_timesteps`` / ``step`` (``unclip.diffusion.sampling``).
"""

from __future__ import annotations

import enum

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UnCLIPScheduler,
)

from unclip.config import BetaSchedule, DiffusionConfig, Prediction, Variance


class Sampler(str, enum.Enum):
    """Sampling schedulers a stage can use."""

    ddpm = "ddpm"  # ancestral, with the stage's variance (learned or fixed)
    ddim = "ddim"  # deterministic at eta=0; eta>0 for the paper's variations
    dpmpp = "dpmpp"  # DPM-Solver++ (2M), fewer steps at equal quality
    dpmpp_sde = "dpmpp-sde"  # SDE-DPM-Solver++ (2M): DPM-Solver++ with fresh noise at each step
    unclip = "unclip"  # diffusers' UnCLIPScheduler = Karlo's respaced DDPM (cosine only)


def samplers_other_than_unclip() -> str:
    """The samplers every stage can use, for messages: "ddpm, ddim, dpmpp or dpmpp-sde"."""
    names = [s.value for s in Sampler if s is not Sampler.unclip]
    return ", ".join(names[:-1]) + " or " + names[-1]


# ----------------------------------------------------------------------------------------------
# schedule


def make_scheduler(cfg: DiffusionConfig, sampler: Sampler = Sampler.ddpm):
    """A diffusers scheduler with the stage's betas, parameterisation and variance.

    ``beta_schedule`` is always passed explicitly: ``DDPMScheduler.from_config(UnCLIPScheduler
    .config)`` silently falls back to linear betas.
    """
    common = dict(num_train_timesteps=cfg.num_train_timesteps, prediction_type=cfg.prediction.value)
    clip = dict(clip_sample=True, clip_sample_range=cfg.clip_sample_range)
    betas = dict(beta_schedule=cfg.beta_schedule.value, timestep_spacing="linspace")
    sampler = Sampler(sampler)
    if sampler is Sampler.ddpm:
        return DDPMScheduler(**common, **betas, **clip, variance_type=cfg.variance.value)
    if sampler is Sampler.ddim:
        # DDIM's step always moves t → t − T//n, so only stride grids are self-consistent; it is also
        # the grid DDIMInverseScheduler walks back up (see ``ddim_spacing``)
        ddim_betas = dict(betas, timestep_spacing=ddim_spacing(cfg))
        return DDIMScheduler(**common, **ddim_betas, **clip, set_alpha_to_one=True)
    if sampler in (Sampler.dpmpp, Sampler.dpmpp_sde):
        learned = "learned_range" if cfg.variance is Variance.learned else None
        # eps image models at t ≈ T (cosine: ᾱ ≈ 2e-9) give x_0 estimates amplified ~10⁴× (v
        # models, slightly off ones); DDPM clips them to the data range, DPM-Solver++ does the
        # same only with thresholding (ratio 1 = a plain clip to ±1 for image data), and it skips
        # the last λ < −5.1 of the cosine schedule as diffusers advises. Without both, its samples
        # are noise.
        clipped = cfg.prediction is not Prediction.x0 and cfg.clip_sample_range == 1.0
        cosine = cfg.beta_schedule is BetaSchedule.cosine
        algorithm = "sde-dpmsolver++" if sampler is Sampler.dpmpp_sde else "dpmsolver++"
        return DPMSolverMultistepScheduler(**common, **betas, algorithm_type=algorithm,
                                           solver_order=2, variance_type=learned, lower_order_final=True,
                                           thresholding=clipped, dynamic_thresholding_ratio=1.0,
                                           sample_max_value=cfg.clip_sample_range,
                                           lambda_min_clipped=-5.1 if cosine else -float("inf"))
    if cfg.beta_schedule is not BetaSchedule.cosine:
        raise ValueError(f"the 'unclip' sampler supports only the cosine schedule; use {samplers_other_than_unclip()}")
    if cfg.prediction is Prediction.v:
        raise ValueError(f"the 'unclip' sampler does not support v prediction; use {samplers_other_than_unclip()}")
    return UnCLIPScheduler(**common, **clip, variance_type=cfg.variance.value)


def inverse_scheduler(cfg: DiffusionConfig) -> DDIMInverseScheduler:
    """DDIM inversion x_0 → x_T (paper §3, the bipartite latent), on the same timestep grid as
    ``make_scheduler(cfg, Sampler.ddim)`` so that DDIM η=0 decoding retraces it
    (DDIMInverseScheduler supports only "leading" and "trailing" spacing)."""
    return DDIMInverseScheduler(num_train_timesteps=cfg.num_train_timesteps,
                                beta_schedule=cfg.beta_schedule.value, prediction_type=cfg.prediction.value,
                                timestep_spacing=ddim_spacing(cfg), set_alpha_to_one=True, clip_sample=False)


def ddim_spacing(cfg: DiffusionConfig) -> str:
    """DDIM's stride grid: "trailing" (999, 899, …, 99) for v models, which start at T where x_T
    is pure noise (from "leading"'s 900 a v decoder fed pure noise drew white backgrounds for
    black ones); "leading" (900, …, 0, guided-diffusion's "ddimN") for eps and x0 models, whose
    x_0 estimate at T is amplified ~10⁴× and makes inversion there ill-conditioned."""
    return "trailing" if cfg.prediction is Prediction.v else "leading"


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int,
             noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·eps: one timestep ``t`` for the batch, or one per row (B,)."""
    a = at_timesteps(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def at_timesteps(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t] on ``like``'s device and dtype, shaped to broadcast against it: (B, 1, …) for a
    (B,) ``t``, a scalar for one timestep."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1))) if out.dim() else out


def noised_start(cfg: DiffusionConfig, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x at ``cfg.sample_start``: ``image`` noised by q(x_t | x_0), or ``noise`` itself (pure noise
    at T) when the stage starts from T."""
    if cfg.sample_start is None:
        return noise
    return q_sample(make_scheduler(cfg).alphas_cumprod, image, cfg.sample_start, noise)
