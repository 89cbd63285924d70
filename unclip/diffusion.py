"""Diffusion math, apart from any network.

Everything here takes tensors or a ``model_fn(x_t, t) -> output`` callable, never a network
class. Betas come from diffusers' schedulers (so training and sampling share one definition);
sampling steps are diffusers' ``set_timesteps`` / ``step``. Training losses follow DDPM (eps or
x0 MSE) and improved-DDPM's hybrid loss (MSE + λ·VLB) for learned variance (Nichol & Dhariwal 2021).
"""

from __future__ import annotations

import enum
import inspect
import math
from typing import Callable

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UnCLIPScheduler,
)
from tqdm.auto import tqdm

from unclip.config import BetaSchedule, DiffusionConfig, Prediction, Variance

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler(str, enum.Enum):
    """Sampling schedulers a stage can use."""

    ddpm = "ddpm"  # ancestral, with the stage's variance (learned or fixed)
    ddim = "ddim"  # deterministic at eta=0; eta>0 for the paper's variations
    dpmpp = "dpmpp"  # DPM-Solver++ (2M), fewer steps at equal quality
    unclip = "unclip"  # diffusers' UnCLIPScheduler = Karlo's respaced DDPM (cosine only)


# ----------------------------------------------------------------------------------------------
# schedule


def make_scheduler(cfg: DiffusionConfig, sampler: Sampler = Sampler.ddpm):
    """A diffusers scheduler with the stage's betas, parameterisation and variance.

    ``beta_schedule`` is always passed explicitly: ``DDPMScheduler.from_config(UnCLIPScheduler
    .config)`` silently falls back to linear betas (reference §3.7).
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
    if sampler is Sampler.dpmpp:
        learned = "learned_range" if cfg.variance is Variance.learned else None
        # eps image models at t ≈ T (cosine: ᾱ ≈ 2e-9) give x_0 estimates amplified ~10⁴× (v
        # models, slightly off ones); DDPM clips them to the data range, DPM-Solver++ does the
        # same only with thresholding (ratio 1 = a plain clip to ±1 for image data), and it skips
        # the last λ < −5.1 of the cosine schedule as diffusers advises. Without both, its samples
        # are noise.
        clipped = cfg.prediction is not Prediction.x0 and cfg.clip_sample_range == 1.0
        cosine = cfg.beta_schedule is BetaSchedule.cosine
        return DPMSolverMultistepScheduler(**common, **betas, algorithm_type="dpmsolver++",
                                           solver_order=2, variance_type=learned, lower_order_final=True,
                                           thresholding=clipped, dynamic_thresholding_ratio=1.0,
                                           sample_max_value=cfg.clip_sample_range,
                                           lambda_min_clipped=-5.1 if cosine else -float("inf"))
    if cfg.beta_schedule is not BetaSchedule.cosine:
        raise ValueError("the 'unclip' sampler supports only the cosine schedule; use ddpm, ddim or dpmpp")
    if cfg.prediction is Prediction.v:
        raise ValueError("the 'unclip' sampler does not support v prediction; use ddpm, ddim or dpmpp")
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


class GaussianDiffusion:
    """q(x_t | x_0), the true posterior, and the training losses of one stage."""

    def __init__(self, cfg: DiffusionConfig, vlb_weight: float = 0.001):
        self.cfg = cfg
        self.vlb_weight = vlb_weight  # λ of the hybrid loss (learned variance only)
        betas = make_scheduler(cfg, Sampler.ddpm).betas.to(torch.float64)
        self.num_timesteps = len(betas)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        # q(x_{t-1} | x_t, x_0) = N(coef0·x_0 + coef_t·x_t, posterior_variance), DDPM eq. 7
        self.posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
        self.posterior_log_variance = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_coef0 = betas * prev.sqrt() / (1 - alphas_cumprod)
        self.posterior_coef_t = (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] broadcast to ``like``'s shape (B, 1, ...)."""
        out = values.to(like.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def sample_timesteps(self, batch: int, device, generator=None) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·eps."""
        a = self._at(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t)·eps − sqrt(1 − ᾱ_t)·x_0."""
        a = self._at(self.alphas_cumprod, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def x0_from_prediction(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x_0 implied by the network's output under the stage's parameterisation."""
        if self.cfg.prediction is Prediction.x0:
            return pred
        if self.cfg.prediction is Prediction.eps:
            return self.x0_from_eps(x_t, t, pred)
        a = self._at(self.alphas_cumprod, t, x_t)
        return a.sqrt() * x_t - (1 - a).sqrt() * pred

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_coef0, t, x_t) * x0 + self._at(self.posterior_coef_t, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance, t, x_t)

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """IDDPM eq. 15: log Σ = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1) / 2."""
        frac = (v + 1) / 2
        max_log = self._at(torch.log(self.betas), t, v)
        min_log = self._at(self.posterior_log_variance, t, v)
        return frac * max_log + (1 - frac) * min_log

    # ------------------------------------------------------------------------------------------
    # losses

    def loss(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stage's training loss for one batch: ``{"loss", "mse"[, "vlb"]}`` (scalars).

        eps prediction: MSE to the noise; x0 prediction: MSE to x_0 (the prior, paper §2.2);
        v prediction: MSE to v (at t ≈ T that is x_0 itself, so the global colour must come from
        the conditioning, where eps prediction barely penalises it).
        Learned variance: channels beyond x_0's are the variance interpolation v, trained by the
        VLB term only (the mean is detached there), weighted λ·T as in improved-DDPM.
        """
        channels = x0.shape[1]
        pred = model_out[:, :channels]
        if self.cfg.prediction is Prediction.v:
            target = self.v_target(x0, t, noise)
        else:
            target = noise if self.cfg.prediction is Prediction.eps else x0
        mse = mean_flat((pred.float() - target.float()) ** 2)
        out = {"mse": mse.mean()}
        if self.cfg.variance is Variance.learned and model_out.shape[1] > channels:
            frozen = torch.cat([pred.detach(), model_out[:, channels:]], dim=1)
            vlb = self.vlb_bits(frozen, x0, x_t, t)
            out["vlb"] = vlb.mean()
            out["loss"] = (mse + self.vlb_weight * self.num_timesteps * vlb).mean()
        else:
            out["loss"] = mse.mean()
        return out

    def vlb_bits(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        """Per-sample VLB term L_t in bits/dim: KL(q ‖ p) for t > 0, decoder NLL at t = 0."""
        channels = x0.shape[1]
        pred, v = model_out[:, :channels].float(), model_out[:, channels:].float()
        x0_pred = self.x0_from_prediction(x_t.float(), t, pred)
        mean, _ = self.q_posterior(x0_pred, x_t.float(), t)
        log_var = self.learned_log_variance(v, t)
        true_mean, true_log_var = self.q_posterior(x0.float(), x_t.float(), t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0.float(), mean, 0.5 * log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log p(x) for x in [-1, 1] quantised to 256 levels under N(mean, e^{2·log_scale})."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# ----------------------------------------------------------------------------------------------
# guidance, written once


def guided(model_fn: ModelFn, scale: float, guide_channels: int | None = None) -> ModelFn:
    """Classifier-free guidance (GLIDE / paper §2.1) as a wrapper.

    ``model_fn`` must see a doubled batch whose conditioning is ordered ``[uncond; cond]``; the
    wrapper doubles x_t and t, then returns ``u + scale·(c − u)`` on the first
    ``guide_channels`` channels (eps only, for learned variance) and the conditional half's
    remaining channels (its variance), unchanged.
    """

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t2 = t.expand(len(x_t)) if t.dim() else t.reshape(1).expand(len(x_t))
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t2, t2]))
        uncond, cond = out.chunk(2)
        k = out.shape[1] if guide_channels is None else guide_channels
        mixed = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([mixed, cond[:, k:]], dim=1)

    return fn


# ----------------------------------------------------------------------------------------------
# sampling loops (diffusers' step contract)


def _step_kwargs(scheduler, timesteps, i: int, generator, eta: float) -> dict:
    if isinstance(scheduler, UnCLIPScheduler):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        return dict(prev_timestep=prev, generator=generator)
    if isinstance(scheduler, DDIMScheduler):
        return dict(eta=eta, generator=generator)
    if isinstance(scheduler, DDIMInverseScheduler):
        return {}
    return dict(generator=generator)


def _handles_learned_variance(scheduler) -> bool:
    if isinstance(scheduler, (DDIMScheduler, DDIMInverseScheduler)):
        return False  # DDIM's step does not strip variance channels (reference §3.7)
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        return False  # it strips them (as [:, :3]) for eps prediction only (diffusers 0.42)
    return True


@torch.no_grad()
def set_timesteps(scheduler, steps: int, start: int | None = None, device=None) -> torch.Tensor:
    """Give ``scheduler`` ``steps`` timesteps: its own spacing from T, or, with ``start``, evenly
    spaced from ``start`` down to 0 (for a sample that starts from a noised image, see
    ``DiffusionConfig.sample_start``). Returns the timesteps."""
    if start is None:
        scheduler.set_timesteps(steps, device=device)
        return scheduler.timesteps
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"sample_start: the {type(scheduler).__name__} cannot start part-way; use the ddpm or "
                         "dpmpp sampler")
    last = scheduler.config.num_train_timesteps - 1
    if not 0 <= start <= last:
        raise ValueError(f"sample_start: expected a timestep in 0..{last}, got {start}")
    ts = torch.linspace(start, 0, min(steps, start + 1)).round().long()
    scheduler.set_timesteps(timesteps=ts.tolist(), device=device)
    return scheduler.timesteps


