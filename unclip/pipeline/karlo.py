"""Interop with diffusers' unCLIP layout (Karlo) and its deprecated ``UnCLIPPipeline``.

``load_karlo`` reads a diffusers-format Karlo folder — ``prior/``, ``decoder/``, ``text_proj/``,
``super_res_first/``, ``super_res_last/`` (each ``config.json`` + ``diffusion_pytorch_model
.safetensors``) and ``prior_scheduler/``, ``decoder_scheduler/``, ``super_res_scheduler/`` — maps
each diffusers config onto our dataclasses, checks that our builders reproduce it key by key, and
loads the weights into our modules' inner diffusers models. The folder's transformers text
encoder is not used: unclip reads text with an open_clip CLIP (ViT-L-14-quickgelu for Karlo) whose
weights are on disk, and whose token states and pooled embedding equal the transformers encoder's.
``super_res_last`` runs the last upsampler step, as Karlo's "improved SR" does.

``to_diffusers`` goes the other way: diffusers' ``UnCLIPPipeline`` built around this pipeline's
networks, with a transformers CLIP text model and tokenizer carrying our open_clip text tower's
weights (needs ``transformers``; the parity test and the benchmark use it as an oracle).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from unclip.checkpoint import check_fit, load_clip, read_safetensors
from unclip.config import (
    BetaSchedule,
    ClipConfig,
    DecoderConfig,
    DiffusionConfig,
    Prediction,
    PriorConfig,
    Stage,
    UpsamplerConfig,
    Variance,
)
from unclip.diffusion.schedule import Sampler, make_scheduler
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.upsampler import Upsampler
from unclip.pipeline.folder import PipelineParts
from unclip.pipeline.plan import StageSampling, default_sampling

PRIOR, DECODER, FIRST_UPSAMPLER = Stage.prior, Stage.decoder, Stage.upsampler_256

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "model.fp16.safetensors", "diffusion_pytorch_model.bin")
INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json")  # sharded
# Karlo's sampling defaults (karlo sampler/template.py, "fast" decoder steps; diffusers' __call__ defaults)
KARLO_STEPS = {PRIOR: 25, DECODER: 25, "super_res": 7}
KARLO_GUIDANCE = {PRIOR: 4.0, DECODER: 8.0, "super_res": 1.0}
NO_CLAMP = 1e6  # clip_sample=False in a scheduler config: a range nothing reaches


# ----------------------------------------------------------------------------------------------
# diffusers folder → pipeline parts


def read_karlo(path: str | Path, clip: ClipConfig | None = None) -> PipelineParts:
    """The parts of an ``UnCLIPPipeline`` from a diffusers-format Karlo folder and an open_clip CLIP.

    ``clip`` names the CLIP, e.g. ``ClipConfig(name="ViT-L-14-quickgelu",
    pretrained="/path/to/open_clip_pytorch_model.bin")``; without it the folder must hold our own
    ``clip/`` component folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Karlo folder not found: {root}")
    for needed in ("prior", "decoder", "text_proj"):
        if not (root / needed / "config.json").is_file():
            raise ValueError(f"missing component: {root} has no {needed}/config.json, so it is not a Karlo "
                             "(diffusers unCLIP) folder")
    if "component" in _read_config(root / "prior"):
        raise ValueError(f"{root} is a unclip pipeline folder, not a diffusers one: load it with "
                         "UnCLIPPipeline.from_pretrained(path)")
    if clip is not None:
        check_quick_gelu(clip)
    if clip is None:
        if not (root / "clip" / "config.json").is_file():
            raise ValueError("clip: a Karlo folder carries a transformers text encoder, which unclip does not use; "
                             "pass clip=ClipConfig(name='ViT-L-14-quickgelu', pretrained='<open_clip weights file>')")
        clip = ClipConfig(pretrained=str(root / "clip"))
    encoder = load_clip(clip)
    prior = _load_prior(root / "prior")
    decoder = _load_decoder(root / "decoder", root / "text_proj")
    upsamplers, last_steps = {}, {}
    if (root / "super_res_first" / "config.json").is_file():
        upsamplers[FIRST_UPSAMPLER] = _load_upsampler(root / "super_res_first", decoder.cfg.sample_size)
        if (root / "super_res_last" / "config.json").is_file():
            last_steps[FIRST_UPSAMPLER] = _load_upsampler(root / "super_res_last", decoder.cfg.sample_size)
    sampling = {
        PRIOR: _stage_sampling(root / "prior_scheduler", PRIOR, prior),
        DECODER: _stage_sampling(root / "decoder_scheduler", DECODER, decoder),
        FIRST_UPSAMPLER: _stage_sampling(root / "super_res_scheduler", "super_res", None),
    }
    return PipelineParts(encoder, prior, decoder, upsamplers, sampling, last_steps)


