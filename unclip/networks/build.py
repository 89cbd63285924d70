"""Build the network a stage config describes (on any device, including ``meta`` for sizing)."""

from __future__ import annotations

from torch import nn

from unclip.config import (
    ClipConfig,
    ClipStageConfig,
    DecoderStageConfig,
    PriorStageConfig,
    StageConfig,
    UpsamplerStageConfig,
)
from unclip.networks.clip import build_open_clip
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.upsampler import Upsampler


def build_network(cfg: StageConfig) -> nn.Module:
    """The trainable network of a stage (the CLIP stage's is the open_clip model itself)."""
    if isinstance(cfg, PriorStageConfig):
        _check_widths("prior.embedding_dim", cfg.prior.embedding_dim, cfg.clip)
        return Prior(cfg.prior)
    if isinstance(cfg, DecoderStageConfig):
        _check_widths("decoder.clip_embeddings_dim", cfg.decoder.clip_embeddings_dim, cfg.clip)
        return Decoder(cfg.decoder)
    if isinstance(cfg, UpsamplerStageConfig):
        return Upsampler(cfg.upsampler)
    if isinstance(cfg, ClipStageConfig):
        return build_open_clip(cfg.clip)
    raise TypeError(f"unknown stage config {type(cfg).__name__}")


def _check_widths(field: str, value: int, clip: ClipConfig) -> None:
    """The prior and TextProj read CLIP token states through Linear(D, ·): W must equal D."""
    if clip.name:
        return  # a named architecture's widths are its own; checked when its weights load
    if value != clip.embed_dim or clip.text_width != clip.embed_dim:
        raise ValueError(
            f"{field}={value}, clip.embed_dim={clip.embed_dim}, clip.text_width={clip.text_width}: "
            "these three must be equal (the prior and the decoder read CLIP token states of width D)"
        )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
