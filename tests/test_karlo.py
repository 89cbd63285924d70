"""Loading Karlo's diffusers layout: tiny random stand-ins written exactly as a converted Karlo
folder is (diffusers' ``save_pretrained`` for its classes, our TextProj with diffusers'
parameter names and config keys, UnCLIPScheduler configs) plus an open_clip weights file standing
in for ViT-L-14-quickgelu."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS
from diffusers import (
    PriorTransformer,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from safetensors.torch import save_file

from unclip.config import load_stage_config
from unclip.networks.clip import ClipEncoder
from unclip.networks.decoder import TextProj
from unclip.pipeline import UnCLIPPipeline

STEPS = {"prior": 3, "decoder": 3, "upsampler": 3}


def seeded(seed, build):
    torch.manual_seed(seed)
    return build()


def standins():
    """Tiny diffusers modules with Karlo's architecture choices, at the sizes of diffusers' own unCLIP tests."""
    prior = seeded(0, lambda: PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32,
                                               num_layers=1, num_embeddings=77, additional_embeddings=4))
    with torch.no_grad():  # Karlo's ViT-L-14_stats.th: per-dimension statistics
        prior.clip_mean.copy_(torch.linspace(-0.5, 0.5, 32))
        prior.clip_std.copy_(torch.linspace(0.5, 1.5, 32))
    decoder = seeded(1, lambda: UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=64, attention_head_dim=8,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity"))
    text_proj = seeded(2, lambda: TextProj(clip_embeddings_dim=32, time_embed_dim=128, cross_attention_dim=64))
    with torch.no_grad():
        text_proj.learned_classifier_free_guidance_embeddings.normal_()
    sr = lambda: UNet2DModel(sample_size=64, layers_per_block=1, block_out_channels=(32, 64),
                             down_block_types=("ResnetDownsampleBlock2D",) * 2,
                             up_block_types=("ResnetUpsampleBlock2D",) * 2, in_channels=6, out_channels=3,
                             add_attention=False)
    return dict(prior=prior, decoder=decoder, text_proj=text_proj, super_res_first=seeded(3, sr),
                super_res_last=seeded(4, sr))


def karlo_clip_config(folder):
    """A tiny open_clip model saved as a weights file, standing in for ViT-L-14-quickgelu's."""
    cfg = load_stage_config(TINY_CONFIGS / "clip.yaml").clip
    clip = seeded(5, lambda: ClipEncoder(cfg))
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(path))
    return replace(cfg, pretrained=str(path)), clip


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    root = tmp_path_factory.mktemp("karlo")
    modules = standins()
    for name in ("prior", "decoder", "super_res_first", "super_res_last"):
        modules[name].save_pretrained(root / name)
    (root / "text_proj").mkdir()
    save_file(modules["text_proj"].state_dict(), str(root / "text_proj" / "diffusion_pytorch_model.safetensors"))
    (root / "text_proj" / "config.json").write_text(json.dumps(
        {"_class_name": "UnCLIPTextProjModel", **modules["text_proj"].config()}))
    UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
                    ).save_pretrained(root / "prior_scheduler")
    UnCLIPScheduler(variance_type="learned_range").save_pretrained(root / "decoder_scheduler")
    UnCLIPScheduler(variance_type="fixed_small_log").save_pretrained(root / "super_res_scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "UnCLIPPipeline"}))
    clip_cfg, clip = karlo_clip_config(tmp_path_factory.mktemp("clip_weights"))
    return root, modules, clip_cfg, clip


def assert_same_weights(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_karlo_folder_loads_every_component(karlo):
    root, modules, clip_cfg, clip = karlo
    pipe = UnCLIPPipeline.from_karlo(root, clip=clip_cfg)
    assert_same_weights(pipe.prior.transformer, modules["prior"])
    assert_same_weights(pipe.decoder.unet, modules["decoder"])
    assert_same_weights(pipe.decoder.text_proj, modules["text_proj"])
    assert_same_weights(pipe.upsamplers["upsampler_256"].unet, modules["super_res_first"])
    assert_same_weights(pipe.last_steps["upsampler_256"].unet, modules["super_res_last"])
    assert_same_weights(pipe.clip.model, clip.model)
    assert pipe.sizes == [32, 64]
    prior, decoder, sr = (pipe.sampling[s] for s in ("prior", "decoder", "upsampler_256"))
    assert {s.sampler.value for s in (prior, decoder, sr)} == {"unclip"}
    assert (prior.diffusion.sample_steps, decoder.diffusion.sample_steps, sr.diffusion.sample_steps) == (25, 25, 7)
    assert (prior.diffusion.guidance_scale, decoder.diffusion.guidance_scale) == (4.0, 8.0)
    assert prior.diffusion.prediction.value == "sample" and prior.diffusion.clip_sample_range == 5.0
    assert decoder.diffusion.variance.value == "learned_range"


def test_karlo_pipeline_generates_with_super_res_last_on_the_final_step(karlo):
    root, _, clip_cfg, _ = karlo
    pipe = UnCLIPPipeline.from_karlo(root, clip=clip_cfg)
    calls = {"first": [], "last": []}
    hooks = [pipe.upsamplers["upsampler_256"].unet.register_forward_pre_hook(
                 lambda m, args: calls["first"].append(int(args[1][0]))),
             pipe.last_steps["upsampler_256"].unet.register_forward_pre_hook(
                 lambda m, args: calls["last"].append(int(args[1][0])))]
    try:
        images = pipe.generate("a red circle", n=2, steps=STEPS, seed=0, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(images) == 2 and images[0].size == (64, 64)
    assert calls == {"first": [999, 500], "last": [0]}


def test_karlo_pipeline_matches_diffusers_on_the_same_folder(karlo, diffusers_oracle):
    """The loaded folder samples exactly as diffusers' UnCLIPPipeline built from the same modules.
    Both in NCHW: on the CPU the pipeline keeps its UNets channels_last, whose convolutions add up
    in another order (4e-4 here after guidance 8 on an AVX-512 CPU); that layout is checked on its
    own in tests/test_pipeline.py. The prior's caption-prefix cache, which also adds in another
    order (2.5e-4 here), is off for the same reason (tests/test_networks.py checks it)."""
    from diffusers import UnCLIPPipeline as DiffusersUnCLIP

    from unclip.pipeline.cascade import unets
    from unclip.pipeline.karlo import diffusers_text_proj, hf_text_encoder, hf_tokenizer

    root, modules, clip_cfg, _ = karlo
    pipe = UnCLIPPipeline.from_karlo(root, clip=clip_cfg)
    for unet in unets(pipe):
        unet.to(memory_format=torch.contiguous_format)
    pipe.prior.prefix_cache = False
    oracle = DiffusersUnCLIP(
        prior=modules["prior"], decoder=modules["decoder"], text_encoder=hf_text_encoder(pipe.clip),
        tokenizer=hf_tokenizer(pipe.clip), text_proj=diffusers_text_proj(pipe.decoder),
        super_res_first=modules["super_res_first"], super_res_last=modules["super_res_last"],
        **{f"{s}_scheduler": UnCLIPScheduler.from_pretrained(root / f"{s}_scheduler")
           for s in ("prior", "decoder", "super_res")})
    reference, _ = diffusers_oracle(oracle, pipe, ["a red circle"], STEPS, {"prior": 4.0, "decoder": 8.0}, seed=0)
    out = pipe.generate("a red circle", steps=STEPS, prior_candidates=1, generator=torch.Generator().manual_seed(0),
                        return_embeddings=True, progress=False)
    assert np.abs((out.pixels * 0.5 + 0.5).permute(0, 2, 3, 1).numpy() - reference).max() < 1e-4


def test_karlo_pipeline_round_trips_through_our_format(karlo, tmp_path):
    root, _, clip_cfg, _ = karlo
    pipe = UnCLIPPipeline.from_karlo(root, clip=clip_cfg)
    loaded = UnCLIPPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "ours"))
    assert set(loaded.last_steps) == {"upsampler_256"} and loaded.sampling == pipe.sampling
    kwargs = dict(steps=STEPS, seed=1, return_embeddings=True, progress=False)
    assert torch.equal(pipe.generate("a cat", **kwargs).pixels, loaded.generate("a cat", **kwargs).pixels)


def test_karlo_errors_are_clear(karlo, tmp_path):
    root, _, clip_cfg, _ = karlo
    with pytest.raises(ValueError, match="clip: .*ViT-L-14-quickgelu"):
        UnCLIPPipeline.from_karlo(root)
    with pytest.raises(ValueError, match="from_karlo"):
        UnCLIPPipeline.from_pretrained(root)
    with pytest.raises(FileNotFoundError, match="CLIP weights not found"):
        UnCLIPPipeline.from_karlo(root, clip=replace(clip_cfg, pretrained=str(tmp_path / "missing.bin")))
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / "text_proj")
    with pytest.raises(ValueError, match="missing component: .*text_proj"):
        UnCLIPPipeline.from_karlo(broken, clip=clip_cfg)
    shutil.copytree(root / "text_proj", broken / "text_proj")
    config = json.loads((broken / "decoder" / "config.json").read_text())
    config["resnet_time_scale_shift"] = "default"  # a network unclip would build differently
    (broken / "decoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="resnet_time_scale_shift='default' is not supported"):
        UnCLIPPipeline.from_karlo(broken, clip=clip_cfg)


def test_karlo_weight_files_in_other_layouts_and_their_faults(karlo, tmp_path):
    """fp16 variants and sharded safetensors load (into float32); a pipeline folder of ours, a CLIP
    named without QuickGELU, a wrong shape and an LFS pointer are named, not tracebacks."""
    from safetensors.torch import load_file

    root, modules, clip_cfg, _ = karlo
    other = tmp_path / "other"
    shutil.copytree(root, other)
    decoder = other / "decoder" / "diffusion_pytorch_model.safetensors"
    half = {k: v.half() for k, v in load_file(str(decoder)).items()}
    decoder.unlink()
    save_file(half, str(other / "decoder" / "diffusion_pytorch_model.fp16.safetensors"))
    first = other / "super_res_first" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(first))
    first.unlink()
    keys = sorted(state)
    shards = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(first.parent / name))
    (first.parent / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in shards.items() for k in part}}))
    pipe = UnCLIPPipeline.from_karlo(other, clip=clip_cfg)
    unet = pipe.decoder.unet.state_dict()
    assert all(unet[k].dtype == torch.float32 and torch.equal(unet[k], half[k].float()) for k in half)
    assert_same_weights(pipe.upsamplers["upsampler_256"].unet, modules["super_res_first"])

    with pytest.raises(ValueError, match="is a unclip pipeline folder.*from_pretrained"):
        UnCLIPPipeline.from_karlo(pipe.save_pretrained(tmp_path / "ours"), clip=clip_cfg)
    with pytest.raises(ValueError, match="'ViT-L-14' builds exact GELU.*'ViT-L-14-quickgelu'"):
        UnCLIPPipeline.from_karlo(root, clip=replace(clip_cfg, name="ViT-L-14"))
    proj = other / "text_proj" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(proj))
    key = sorted(weights)[0]
    weights[key] = torch.zeros(3, 3)
    save_file(weights, str(proj))
    with pytest.raises(ValueError, match=rf"text_proj: the weights do not fit .*{key} \(3, 3\) vs"):
        UnCLIPPipeline.from_karlo(other, clip=clip_cfg)
    proj.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ValueError, match="Git LFS pointer"):
        UnCLIPPipeline.from_karlo(other, clip=clip_cfg)
