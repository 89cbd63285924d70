"""Forward/backward of every network at tiny size, and that conditioning reaches attention."""

import pytest
import torch

from unclip.config import DecoderConfig, PriorConfig, UpsamplerConfig
from unclip.networks.decoder import Decoder, TextProj
from unclip.networks.prior import Prior
from unclip.networks.upsampler import Upsampler

B, L, D = 2, 77, 32


def text_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, L, D, generator=g)
    mask = torch.arange(L)[None] <= torch.tensor([[6], [11]])  # (B, L): SOT..EOT
    return dict(text_emb=torch.randn(B, D, generator=g), text_tokens=tokens, text_mask=mask)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    d = Decoder(DecoderConfig())
    # zero-initialised pieces would hide the conditioning paths: give them values
    with torch.no_grad():
        for p in d.parameters():
            if p.abs().sum() == 0 and p.dim() > 0:
                p.normal_(0, 0.02)
    return d.eval()


def test_prior_forward_backward():
    prior = Prior(PriorConfig())
    x0 = prior(torch.randn(B, D), torch.tensor([3, 900]), **text_inputs())
    assert x0.shape == (B, D)
    x0.square().mean().backward()
    grads = [p.grad for p in prior.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert prior.transformer.clip_std.grad is None and not prior.transformer.clip_std.requires_grad


def test_prior_standardisation_round_trip_and_stats():
    prior = Prior(PriorConfig())
    z = torch.randn(5, D) * 3 + 1
    prior.set_stats(z.mean(0), z.std(0))
    s = prior.standardise(z)
    assert torch.allclose(s.mean(0), torch.zeros(D), atol=1e-5)
    assert torch.allclose(prior.unstandardise(s), z, atol=1e-5)


def test_prior_ignores_padded_tokens():
    torch.manual_seed(0)
    prior = Prior(PriorConfig()).eval()
    inputs = text_inputs()
    x_t, t = torch.randn(B, D), torch.tensor([10, 500])
    ref = prior(x_t, t, **inputs)
    padded = dict(inputs, text_tokens=inputs["text_tokens"].clone())
    padded["text_tokens"][~inputs["text_mask"]] = 100.0
    assert torch.allclose(prior(x_t, t, **padded), ref, atol=1e-5)
    real = dict(inputs, text_tokens=inputs["text_tokens"].clone())
    real["text_tokens"][:, 1] += 1.0
    assert not torch.allclose(prior(x_t, t, **real), ref, atol=1e-4)


def prior_with_values(**changes) -> Prior:
    """A tiny prior whose zero-initialised pieces (positions, query token) have values."""
    torch.manual_seed(0)
    prior = Prior(PriorConfig(num_layers=2, **changes)).eval()
    with torch.no_grad():
        for p in prior.parameters():
            if p.requires_grad and p.dim() > 0 and p.abs().sum() == 0:
                p.normal_(0, 0.5)
    return prior


@torch.no_grad()
def test_prior_stepper_with_the_cached_caption_prefix_equals_the_full_forward():
    prior, inputs = prior_with_values(), text_inputs()
    step = prior.stepper(**inputs)
    for x_t, t in ((torch.randn(B, D), torch.tensor([3, 900])), (torch.randn(B, D), torch.tensor(500))):
        ref = prior(x_t, t, **inputs)
        assert torch.allclose(step(x_t, t), ref, atol=1e-5), t
    other = dict(inputs, text_tokens=inputs["text_tokens"] + 1.0)  # the prefix belongs to its captions
    assert not torch.allclose(prior.stepper(**other)(x_t, t), ref, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, ref16 = prior.stepper(**inputs)(x_t, t), prior(x_t, t, **inputs)
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.float(), ref16.float(), atol=1e-2)


@torch.no_grad()
def test_prior_stepper_runs_the_caption_once_and_three_tokens_a_step():
    prior, inputs = prior_with_values(), text_inputs()
    lengths = []
    prior.transformer.transformer_blocks[0].norm1.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
    step = prior.stepper(**inputs)
    for t in (999, 500, 1):
        step(torch.randn(B, D), torch.tensor(t))
    assert lengths == [L + 1, 3, 3, 3]


def test_prior_stepper_is_the_full_forward_where_it_cannot_cache():
    prior, inputs = prior_with_values(), text_inputs()
    x0 = prior.stepper(**inputs)(torch.randn(B, D), torch.tensor([3, 900]))
    assert x0.requires_grad  # gradients on: the plain forward, which training differentiates
    lengths = []
    prior.transformer.transformer_blocks[0].norm1.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
    prior.prefix_cache = False
    with torch.no_grad():
        prior.stepper(**inputs)(torch.randn(B, D), torch.tensor(5))
    assert lengths == [L + 4]
    from diffusers import PriorTransformer

    from unclip.networks.prior_cache import PrefixCache, supports_prefix_cache
    assert not supports_prefix_cache(PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                                      embedding_dim=D, num_embeddings=L, added_emb_type=None))
    normed = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=D,
                              num_embeddings=L, norm_in_type="layer", embedding_proj_norm_type="layer").eval()
    assert supports_prefix_cache(normed)
    with torch.no_grad():
        normed.prd_embedding.normal_()
        normed.positional_embedding.normal_()
        x_t, t = torch.randn(B, D), torch.tensor([7, 300])
        ref = normed(x_t, t, proj_embedding=inputs["text_emb"], encoder_hidden_states=inputs["text_tokens"],
                     attention_mask=inputs["text_mask"]).predicted_image_embedding
        cache = PrefixCache.build(normed, inputs["text_emb"], inputs["text_tokens"], inputs["text_mask"])
        assert torch.allclose(cache.step(normed, x_t, t), ref, atol=1e-5)


