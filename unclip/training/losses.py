"""Each stage's training loss, with its classifier-free-guidance dropout beside the embedding it drops.

A loss takes the network, the stage's ``GaussianDiffusion`` and an already-encoded batch, and
returns ``{"loss", "mse"[, "vlb"]}``. CLIP encoding happens before (frozen, or precomputed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unclip.diffusion.losses import GaussianDiffusion
from unclip.networks.clip import TextEncoding
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.prior_ar import ARPrior, LogisticMixtureHead
from unclip.networks.upsampler import Upsampler


def drop_mask(batch: int, p: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) bool, each True with probability ``p``."""
    return torch.rand(batch, device=device, generator=generator) < p


def replace_text(text: TextEncoding, empty: TextEncoding, drop: torch.Tensor) -> TextEncoding:
    """Where ``drop``, use the empty caption's token states, mask and pooled embedding."""
    b = len(drop)
    d3, d2 = drop[:, None, None], drop[:, None]
    return TextEncoding(
        tokens=torch.where(d3, empty.tokens.expand(b, -1, -1), text.tokens),
        mask=torch.where(d2, empty.mask.expand(b, -1), text.mask),
        emb=torch.where(d2, empty.emb.expand(b, -1), text.emb),
    )


def _noised(diffusion: GaussianDiffusion, x0: torch.Tensor, generator=None, offset: float = 0.0):
    """Timesteps, noise and x_t for a batch. ``offset`` adds offset noise to images (B, C, H, W):
    one N(0, offset²) value per image and channel, so that x_t's mean colour stops being a
    reliable cue at high t and the network learns it from its conditioning instead."""
    t = diffusion.sample_timesteps(len(x0), x0.device, generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    if offset:
        noise = noise + offset * torch.randn(*x0.shape[:2], 1, 1, device=x0.device, generator=generator, dtype=x0.dtype)
    return t, noise, diffusion.q_sample(x0, t, noise)


def prior_loss(prior: Prior, diffusion: GaussianDiffusion, *, image_emb: torch.Tensor, text: TextEncoding,
               empty: TextEncoding, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Paper §2.2: MSE between the predicted and true (standardised) z_i; text dropped with
    probability ``prior.cfg.text_drop`` (caption tokens and text embedding together)."""
    x0 = prior.standardise(image_emb)
    text = replace_text(text, empty, drop_mask(len(x0), prior.cfg.text_drop, x0.device, generator))
    t, noise, x_t = _noised(diffusion, x0, generator)
    out = prior(x_t, t, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
    return diffusion.loss(out, x0, x_t, t, noise)


def smoothed(targets: torch.Tensor, buckets: int, sigma: float) -> torch.Tensor:
    """Bucket indices (N,) → target distributions (N, buckets): a Gaussian of ``sigma`` buckets
    around each index, cut at the ends and renormalised."""
    levels = torch.arange(buckets, device=targets.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * ((levels - targets[:, None].float()) / sigma) ** 2)
    return weights / weights.sum(-1, keepdim=True)


def ar_prior_loss(prior: ARPrior, *, image_emb: torch.Tensor, text: TextEncoding, empty: TextEncoding,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Paper §2.2, the AR prior: cross-entropy of each quantised PCA code of z_i given the codes
    before it, the caption and the ⟨z_i, z_t⟩ token, and of that token given the caption alone.
    With probability ``text_drop`` the caption and text embedding become the empty caption's and
    the dot token the null one (which is not predicted). ``bucket_sigma`` > 0 spreads each target
    over its neighbouring buckets (see ``smoothed``)."""
    codes = prior.quantise(image_emb)
    dot = prior.dot_bucket(image_emb, text.emb)
    drop = drop_mask(len(codes), prior.cfg.text_drop, codes.device, generator)
    text = replace_text(text, empty, drop)
    dot = torch.where(drop, torch.full_like(dot, prior.null_dot), dot)
    inputs = dict(dot=dot, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask)
    targets = torch.cat([dot[:, None], codes], dim=1)
    keep = torch.cat([~drop[:, None], torch.ones_like(codes, dtype=torch.bool)], dim=1)
    if isinstance(prior.head, LogisticMixtureHead):  # the targets' probabilities only (no argmax to score)
        levels = targets.clamp(max=prior.cfg.buckets - 1)  # a dropped caption's null dot token is not scored
        return {"loss": -prior(codes[:, :-1], **inputs, targets=levels)[keep].mean()}
    logits = prior(codes[:, :-1], **inputs)
    logits_kept, targets = logits.float()[keep], targets[keep]
    if prior.cfg.bucket_sigma:
        loss = F.cross_entropy(logits_kept, smoothed(targets, prior.cfg.buckets, prior.cfg.bucket_sigma))
    else:
        loss = F.cross_entropy(logits_kept, targets)
    accuracy = (logits[:, 1:].argmax(-1) == codes).float().mean()
    return {"loss": loss, "code_accuracy": accuracy.detach()}


def decoder_loss(decoder: Decoder, diffusion: GaussianDiffusion, *, images: torch.Tensor,
                 image_emb: torch.Tensor, text: TextEncoding, empty: TextEncoding, offset_noise: float = 0.0,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Paper §2.1: eps MSE (+ λ·VLB for the learned variance). z_i → learned null with p=image_drop,
    text → the empty caption's encodings with p=text_drop, drawn independently. ``offset_noise``:
    see ``_noised`` (0, the paper's plain noise, by default)."""
    b, cfg = len(images), decoder.cfg
    drop_image = drop_mask(b, cfg.image_drop, images.device, generator)
    text = replace_text(text, empty, drop_mask(b, cfg.text_drop, images.device, generator))
    t, noise, x_t = _noised(diffusion, images, generator, offset_noise)
    out = decoder(x_t, t, image_emb=image_emb, text_emb=text.emb, text_tokens=text.tokens, text_mask=text.mask,
                  drop_image=drop_image)
    return diffusion.loss(out, images, x_t, t, noise)


def upsampler_loss(upsampler: Upsampler, diffusion: GaussianDiffusion, *, high_res: torch.Tensor,
                   low_res: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Eps MSE on (crops of) the high-res image, conditioned on the degraded low-res image; a
    residual upsampler diffuses ``high_res`` minus its bicubic-upsampled conditioning."""
    target = high_res - upsampler.offset(low_res, high_res.shape[-1]).to(high_res.dtype)
    t, noise, x_t = _noised(diffusion, target, generator)
    out = upsampler(x_t, t, low_res=low_res)
    return diffusion.loss(out, target, x_t, t, noise)
