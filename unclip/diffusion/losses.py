"""Training losses of a diffusion stage, apart from any network: DDPM's eps / x0 MSE, v MSE, and
improved-DDPM's hybrid loss (MSE + λ·VLB) for a learned variance (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math

import torch

from unclip.config import DiffusionConfig, Prediction, Variance
from unclip.diffusion.schedule import Sampler, at_timesteps, make_scheduler, q_sample


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

    def sample_timesteps(self, batch: int, device, generator=None) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·eps (see ``schedule.q_sample``)."""
        return q_sample(self.alphas_cumprod, x0, t, noise)

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = at_timesteps(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a = at_timesteps(self.alphas_cumprod, t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t)·eps − sqrt(1 − ᾱ_t)·x_0."""
        a = at_timesteps(self.alphas_cumprod, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def x0_from_prediction(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x_0 implied by the network's output under the stage's parameterisation."""
        if self.cfg.prediction is Prediction.x0:
            return pred
        if self.cfg.prediction is Prediction.eps:
            return self.x0_from_eps(x_t, t, pred)
        a = at_timesteps(self.alphas_cumprod, t, x_t)
        return a.sqrt() * x_t - (1 - a).sqrt() * pred

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and log variance of q(x_{t-1} | x_t, x_0)."""
        mean = at_timesteps(self.posterior_coef0, t, x_t) * x0 + at_timesteps(self.posterior_coef_t, t, x_t) * x_t
        return mean, at_timesteps(self.posterior_log_variance, t, x_t)

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """IDDPM eq. 15: log Σ = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1) / 2."""
        frac = (v + 1) / 2
        max_log = at_timesteps(torch.log(self.betas), t, v)
        min_log = at_timesteps(self.posterior_log_variance, t, v)
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
