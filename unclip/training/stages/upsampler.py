"""Upsampler stages 64→256 and 256→1024 (paper §2.1, App. C): one entry, the config picks which.

Training pairs are random crops (``crop_fraction`` of the side) of the target and of its degraded,
re-upsampled conditioning; sampling runs the fully convolutional network at full size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.checkpoint import save_component
from unclip.config import UpsamplerStageConfig, to_dict
from unclip.data import build_dataset
from unclip.data.degradations import upsample_condition, upsampler_pair
from unclip.diffusion.losses import GaussianDiffusion
from unclip.diffusion.sampling import sample_loop
from unclip.diffusion.schedule import Sampler, make_scheduler, noised_start
from unclip.networks.build import build_network
from unclip.pipeline.denoisers import upsampler_denoiser
from unclip.training.losses import upsampler_loss
from unclip.training.stages.common import (
    StageContext,
    StageTask,
    held_out_samples,
    save_grid,
    step_png,
)

SAMPLE_COUNT = 2  # fixed held-out images in each sample grid


def build(cfg: UpsamplerStageConfig, ctx: StageContext) -> StageTask:
    up = cfg.upsampler
    crop = up.crop_side
    if cfg.data.low_res not in (None, up.low_res_size):
        raise ValueError(f"data.low_res={cfg.data.low_res} but this upsampler takes {up.low_res_size}×"
                         f"{up.low_res_size} images; set data.low_res={up.low_res_size} or leave it out")
    model = build_network(cfg)
    diffusion = GaussianDiffusion(cfg.diffusion)
    # sampled on tiles of the crop side, which its GroupNorm layers trained on (unclip.networks.tiling)
    tile = crop if crop < up.sample_size and crop % model.side_multiple == 0 else None

    def loss(upsampler, batch):
        high_res, low_res = upsampler_pair(batch["image"], up.low_res_size, up.degradation, crop,
                                            candidates=up.crop_candidates, low_res=batch.get("low_res"))
        return upsampler_loss(upsampler, diffusion, high_res=high_res, low_res=low_res)

    images, _ = held_out_samples(cfg.data, up.sample_size, SAMPLE_COUNT)
    # with data.low_res the same scenes rendered at the low side, as training conditions on them
    native = held_out_samples(cfg.data, up.low_res_size, SAMPLE_COUNT)[0] if cfg.data.low_res else None

    @torch.no_grad()
    def sample(upsampler, step: int, output: Path) -> dict[str, float]:
        """Rows: bicubic-upsampled clean low-res input (box-filtered, or ``data.low_res``'s render),
        the upsampler's output (ancestral sampling on tiles, as the pipeline does it), the target;
        logs the output's MSE to the target."""
        target = images.to(ctx.device)
        low = (native.to(ctx.device) if native is not None
               else F.interpolate(target, size=(up.low_res_size, up.low_res_size), mode="area"))
        g = torch.Generator(ctx.device).manual_seed(0)
        cond = upsample_condition(low, up.sample_size)
        offset = upsampler.offset(low, up.sample_size)
        x_T = noised_start(cfg.diffusion, cond - offset, torch.randn(target.shape, generator=g, device=ctx.device))
        x0 = sample_loop(upsampler_denoiser(upsampler, low, tile=tile), make_scheduler(cfg.diffusion, Sampler.ddpm),
                         x_T, cfg.diffusion.sample_steps, channels=3, generator=g, progress=False,
                         start=cfg.diffusion.sample_start).add(offset).clamp(-1, 1)
        save_grid([cond, x0, target], step_png(output, step))
        return {"upsampler/sample_mse": F.mse_loss(x0, target).item()}

    def export(upsampler, folder: Path) -> None:
        save_component(upsampler, folder / cfg.stage,
                       extra={"diffusion": to_dict(cfg.diffusion), **({"tile": tile} if tile else {})})

    data_cfg = dataclasses.replace(cfg.data, resolution=up.sample_size)  # targets at the output size
    dataset = build_dataset(data_cfg, rank=ctx.rank, world_size=ctx.world_size)
    return StageTask(cfg.stage.component, model, dataset, loss, export, sample=sample)
