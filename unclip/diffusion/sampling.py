"""Sampling loops over diffusers' ``set_timesteps`` / ``step`` contract, apart from any network:
the plain loop every stage uses and RePaint's loop for inpainting (Lugmayr et al. 2022)."""

from __future__ import annotations

import inspect

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UnCLIPScheduler,
)
from tqdm.auto import tqdm

from unclip.diffusion.guidance import ModelFn
from unclip.diffusion.schedule import q_sample


def _step_kwargs(scheduler, timesteps, i: int, generator, eta: float) -> dict:
    if isinstance(scheduler, UnCLIPScheduler):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        return dict(prev_timestep=prev, generator=generator)
    if isinstance(scheduler, DDIMScheduler):
        # guided-diffusion's DDIM: eps re-derived from the clipped x_0, so that x_{t−1} mixes the
        # clipped x_0 and x_t as DDPM's posterior mean does. diffusers' default keeps the network's
        # own eps beside the clipped x_0; for v models, whose x_0 estimates near T leave [−1, 1],
        # that pair is inconsistent and drew other objects than the caption asked for.
        return dict(eta=eta, generator=generator, use_clipped_model_output=True)
    if isinstance(scheduler, DDIMInverseScheduler):
        return {}
    return dict(generator=generator)


def _x0_clamp(scheduler) -> float | None:
    """The range an x0 model's output is clipped to where the scheduler would not: DPM-Solver++
    clips x_0 only by thresholding, which for a range above 1 rescales instead of clipping, so
    ``make_scheduler`` leaves it off for x0 stages (the prior's ±10); DDPM and DDIM clip."""
    config = scheduler.config
    if isinstance(scheduler, DPMSolverMultistepScheduler) and config.prediction_type == "sample" \
            and not config.thresholding:
        return float(config.sample_max_value)
    return None


def _handles_learned_variance(scheduler) -> bool:
    if isinstance(scheduler, (DDIMScheduler, DDIMInverseScheduler)):
        return False  # DDIM's step does not strip variance channels
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        return False  # it strips them (as [:, :3]) for eps prediction only (diffusers 0.42)
    return True


@torch.no_grad()
def set_timesteps(scheduler, steps: int, start: int | None = None, device=None) -> torch.Tensor:
    """Give ``scheduler`` ``steps`` timesteps: its own spacing from T, or, with ``start``, evenly
    spaced from ``start`` down to 0 (for a sample that starts from a noised image, see
    ``DiffusionConfig.sample_start``). One step from pure noise runs at T − 1, not at the first
    point of a "leading" or "linspace" grid, which is t = 0 (schedulers that take no explicit
    timesteps, DDIM's, keep their grid: ``make_plan`` refuses that case). Returns the timesteps."""
    explicit = "timesteps" in inspect.signature(scheduler.set_timesteps).parameters
    if start is None and steps == 1 and explicit:
        start = scheduler.config.num_train_timesteps - 1
    if start is None:
        scheduler.set_timesteps(steps, device=device)
        return scheduler.timesteps
    if not explicit:
        raise ValueError(f"sample_start: the {type(scheduler).__name__} cannot start part-way; use the ddpm or "
                         "dpmpp sampler")
    last = scheduler.config.num_train_timesteps - 1
    if not 0 <= start <= last:
        raise ValueError(f"sample_start: expected a timestep in 0..{last}, got {start}")
    ts = torch.linspace(start, 0, min(steps, start + 1)).round().long()
    scheduler.set_timesteps(timesteps=ts.tolist(), device=device)
    return scheduler.timesteps


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
    clamp = _x0_clamp(scheduler)
    x = x_T * getattr(scheduler, "init_noise_sigma", 1.0)
    for i, t in enumerate(tqdm(timesteps, desc=desc, disable=not progress, leave=False)):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model_fn(model_in, t.reshape(1).expand(len(x)).to(x.device))
        if channels is not None and not _handles_learned_variance(scheduler):
            out = out[:, :channels]
        if clamp is not None:
            out = out.clamp(-clamp, clamp)
        x = scheduler.step(out, t, x, **_step_kwargs(scheduler, timesteps, i, generator, eta)).prev_sample
    return x


@torch.no_grad()
def repaint_loop(model_fn: ModelFn, scheduler, x_T: torch.Tensor, steps: int, *, known: torch.Tensor,
                 keep: torch.Tensor, noise_fn, generator=None, resample: int = 0,
                 start: int | None = None) -> torch.Tensor:
    """Ancestral sampling from x_T (B, C, S, S) with the known region of every x_t replaced by the
    original ``known`` (1, C, S, S) noised to level t (RePaint, Alg. 1 with jump length 1); ``keep``
    (1, 1, S, S) is 1 where the original is kept. With ``resample`` > 0 each step is redone that
    many times after jumping back to x_t with q(x_t | x_{t−1}). ``noise_fn(shape)`` draws N(0, I);
    ``scheduler`` must have stateless steps (DDPM); ``start`` as in ``sample_loop``. Returns x_0
    with the known region exact."""
    timesteps = set_timesteps(scheduler, steps, start, device=x_T.device)
    alphas = scheduler.alphas_cumprod.to(x_T.device, torch.float32)
    x = x_T
    for i, t in enumerate(timesteps):
        a_t = alphas[t]
        a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones_like(a_t)
        for attempt in range(resample + 1):
            x = keep * q_sample(alphas, known, t, noise_fn(x.shape)) + (1 - keep) * x
            out = model_fn(x, t.reshape(1).expand(len(x)))
            x_prev = scheduler.step(out, t, x, generator=generator).prev_sample
            if attempt < resample:  # jump back up one step: q(x_t | x_{t-1})
                ratio = a_t / a_prev
                x = ratio.sqrt() * x_prev + (1 - ratio).sqrt() * noise_fn(x.shape)
        x = x_prev
    return keep * known + (1 - keep) * x