def test_decoder_forward_backward_shapes(decoder):
    x = torch.randn(B, 3, 32, 32)
    out = decoder(x, torch.tensor([1, 999]), image_emb=torch.randn(B, D), **text_inputs())
    assert out.shape == (B, 6, 32, 32)
    decoder.zero_grad()
    out.square().mean().backward()
    assert decoder.text_proj.clip_extra_context_tokens_proj.weight.grad.abs().sum() > 0
    assert decoder.unet.conv_in.weight.grad.abs().sum() > 0


def test_decoder_image_embedding_reaches_attention_through_extra_tokens(decoder):
    x, t, text = torch.randn(B, 3, 32, 32), torch.tensor([5, 700]), text_inputs()
    z = torch.randn(B, D)
    with torch.no_grad():
        ref = decoder(x, t, image_emb=z, **text)
        assert not torch.allclose(decoder(x, t, image_emb=z + 1, **text), ref, atol=1e-4)
        # cut the time-embedding path: z still changes the output through the 4 context tokens
        w = decoder.text_proj.clip_image_embeddings_project_to_time_embeddings.weight
        saved = w.clone()
        w.zero_()
        try:
            a = decoder(x, t, image_emb=z, **text)
            b = decoder(x, t, image_emb=z + 1, **text)
        finally:
            w.copy_(saved)
    assert not torch.allclose(a, b, atol=1e-4)


def test_decoder_ignores_padded_text_tokens(decoder):
    x, t, text = torch.randn(B, 3, 32, 32), torch.tensor([5, 700]), text_inputs()
    z = torch.randn(B, D)
    with torch.no_grad():
        ref = decoder(x, t, image_emb=z, **text)
        padded = dict(text, text_tokens=text["text_tokens"].clone())
        padded["text_tokens"][~text["text_mask"]] = 50.0
        assert torch.allclose(decoder(x, t, image_emb=z, **padded), ref, atol=1e-5)
        real = dict(text, text_tokens=text["text_tokens"].clone())
        real["text_tokens"][:, 2] += 1.0
        assert not torch.allclose(decoder(x, t, image_emb=z, **real), ref, atol=1e-4)