def check_quick_gelu(clip: ClipConfig) -> None:
    """Karlo was trained on OpenAI's ViT-L/14, whose activation is QuickGELU: open_clip's plain
    name of an architecture with OpenAI weights builds exact GELU, which loads the same weights
    without complaint and gives other embeddings (the reference's GELU/QuickGELU trap)."""
    name = clip.name or ""
    if name and not name.endswith("-quickgelu") and (name, "openai") in open_clip.list_pretrained():
        raise ValueError(f"clip.name: {name!r} builds exact GELU, but OpenAI's weights (Karlo's CLIP) were "
                         f"trained with QuickGELU: name it {name + '-quickgelu'!r}")


def _read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """One weights file of a diffusers folder (fp16 variants included), or the shards its index lists."""
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        if name.endswith(".safetensors"):
            return read_safetensors(file)
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle's and torch's errors have no common base  # noqa: BLE001
            raise ValueError(f"{file} is not a readable PyTorch weights file: {err}") from None
    for name in INDEX_FILES:
        if (folder / name).is_file():
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
            return {key: value for shard in shards for key, value in read_safetensors(folder / shard).items()}
    raise FileNotFoundError(f"no weights in {folder} (looked for {', '.join(WEIGHT_FILES + INDEX_FILES)})")


def _load_weights(module: nn.Module, folder: Path) -> None:
    weights = _read_weights(folder)
    check_fit(module, weights, folder)  # a ValueError naming the keys and shapes that differ
    module.load_state_dict(weights)


def _check_same(ours: dict, theirs: dict, where: Path) -> None:
    """Every key of a diffusers config must equal what our builder produced: a Karlo folder whose
    network we would build differently fails here, not with a silently different model."""
    plain = lambda v: json.loads(json.dumps(v))
    for key, value in theirs.items():
        if key.startswith("_") or key not in ours:
            continue
        if plain(ours[key]) != plain(value):
            raise ValueError(f"{where}: {key}={value!r} is not supported by unclip (it builds {ours[key]!r})")


def _load_prior(folder: Path) -> Prior:
    c = _read_config(folder)
    cfg = PriorConfig(num_attention_heads=c["num_attention_heads"], attention_head_dim=c["attention_head_dim"],
                      num_layers=c["num_layers"], embedding_dim=c["embedding_dim"],
                      num_embeddings=c["num_embeddings"], dropout=c.get("dropout", 0.0))
    prior = Prior(cfg)
    _check_same(dict(prior.transformer.config), c, folder / "config.json")
    _load_weights(prior.transformer, folder)  # clip_mean / clip_std (Karlo's ViT-L-14_stats.th) included
    return prior


