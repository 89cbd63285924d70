"""Stage losses: guidance-dropout statistics, and each stage can overfit one fixed batch."""

from pathlib import Path

import pytest
import torch

from unclip.config import (
    BetaSchedule,
    DecoderConfig,
    DiffusionConfig,
    Prediction,
    PriorConfig,
    UpsamplerConfig,
    Variance,
)
from unclip.diffusion.losses import GaussianDiffusion
from unclip.networks.clip import TextEncoding
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.upsampler import Upsampler
from unclip.training.losses import decoder_loss, prior_loss, upsampler_loss

D, L = 32, 77


def encodings(batch, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None].expand(batch, L) <= torch.randint(2, 20, (batch, 1), generator=g)
    return TextEncoding(torch.randn(batch, L, D, generator=g), mask, torch.randn(batch, D, generator=g))


EMPTY = TextEncoding(torch.full((1, L, D), -3.0), torch.arange(L)[None] <= 1, torch.full((1, D), -3.0))


class Recording(torch.nn.Module):
    """Stands in for a network: records what the loss feeds it and returns zeros."""

    def __init__(self, net):
        super().__init__()
        self.net, self.cfg, self.seen = net, net.cfg, {}
        self.text_proj = getattr(net, "text_proj", None)

    def standardise(self, z):
        return z

    def forward(self, x_t, t, **kwargs):
        self.seen = kwargs
        channels = 6 if isinstance(self.net, Decoder) else x_t.shape[1]
        return torch.zeros(len(x_t), channels, *x_t.shape[2:], requires_grad=True)


def test_decoder_drop_rates_are_independent():
    n = 40_000
    decoder = Decoder(DecoderConfig())
    with torch.no_grad():
        decoder.text_proj.learned_classifier_free_guidance_embeddings.fill_(7.0)
    rec = Recording(decoder)
    diffusion = GaussianDiffusion(DiffusionConfig(variance=Variance.learned))
    decoder_loss(rec, diffusion, images=torch.zeros(n, 3, 2, 2), image_emb=torch.zeros(n, D),
                 text=encodings(n, 0), empty=EMPTY, generator=torch.Generator().manual_seed(1))
    image_dropped = rec.seen["drop_image"]  # the decoder swaps in its null embedding (test below)
    assert (rec.seen["image_emb"] == 0).all()
    text_dropped = (rec.seen["text_emb"] == -3.0).all(1)
    assert torch.equal(text_dropped, (rec.seen["text_tokens"] == -3.0).all(2).all(1))  # tokens go with it
    assert torch.equal(text_dropped, rec.seen["text_mask"].sum(1) == 2)  # and so does the mask
    p_img, p_txt = image_dropped.float().mean().item(), text_dropped.float().mean().item()
    assert abs(p_img - 0.10) < 0.02 and abs(p_txt - 0.50) < 0.03
    p_both = (image_dropped & text_dropped).float().mean().item()
    assert abs(p_both - p_img * p_txt) < 0.01  # independent draws


def test_the_decoder_swaps_in_its_null_image_embedding_for_dropped_rows():
    from unclip.config import load_stage_config

    cfg = load_stage_config(Path(__file__).parents[1] / "configs/tiny/decoder.yaml").decoder
    decoder = Decoder(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        decoder.text_proj.learned_classifier_free_guidance_embeddings.normal_(generator=g)
    b, side, d = 3, cfg.sample_size, cfg.clip_embeddings_dim
    x, t, z = torch.randn(b, 3, side, side, generator=g), torch.tensor([5, 50, 500]), torch.randn(b, d, generator=g)
    text = {"text_emb": torch.randn(b, d, generator=g), "text_tokens": torch.randn(b, 77, d, generator=g),
            "text_mask": torch.ones(b, 77, dtype=torch.bool)}
    drop = torch.tensor([True, False, True])
    null = decoder.text_proj.null_image_emb(b)
    with torch.no_grad():
        out = decoder(x, t, image_emb=z, drop_image=drop, **text)
        expected = decoder(x, t, image_emb=torch.where(drop[:, None], null, z), **text)
        kept = decoder(x, t, image_emb=z, **text)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[1], kept[1]) and not torch.allclose(out[0], kept[0])


