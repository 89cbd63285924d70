"""UnCLIPPipeline on the tiny random cascade: generation, input checks, save/load, and the paper's
manipulations (DDIM inversion, variations, slerp interpolations, text diffs)."""

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, give_zero_inits_values
from PIL import Image
from torch import nn

from unclip.config import Stage
from unclip.data.images import tensor_to_pil
from unclip.diffusion.schedule import make_scheduler
from unclip.networks.decoder import TextProj
from unclip.networks.layers import inference_memory_format
from unclip.pipeline import SamplingOptions, UnCLIPPipeline, load_image
from unclip.pipeline.denoisers import (
    decoder_denoiser,
    prior_denoiser,
    upsampler_denoiser,
)
from unclip.pipeline.inputs import check_prompts
from unclip.pipeline.latents import slerp, text_diff_embeddings
from unclip.pipeline.plan import DECODER_FP32_BELOW
from unclip.pipeline.manipulate import invert_pixels, manipulation_plan
from unclip.pipeline.sampling import decode, decode_best_of, sample_prior, upsample

FAST = {"prior": 2, "decoder": 2, "upsampler": 2}


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# ----------------------------------------------------------------------------------------------
# generation


def test_sizes_follow_the_components_present(tiny_pipeline):
    p = tiny_pipeline
    assert p.sizes == [32, 64, 128]
    no_1024 = UnCLIPPipeline(p.clip, p.prior, p.decoder, {"upsampler_256": p.upsamplers["upsampler_256"]})
    assert no_1024.sizes == [32, 64]
    only_1024 = UnCLIPPipeline(p.clip, p.prior, p.decoder, {"upsampler_1024": p.upsamplers["upsampler_1024"]})
    assert only_1024.sizes == [32]  # the 1024 stage cannot be reached without the 256 one
    with pytest.raises(ValueError, match=r"size: 128 is not supported .* 32, 64"):
        no_1024.generate("a red circle", size=128)
    assert UnCLIPPipeline(p.clip, p.prior).sizes == []


def test_generate_returns_n_images_per_prompt_at_the_requested_size(tiny_pipeline):
    out = tiny_pipeline.generate(["a red circle", "a blue square"], n=2, size=64, steps=FAST, seed=3,
                                 return_embeddings=True, progress=False)
    assert len(out.images) == 4 and {im.size for im in out.images} == {(64, 64)}
    assert out.pixels.shape == (4, 3, 64, 64) and out.pixels.abs().max() <= 1
    assert out.image_emb.shape == out.text_emb.shape == (4, 32)
    text = tiny_pipeline.clip.encode_text(["a red circle", "a blue square"]).emb
    assert torch.allclose(out.text_emb, text.repeat_interleave(2, dim=0))  # prompt-major order
    assert pixels(out.images).std() > 1  # not a blank canvas


def test_generate_is_reproducible_from_a_seed(tiny_pipeline):
    run = lambda seed: pixels(tiny_pipeline.generate("a red circle", size=32, steps=FAST, seed=seed,
                                                     progress=False))
    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_default_size_is_the_largest_up_to_256(tiny_pipeline):
    images = tiny_pipeline.generate("a red circle", steps=FAST, seed=0, progress=False)
    assert images[0].size == (128, 128)  # the tiny cascade's largest
    sizes = lambda s: type("P", (), {"sizes": s})()
    assert UnCLIPPipeline.default_size.fget(sizes([64, 256, 1024])) == 256  # 1024 only when asked for
    assert UnCLIPPipeline.default_size.fget(sizes([64])) == 64


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "dpmpp-sde", {"decoder": "dpmpp", "upsampler": "ddim"}])
def test_other_samplers_run(tiny_pipeline, sampler):
    images = tiny_pipeline.generate("a red circle", size=64, steps=FAST, sampler=sampler, seed=0, progress=False)
    assert images[0].size == (64, 64)
    default = tiny_pipeline.generate("a red circle", size=64, steps=FAST, seed=0, progress=False)
    assert np.abs(np.asarray(images[0], float) - np.asarray(default[0], float)).mean() > 0.5  # the sampler was used


