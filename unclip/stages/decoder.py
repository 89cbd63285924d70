"""Decoder stage (paper §2.1): images + captions → eps (+ learned variance) given frozen CLIP encodings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from unclip.checkpoint import save_component
from unclip.config import DecoderStageConfig, to_dict
from unclip.data import build_dataset
from unclip.diffusion import (
    GaussianDiffusion,
    Sampler,
    guided,
    make_scheduler,
    sample_loop,
)
from unclip.losses import decoder_loss
from unclip.models import build_stage_model
from unclip.stages import (
    StageContext,
    StageTask,
    check_clip_width,
    frozen_clip,
    held_out_shapes,
    save_grid,
    step_png,
)

SAMPLE_COUNT = 4  # fixed held-out prompts in each sample grid
BINDING_STEPS = 10  # DDPM steps of the monitor's decodes


def binding_probe(count: int, seed: int = 10_002) -> dict[str, list]:
    """``count`` fixed one-object and two-object scenes (training pairs, a seed no run uses)."""
    import random

    from unclip.data.shapes import sample_scene

    rng = random.Random(f"binding-probe:{seed}")
    return {kind: [sample_scene(rng, two_object_prob=prob) for _ in range(count)]
            for kind, prob in (("one_object", 0.0), ("two_object", 1.0))}


def binding_accuracy(reconstruct: Callable[[torch.Tensor, list[str]], torch.Tensor], scenes: list, side: int) -> float:
    """Share of ``scenes`` whose reconstruction the detector scores all right. ``reconstruct`` maps
    renders in [-1, 1] and their captions to decoded images in [-1, 1]."""
    from unclip.clip import tensor_to_pil
    from unclip.data.shapes import image_to_tensor
    from unclip.detector import detect, score

    renders = torch.stack([image_to_tensor(s.render(side)) for s in scenes])
    decoded = tensor_to_pil(reconstruct(renders, [s.caption for s in scenes]))
    return sum(score(detect(im), s)["all"] for im, s in zip(decoded, scenes)) / len(scenes)


def build(cfg: DecoderStageConfig, ctx: StageContext) -> StageTask:
    if cfg.data.resolution != cfg.decoder.sample_size:
        raise ValueError(f"data.resolution={cfg.data.resolution} must equal decoder.sample_size={cfg.decoder.sample_size}")
    clip = frozen_clip(cfg, ctx.device)
    check_clip_width(clip, cfg.decoder.clip_embeddings_dim, "decoder.clip_embeddings_dim")
    model = build_stage_model(cfg)
    diffusion = GaussianDiffusion(cfg.diffusion, vlb_weight=cfg.decoder.vlb_weight)
    empty = clip.encode_text([""])  # (1, ·): the dropped caption

    def loss(decoder, batch):
        images = batch["image"]  # (B, 3, S, S) in [-1, 1]
        return decoder_loss(decoder, diffusion, images=images, image_emb=clip.encode_image(images),
                            text=clip.encode_text(batch["caption"]), empty=empty,
                            offset_noise=cfg.training.offset_noise)

    images, captions = held_out_shapes(cfg.decoder.sample_size, SAMPLE_COUNT)
    count = cfg.training.binding_monitor
    if count < 0:
        raise ValueError(f"training.binding_monitor={count}: expected a count of renders, 0 to turn it off")
    probe = binding_probe(count) if cfg.data.kind == "shapes" and count else {}

    def reconstruct(decoder, images: torch.Tensor, captions: list[str], steps: int) -> torch.Tensor:
        """Decode ``images`` from their own CLIP image embeddings and ``captions`` (fixed seed)."""
        n = len(captions)
        image_emb = clip.encode_image(images.to(ctx.device))
        text, blank = clip.encode_text(captions), empty[[0] * n]

        def model_fn(x_t, t):  # doubled batch ordered [uncond; cond]
            return decoder(x_t, t, image_emb=torch.cat([decoder.text_proj.null_image_emb(n), image_emb]),
                           text_emb=torch.cat([blank.emb, text.emb]), text_tokens=torch.cat([blank.tokens, text.tokens]),
                           text_mask=torch.cat([blank.mask, text.mask]))

        g = torch.Generator(ctx.device).manual_seed(0)
        x_T = torch.randn(images.shape, generator=g, device=ctx.device)
        return sample_loop(guided(model_fn, cfg.diffusion.guidance_scale, guide_channels=3),
                           make_scheduler(cfg.diffusion, Sampler.ddpm), x_T, steps,
                           channels=3, generator=g, progress=False)

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