def test_prior_text_drop_rate():
    n = 40_000
    rec = Recording(Prior(PriorConfig(text_drop=0.1)))
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=Prediction.x0))
    prior_loss(rec, diffusion, image_emb=torch.zeros(n, D), text=encodings(n, 0), empty=EMPTY)
    p = (rec.seen["text_emb"] == -3.0).all(1).float().mean().item()
    assert abs(p - 0.10) < 0.02


def overfit(model, loss_fn, steps, lr):
    """Loss on one fixed batch (same x0, t, noise and drops each step) before and after training."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn(torch.Generator().manual_seed(0))["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss_fn(torch.Generator().manual_seed(0))["loss"].item()


def test_prior_overfits_one_batch():
    torch.manual_seed(0)
    prior = Prior(PriorConfig())
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=Prediction.x0))
    z, text = torch.randn(4, D), encodings(4, 1)
    first, last = overfit(prior, lambda g: prior_loss(prior, diffusion, image_emb=z, text=text, empty=EMPTY,
                                                      generator=g), steps=60, lr=3e-3)
    assert last < first / 10


def test_decoder_overfits_one_batch():
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig())
    diffusion = GaussianDiffusion(DiffusionConfig(variance=Variance.learned), vlb_weight=0.001)
    images, z, text = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, D), encodings(2, 2)
    first, last = overfit(decoder, lambda g: decoder_loss(decoder, diffusion, images=images, image_emb=z, text=text,
                                                          empty=EMPTY, generator=g), steps=40, lr=2e-3)
    assert last < first / 10


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
def test_upsampler_overfits_one_batch(schedule):
    torch.manual_seed(0)
    up = Upsampler(UpsamplerConfig())
    diffusion = GaussianDiffusion(DiffusionConfig(beta_schedule=BetaSchedule(schedule)))
    high, low = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    first, last = overfit(up, lambda g: upsampler_loss(up, diffusion, high_res=high, low_res=low, generator=g),
                          steps=80, lr=2e-3)
    assert last < first / 10


def test_a_residual_upsampler_learns_the_image_minus_its_bicubic_conditioning():
    """upsampler.residual: the loss is the image-space loss on high_res − bicubic(low_res), the same
    network and draws; the residual of an image that bicubic reproduces is 0."""
    import dataclasses

    from unclip.data.degradations import upsample_condition

    torch.manual_seed(0)
    plain = Upsampler(UpsamplerConfig())
    residual = Upsampler(dataclasses.replace(plain.cfg, residual=True))
    residual.load_state_dict(plain.state_dict())
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=Prediction.x0))
    high, low = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    cond = upsample_condition(low, 16)
    loss = lambda net, target: upsampler_loss(net, diffusion, high_res=target, low_res=low,  # noqa: E731
                                              generator=torch.Generator().manual_seed(3))["loss"]
    torch.testing.assert_close(loss(residual, high), loss(plain, high - cond))
    assert not torch.allclose(loss(residual, high), loss(plain, high))
    torch.testing.assert_close(residual.offset(low, 16), cond)
    assert residual.offset(low, 16).abs().sum() > 0 and plain.offset(low, 16).abs().sum() == 0


def test_offset_noise_adds_one_value_per_image_and_channel():
    from unclip.training.losses import _noised

    diffusion = GaussianDiffusion(DiffusionConfig())
    x0 = torch.zeros(64, 3, 16, 16)
    _, plain, _ = _noised(diffusion, x0, torch.Generator().manual_seed(0))
    _, offset, _ = _noised(diffusion, x0, torch.Generator().manual_seed(0), offset=0.5)
    per_channel_mean = offset.mean((2, 3))
    assert plain.mean((2, 3)).std() < 0.1  # plain noise: image means ≈ N(0, 1/256)
    assert 0.4 < per_channel_mean.std() < 0.6  # offset: the means spread with std ≈ 0.5
    shift = offset - plain  # same draws: the difference is one constant per image and channel
    assert shift.std((2, 3)).max() < 1e-6 and 0.4 < shift[:, :, 0, 0].std() < 0.6
