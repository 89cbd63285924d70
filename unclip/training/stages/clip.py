"""CLIP stage: a small open_clip model trained contrastively (open_clip's ``ClipLoss``), for offline work."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from unclip.checkpoint import save_component
from unclip.config import ClipStageConfig, DatasetKind
from unclip.data import build_dataset
from unclip.evaluation.probes import relation_accuracy, relation_probe
from unclip.networks.build import build_network
from unclip.networks.clip import OPENAI_MEAN, OPENAI_STD, ClipEncoder, context_length, text_tokenizer
from unclip.training.stages.common import StageContext, StageTask, held_out_samples

MONITOR_COUNT = 32  # held-out pairs for the retrieval monitor
MAX_LOG_SCALE = math.log(100)  # open_clip's bound: a temperature of at most 100


def build(cfg: ClipStageConfig, ctx: StageContext) -> StageTask:
    model = build_network(cfg)  # open_clip.model.CLIP (CustomTextCLIP with a frozen text_model: LiT)
    tokenizer = text_tokenizer(cfg.clip)
    context = context_length(cfg.clip, model)
    side = model.visual.image_size
    side = int(side[0] if isinstance(side, (tuple, list)) else side)
    mean = torch.tensor(OPENAI_MEAN, device=ctx.device)[:, None, None]
    std = torch.tensor(OPENAI_STD, device=ctx.device)[:, None, None]
    # every process computes the loss over the whole global batch (open_clip's default)
    clip_loss = ClipLoss(gather_with_grad=True, rank=ctx.rank, world_size=ctx.world_size)

    def pixels(images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the tower's normalised input (as ClipEncoder.preprocess)."""
        if images.shape[-1] != side:
            images = F.interpolate(images, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        return ((images.clamp(-1, 1) + 1) / 2 - mean) / std

    def tokens(captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, context_length=context).to(ctx.device)

    def loss(clip, batch):
        out = clip(pixels(batch["image"]), tokens(batch["caption"]))
        image_features, text_features, logit_scale = out[:3] if isinstance(out, tuple) else (
            out["image_features"], out["text_features"], out["logit_scale"])
        # the bound also holds in the loss itself: under ZeRO-3 a rank's logit_scale outside a
        # forward is an empty shard, so the in-place clamp below leaves the gathered value alone
        scale = logit_scale.clamp(1.0, math.exp(MAX_LOG_SCALE))
        return {"loss": clip_loss(image_features, text_features, scale)}

    def after_step(clip) -> None:
        with torch.no_grad():  # open_clip's clamp of the parameter, where this rank holds it whole
            clip.logit_scale.clamp_(0, MAX_LOG_SCALE)

    images, captions = held_out_samples(cfg.data, side, MONITOR_COUNT)
    shapes = cfg.data.kind is DatasetKind.shapes  # the relation probe renders shapes scenes
    probe = relation_probe(side, MONITOR_COUNT) if shapes else None

    @torch.no_grad()
    def sample(clip, step: int, output: Path) -> dict[str, float]:
        """Top-1 image→caption retrieval among held-out pairs (chance = 1/N; captions may repeat),
        and on shapes `relation_accuracy` on fixed two-object renders (chance = 0.5)."""
        image_emb = lambda x: clip.encode_image(pixels(x.to(ctx.device)))  # noqa: E731
        text_emb = lambda c: clip.encode_text(tokens(c))  # noqa: E731
        sims = F.normalize(image_emb(images), dim=-1) @ F.normalize(text_emb(captions), dim=-1).T
        hits = [captions[j] == captions[i] for i, j in enumerate(sims.argmax(dim=1).tolist())]
        metrics = {"clip/top1": sum(hits) / len(hits)}
        if probe is not None:
            metrics["clip/relation"] = relation_accuracy(image_emb, text_emb, *probe)
        return metrics

    def export(clip, folder: Path) -> None:
        save_component(ClipEncoder(cfg.clip, model=clip), folder / "clip")

    dataset = build_dataset(cfg.data, rank=ctx.rank, world_size=ctx.world_size)
    return StageTask("clip", model, dataset, loss, export, sample=sample, after_step=after_step)
