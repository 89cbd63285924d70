"""The diffusion prior network (paper §2.2): caption → unnoised CLIP image embedding.

A decoder-only causal transformer (diffusers' ``PriorTransformer``, whose defaults are Karlo's
1B prior) over [text tokens, text embedding, timestep, noised z_i, learned query]; the query's
output predicts x0 = the *standardised* image embedding. Standardisation uses per-dimension
statistics of the training set (Karlo's ``ViT-L-14_stats.th``), stored in the transformer's
``clip_mean`` / ``clip_std`` and frozen. Sampling calls ``stepper``, which computes the caption's
tokens once per run (``prior_cache``) instead of at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import PriorTransformer
from torch import nn

from unclip.config import PriorConfig
from unclip.networks.prior_cache import PrefixCache, supports_prefix_cache


class Prior(nn.Module):
    config_class = PriorConfig
    _no_split_modules = ["BasicTransformerBlock"]  # FSDP units (unclip.training.sharded)

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = PriorTransformer(
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            num_layers=cfg.num_layers,
            embedding_dim=cfg.embedding_dim,
            num_embeddings=cfg.num_embeddings,
            additional_embeddings=4,  # text_emb, timestep, x_t, query
            dropout=cfg.dropout,
        )
        # clip_mean/clip_std start at zero in diffusers: identity until set from data, never trained
        with torch.no_grad():
            self.transformer.clip_std.fill_(1.0)
        self.transformer.clip_mean.requires_grad_(False)
        self.transformer.clip_std.requires_grad_(False)
        self.prefix_cache = True  # sampling reuses the caption's tokens across steps (``stepper``)

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the raw CLIP image embeddings of the training set."""
        self.transformer.clip_mean.copy_(mean.reshape(-1))
        self.transformer.clip_std.copy_(std.reshape(-1).clamp(min=1e-6))

    def standardise(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Raw z_i (B, D) → the prior's diffusion space."""
        t = self.transformer
        return (image_emb - t.clip_mean) / t.clip_std

    def unstandardise(self, x0: torch.Tensor) -> torch.Tensor:
        """The prior's diffusion space → raw z_i (B, D)."""
        return self.transformer.post_process_latents(x0)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, text_emb: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Predicted standardised x0 (B, D) from x_t (B, D), t (B,), text_emb (B, D),
        text_tokens (B, L, D) and text_mask (B, L) bool."""
        return self.transformer(
            x_t, timestep=t, proj_embedding=text_emb, encoder_hidden_states=text_tokens,
            attention_mask=text_mask,
        ).predicted_image_embedding

    def stepper(self, *, text_emb: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``forward`` for a fixed caption batch as ``fn(x_t, t)``: the caption prefix runs once, at
        the first call (under that call's autocast), and each step only the step tokens
        (``prior_cache``). The full forward where gradients are on, for a compiled forward
        (``pipeline.compiled``), for a transformer of another structure and with ``prefix_cache``
        off (the cache adds in another order: equal to float rounding, not bit for bit)."""
        text = dict(text_emb=text_emb, text_tokens=text_tokens, text_mask=text_mask)
        cache: list[PrefixCache] = []
        cacheable = supports_prefix_cache(self.transformer)  # the structure, checked once per run

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if (not cacheable or not self.prefix_cache or torch.is_grad_enabled()
                    or getattr(self, "_unclip_compiled", False)):
                return self(x_t, t, **text)
            if not cache:
                cache.append(PrefixCache.build(self.transformer, **text))
            return cache[0].step(self.transformer, x_t, torch.as_tensor(t, device=x_t.device))

        return fn
