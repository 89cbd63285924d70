"""Build the network a stage config describes (on any device, including ``meta`` for sizing)."""

from __future__ import annotations

import torch
from torch import nn

from unclip.config import (
    ClipConfig,
    ClipStageConfig,
    DecoderStageConfig,
    PriorConfig,
    PriorKind,
    PriorStageConfig,
    StageConfig,
    UpsamplerStageConfig,
)
from unclip.networks.clip import ClipEncoder, build_open_clip, token_width
from unclip.networks.decoder import Decoder
from unclip.networks.layers import checkpoint_forward
from unclip.networks.prior import Prior
from unclip.networks.prior_ar import ARPrior
from unclip.networks.upsampler import Upsampler


def build_network(cfg: StageConfig) -> nn.Module:
    """The trainable network of a stage (the CLIP stage's is the open_clip model itself)."""
    if isinstance(cfg, PriorStageConfig):
        _check_widths("prior.embedding_dim", cfg.prior.embedding_dim, cfg.clip)
        return build_prior(cfg.prior)
    if isinstance(cfg, DecoderStageConfig):
        _check_widths("decoder.clip_embeddings_dim", cfg.decoder.clip_embeddings_dim, cfg.clip)
        return Decoder(cfg.decoder)
    if isinstance(cfg, UpsamplerStageConfig):
        return Upsampler(cfg.upsampler)
    if isinstance(cfg, ClipStageConfig):
        return build_open_clip(cfg.clip)
    raise TypeError(f"unknown stage config {type(cfg).__name__}")


def build_prior(cfg: PriorConfig) -> Prior | ARPrior:
    """The diffusion or the autoregressive prior, as ``cfg.kind`` says."""
    return ARPrior(cfg) if cfg.kind is PriorKind.autoregressive else Prior(cfg)


def _check_widths(field: str, value: int, clip: ClipConfig) -> None:
    """The prior and TextProj read CLIP token states through Linear(D, ·): W must equal D."""
    if clip.name:
        return  # a named architecture's widths are its own; checked when its weights load
    width = token_width(clip)
    if value != clip.embed_dim or width != clip.embed_dim:
        named = f"the width of {clip.text_model}" if clip.text_model else "clip.text_width"
        raise ValueError(
            f"{field}={value}, clip.embed_dim={clip.embed_dim}, {named}={width}: "
            "these three must be equal (the prior and the decoder read CLIP token states of width D)"
        )


def example_inputs(cfg: StageConfig, batch: int, device: torch.device | str = "cpu",
                   codes: int | None = None) -> tuple[tuple, dict]:
    """(args, kwargs) of one training forward of the stage's network at ``batch``, random, on
    ``device`` (``meta`` for sizing): the upsamplers at their training crop, the AR prior with
    ``codes`` kept components (default: all, its longest sequence)."""
    device = torch.device(device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    rand = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    if isinstance(cfg, ClipStageConfig):
        c = cfg.clip
        return (rand(batch, 3, c.image_size, c.image_size),
                torch.zeros(batch, c.context_length, dtype=torch.long, device=device)), {}
    if isinstance(cfg, UpsamplerStageConfig):
        crop = cfg.upsampler.crop_side
        return (rand(batch, 3, crop, crop), t), {"low_res": rand(batch, 3, crop, crop)}
    d, length = cfg.clip.embed_dim, cfg.clip.context_length
    text = {"text_emb": rand(batch, d), "text_tokens": rand(batch, length, token_width(cfg.clip)),
            "text_mask": torch.ones(batch, length, dtype=torch.bool, device=device)}
    if isinstance(cfg, DecoderStageConfig):
        side = cfg.decoder.sample_size
        return (rand(batch, 3, side, side), t), {"image_emb": rand(batch, d), **text}
    if cfg.prior.kind is PriorKind.autoregressive:
        sequence = torch.zeros(batch, (codes or d) - 1, dtype=torch.long, device=device)
        return (sequence,), {"dot": t, **text}
    return (rand(batch, d), t), text


def enable_gradient_checkpointing(network: nn.Module) -> None:
    """Recompute activations in the backward pass (``training.gradient_checkpointing``): the UNets'
    blocks through diffusers, the priors' transformer blocks through ``checkpoint_forward``, the
    CLIP's towers through open_clip. Gradients are the same; memory falls, time rises."""
    if isinstance(network, ClipEncoder):
        network = network.model
    if isinstance(network, (Decoder, Upsampler)):
        network.unet.enable_gradient_checkpointing()
    elif isinstance(network, Prior):
        for block in network.transformer.transformer_blocks:
            checkpoint_forward(block)
    elif isinstance(network, ARPrior):
        for block in network.blocks.layers:
            checkpoint_forward(block)
    elif hasattr(network, "set_grad_checkpointing"):  # open_clip models
        network.set_grad_checkpointing(True)
    else:
        raise TypeError(f"gradient checkpointing: unknown network {type(network).__name__}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