def noised_start(cfg: DiffusionConfig, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x at ``cfg.sample_start``: ``image`` noised by q(x_t | x_0), or ``noise`` itself (pure noise
    at T) when the stage starts from T."""
    if cfg.sample_start is None:
        return noise
    a = make_scheduler(cfg).alphas_cumprod[cfg.sample_start].to(image.device, image.dtype)
    return a.sqrt() * image + (1 - a).sqrt() * noise


def sample_loop(model_fn: ModelFn, scheduler, x_T: torch.Tensor, steps: int, *, channels: int | None = None,
                generator: torch.Generator | None = None, eta: float = 0.0, desc: str | None = None,
                progress: bool = True, start: int | None = None) -> torch.Tensor:
    """Run ``scheduler`` from x_T for ``steps`` steps; returns x_0 (or x_T for an inverse scheduler).

    ``channels`` is the data's channel count; model outputs with more channels carry a learned
    variance, which is dropped for schedulers that cannot use it. ``start`` begins at that
    timestep instead of T (x_T must then be noised to it; see ``noised_start``).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    set_timesteps(scheduler, steps, start, device=x_T.device)
    timesteps = scheduler.timesteps
    x = x_T * getattr(scheduler, "init_noise_sigma", 1.0)
    for i, t in enumerate(tqdm(timesteps, desc=desc, disable=not progress, leave=False)):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model_fn(model_in, t.reshape(1).expand(len(x)).to(x.device))
        if channels is not None and not _handles_learned_variance(scheduler):
            out = out[:, :channels]
        x = scheduler.step(out, t, x, **_step_kwargs(scheduler, timesteps, i, generator, eta)).prev_sample
    return x