def test_text_proj_matches_diffusers_names_and_outputs():
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    ours = TextProj(clip_embeddings_dim=D, time_embed_dim=128, cross_attention_dim=64)
    theirs = UnCLIPTextProjModel(**ours.config())
    assert set(ours.state_dict()) == set(theirs.state_dict())
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    theirs.load_state_dict(ours.state_dict())
    z, text = torch.randn(B, D), text_inputs()
    ctx, add = ours(image_emb=z, text_emb=text["text_emb"], text_tokens=text["text_tokens"])
    ref_ctx, ref_add = theirs(image_embeddings=z, prompt_embeds=text["text_emb"],
                              text_encoder_hidden_states=text["text_tokens"], do_classifier_free_guidance=False)
    assert ctx.shape == (B, 4 + L, 64)
    assert torch.allclose(ctx, ref_ctx, atol=1e-6) and torch.allclose(add, ref_add, atol=1e-6)


def test_decoder_without_learned_variance_has_three_channels():
    d = Decoder(DecoderConfig(learned_variance=False))
    out = d(torch.randn(1, 3, 32, 32), torch.tensor([3]), image_emb=torch.randn(1, D),
            text_emb=torch.randn(1, D), text_tokens=torch.randn(1, L, D), text_mask=torch.ones(1, L, dtype=torch.bool))
    assert out.shape == (1, 3, 32, 32)


def test_upsampler_forward_backward_and_conditioning():
    torch.manual_seed(0)
    up = Upsampler(UpsamplerConfig())
    assert up.unet.conv_in.in_channels == 6
    x, low = torch.randn(B, 3, 64, 64), torch.rand(B, 3, 32, 32) * 2 - 1
    out = up(x, torch.tensor([0, 999]), low_res=low)
    assert out.shape == (B, 3, 64, 64)
    out.square().mean().backward()
    assert up.unet.conv_in.weight.grad.abs().sum() > 0
    with torch.no_grad():
        changed = up(x, torch.tensor([0, 999]), low_res=-low)
    assert not torch.allclose(changed, out.detach(), atol=1e-4)
    # fully convolutional: a quarter-size crop goes through the same network
    assert up(x[..., :16, :16], torch.tensor([1, 2]), low_res=low[..., :16, :16]).shape == (B, 3, 16, 16)


def test_upsampler_has_no_attention():
    up = Upsampler(UpsamplerConfig(block_out_channels=(32, 64, 64)))
    names = [type(m).__name__ for m in up.modules()]
    assert not any("Attention" in n for n in names)


def test_decoder_rejects_heads_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="attention_head_dim"):
        Decoder(DecoderConfig(block_out_channels=(32, 60), attention_resolutions=(), attention_head_dim=8))


def test_decoder_coordinates_load_plain_weights_and_then_see_position():
    from unclip.networks.layers import coordinate_maps

    torch.manual_seed(0)
    plain = Decoder(DecoderConfig()).eval()
    placed = Decoder(DecoderConfig(coordinates=True)).eval()
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["unet.conv_in.position.weight"] and unexpected == []
    x, t, e = torch.randn(B, 3, 32, 32), torch.tensor([5, 900]), torch.randn(B, D)
    with torch.no_grad():
        # zero-initialised: the same network as before, so fine-tuning starts where training stopped
        assert torch.equal(placed(x, t, image_emb=e, **text_inputs()), plain(x, t, image_emb=e, **text_inputs()))
        maps = coordinate_maps(x)
        assert maps.shape == (B, 2, 32, 32)
        assert maps[0, :, 0, 0].tolist() == [-1, -1] and maps[0, :, -1, -1].tolist() == [1, 1]  # x, y at top left, bottom right
        assert maps[0, 0, 5, 31] == 1 and maps[0, 1, 31, 5] == 1  # x grows to the right, y downwards
        # a flat input gives the same first features everywhere, unless the position conv is used
        flat = torch.zeros(1, 3, 32, 32)
        conv = placed.unet.conv_in
        assert torch.allclose(conv(flat)[..., 8:24, 8:24], conv(flat)[..., 8, 8, None, None].expand(-1, -1, 16, 16))
        conv.position.weight.normal_(0, 0.1)
        inner = conv(flat)[..., 8:24, 8:24]
        assert not torch.allclose(inner[..., :, :8], inner[..., :, 8:])
