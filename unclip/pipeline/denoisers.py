"""Each stage's network as the ``model_fn(x_t, t)`` the diffusion loops call, conditioned and, for
the prior and the decoder, guided: the ``[uncond; cond]`` batch of classifier-free guidance is
built here and nowhere else (the pipeline and the training monitors both use these).

uncond is the empty caption's encodings (``empty``, one row) for the prior, and the empty caption
with the decoder's learned null image embedding for the decoder, whose guidance moves eps only
(its variance channels come from the conditional half). Guidance 1 calls the network once, on
the conditional batch alone. Every output is float32: under bf16 autocast a network returns
bf16, and guidance's ``u + s·(c − u)`` and the sampler's step must not be rounded to 8 bits.
"""

from __future__ import annotations

import torch

from unclip.data.degradations import upsample_condition
from unclip.diffusion.guidance import ModelFn, guided
from unclip.networks.clip import TextEncoding
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.tiling import check_tile, tiled
from unclip.networks.upsampler import Upsampler


def with_uncond(text: TextEncoding, empty: TextEncoding) -> TextEncoding:
    """``[empty × B; text]``: a guided batch's conditioning, the unconditional half first."""
    return TextEncoding.cat([empty.expand(len(text.emb)), text])


def prior_denoiser(prior: Prior, text: TextEncoding, empty: TextEncoding, guidance: float) -> ModelFn:
    """The prior on captions ``text`` (B rows): x_t (B, D) → standardised x0 (B, D)."""
    cond = with_uncond(text, empty) if guidance != 1 else text

    step = prior.stepper(text_emb=cond.emb, text_tokens=cond.tokens, text_mask=cond.mask)

    def model_fn(x_t, t):
        return step(x_t, t).float()

    return guided(model_fn, guidance) if guidance != 1 else model_fn


def decoder_denoiser(decoder: Decoder, image_emb: torch.Tensor, text: TextEncoding, empty: TextEncoding,
                     guidance: float) -> ModelFn:
    """The decoder on image embeddings (B, D) and captions (B rows): x_t (B, 3, S, S) → eps (and
    the variance interpolation, or v) (B, C, S, S)."""
    if guidance != 1:
        image_emb = torch.cat([decoder.text_proj.null_image_emb(len(image_emb)), image_emb])
        text = with_uncond(text, empty)

    def model_fn(x_t, t):
        out = decoder(x_t, t, image_emb=image_emb, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
        return out.float()

    return guided(model_fn, guidance, guide_channels=3) if guidance != 1 else model_fn


def fp32_below(model_fn: ModelFn, t_max: int) -> ModelFn:
    """``model_fn`` with autocast switched off at timesteps ≤ ``t_max`` (and as it is elsewhere, or
    where no autocast is on). Under bf16 the decoder's last, low-noise steps leave sub-level grain
    that costs FID 64 five points on flat images; running those steps alone in float32 removes it
    (README, Performance)."""

    def fn(x_t, t):
        if int(t.max()) > t_max or not torch.is_autocast_enabled(x_t.device.type):
            return model_fn(x_t, t)
        with torch.autocast(x_t.device.type, enabled=False):
            return model_fn(x_t.float(), t)

    return fn


def upsampler_denoiser(upsampler: Upsampler, low_res: torch.Tensor, last_step: Upsampler | None = None,
                       final_t: int | None = None, tile: int | None = None) -> ModelFn:
    """An upsampler conditioned on ``low_res`` (B, 3, s, s); ``last_step`` (Karlo's "improved SR"
    UNet), when given, takes the step at timestep ``final_t``. With ``tile`` the network runs on
    overlapping tiles of that side (``unclip.networks.tiling``; overlap an eighth of the tile)."""
    overlap = tile // 8 if tile else 0
    if tile:
        check_tile(tile, overlap, upsampler.side_multiple)
        low_res = upsample_condition(low_res, upsampler.cfg.sample_size)  # tiles of x_t and cond align

    def model_fn(x_t, t):
        model = last_step if last_step is not None and int(t[0]) == final_t else upsampler
        if tile:
            return tiled(lambda x, cond: model(x, t, low_res=cond), (x_t, low_res), tile, overlap)
        return model(x_t, t, low_res=low_res).float()

    return model_fn