def test_prior_keeps_the_candidate_closest_to_the_text(tiny_pipeline):
    p = tiny_pipeline
    text = p.clip.encode_text(["a red circle", "a purple star"])
    run = p.plan(["prior"], steps=3)["prior"]
    best = sample_prior(p, text, run, torch.Generator().manual_seed(0), candidates=2, progress=False)
    # the same noise, drawn as four single samples: rows (0, 0, 1, 1)
    rows = torch.tensor([0, 0, 1, 1])
    every = sample_prior(p, text[rows], run, torch.Generator().manual_seed(0), candidates=1, progress=False)
    scores = (every * text.emb[rows]).sum(-1).reshape(2, 2)
    expected = every.reshape(2, 2, -1)[torch.arange(2), scores.argmax(1)]
    assert torch.allclose(best, expected)
    assert not torch.allclose(every[0], every[1])  # two genuinely different candidates


def test_guidance_batches_uncond_first_with_the_null_image_embedding(tiny_pipeline):
    p = tiny_pipeline
    seen = []
    hook = p.decoder.text_proj.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs),
                                                     with_kwargs=True)
    try:
        p.generate("a red circle", size=32, steps={"prior": 1, "decoder": 1}, seed=0, progress=False)
        p.generate("a red circle", size=32, steps={"prior": 1, "decoder": 1}, guidance={"decoder": 1}, seed=0,
                   progress=False)
    finally:
        hook.remove()
    guided, unguided = seen
    null = p.decoder.text_proj.learned_classifier_free_guidance_embeddings
    empty, cond = p.clip.encode_text([""]), p.clip.encode_text(["a red circle"])
    assert guided["image_emb"].shape[0] == 2 and torch.equal(guided["image_emb"][0], null)
    assert torch.equal(guided["text_emb"][0], empty.emb[0]) and torch.equal(guided["text_emb"][1], cond.emb[0])
    assert unguided["image_emb"].shape[0] == 1  # guidance 1: no unconditional half at all


# ----------------------------------------------------------------------------------------------
# input checks


def test_prompts_are_checked(tiny_pipeline):
    p = tiny_pipeline
    for bad in ("", "   ", [], ["fine", ""]):
        with pytest.raises(ValueError, match="prompt"):
            p.generate(bad)
    # the limit is CLIP's context after tokenisation: "a" is one token, plus start and end
    assert p.clip.token_count("a " * 75) == 77
    check_prompts(p.clip, "a " * 75)
    with pytest.raises(ValueError, match=r"prompt: .* 78 tokens .* at most 77"):
        p.generate("a " * 76)
    assert p.clip.token_count("unbelievably") > 1 and p.clip.token_count("a red circle") == 5


def test_the_decoders_best_of_k_keeps_the_candidate_clip_puts_closest_to_the_caption(tiny_pipeline):
    p = tiny_pipeline
    text = p.clip.encode_text(["a red circle", "a blue square"])
    z = text.emb + 0.3 * torch.randn(text.emb.shape, generator=torch.Generator().manual_seed(1))
    run = p.plan(["decoder"], steps=FAST)["decoder"]
    best = decode_best_of(p, z, text, run, torch.Generator().manual_seed(5), candidates=3, progress=False)
    rows = torch.arange(2).repeat_interleave(3)  # the same draws, decoded as one batch of 2·3
    every = decode(p, z[rows], text[rows], run, torch.Generator().manual_seed(5), progress=False).reshape(2, 3, 3, 32, 32)
    score = torch.cosine_similarity(p.clip.encode_image(every.flatten(0, 1)), text.emb[rows], dim=-1).reshape(2, 3)
    assert score.std() > 0  # the candidates differ, so the choice matters
    for row in range(2):
        assert torch.equal(best[row], every[row, score[row].argmax()])
    one = decode_best_of(p, z, text, run, torch.Generator().manual_seed(5), candidates=1, progress=False)
    assert torch.equal(one, decode(p, z, text, run, torch.Generator().manual_seed(5), progress=False))
    out = p.generate("a red circle", n=2, size=64, steps=FAST, seed=0, decoder_candidates=2, progress=False)
    assert len(out) == 2 and out[0].size == (64, 64)
    # one generator per row (diffusers' convention) draws that row's candidates, for the prior and the decoder
    rows = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = p.generate(["a red circle", "a blue square"], size=32, steps=FAST, generator=rows, decoder_candidates=2,
                     progress=False)
    alone = p.generate(["a blue square"], size=32, steps=FAST, generator=[torch.Generator().manual_seed(1)],
                       decoder_candidates=2, progress=False)
    assert len(out) == 2 and np.array_equal(pixels(out[1:]), pixels(alone))


