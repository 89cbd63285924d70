"""The prior's caption prefix, computed once per sampling run instead of at every step.

The prior transformer reads [text tokens (L), text embedding, timestep, x_t, query] under a causal
mask, so the first L + 1 tokens attend only to each other: their hidden states at every layer,
and the keys and values they give the later tokens, are the same at every diffusion step and for
every x_t. ``PrefixCache.build`` runs them once; ``PrefixCache.step`` runs only the three
step-dependent tokens through each layer against the cached keys and values. The result equals the
full forward (``Prior.forward``) to float rounding; the work per step drops from L + 4 tokens to 3.

It reuses the transformer's own modules and mirrors diffusers' ``PriorTransformer`` and
``BasicTransformerBlock`` (layer norm, self-attention only, GELU feed-forward), the structure both
Karlo's prior and this project's have; ``supports_prefix_cache`` checks that structure, and a prior
without it runs the full forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import PriorTransformer
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

SUFFIX = 3  # timestep, x_t, query: the tokens that change from step to step


def supports_prefix_cache(transformer: PriorTransformer) -> bool:
    """True when the transformer has the structure ``PrefixCache`` mirrors."""
    if transformer.prd_embedding is None or transformer.config.additional_embeddings != 4:
        return False
    for block in transformer.transformer_blocks:
        attn = block.attn1
        plain_attention = (isinstance(attn.processor, AttnProcessor2_0) and attn.norm_q is None
                           and attn.norm_k is None and not attn.residual_connection
                           and attn.rescale_output_factor == 1.0
                           and math.isclose(attn.scale, (attn.inner_dim // attn.heads) ** -0.5))
        if not (block.norm_type == "layer_norm" and block.attn2 is None and block.pos_embed is None
                and not block.only_cross_attention and block._chunk_size is None and plain_attention):
            return False
    return True


@dataclass
class PrefixCache:
    """Per layer, the caption prefix's keys and values (B, heads, L + 1, head_dim), and the
    additive attention bias of the three step tokens over all L + 4 keys (B, 1, 3, L + 4)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    bias: torch.Tensor
    positions: torch.Tensor  # the step tokens' positional embeddings (1, 3, W)

    @classmethod
    @torch.no_grad()
    def build(cls, transformer: PriorTransformer, text_emb: torch.Tensor, text_tokens: torch.Tensor,
              text_mask: torch.Tensor) -> PrefixCache:
        """Run [text tokens, text embedding] (B rows) through every layer once."""
        t = transformer
        proj = t.embedding_proj(t.embedding_proj_norm(text_emb) if t.embedding_proj_norm is not None else text_emb)
        tokens = t.encoder_hidden_states_proj(text_tokens) if t.encoder_hidden_states_proj is not None else text_tokens
        h = torch.cat([tokens, proj[:, None]], dim=1)
        prefix = h.shape[1]
        pos = t.positional_embedding.to(h.dtype)
        h = h + pos[:, :prefix]
        # diffusers' additive mask: −10000 on padded text tokens, plus the causal −10000 above the diagonal
        bias = (1 - text_mask.to(h.dtype)) * -10000.0
        bias = F.pad(bias, (0, t.additional_embeddings), value=0.0)
        bias = (bias[:, None, :] + t.causal_attention_mask).to(h.dtype)[:, None]  # (B, 1, L + 4, L + 4)
        if t.norm_in is not None:
            h = t.norm_in(h)
        keys, values = [], []
        for block in t.transformer_blocks:
            x = block.norm1(h)
            k, v = _heads(block.attn1, block.attn1.to_k(x)), _heads(block.attn1, block.attn1.to_v(x))
            keys.append(k)
            values.append(v)
            q = _heads(block.attn1, block.attn1.to_q(x))
            h = h + _attend(block.attn1, q, k, v, bias[:, :, :prefix, :prefix])
            h = h + block.ff(block.norm3(h))
        return cls(keys, values, bias[:, :, prefix:], pos[:, prefix:prefix + SUFFIX])

    def step(self, transformer: PriorTransformer, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The transformer's predicted (standardised) x0 (B, D) for x_t (B, D) at ``timestep``."""
        t = transformer
        batch = len(x_t)
        steps = timestep.reshape(-1).to(x_t.device) * torch.ones(batch, dtype=timestep.dtype, device=x_t.device)
        time = t.time_embedding(t.time_proj(steps).to(dtype=t.dtype))
        h = torch.cat([time[:, None], t.proj_in(x_t)[:, None], t.prd_embedding.to(time.dtype).expand(batch, -1, -1)], 1)
        h = h + self.positions.to(h.dtype)
        if t.norm_in is not None:
            h = t.norm_in(h)
        for block, k_prefix, v_prefix in zip(t.transformer_blocks, self.keys, self.values, strict=True):
            attn = block.attn1
            x = block.norm1(h)
            q, k, v = _heads(attn, attn.to_q(x)), _heads(attn, attn.to_k(x)), _heads(attn, attn.to_v(x))
            k = torch.cat([k_prefix.to(k.dtype), k], dim=2)
            v = torch.cat([v_prefix.to(v.dtype), v], dim=2)
            h = h + _attend(attn, q, k, v, self.bias)
            h = h + block.ff(block.norm3(h))
        return t.proj_to_clip_embeddings(t.norm_out(h)[:, -1])


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, N, heads·d) → (B, heads, N, d)."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention with an additive ``bias``, heads merged, output projection."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
