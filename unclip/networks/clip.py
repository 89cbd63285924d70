"""Frozen CLIP (open_clip): token states, masks and pooled embeddings for text; raw image embeddings.

Conventions (with them open_clip gives exactly what the transformers CLIP gives Karlo and
diffusers' unCLIP): token states are taken *after* ``ln_final`` (= transformers'
``last_hidden_state``); the pooled text embedding is ``encode_text(normalize=False)``; the image
embedding is ``encode_image(normalize=False)``; the text mask covers positions up to and
including EOT (``arange(L) <= ids.argmax(-1)``), never ``ids != 0`` because id 0 is the token "!".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unclip.config import ClipConfig
from unclip.data.images import pil_to_tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TextEncoding:
    """CLIP's view of a batch of captions."""

    tokens: torch.Tensor  # (B, L, W) token states after the final LayerNorm
    mask: torch.Tensor  # (B, L) bool, True up to and including EOT
    emb: torch.Tensor  # (B, D) pooled, projected, unnormalised text embedding

    def __getitem__(self, index) -> "TextEncoding":
        return TextEncoding(self.tokens[index], self.mask[index], self.emb[index])

    def to(self, device=None, dtype: torch.dtype | None = None) -> "TextEncoding":
        """Move to ``device``; ``dtype`` applies to the float tensors (the mask stays bool)."""
        return TextEncoding(self.tokens.to(device, dtype), self.mask.to(device), self.emb.to(device, dtype))

    def expand(self, batch: int) -> "TextEncoding":
        """One caption's encodings (a batch of 1) repeated ``batch`` times, without copying."""
        return TextEncoding(self.tokens.expand(batch, -1, -1), self.mask.expand(batch, -1), self.emb.expand(batch, -1))

    @staticmethod
    def cat(parts: list["TextEncoding"]) -> "TextEncoding":
        return TextEncoding(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]),
                            torch.cat([p.emb for p in parts]))


def build_open_clip(cfg: ClipConfig) -> nn.Module:
    """The open_clip model for ``cfg``: a named architecture, or a custom one from the fields."""
    if cfg.name:
        # device: the current default, so that building under ``torch.device("meta")`` allocates nothing
        return open_clip.create_model(cfg.name, pretrained=None, device=torch.get_default_device())
    vision = dict(image_size=cfg.image_size, layers=cfg.vision_layers, width=cfg.vision_width,
                  patch_size=cfg.patch_size, head_width=cfg.head_width)
    text = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
                heads=cfg.text_heads, layers=cfg.text_layers)
    return open_clip.model.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def load_open_clip_weights(model: nn.Module | None, path: str | Path) -> None:
    """Load an open_clip checkpoint (.pt/.bin/.safetensors, as open_clip writes them) from disk."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found at {path}. unclip never downloads weights: put the open_clip "
            "checkpoint file on disk (e.g. open_clip_pytorch_model.bin for ViT-L-14-quickgelu/openai) "
            "and pass its path as clip.pretrained."
        )
    open_clip.load_checkpoint(model, str(path))


class ClipEncoder(nn.Module):
    """A frozen open_clip model with the two calls unCLIP needs."""

    def __init__(self, cfg: ClipConfig, model: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else build_open_clip(cfg)
        self.tokenizer = open_clip.get_tokenizer(cfg.name) if cfg.name else open_clip.tokenize
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "ClipEncoder":
        return super().train(False)  # always frozen, also inside a model put in train mode

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(B, L) token ids, SOT + BPE + EOT, zero-padded, EOT forced on truncation."""
        return self.tokenizer(prompts, context_length=self.model.context_length).to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        ids = self.tokenize(prompts)  # (B, L)
        m = self.model
        x = m.token_embedding(ids) + m.positional_embedding  # (B, L, W)
        x = m.transformer(x, attn_mask=m.attn_mask)
        tokens = m.ln_final(x)  # (B, L, W)
        eot = ids.argmax(dim=-1)  # EOT has the largest id
        pooled = tokens[torch.arange(len(ids), device=ids.device), eot]  # (B, W)
        emb = pooled @ m.text_projection  # (B, D)
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] <= eot[:, None]
        return TextEncoding(tokens=tokens.float(), mask=mask, emb=emb.float())

    def preprocess(self, images: torch.Tensor | list[Image.Image]) -> torch.Tensor:
        """The model's input: squash to its side (bicubic, antialias, as Karlo) and normalise.

        ``images`` is a list of PIL images or a tensor (B, 3, H, W) in [-1, 1].
        """
        if not isinstance(images, torch.Tensor):
            images = pil_to_tensor(images)
        x = images.to(self.device, torch.float32)
        side = self.image_size
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(-1, 1) + 1) / 2
        mean = torch.tensor(OPENAI_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(OPENAI_STD, device=x.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor | list[Image.Image]) -> torch.Tensor:
        """(B, D) raw (unnormalised) image embeddings."""
        return self.model.encode_image(self.preprocess(images), normalize=False).float()