@pytest.mark.parametrize("kwargs, name", [
    (dict(n=0), "n"), (dict(n=1.5), "n"), (dict(size=48), "size"), (dict(steps=0), "steps"),
    (dict(steps={"decoder": 0}), "steps"), (dict(steps={"decodr": 3}), "steps"),
    (dict(guidance={"upsampler": 2.0}), "guidance"), (dict(guidance=-1), "guidance"),
    (dict(sampler="euler"), "sampler"), (dict(prior_candidates=0), "prior_candidates"),
    (dict(decoder_candidates=0), "decoder_candidates"),
    (dict(steps={"decoder": 1}, sampler="ddim"), "steps"),  # one "leading" DDIM step from pure noise: t = 0
    (dict(steps={"prior": 1}, sampler={"prior": "unclip"}), "steps"),  # UnCLIPScheduler divides by steps − 1
])
def test_bad_arguments_name_themselves(tiny_pipeline, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        tiny_pipeline.generate("a red circle", **kwargs)


def test_the_unclip_sampler_needs_a_cosine_schedule(tiny_pipeline):
    # configs/tiny's second upsampler uses linear betas, which UnCLIPScheduler cannot
    with pytest.raises(ValueError, match=r"sampler: .*upsampler_1024 .*linear"):
        tiny_pipeline.generate("a red circle", size=128, sampler="unclip")


def test_images_are_checked(tiny_pipeline, photos):
    with pytest.raises(ValueError, match=r"image: the image is 120×80, not square; crop it .*ImageOps.fit"):
        tiny_pipeline.variations(photos["wide"])
    with pytest.raises(ValueError, match=r"image: cannot read"):
        tiny_pipeline.variations(photos["not_an_image"])
    with pytest.raises(ValueError, match=r"image: cannot read"):
        tiny_pipeline.variations(photos["astronaut"].with_name("missing.png"))
    with pytest.raises(ValueError, match="image_b: the image is 120×80"):
        tiny_pipeline.interpolate(photos["astronaut"], photos["wide"])
    assert load_image(photos["astronaut"]).size == (96, 96)


def test_missing_components_are_named(tiny_pipeline, photos):
    p = tiny_pipeline
    with pytest.raises(ValueError, match="missing component: .*prior/"):
        UnCLIPPipeline(p.clip, None, p.decoder).generate("a red circle")
    with pytest.raises(ValueError, match="missing component: .*decoder/"):
        UnCLIPPipeline(p.clip, p.prior).variations(photos["astronaut"])


# ----------------------------------------------------------------------------------------------
# save / load


def test_save_load_round_trip_gives_identical_outputs(tiny_pipeline, tiny_pipeline_dir):
    loaded = UnCLIPPipeline.from_pretrained(tiny_pipeline_dir)
    assert loaded.sizes == tiny_pipeline.sizes
    assert loaded.sampling == tiny_pipeline.sampling
    for name in ("prior", "decoder"):
        a, b = tiny_pipeline.component(name).state_dict(), loaded.component(name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kwargs = dict(steps=FAST, seed=11, return_embeddings=True, progress=False)
    before, after = tiny_pipeline.generate("a red circle", **kwargs), loaded.generate("a red circle", **kwargs)
    assert torch.equal(before.pixels, after.pixels)
    # the folder layout promised to Karlo-minded tools
    for sub in ("clip", "prior", "decoder", "text_proj", "upsampler_256", "upsampler_1024"):
        assert (tiny_pipeline_dir / sub / "config.json").is_file()
        assert (tiny_pipeline_dir / sub / "model.safetensors").is_file()
    text_proj = json.loads((tiny_pipeline_dir / "text_proj" / "config.json").read_text())
    assert text_proj == {"_class_name": "UnCLIPTextProjModel", **tiny_pipeline.decoder.text_proj.config()}


def test_component_folders_copied_together_make_a_pipeline(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    """Each component carries its own sampling defaults, so a copied folder keeps them; one that
    carries none samples with Karlo's defaults."""
    for sub in ("clip", "prior", "decoder", "upsampler_256"):  # e.g. training exports, no pipeline.json
        shutil.copytree(tiny_pipeline_dir / sub, tmp_path / sub)
    loaded = UnCLIPPipeline.from_pretrained(tmp_path)
    assert loaded.sizes == [32, 64]
    for stage in ("prior", "decoder", "upsampler_256"):
        assert loaded.sampling[stage] == tiny_pipeline.sampling[stage]
    assert tiny_pipeline.sampling["prior"].diffusion.sample_steps != 25  # so the next check can fail
    meta = json.loads((tmp_path / "prior" / "config.json").read_text())
    del meta["diffusion"], meta["sampler"]
    (tmp_path / "prior" / "config.json").write_text(json.dumps(meta))
    bare = UnCLIPPipeline.from_pretrained(tmp_path)
    assert bare.sampling["prior"].diffusion.sample_steps == 25 and bare.sampling["prior"].diffusion.guidance_scale == 4


def test_sampling_defaults_are_stored_once_and_version_1_folders_still_load(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    """Written: in each component's config.json, not in pipeline.json. Read: also a version-1 folder,
    whose pipeline.json held them (as checkpoints/shapes did)."""
    meta = json.loads((tiny_pipeline_dir / "pipeline.json").read_text())
    assert meta["version"] == 2 and "stages" not in meta
    old = tmp_path / "v1"
    shutil.copytree(tiny_pipeline_dir, old)
    stages = {}
    for stage in ("prior", "decoder", "upsampler_256", "upsampler_1024"):
        component = json.loads((old / stage / "config.json").read_text())
        stages[stage] = {"diffusion": component.pop("diffusion"), "sampler": component.pop("sampler")}
        stages[stage]["diffusion"]["sample_steps"] = 9  # tell the source apart
        (old / stage / "config.json").write_text(json.dumps(component))
    (old / "pipeline.json").write_text(json.dumps({**meta, "version": 1, "stages": stages}))
    loaded = UnCLIPPipeline.from_pretrained(old)
    assert {s: r.diffusion.sample_steps for s, r in loaded.sampling.items()} == dict.fromkeys(stages, 9)


def test_from_pretrained_explains_bad_folders(tiny_pipeline_dir, tmp_path):
    with pytest.raises(ValueError, match="none of the pipeline sub-folders"):
        UnCLIPPipeline.from_pretrained(tmp_path)
    (tmp_path / "super_res_first").mkdir()
    with pytest.raises(ValueError, match="from_karlo"):
        UnCLIPPipeline.from_pretrained(tmp_path)
    shutil.copytree(tiny_pipeline_dir / "decoder", tmp_path / "decoder")
    with pytest.raises(ValueError, match="missing component: .*clip/"):
        UnCLIPPipeline.from_pretrained(tmp_path)
    shutil.copytree(tiny_pipeline_dir / "clip", tmp_path / "clip")
    shutil.copytree(tiny_pipeline_dir / "upsampler_256", tmp_path / "prior")
    with pytest.raises(ValueError, match="holds a upsampler, expected a prior"):
        UnCLIPPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="pipeline folder not found: .*nowhere"):
        UnCLIPPipeline.from_pretrained(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------
# latent arithmetic


def test_slerp_hits_both_endpoints_and_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    b = b * a.norm() / b.norm()
    thetas = torch.linspace(0, 1, 9)
    path = slerp(a, b, thetas)
    assert path.shape == (9, 64)
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=1), a.norm().expand(9), rtol=1e-5)
    # a true vector slerp: the angle to ``a`` grows linearly with θ
    a, path = a.double(), path.double()  # arccos near 1 needs the precision
    omega = torch.arccos(torch.dot(a, b.double()) / a.norm() ** 2)
    angles = torch.arccos((path @ a / (path.norm(dim=1) * a.norm())).clamp(-1, 1))
    assert torch.allclose(angles, thetas.double() * omega, atol=1e-4)


def test_slerp_of_orthogonal_unit_vectors_and_unequal_norms():
    half = slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)
    assert torch.allclose(half, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))  # elementwise "slerp" gives (.5, .5)
    path = slerp(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0]), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(path.norm(dim=1), torch.tensor([2.0, 3.0, 4.0]))  # norms move linearly
    same = slerp(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), 0.5)  # parallel: no division by sin 0
    assert torch.allclose(same, torch.tensor([1.5, 1.5]))


