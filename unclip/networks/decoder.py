"""The 64×64 decoder (paper §2.1): GLIDE's UNet conditioned on a CLIP image embedding.

``TextProj`` turns (z_i, text) into the decoder's context: z_i projected into 4 extra tokens
placed before ``LayerNorm(Linear(text token states))``, and ``Linear(z_i) + Linear(text_emb)``
added to the timestep embedding. Its parameter names equal those of diffusers'
``UnCLIPTextProjModel`` so that Karlo-converted weights load. The UNet is diffusers'
``UNet2DConditionModel`` with ``SimpleCrossAttn*`` blocks (GLIDE's AddedKV attention: image
tokens attend to themselves and to the context) and ``class_embed_type="identity"``.

With ``cfg.coordinates`` (a departure from the paper, for small models trained briefly) the UNet's
first convolution also sees fixed (x, y) coordinate maps, through a zero-initialised convolution
of its own: a UNet without them can only infer absolute position from the zero padding, which a
small, briefly trained decoder is slow to learn, and captions name positions. Starting at zero,
the maps leave a decoder trained without them unchanged when its weights are loaded to go on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from unclip.config import DecoderConfig
from unclip.networks.layers import ConvInWithCoordinates, like_weight, norm_groups


class TextProj(nn.Module):
    """Image and text embeddings → (context tokens, time-embedding addition)."""

    def __init__(self, *, clip_embeddings_dim: int, time_embed_dim: int, cross_attention_dim: int,
                 clip_extra_context_tokens: int = 4):
        super().__init__()
        self.clip_extra_context_tokens = clip_extra_context_tokens
        d = clip_embeddings_dim
        # learned null z_i for classifier-free guidance (Karlo's cf_param; zero-initialised)
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(torch.zeros(d))
        self.embedding_proj = nn.Linear(d, time_embed_dim)
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(d, time_embed_dim)
        self.clip_extra_context_tokens_proj = nn.Linear(d, clip_extra_context_tokens * cross_attention_dim)
        self.encoder_hidden_states_proj = nn.Linear(d, cross_attention_dim)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(cross_attention_dim)

    def config(self) -> dict:
        """The same keys as diffusers' ``UnCLIPTextProjModel`` config."""
        return dict(clip_extra_context_tokens=self.clip_extra_context_tokens,
                    clip_embeddings_dim=self.embedding_proj.in_features,
                    time_embed_dim=self.embedding_proj.out_features,
                    cross_attention_dim=self.encoder_hidden_states_proj.out_features)

    def null_image_emb(self, batch: int) -> torch.Tensor:
        return self.learned_classifier_free_guidance_embeddings[None].expand(batch, -1)

    def forward(self, *, image_emb: torch.Tensor, text_emb: torch.Tensor, text_tokens: torch.Tensor):
        """image_emb (B, D), text_emb (B, D), text_tokens (B, L, D) →
        context (B, 4 + L, C_cross), time addition (B, C_time)."""
        batch = image_emb.shape[0]
        time_add = self.embedding_proj(text_emb) + self.clip_image_embeddings_project_to_time_embeddings(image_emb)
        # channel-major reshape, as Karlo: (B, C·4) → (B, C, 4) → (B, 4, C)
        extra = self.clip_extra_context_tokens_proj(image_emb)
        extra = extra.reshape(batch, -1, self.clip_extra_context_tokens).permute(0, 2, 1)
        text = self.text_encoder_hidden_states_norm(self.encoder_hidden_states_proj(text_tokens))
        return torch.cat([extra, text], dim=1), time_add


def level_sides(cfg: DecoderConfig) -> list[int]:
    """The image side at each level of the UNet, the sample size first (the middle block: the last)."""
    return [cfg.sample_size // 2**i for i in range(len(cfg.block_out_channels))]


def build_decoder_unet(cfg: DecoderConfig) -> UNet2DConditionModel:
    """A GLIDE/ADM-style UNet; attention (AddedKV) at the sides in ``cfg.attention_resolutions``."""
    sides = level_sides(cfg)
    attends = [side in cfg.attention_resolutions for side in sides]
    mid = (cfg.block_out_channels[-1], True)  # the middle block always attends
    for ch, a in [*zip(cfg.block_out_channels, attends), mid]:
        if a and ch % cfg.attention_head_dim:
            raise ValueError(f"decoder: {ch} channels at an attention level are not divisible by "
                             f"attention_head_dim={cfg.attention_head_dim}")
    down = tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attends)
    up = tuple("SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attends))
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=3, out_channels=6 if cfg.learned_variance else 3,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity", dropout=cfg.dropout,
        norm_num_groups=norm_groups(cfg.block_out_channels),
    )
    if cfg.coordinates:
        unet.conv_in = ConvInWithCoordinates(unet.conv_in)
    return unet


def check_context_fits(cfg: DecoderConfig, context_length: int) -> None:
    """diffusers' AddedKV attention pads the mask of the (extra + text) tokens to the image tokens'
    length only when the two differ, so a level whose side² equals extra + ``context_length``
    gets an unpadded mask and fails deep in the forward (the reference's gotcha 3): named here."""
    tokens = context_length + cfg.clip_extra_context_tokens
    sides = level_sides(cfg)
    for side in sorted({s for s in sides if s in cfg.attention_resolutions} | {sides[-1]}):  # + the middle
        if side * side == tokens:
            raise ValueError(f"decoder: attention at side {side} sees {side * side} image tokens, as many as its "
                             f"{tokens} context tokens ({context_length} text + {cfg.clip_extra_context_tokens} "
                             "extra), where diffusers' AddedKV attention leaves the mask unpadded and fails: "
                             "attend at another side or give the CLIP another context length")


class Decoder(nn.Module):
    """x_t (B, 3, S, S) + (z_i, text) → eps and variance interpolation (B, 6, S, S)."""

    config_class = DecoderConfig
    _no_split_modules = ["ResnetBlock2D", "Attention"]  # FSDP units (unclip.training.sharded)

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = build_decoder_unet(cfg)
        self.text_proj = TextProj(
            clip_embeddings_dim=cfg.clip_embeddings_dim, time_embed_dim=4 * cfg.block_out_channels[0],
            cross_attention_dim=cfg.cross_attention_dim, clip_extra_context_tokens=cfg.clip_extra_context_tokens,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, image_emb: torch.Tensor, text_emb: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor,
                drop_image: torch.Tensor | None = None) -> torch.Tensor:
        """``drop_image`` (B,) bool: rows whose z_i becomes the learned null embedding (training's
        classifier-free-guidance dropout; inside the forward, where a sharded network has its weights)."""
        if drop_image is not None:
            null = self.text_proj.null_image_emb(len(image_emb)).to(image_emb.dtype)
            image_emb = torch.where(drop_image[:, None], null, image_emb)
        context, time_add = self.text_proj(image_emb=image_emb, text_emb=text_emb, text_tokens=text_tokens)
        # the extra tokens are always attended: pad the mask with True on the left
        mask = F.pad(text_mask, (self.cfg.clip_extra_context_tokens, 0), value=True)
        x_t = like_weight(x_t, self.unet.conv_in.weight)
        return self.unet(x_t, t, encoder_hidden_states=context, class_labels=time_add,
                         attention_mask=mask).sample
