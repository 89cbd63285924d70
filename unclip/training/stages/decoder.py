"""Decoder stage (paper §2.1): images + captions → eps (+ learned variance) given frozen CLIP encodings."""

from __future__ import annotations

from pathlib import Path

import torch

from unclip.checkpoint import save_component
from unclip.config import DatasetKind, DecoderStageConfig, to_dict
from unclip.data import build_dataset
from unclip.diffusion.losses import GaussianDiffusion
from unclip.diffusion.sampling import sample_loop
from unclip.diffusion.schedule import Sampler, make_scheduler
from unclip.evaluation.probes import binding_accuracy, binding_probe
from unclip.networks.build import build_network
from unclip.networks.decoder import check_context_fits
from unclip.pipeline.denoisers import decoder_denoiser
from unclip.training.losses import decoder_loss
from unclip.training.stages.common import (
    StageContext,
    StageTask,
    check_clip_width,
    frozen_clip,
    held_out_samples,
    save_grid,
    step_png,
)

SAMPLE_COUNT = 4  # fixed held-out prompts in each sample grid
BINDING_STEPS = 10  # DDPM steps of the monitor's decodes


def build(cfg: DecoderStageConfig, ctx: StageContext) -> StageTask:
    if cfg.data.resolution != cfg.decoder.sample_size:
        raise ValueError(f"data.resolution={cfg.data.resolution} must equal "
                         f"decoder.sample_size={cfg.decoder.sample_size}")
    clip = frozen_clip(cfg, ctx.device)
    check_clip_width(clip, cfg.decoder.clip_embeddings_dim, "decoder.clip_embeddings_dim")
    check_context_fits(cfg.decoder, clip.context_length)
    model = build_network(cfg)
    diffusion = GaussianDiffusion(cfg.diffusion, vlb_weight=cfg.decoder.vlb_weight)
    empty = clip.encode_text([""])  # (1, ·): the dropped caption

    def loss(decoder, batch):
        images = batch["image"]  # (B, 3, S, S) in [-1, 1]
        return decoder_loss(decoder, diffusion, images=images, image_emb=clip.encode_image(images),
                            text=clip.encode_text(batch["caption"]), empty=empty,
                            offset_noise=cfg.training.offset_noise)

    images, captions = held_out_samples(cfg.data, cfg.decoder.sample_size, SAMPLE_COUNT)
    count = cfg.training.binding_monitor
    if count < 0:
        raise ValueError(f"training.binding_monitor={count}: expected a count of renders, 0 to turn it off")
    probe = binding_probe(count) if cfg.data.kind is DatasetKind.shapes and count else {}

    def reconstruct(decoder, images: torch.Tensor, captions: list[str], steps: int) -> torch.Tensor:
        """Decode ``images`` from their own CLIP image embeddings and ``captions`` (fixed seed)."""
        image_emb = clip.encode_image(images.to(ctx.device))
        model_fn = decoder_denoiser(decoder, image_emb, clip.encode_text(captions), empty, cfg.diffusion.guidance_scale)
        g = torch.Generator(ctx.device).manual_seed(0)
        x_T = torch.randn(images.shape, generator=g, device=ctx.device)
        return sample_loop(model_fn, make_scheduler(cfg.diffusion, Sampler.ddpm), x_T, steps, channels=3, generator=g,
                           progress=False)

    @torch.no_grad()
    def sample(decoder, step: int, output: Path) -> dict[str, float]:
        """Top row: held-out images; bottom row: decoded from their CLIP embeddings and captions.
        On the shapes set, also the detector's binding accuracy of one- and two-object renders
        decoded from their true CLIP image embeddings (the decoder's ceiling; the prior is not used)."""
        save_grid([images, reconstruct(decoder, images, captions, cfg.diffusion.sample_steps)], step_png(output, step))
        from_true_z = lambda x, c: reconstruct(decoder, x, c, BINDING_STEPS)  # noqa: E731
        return {f"decoder/binding_{kind}": binding_accuracy(from_true_z, scenes, cfg.decoder.sample_size)
                for kind, scenes in probe.items()}

    def export(decoder, folder: Path) -> None:
        save_component(decoder, folder / "decoder", extra={"diffusion": to_dict(cfg.diffusion)})
        save_component(clip, folder / "clip")  # self-contained: the CLIP the decoder was trained on

    dataset = build_dataset(cfg.data, rank=ctx.rank, world_size=ctx.world_size)
    return StageTask("decoder", model, dataset, loss, export, sample=sample)