def test_text_diff_theta_zero_is_the_image_embedding():
    g = torch.Generator().manual_seed(1)
    z_i, t_from, t_to = (torch.randn(32, generator=g) for _ in range(3))
    z = text_diff_embeddings(z_i, t_from, t_to, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(z[0], z_i, atol=1e-6)
    direction = (t_to - t_from) / (t_to - t_from).norm()
    assert torch.allclose(z[2], direction * z_i.norm(), atol=1e-5)  # θ = 1: z_d rescaled to ‖z_i‖
    assert torch.allclose(z.norm(dim=1), z_i.norm().expand(3), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# DDIM inversion and the manipulations


class GaussianDecoder(nn.Module):
    """The exact eps-predictor for data ~ N(μ(z_i), σ²I): a smooth stand-in for a trained decoder,
    with the Decoder's interface (6 channels: eps and a variance interpolation)."""

    def __init__(self, cfg, alphas_cumprod, sigma=0.5):
        super().__init__()
        self.cfg, self.alphas_cumprod, self.sigma = cfg, alphas_cumprod, sigma
        self.text_proj = TextProj(clip_embeddings_dim=cfg.clip_embeddings_dim, time_embed_dim=8, cross_attention_dim=8)

    def forward(self, x_t, t, *, image_emb, text_emb, text_tokens, text_mask):
        a = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        mu = 0.3 * torch.tanh(image_emb[:, :3]).view(-1, 3, 1, 1)
        eps = (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * self.sigma**2 + 1 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


def reconstruct(pipe, x0, image_emb, steps, guidance=1.0, decode_emb=None):
    """DDIM-invert x0 under ``image_emb``, then decode with DDIM η = 0 (under ``decode_emb``)."""
    run = manipulation_plan(pipe, pipe.sizes[0], SamplingOptions(steps={"decoder": steps}, guidance={"decoder": guidance}))["decoder"]
    x_T = invert_pixels(pipe, x0, image_emb, run, progress=False)
    emb = image_emb if decode_emb is None else decode_emb
    return x_T, decode(pipe, emb, pipe.empty_caption().expand(1), run, None, x_T=x_T, eta=0.0, progress=False)


def test_ddim_inversion_retraces_a_smooth_decoder(tiny_pipeline, photos):
    p = tiny_pipeline
    gaussian = GaussianDecoder(p.decoder.cfg, make_scheduler(p.sampling["decoder"].diffusion).alphas_cumprod)
    pipe = UnCLIPPipeline(p.clip, None, gaussian)
    image = load_image(photos["astronaut"]).resize((32, 32), Image.Resampling.BICUBIC)
    x0 = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None].contiguous() / 127.5 - 1
    z = p.clip.encode_image([image])
    errors = {}
    for steps in (10, 50):
        x_T, x = reconstruct(pipe, x0, z, steps, guidance=3.0)
        errors[steps] = (x - x0).abs().mean().item()
    assert errors[50] < 0.07 and errors[50] < errors[10] / 2  # a first-order ODE solver converging
    assert 0.8 < x_T.std() < 1.8  # a Gaussian-like latent, not a scaled copy of the image
    _, wrong = reconstruct(pipe, x0, z, 50, guidance=3.0, decode_emb=-z)  # decoded under another z_i
    assert (wrong - x0).abs().mean() > 10 * errors[50]


def test_ddim_inversion_reconstructs_with_the_tiny_decoder(photos):
    """The real tiny Decoder (AddedKV UNet, learned variance, guidance) with its output scaled down:
    untrained UNets are far from a consistent denoiser, and a small eps keeps the probability-flow
    ODE as smooth as a trained decoder's."""
    pipe = UnCLIPPipeline.from_configs(TINY_CONFIGS, seed=0)
    give_zero_inits_values(pipe)
    with torch.no_grad():
        pipe.decoder.unet.conv_out.weight.mul_(0.01)
        pipe.decoder.unet.conv_out.bias.mul_(0.01)
    image = load_image(photos["chelsea"]).resize((32, 32), Image.Resampling.BICUBIC)
    x0 = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None].contiguous() / 127.5 - 1
    z = pipe.clip.encode_image([image])
    x_T, x = reconstruct(pipe, x0, z, steps=10, guidance=2.0)
    assert (x - x0).abs().mean() < 0.01 and (x - x0).abs().max() < 0.1
    run = pipe.plan(["decoder"], steps=10, guidance=2.0)["decoder"]  # ancestral sampling does not retrace
    ancestral = decode(pipe, z, pipe.empty_caption().expand(1), run, torch.Generator().manual_seed(0), x_T=x_T, progress=False)
    assert (ancestral - x0).abs().mean() > 0.2


def test_variations_eta_zero_reconstruct_and_eta_positive_vary(tiny_pipeline, photos):
    p = tiny_pipeline
    kwargs = dict(size=32, steps={"decoder": 4}, seed=0, progress=False)
    same = pixels(p.variations(photos["coffee"], n=2, eta=0.0, **kwargs))
    assert np.array_equal(same[0], same[1])
    latent = p.invert(photos["coffee"], steps={"decoder": 4}, progress=False)
    run = manipulation_plan(p, 32, SamplingOptions(steps={"decoder": 4}), inverts=True)["decoder"]
    decoded = decode(p, latent.image_emb, p.empty_caption().expand(1), run, None, x_T=latent.x_T, progress=False)
    assert np.abs(same[0] - pixels(tensor_to_pil(decoded))[0]).max() <= 1
    varied = pixels(p.variations(photos["coffee"], n=2, eta=1.0, **kwargs))
    assert np.abs(varied[0] - varied[1]).mean() > 1
    with pytest.raises(ValueError, match="eta: "):
        p.variations(photos["coffee"], eta=-1)
    assert {im.size for im in p.variations(photos["coffee"], n=1, size=64, steps=FAST, progress=False)} == {(64, 64)}


def test_interpolation_endpoints_and_noise_modes(tiny_pipeline, photos):
    p = tiny_pipeline
    kwargs = dict(size=32, steps={"decoder": 4}, seed=0, progress=False)
    inverted = pixels(p.interpolate(photos["astronaut"], photos["coffee"], frames=3, noise="inverted", **kwargs))
    assert inverted.shape == (3, 32, 32, 3)
    # θ = 0 and θ = 1 decode each image's own bipartite latent, the same as a text diff at θ = 0
    for end, photo in ((0, "astronaut"), (-1, "coffee")):
        alone = pixels(p.text_diff(photos[photo], "", "a photo", thetas=[0.0], **kwargs))[0]
        assert np.abs(inverted[end] - alone).max() <= 1
    assert np.abs(inverted[1] - inverted[0]).mean() > 0.5
    fixed = pixels(p.interpolate(photos["astronaut"], photos["coffee"], frames=3, noise="fixed", **kwargs))
    slerped = pixels(p.interpolate(photos["astronaut"], photos["coffee"], frames=3, noise="slerp", **kwargs))
    assert not np.array_equal(fixed, slerped) and not np.array_equal(fixed, inverted)
    with pytest.raises(ValueError, match="noise: "):
        p.interpolate(photos["astronaut"], photos["coffee"], noise="random")
    with pytest.raises(ValueError, match="frames: "):
        p.interpolate(photos["astronaut"], photos["coffee"], frames=1)
    with pytest.raises(ValueError, match="generator: interpolate draws one set of frames"):
        p.interpolate(photos["astronaut"], photos["coffee"], frames=2,
                      generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])


