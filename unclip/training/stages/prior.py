"""Prior stage (paper §2.2): caption → CLIP image embedding, from images or precomputed embeddings;
the diffusion prior or, with ``prior.kind: autoregressive``, the AR prior."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.checkpoint import save_component
from unclip.config import DatasetKind, PriorStageConfig, to_dict
from unclip.data import build_dataset
from unclip.diffusion.losses import GaussianDiffusion
from unclip.diffusion.sampling import sample_loop
from unclip.diffusion.schedule import Sampler, make_scheduler
from unclip.networks.build import build_network
from unclip.networks.clip import TextEncoding
from unclip.networks.prior_ar import ARPrior
from unclip.pipeline.denoisers import prior_denoiser
from unclip.pipeline.prior_ar import sample_ar_prior
from unclip.training.batches import batch_stream
from unclip.training.losses import ar_prior_loss, prior_loss
from unclip.training.stages.common import (
    StageContext,
    StageTask,
    check_clip_width,
    frozen_clip,
    held_out_samples,
)

STATS_SAMPLES, STATS_BATCH = 512, 64  # training samples behind the per-dimension mean/std of z_i
AR_STATS_SAMPLES = 4096  # behind the AR prior's PCA basis, code ranges and dot-product histogram
MONITOR_COUNT = 32  # held-out shapes captions for the cosine-similarity monitor


def build(cfg: PriorStageConfig, ctx: StageContext) -> StageTask:
    embeddings = cfg.data.kind is DatasetKind.embeddings
    if embeddings and not cfg.training.clip_checkpoint and cfg.data.path and (Path(cfg.data.path) / "clip").is_dir():
        cfg.training.clip_checkpoint = str(Path(cfg.data.path) / "clip")  # the CLIP `unclip embed` used
    clip = frozen_clip(cfg, ctx.device)
    check_clip_width(clip, cfg.prior.embedding_dim, "prior.embedding_dim")
    model = build_network(cfg)
    autoregressive = isinstance(model, ARPrior)
    diffusion = GaussianDiffusion(cfg.diffusion)
    empty = clip.encode_text([""])

    def encode(batch) -> tuple[torch.Tensor, TextEncoding]:
        """(z_i (B, D), text encodings): precomputed, or from the frozen CLIP."""
        if "image_emb" in batch:
            return batch["image_emb"], TextEncoding(batch["text_tokens"], batch["text_mask"], batch["text_emb"])
        return clip.encode_image(batch["image"]), clip.encode_text(batch["caption"])

    def loss(prior, batch):
        image_emb, text = encode(batch)
        if autoregressive:
            return ar_prior_loss(prior, image_emb=image_emb, text=text, empty=empty)
        return prior_loss(prior, diffusion, image_emb=image_emb, text=text, empty=empty)

    def init(prior) -> None:
        """Statistics of z_i from the first samples (the same on every process): the diffusion
        prior's standardisation, the AR prior's PCA basis, code ranges and dot-product histogram."""
        data = build_dataset(cfg.data)  # rank 0 of 1: every process computes the same numbers
        stream = batch_stream(data, STATS_BATCH, seed=cfg.data.seed)
        count = (AR_STATS_SAMPLES if autoregressive else STATS_SAMPLES) // STATS_BATCH
        pairs = [encode(_to(b, ctx.device)) for b in itertools.islice(stream, count)]
        z = torch.cat([image_emb for image_emb, _ in pairs])
        if autoregressive:
            prior.set_stats(z, torch.cat([text.emb for _, text in pairs]))
        else:
            prior.set_stats(z.mean(0), z.std(0))

    images, captions = held_out_samples(cfg.data, clip.image_size, MONITOR_COUNT)

    @torch.no_grad()
    def sample(prior, step: int, output: Path) -> dict[str, float]:
        """cos(sampled z_i, true z_i) on held-out pairs, beside the baseline cos(z_t, true z_i)."""
        true = clip.encode_image(images.to(ctx.device))
        text = clip.encode_text(captions)
        g = torch.Generator(ctx.device).manual_seed(0)
        if autoregressive:
            predicted = sample_ar_prior(prior, text, empty, cfg.diffusion.guidance_scale, g)
        else:
            model_fn = prior_denoiser(prior, text, empty, cfg.diffusion.guidance_scale)
            x_T = torch.randn(true.shape, generator=g, device=ctx.device)
            x0 = sample_loop(model_fn, make_scheduler(cfg.diffusion, Sampler.ddpm), x_T, cfg.diffusion.sample_steps,
                             generator=g, progress=False)
            predicted = prior.unstandardise(x0)
        return {"prior/cos_pred": F.cosine_similarity(predicted, true).mean().item(),
                "prior/cos_text_baseline": F.cosine_similarity(text.emb, true).mean().item()}

    def export(prior, folder: Path) -> None:
        save_component(prior, folder / "prior", extra={"diffusion": to_dict(cfg.diffusion)})
        save_component(clip, folder / "clip")

    dataset = build_dataset(cfg.data, rank=ctx.rank, world_size=ctx.world_size)
    if embeddings and dataset.metadata.get("embed_dim") != clip.embed_dim:
        raise ValueError(f"{cfg.data.path} holds {dataset.metadata.get('embed_dim')}-d embeddings, "
                         f"the frozen CLIP makes {clip.embed_dim}-d ones")
    return StageTask("prior", model, dataset, loss, export, sample=sample, init=init)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