def _load_decoder(folder: Path, text_proj_folder: Path) -> Decoder:
    c, tp = _read_config(folder), _read_config(text_proj_folder)
    side = c["sample_size"]
    attends = tuple(side // 2**i for i, kind in enumerate(c["down_block_types"]) if "CrossAttn" in kind)
    cfg = DecoderConfig(sample_size=side, block_out_channels=tuple(c["block_out_channels"]),
                        layers_per_block=c["layers_per_block"], attention_resolutions=attends,
                        attention_head_dim=c["attention_head_dim"], cross_attention_dim=c["cross_attention_dim"],
                        clip_embeddings_dim=tp["clip_embeddings_dim"],
                        clip_extra_context_tokens=tp["clip_extra_context_tokens"], dropout=c.get("dropout", 0.0),
                        learned_variance=c["out_channels"] == 6)
    decoder = Decoder(cfg)
    _check_same(dict(decoder.unet.config), c, folder / "config.json")
    _check_same(decoder.text_proj.config(), tp, text_proj_folder / "config.json")
    _load_weights(decoder.unet, folder)
    _load_weights(decoder.text_proj, text_proj_folder)
    return decoder


def _load_upsampler(folder: Path, low_res_size: int) -> Upsampler:
    c = _read_config(folder)
    cfg = UpsamplerConfig(sample_size=c["sample_size"], low_res_size=low_res_size,
                          block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
                          dropout=c.get("dropout", 0.0))
    upsampler = Upsampler(cfg)
    _check_same(dict(upsampler.unet.config), c, folder / "config.json")
    _load_weights(upsampler.unet, folder)
    return upsampler


def _stage_sampling(folder: Path, stage: str, module: nn.Module | None) -> StageSampling:
    """A stage's DiffusionConfig from its UnCLIPScheduler config, sampled with that scheduler."""
    key = stage if stage in KARLO_STEPS else "super_res"
    slot = FIRST_UPSAMPLER if stage == "super_res" else Stage(stage)
    learned = not isinstance(module, Decoder) or module.cfg.learned_variance
    defaults = default_sampling(slot, learned).diffusion
    file = folder / "scheduler_config.json"
    c = json.loads(file.read_text()) if file.is_file() else {}
    try:
        diffusion = DiffusionConfig(
            num_train_timesteps=c.get("num_train_timesteps", defaults.num_train_timesteps),
            beta_schedule=BetaSchedule(c.get("beta_schedule", defaults.beta_schedule.value)),
            prediction=Prediction(c.get("prediction_type", defaults.prediction.value)),
            variance=Variance(c.get("variance_type", defaults.variance.value)),
            sample_steps=KARLO_STEPS[key],
            clip_sample_range=float(c.get("clip_sample_range", defaults.clip_sample_range))
            if c.get("clip_sample", True) else NO_CLAMP,
            guidance_scale=KARLO_GUIDANCE[key],
        )
    except ValueError as err:
        raise ValueError(f"{file}: unsupported scheduler setting: {err}") from None
    return StageSampling(diffusion=diffusion, sampler=Sampler.unclip)


# ----------------------------------------------------------------------------------------------
# UnCLIPPipeline → diffusers (the test oracle)


def hf_tokenizer(clip) -> Any:
    """A transformers ``CLIPTokenizer`` built offline from open_clip's bundled BPE,
    with Karlo's ``pad_token="!"`` (id 0, open_clip's padding)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(k, k): v for k, v in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token="!",
                             model_max_length=int(clip.model.context_length))


def hf_text_encoder(clip) -> nn.Module:
    """A transformers ``CLIPTextModelWithProjection`` with our open_clip text tower's weights:
    its ``text_embeds`` / ``last_hidden_state`` equal our ``emb`` / ``tokens``."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    m = clip.model
    blocks = m.transformer.resblocks
    width = m.token_embedding.weight.shape[1]
    quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
    config = CLIPTextConfig(vocab_size=m.token_embedding.weight.shape[0], hidden_size=width,
                            intermediate_size=blocks[0].mlp.c_fc.out_features, num_hidden_layers=len(blocks),
                            num_attention_heads=blocks[0].attn.num_heads,
                            max_position_embeddings=int(m.context_length), hidden_act="quick_gelu" if quick else "gelu",
                            layer_norm_eps=m.ln_final.eps, projection_dim=m.text_projection.shape[1],
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    state = {"text_model.embeddings.token_embedding.weight": m.token_embedding.weight,
             "text_model.embeddings.position_embedding.weight": m.positional_embedding,
             "text_model.final_layer_norm.weight": m.ln_final.weight,
             "text_model.final_layer_norm.bias": m.ln_final.bias,
             "text_projection.weight": m.text_projection.T}
    for i, block in enumerate(blocks):
        p = f"text_model.encoder.layers.{i}."
        for name, w, b in zip("qkv", block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            state[p + f"self_attn.{name}_proj.weight"], state[p + f"self_attn.{name}_proj.bias"] = w, b
        pairs = {"self_attn.out_proj": block.attn.out_proj, "layer_norm1": block.ln_1, "layer_norm2": block.ln_2,
                 "mlp.fc1": block.mlp.c_fc, "mlp.fc2": block.mlp.c_proj}
        for name, layer in pairs.items():
            state[p + name + ".weight"], state[p + name + ".bias"] = layer.weight, layer.bias
    model = CLIPTextModelWithProjection(config)
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return model.to(clip.device).eval()


def diffusers_text_proj(decoder: Decoder) -> nn.Module:
    """diffusers' ``UnCLIPTextProjModel`` with our TextProj's weights (same parameter names)."""
    try:
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    except ImportError:  # diffusers < 0.38
        from diffusers.pipelines.unclip.text_proj import UnCLIPTextProjModel
    proj = UnCLIPTextProjModel(**decoder.text_proj.config())
    proj.load_state_dict(decoder.text_proj.state_dict())
    return proj.to(decoder.text_proj.embedding_proj.weight.device).eval()


def to_diffusers(pipe) -> Any:
    """diffusers' deprecated ``UnCLIPPipeline`` sharing this pipeline's networks (text → the first
    upsampler's size), every stage on an ``UnCLIPScheduler`` with our stage configs. Needs
    ``transformers``. ``.save_pretrained(folder)`` on the result writes a Karlo-layout folder."""
    from diffusers import UnCLIPPipeline as DiffusersUnCLIP

    for stage in (PRIOR, DECODER, FIRST_UPSAMPLER):
        pipe.require(stage, "to_diffusers")
    if not isinstance(pipe.prior, Prior):
        raise ValueError("to_diffusers: diffusers' UnCLIPPipeline has no autoregressive prior; load the "
                         "pipeline with its diffusion prior")
    first = pipe.upsamplers[FIRST_UPSAMPLER]
    last = pipe.last_steps.get(FIRST_UPSAMPLER, first)
    schedulers = {stage: make_scheduler(pipe.sampling[stage].diffusion, Sampler.unclip)
                  for stage in (PRIOR, DECODER, FIRST_UPSAMPLER)}
    if first.cfg.residual:
        raise ValueError("to_diffusers: diffusers' UnCLIPPipeline diffuses the image itself; this pipeline's "
                         f"{FIRST_UPSAMPLER} is residual (upsampler.residual: true)")
    if pipe.decoder.cfg.coordinates:
        raise ValueError("to_diffusers: this decoder reads (x, y) coordinate maps (decoder.coordinates: true), "
                         "which diffusers' UNet has no input for (it would drop them: another model)")
    if not pipe.decoder.cfg.learned_variance:
        raise ValueError("to_diffusers: diffusers' UnCLIPPipeline expects a decoder with learned variance "
                         "(6 output channels); this one has decoder.learned_variance: false")
    return DiffusersUnCLIP(
        prior=pipe.prior.transformer, decoder=pipe.decoder.unet, text_encoder=hf_text_encoder(pipe.clip),
        tokenizer=hf_tokenizer(pipe.clip), text_proj=diffusers_text_proj(pipe.decoder),
        super_res_first=first.unet, super_res_last=last.unet, prior_scheduler=schedulers[PRIOR],
        decoder_scheduler=schedulers[DECODER], super_res_scheduler=schedulers[FIRST_UPSAMPLER],
    )