def test_text_diff_frames(tiny_pipeline, photos):
    p = tiny_pipeline
    frames = p.text_diff(photos["chelsea"], "a photo of a cat", "a photo of a dog", thetas=[0.0, 0.25, 0.5],
                         size=64, steps=FAST, seed=0, progress=False)
    assert len(frames) == 3 and frames[0].size == (64, 64)
    assert not np.array_equal(pixels(frames)[0], pixels(frames)[2])
    for bad, match in (([], "thetas"), ([1.5], "thetas")):
        with pytest.raises(ValueError, match=match):
            p.text_diff(photos["chelsea"], "a cat", "a dog", thetas=bad)
    with pytest.raises(ValueError, match="to_text: "):
        p.text_diff(photos["chelsea"], "a cat", "")
    with pytest.raises(ValueError, match="to_text: 'a  CAT' has the same CLIP text embedding"):
        p.text_diff(photos["chelsea"], "a cat", "a  CAT")  # the tokenizer folds case and spaces
    with pytest.raises(ValueError, match=r"eta: expected a number in \[0, 1\]"):
        p.variations(photos["chelsea"], eta=2.0)


def test_upsampler_with_a_sample_start_begins_from_the_noised_conditioning():
    from dataclasses import replace

    from unclip.data.degradations import upsample_condition
    from unclip.diffusion.losses import GaussianDiffusion

    pipe = UnCLIPPipeline.from_configs(TINY_CONFIGS, seed=0)
    slot = "upsampler_256"
    sampling = pipe.sampling[slot]
    pipe.sampling[slot] = replace(sampling, diffusion=replace(sampling.diffusion, sample_start=500))
    side = pipe.upsamplers[slot].cfg.sample_size
    low = torch.rand(2, 3, pipe.sizes[0], pipe.sizes[0]) * 2 - 1
    cond = upsample_condition(low, side)
    diffusion = GaussianDiffusion(pipe.sampling[slot].diffusion)
    calls = []

    def oracle(x_t, t, *, low_res):  # a perfect denoiser whose answer is the conditioning itself
        calls.append((int(t[0]), x_t.clone()))
        return diffusion.eps_from_x0(x_t, t, upsample_condition(low_res, x_t.shape[-1]))

    pipe.upsamplers[slot].forward = oracle
    plan = pipe.plan(pipe.upsampler_chain(pipe.sizes[1]), steps={"upsampler": 3})
    out = upsample(pipe, low, pipe.sizes[1], plan, torch.Generator().manual_seed(0), progress=False)
    assert [t for t, _ in calls] == [500, 250, 0]
    first = calls[0][1]
    a = diffusion.alphas_cumprod[500].item()
    residual = first - a**0.5 * cond  # x_500 = sqrt(ᾱ)·cond + sqrt(1 − ᾱ)·noise
    assert abs(residual.std().item() - (1 - a) ** 0.5) < 0.05 and abs(residual.mean().item()) < 0.05
    assert torch.allclose(out, cond, atol=1e-3)


def test_upsample_continues_from_an_earlier_stages_output(tiny_pipeline):
    plan = tiny_pipeline.plan(tiny_pipeline.upsampler_chain(128), steps={"upsampler": 2})
    at_64 = torch.rand(1, 3, 64, 64) * 2 - 1
    assert upsample(tiny_pipeline, at_64, 64, plan, torch.Generator().manual_seed(0), progress=False) is at_64
    out = upsample(tiny_pipeline, at_64, 128, plan, torch.Generator().manual_seed(0), progress=False)
    assert out.shape[-1] == 128  # only the 64→128 stage ran on the 64-side input


def test_one_sampling_options_object_or_its_fields_as_keywords(tiny_pipeline):
    options = SamplingOptions(size=64, steps=FAST, seed=5, progress=False)
    by_object = pixels(tiny_pipeline.generate("a red circle", 1, options))
    by_keywords = pixels(tiny_pipeline.generate("a red circle", size=64, steps=FAST, seed=5, progress=False))
    assert np.array_equal(by_object, by_keywords) and by_object.shape == (1, 64, 64, 3)
    overridden = pixels(tiny_pipeline.generate("a red circle", 1, options, seed=6))  # a keyword wins over the object
    assert not np.array_equal(by_object, overridden)
    with pytest.raises(TypeError, match="unknown sampling option 'stpes'"):
        tiny_pipeline.generate("a red circle", stpes=3)
    with pytest.raises(TypeError, match="expected SamplingOptions, got int"):
        tiny_pipeline.generate("a red circle", 1, 64)
    with pytest.raises(ValueError, match="precision: 'fp8'"):
        SamplingOptions(precision="fp8")


def test_every_denoiser_returns_float32_under_bf16_autocast(tiny_pipeline):
    """Guidance's mix and the sampler's step (and the noise DDPM draws in the output's dtype) stay
    float32 when the networks run in bf16."""
    pipe = tiny_pipeline
    text, empty = pipe.clip.encode_text(["a red circle"]), pipe.empty_caption()
    t = torch.tensor([500])
    side = pipe.decoder.cfg.sample_size
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for guidance in (1.0, 3.0):
            fn = prior_denoiser(pipe.prior, text, empty, guidance)
            assert fn(torch.randn(1, pipe.prior.cfg.embedding_dim), t).dtype == torch.float32
            fn = decoder_denoiser(pipe.decoder, torch.randn(1, pipe.prior.cfg.embedding_dim), text, empty, guidance)
            assert fn(torch.randn(1, 3, side, side), t).dtype == torch.float32
        for upsampler in pipe.upsamplers.values():
            low = torch.randn(1, 3, side, side)
            high = upsampler.cfg.sample_size
            assert upsampler_denoiser(upsampler, low)(torch.randn(1, 3, high, high), t).dtype == torch.float32
            side = high


def test_bf16_precision_autocasts_the_prior_and_the_upsamplers(tiny_pipeline):
    """(The decoder: bf16 but for its last steps, the next test.) The prior is watched at its input
    projection, which every step runs (its sampling skips the full forward: ``Prior.stepper``)."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(torch.is_autocast_enabled("cpu")))
             for m in (tiny_pipeline.prior.transformer.proj_in, *tiny_pipeline.upsamplers.values())]
    try:
        top = tiny_pipeline.sizes[-1]
        tiny_pipeline.generate("a red circle", size=top, steps=1, seed=0, progress=False, precision="bf16")
        assert len(seen) == 1 + len(tiny_pipeline.upsamplers) and all(seen)
        seen.clear()
        tiny_pipeline.generate("a red circle", size=top, steps=1, seed=0, progress=False)
        assert seen and not any(seen)
    finally:
        for hook in hooks:
            hook.remove()


def test_under_bf16_the_decoders_low_noise_steps_run_in_float32(tiny_pipeline):
    """The decoder's steps at t ≤ DECODER_FP32_BELOW·T run with autocast off and float32 input
    (bf16 there costs FID; README, Performance), its other steps and the prior under bf16; fp32
    sampling is not touched."""
    calls = []

    def record(module, args, kwargs):
        calls.append((module, int(args[1].max()), torch.is_autocast_enabled("cpu"), args[0].dtype))

    pipe = tiny_pipeline
    prior = []  # autocast at each prior step (its input projection, which every step runs)
    hooks = [pipe.decoder.register_forward_pre_hook(record, with_kwargs=True),
             pipe.prior.transformer.proj_in.register_forward_pre_hook(
                 lambda m, a: prior.append(torch.is_autocast_enabled("cpu")))]
    cut = int(DECODER_FP32_BELOW * pipe.sampling[Stage.decoder].diffusion.num_train_timesteps)
    try:
        pipe.generate("a red circle", size=64, steps={"prior": 2, "decoder": 10}, seed=0, progress=False,
                      precision="bf16")
        decoder = [(t, on, dtype) for m, t, on, dtype in calls if m is pipe.decoder]
        assert [t for t, _, _ in decoder if t <= cut] == [111, 0]  # the last 2 of 10 DDPM steps
        assert all(not on and dtype == torch.float32 for t, on, dtype in decoder if t <= cut)
        assert all(on for t, on, _ in decoder if t > cut) and len(decoder) == 10
        assert len(prior) == 2 and all(prior)
        calls.clear(), prior.clear()
        pipe.generate("a red circle", size=64, steps={"prior": 2, "decoder": 10}, seed=0, progress=False)
        assert calls and not any(on for _, _, on, _ in calls) and len(prior) == 2 and not any(prior)
    finally:
        for hook in hooks:
            hook.remove()


def test_unets_sample_in_channels_last_on_the_cpu_with_the_same_outputs(tiny_pipeline):
    """The pipeline puts the UNets' weights in channels_last on the CPU (faster there; README,
    Performance) and feeds their first convolution channels_last input; the outputs are those of
    the default layout up to float rounding."""
    pipe = tiny_pipeline
    torch.manual_seed(0)
    assert inference_memory_format(torch.device("cpu")) == torch.channels_last
    assert inference_memory_format(torch.device("cuda")) == torch.contiguous_format  # not measured on a GPU
    text, empty, t = pipe.clip.encode_text(["a red circle"]), pipe.empty_caption(), torch.tensor([500])
    emb, side = torch.randn(1, pipe.prior.cfg.embedding_dim), pipe.decoder.cfg.sample_size
    cases = [(pipe.decoder, lambda net: decoder_denoiser(net, emb, text, empty, 3.0), side)]
    low = torch.randn(1, 3, side, side)
    for upsampler in pipe.upsamplers.values():
        cases.append((upsampler, lambda net, low=low: upsampler_denoiser(net, low), upsampler.cfg.sample_size))
        low = torch.randn(1, 3, upsampler.cfg.sample_size, upsampler.cfg.sample_size)
    for net, denoiser, side in cases:
        conv = net.unet.conv_in
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        inputs = []
        hook = conv.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
        x = torch.randn(1, 3, side, side)
        with torch.no_grad():
            fast = denoiser(net)(x, t)
            hook.remove()
            plain = denoiser(copy.deepcopy(net).to(memory_format=torch.contiguous_format))(x, t)
        assert inputs and inputs[0].is_contiguous(memory_format=torch.channels_last)
        assert (fast - plain).abs().max() < 1e-4 and fast.abs().max() > 1e-1
