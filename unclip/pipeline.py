"""The unCLIP cascade at inference: text → image, and the paper's image manipulations (§3).

``UnCLIPPipeline`` holds a frozen CLIP and whichever stages a folder provides: the prior, the
64×64 decoder and up to two upsamplers. It samples each stage with ``diffusion.sample_loop``
and classifier-free guidance from ``diffusion.guided`` (written once, used here):

- **prior** (paper §2.2): guided on its full x0 output, ``[uncond; cond]`` with uncond = the empty
  caption's encodings; ``prior_candidates`` samples per image, keeping the one whose raw
  (unstandardised) embedding has the highest dot product with the text embedding (best of 2).
- **decoder** (§2.1): uncond = the empty caption and the learned null image embedding; guidance
  on the eps channels only, the conditional half keeps its variance; output clamped to [−1, 1].
- **upsamplers**: no guidance; conditioned on the previous stage's output.

The manipulations (variations, interpolations, text diffs) live in ``unclip.manipulate`` and are
exposed here as methods. A pipeline folder holds one sub-folder per component (``clip/``,
``prior/``, ``decoder/``, ``upsampler_256/``, ``upsampler_1024/``, each ``config.json`` +
``model.safetensors``), a ``text_proj/`` mirror in diffusers' layout, and ``pipeline.json`` with the
sampling defaults of each stage. Karlo's diffusers layout loads with ``from_karlo``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

from unclip.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    is_component,
    is_matrix,
    load_clip,
    load_expected,
    save_component,
)
from unclip.clip import ClipEncoder, TextEncoding, tensor_to_pil
from unclip.config import (
    ClipConfig,
    DecoderStageConfig,
    DiffusionConfig,
    PriorStageConfig,
    UpsamplerStageConfig,
    Variance,
    from_dict,
    load_stage_config,
    to_dict,
)
from unclip.decoder import Decoder
from unclip.degradations import upsample_condition
from unclip.diffusion import Sampler, guided, make_scheduler, noised_start, sample_loop, set_timesteps
from unclip.prior import Prior
from unclip.upsampler import Upsampler

PRIOR, DECODER = "prior", "decoder"
UPSAMPLERS = ("upsampler_256", "upsampler_1024")  # slots, in cascade order (tiny configs: 32→64→128)
STAGES = (PRIOR, DECODER, *UPSAMPLERS)
PIPELINE_FILE = "pipeline.json"
DEFAULT_MAX_SIZE = 256  # default output side: the largest the pipeline makes up to this
LAST_STEP_SUFFIX = "_last"  # Karlo's "improved SR": a separate UNet for an upsampler's final step

ImageInput = Image.Image | str | os.PathLike
StageValue = Any  # a number or sampler name for every stage, or {stage: value}


def default_checkpoint() -> Path:
    """The pipeline used when none is named: ``$UNCLIP_CHECKPOINT``, else the shipped
    ``checkpoints/shapes/`` beside the package."""
    env = os.environ.get("UNCLIP_CHECKPOINT")
    if env:
        return Path(env)
    import unclip

    return Path(unclip.__file__).resolve().parents[1] / "checkpoints" / "shapes"


@dataclass
class StageSampling:
    """How one stage samples by default (stored in ``pipeline.json``)."""

    diffusion: DiffusionConfig  # schedule, parameterisation, default steps and guidance
    sampler: Sampler = Sampler.ddpm  # ddpm (Karlo's ancestral sampling), ddim, dpmpp or unclip


@dataclass
class StageRun:
    """One stage's settings for one call (defaults with the caller's overrides applied)."""

    diffusion: DiffusionConfig
    sampler: Sampler
    steps: int
    guidance: float

    def scheduler(self):
        return make_scheduler(self.diffusion, self.sampler)


@dataclass
class Generation:
    """Everything ``generate(..., return_embeddings=True)`` produced, one row per image."""

    images: list[Image.Image]
    pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1], before quantisation to 8 bits
    image_emb: torch.Tensor  # (B, D) raw CLIP image embeddings chosen by the prior
    text_emb: torch.Tensor  # (B, D) the prompts' CLIP text embeddings


@dataclass
class Latent:
    """An image's bipartite latent (paper §3): its CLIP embedding and DDIM-inverted decoder noise."""

    image_emb: torch.Tensor  # (1, D)
    x_T: torch.Tensor  # (1, 3, S, S) at the decoder's side S


def default_sampling(stage: str, module: torch.nn.Module | None = None) -> StageSampling:
    """Sampling defaults for a stage when a folder does not say: prior 25 steps guidance 4,
    decoder 25 steps guidance 8, upsamplers 7 steps (Karlo's), all ancestral DDPM."""
    if stage == PRIOR:
        diffusion = PriorStageConfig().diffusion
    elif stage == DECODER:
        diffusion = DecoderStageConfig().diffusion
        if module is not None and not module.cfg.learned_variance:
            diffusion = replace(diffusion, variance=Variance.fixed_small)
    else:
        diffusion = UpsamplerStageConfig().diffusion
    return StageSampling(diffusion=diffusion)


class UnCLIPPipeline:
    """CLIP + prior + decoder + upsamplers; any stage but CLIP may be missing."""

    def __init__(self, clip: ClipEncoder, prior: Prior | None = None, decoder: Decoder | None = None,
                 upsamplers: Mapping[str, Upsampler] | None = None,
                 sampling: Mapping[str, StageSampling] | None = None,
                 last_steps: Mapping[str, Upsampler] | None = None, random_weights: bool = False):
        self.clip = clip
        self.prior = prior
        self.decoder = decoder
        self.upsamplers = dict(upsamplers or {})
        self.last_steps = dict(last_steps or {})  # upsampler slot → UNet for its final step (Karlo)
        self.random_weights = random_weights  # built from configs, not trained: outputs are noise
        unknown = sorted(set(self.upsamplers) - set(UPSAMPLERS)) + sorted(set(self.last_steps) - set(self.upsamplers))
        if unknown:
            raise ValueError(f"upsamplers: unknown or unpaired slot {unknown[0]!r} (slots: {', '.join(UPSAMPLERS)})")
        self._check_widths()
        self.sampling = {stage: default_sampling(stage, self.component(stage)) for stage in STAGES}
        self.sampling.update(sampling or {})
        for module in self._modules():
            module.eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------
    # construction, saving, loading

    @classmethod
    def from_configs(cls, config_dir: str | Path, seed: int = 0, device: str | torch.device = "cpu") -> UnCLIPPipeline:
        """Random weights built from a config folder such as ``configs/tiny`` (one stage YAML per
        component, named like the pipeline sub-folders). For tests and smoke runs only."""
        from unclip.models import build_stage_model

        folder = Path(config_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"config folder not found: {folder}")
        files = {name: folder / f"{name}.yaml" for name in ("clip", *STAGES) if (folder / f"{name}.yaml").is_file()}
        if not files:
            raise ValueError(f"{folder} holds none of clip.yaml, {', '.join(f'{s}.yaml' for s in STAGES)}")
        cfgs = {name: load_stage_config(path) for name, path in files.items()}
        clip_cfg = next((c.clip for c in cfgs.values() if hasattr(c, "clip")), None)
        if clip_cfg is None:
            raise ValueError(f"{folder}: no stage file has a clip section, so the pipeline has no CLIP")
        modules: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = ClipEncoder(replace(clip_cfg, pretrained=None))
            for stage in STAGES:
                if stage in cfgs:
                    modules[stage] = build_stage_model(cfgs[stage])
        sampling = {stage: StageSampling(diffusion=cfgs[stage].diffusion) for stage in modules}
        return cls(clip, modules.get(PRIOR), modules.get(DECODER),
                   {s: modules[s] for s in UPSAMPLERS if s in modules}, sampling, random_weights=True).to(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        clip: ClipConfig | None = None) -> UnCLIPPipeline:
        """Load a pipeline folder (see the module docstring). ``clip`` replaces the folder's
        ``clip/`` (e.g. a named open_clip model whose weights file is on disk)."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"pipeline folder not found: {root}")
        meta = pipeline_meta(root)
        listed = meta.get("components")
        names = [n for n in ("clip", *STAGES) if is_component(root / n) and (listed is None or n in listed)]
        if not names:
            karlo = (root / "super_res_first").is_dir() or (root / "model_index.json").is_file()
            hint = (" It looks like a diffusers (Karlo) folder: load it with UnCLIPPipeline.from_karlo(path, clip=...)."
                    if karlo else "")
            raise ValueError(f"{root} holds none of the pipeline sub-folders clip/, prior/, decoder/, "
                             f"upsampler_256/, upsampler_1024/ (each config.json + {WEIGHTS_NAME}).{hint}")
        if clip is not None:
            encoder = load_clip(clip, device)
        elif "clip" in names:
            encoder = load_expected(root / "clip", "clip")
        else:
            raise ValueError(f"missing component: {root} has no clip/ sub-folder; pass clip=ClipConfig(...) naming "
                             "the CLIP the prior and decoder were trained with")
        modules = {n: load_expected(root / n, "upsampler" if n in UPSAMPLERS else n) for n in STAGES if n in names}
        last = {n: load_expected(root / (n + LAST_STEP_SUFFIX), "upsampler")
                for n in UPSAMPLERS if n in modules and is_component(root / (n + LAST_STEP_SUFFIX))}
        sampling = {}
        for stage in modules:
            found = stored_sampling(root / stage, meta.get("stages", {}).get(stage), f"{root / PIPELINE_FILE}:{stage}")
            if found is not None:
                sampling[stage] = found
        upsamplers = {n: modules[n] for n in UPSAMPLERS if n in modules}
        pipe = cls(encoder, modules.get(PRIOR), modules.get(DECODER), upsamplers, sampling, last)
        return pipe.to(device)

    @classmethod
    def from_karlo(cls, path: str | Path, clip: ClipConfig | None = None, *,
                   device: str | torch.device = "cpu") -> UnCLIPPipeline:
        """Load a diffusers-format Karlo folder (prior, decoder, text_proj, super_res_first,
        super_res_last, schedulers) with an open_clip CLIP whose weights are on disk; see ``unclip.karlo``."""
        from unclip.karlo import load_karlo

        return load_karlo(path, clip, device=device)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the pipeline folder: one sub-folder per component, ``text_proj/`` (a mirror of the
        decoder's TextProj in diffusers' layout; ``decoder/`` is what loads) and ``pipeline.json``.
        ``dtype`` (e.g. torch.float16) casts the weight matrices; 1-D tensors keep their precision."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        save_component(self.clip, root / "clip", dtype)
        components = ["clip"]
        for stage in STAGES:
            module = self.component(stage)
            if module is not None:
                save_component(module, root / stage, dtype)
                components.append(stage)
        for stage, module in self.last_steps.items():
            save_component(module, root / (stage + LAST_STEP_SUFFIX), dtype)
        if self.decoder is not None:
            text_proj = root / "text_proj"
            text_proj.mkdir(exist_ok=True)
            proj = self.decoder.text_proj
            config = {"_class_name": "UnCLIPTextProjModel", **proj.config()}
            (text_proj / CONFIG_NAME).write_text(json.dumps(config, indent=2))
            save_file({k: v.detach().cpu().to(dtype if dtype and is_matrix(v) else v.dtype).contiguous()
                       for k, v in proj.state_dict().items()},
                      str(text_proj / WEIGHTS_NAME))
        meta = {"format": "unclip-pipeline", "version": 1, "components": components,
                "stages": {s: to_dict(self.sampling[s]) for s in components if s in STAGES}}
        (root / PIPELINE_FILE).write_text(json.dumps(meta, indent=2))
        return root

    def component(self, stage: str) -> torch.nn.Module | None:
        if stage == PRIOR:
            return self.prior
        if stage == DECODER:
            return self.decoder
        return self.upsamplers.get(stage)

    def _modules(self) -> list[torch.nn.Module]:
        parts = [self.clip, self.prior, self.decoder, *self.upsamplers.values(), *self.last_steps.values()]
        return [m for m in parts if m is not None]

    def to(self, device: str | torch.device) -> UnCLIPPipeline:
        """Move every network to ``device`` (weights stay float32; use ``torch.autocast`` for bf16/fp16)."""
        for module in self._modules():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @property
    def sizes(self) -> list[int]:
        """Output sides this pipeline can make: the decoder's, then each upsampler's in turn."""
        if self.decoder is None:
            return []
        sizes = [self.decoder.cfg.sample_size]
        for slot in UPSAMPLERS:
            if slot not in self.upsamplers:
                break  # a 1024 stage without the 256 stage cannot be reached
            sizes.append(self.upsamplers[slot].cfg.sample_size)
        return sizes

    @property
    def default_size(self) -> int:
        """The side made when none is asked for: the largest up to ``DEFAULT_MAX_SIZE`` (256), as
        the 256→1024 stage costs minutes per image on a CPU; ask for 1024 with ``size=1024``."""
        return max([s for s in self.sizes if s <= DEFAULT_MAX_SIZE] or self.sizes[:1])

    def _check_widths(self) -> None:
        d, length = self.clip.embed_dim, int(self.clip.model.context_length)
        if self.prior is not None and (self.prior.cfg.embedding_dim, self.prior.cfg.num_embeddings) != (d, length):
            raise ValueError(f"prior: embedding_dim={self.prior.cfg.embedding_dim}, num_embeddings="
                             f"{self.prior.cfg.num_embeddings} do not fit the CLIP (D={d}, context {length})")
        if self.decoder is not None and self.decoder.cfg.clip_embeddings_dim != d:
            raise ValueError(f"decoder: clip_embeddings_dim={self.decoder.cfg.clip_embeddings_dim} does not fit "
                             f"the CLIP (D={d})")

    # ------------------------------------------------------------------------------------------
    # input checks (each ValueError names the argument)

    def require(self, stage: str, purpose: str) -> None:
        if self.component(stage) is None:
            raise ValueError(f"missing component: this pipeline has no {stage}/, which {purpose} needs")

    def token_count(self, text: str) -> int:
        """Tokens CLIP sees for ``text``, start and end tokens included (computed, not estimated)."""
        room = 4 * len(text.encode("utf-8")) + 8  # BPE never makes more tokens than this
        ids = self.clip.tokenizer([text], context_length=room)
        return int(ids[0].argmax()) + 1  # EOT has the largest id

    def check_prompts(self, prompts: str | Sequence[str], name: str = "prompt", allow_empty: bool = False) -> list[str]:
        items = [prompts] if isinstance(prompts, str) else list(prompts)
        if not items:
            raise ValueError(f"{name}: no prompt given")
        limit = int(self.clip.model.context_length)
        for text in items:
            if not isinstance(text, str):
                raise ValueError(f"{name}: expected text, got {type(text).__name__}")
            if not text.strip() and not allow_empty:
                raise ValueError(f"{name}: the prompt is empty")
            count = self.token_count(text)
            if count > limit:
                shown = text if len(text) <= 40 else text[:37] + "..."
                raise ValueError(f"{name}: {shown!r} is {count} tokens long after tokenisation (start and end "
                                 f"tokens included); this CLIP reads at most {limit}")
        return items

    def check_size(self, size: int | None) -> int:
        if not self.sizes:
            raise ValueError("missing component: this pipeline has no decoder/, so it makes no images")
        if size is None:
            return self.default_size
        if size not in self.sizes:
            raise ValueError(f"size: {size} is not supported by this pipeline; it makes "
                             f"{', '.join(map(str, self.sizes))}")
        return int(size)

    def upsampler_chain(self, size: int) -> list[str]:
        """Upsampler slots that take the decoder's output to ``size``."""
        return list(UPSAMPLERS[: self.sizes.index(size)])

    def plan(self, stages: Sequence[str], steps: StageValue = None, guidance: StageValue = None,
             sampler: StageValue = None) -> dict[str, StageRun]:
        """Per-stage settings for one call. Each override is a value for every stage (guidance: the
        prior and the decoder) or a ``{stage: value}`` dict; ``"upsampler"`` names both upsamplers."""
        plan = {}
        for stage in stages:
            defaults = self.sampling[stage]
            n = _pick(steps, "steps", stage, defaults.diffusion.sample_steps)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"steps: the {stage} needs a whole number of steps, at least 1; got {n!r}")
            scalar_guides = stage in (PRIOR, DECODER)
            g = _pick(guidance, "guidance", stage, defaults.diffusion.guidance_scale, scalar=scalar_guides)
            if isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0:
                raise ValueError(f"guidance: expected a number >= 0 for the {stage}, got {g!r}")
            if stage in UPSAMPLERS and g != 1:
                raise ValueError(f"guidance: the upsamplers are never guided (got {g} for {stage})")
            kind = _pick(sampler, "sampler", stage, defaults.sampler)
            try:
                kind = Sampler(kind)
            except ValueError:
                raise ValueError(f"sampler: {kind!r} is not one of {', '.join(s.value for s in Sampler)}") from None
            if kind is Sampler.unclip and defaults.diffusion.beta_schedule.value != "squaredcos_cap_v2":
                raise ValueError(f"sampler: 'unclip' needs the cosine schedule, but the {stage} uses "
                                 f"{defaults.diffusion.beta_schedule.value}; use ddpm, ddim or dpmpp")
            plan[stage] = StageRun(defaults.diffusion, kind, n, float(g))
        return plan

    # ------------------------------------------------------------------------------------------
    # text → image

    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str], n: int = 1, size: int | None = None, *,
                 steps: StageValue = None, guidance: StageValue = None, sampler: StageValue = None,
                 seed: int | None = None, generator: torch.Generator | None = None, prior_candidates: int = 2,
                 return_embeddings: bool = False, progress: bool = True) -> list[Image.Image] | Generation:
        """``n`` images per prompt at side ``size`` (default: ``default_size``, at most 256).

        ``steps``, ``guidance`` and ``sampler`` override the stage defaults (see ``plan``), e.g.
        ``steps={"prior": 25, "decoder": 50}``, ``guidance={"decoder": 3}``, ``sampler="dpmpp"``.
        ``seed`` or ``generator`` make the call reproducible. Returns PIL images, or a
        ``Generation`` with the pixels and embeddings when ``return_embeddings``.
        """
        prompts = self.check_prompts(prompts)
        check_count("n", n)
        check_count("prior_candidates", prior_candidates)
        self.require(PRIOR, "generate")
        self.require(DECODER, "generate")
        size = self.check_size(size)
        plan = self.plan([PRIOR, DECODER, *self.upsampler_chain(size)], steps, guidance, sampler)
        g = self.make_generator(seed, generator)
        rows = torch.arange(len(prompts), device=self.device).repeat_interleave(n)
        text = self.clip.encode_text(prompts)[rows]  # (B, ...), B = len(prompts)·n
        image_emb = self.sample_prior(text, plan[PRIOR], g, candidates=prior_candidates, progress=progress)
        pixels = self.decode(image_emb, text, plan[DECODER], g, progress=progress)
        pixels = self.upsample(pixels, size, plan, g, progress=progress)
        images = tensor_to_pil(pixels)
        if return_embeddings:
            return Generation(images=images, pixels=pixels, image_emb=image_emb, text_emb=text.emb)
        return images

    def empty_text(self, batch: int) -> TextEncoding:
        """The empty caption's encodings, repeated: the unconditional half of guidance."""
        e = self.clip.encode_text([""])
        return TextEncoding(e.tokens.expand(batch, -1, -1), e.mask.expand(batch, -1), e.emb.expand(batch, -1))

    @torch.no_grad()
    def sample_prior(self, text: TextEncoding, run: StageRun, generator, *, candidates: int = 2,
                     progress: bool = True) -> torch.Tensor:
        """Raw CLIP image embeddings (B, D) for ``text`` (B rows): ``candidates`` samples each, the one
        with the highest ⟨z_i, text_emb⟩ kept (paper §2.2)."""
        batch = len(text.emb)
        cond = text[torch.arange(batch, device=text.emb.device).repeat_interleave(candidates)]  # (B·k, ...)
        if run.guidance != 1:
            cond = TextEncoding.cat([self.empty_text(len(cond.emb)), cond])  # [uncond; cond]

        def model_fn(x_t, t):
            return self.prior(x_t, t, text_emb=cond.emb, text_tokens=cond.tokens, text_mask=cond.mask)

        fn = guided(model_fn, run.guidance) if run.guidance != 1 else model_fn
        x_T = self.noise((batch * candidates, self.prior.cfg.embedding_dim), generator)
        x0 = sample_loop(fn, run.scheduler(), x_T, run.steps, generator=generator, desc="prior", progress=progress)
        z = self.prior.unstandardise(x0).reshape(batch, candidates, -1)  # (B, k, D)
        score = (z * text.emb[:, None]).sum(-1)  # (B, k)
        return z[torch.arange(batch, device=z.device), score.argmax(dim=1)]

    def decoder_fn(self, image_emb: torch.Tensor, text: TextEncoding, guidance: float):
        """The decoder as ``model_fn(x_t, t)``; with guidance, the batch is ``[uncond; cond]`` with
        uncond = (learned null image embedding, empty caption) and eps alone is guided."""
        batch = len(image_emb)
        if guidance != 1:
            image_emb = torch.cat([self.decoder.text_proj.null_image_emb(batch), image_emb])
            text = TextEncoding.cat([self.empty_text(batch), text])

        def model_fn(x_t, t):
            return self.decoder(x_t, t, image_emb=image_emb, text_emb=text.emb, text_tokens=text.tokens,
                                text_mask=text.mask)

        return guided(model_fn, guidance, guide_channels=3) if guidance != 1 else model_fn

    @torch.no_grad()
    def decode(self, image_emb: torch.Tensor, text: TextEncoding, run: StageRun, generator, *,
               x_T: torch.Tensor | None = None, eta: float = 0.0, progress: bool = True) -> torch.Tensor:
        """Decoder samples (B, 3, S, S) in [−1, 1] for image embeddings (B, D) and captions (B)."""
        side = self.decoder.cfg.sample_size
        if x_T is None:
            x_T = self.noise((len(image_emb), 3, side, side), generator)
        fn = self.decoder_fn(image_emb, text, run.guidance)
        x0 = sample_loop(fn, run.scheduler(), x_T, run.steps, channels=3, generator=generator, eta=eta,
                         desc="decoder", progress=progress)
        return x0.clamp(-1, 1)

    @torch.no_grad()
    def upsample(self, pixels: torch.Tensor, size: int, plan: Mapping[str, StageRun], generator, *,
                 progress: bool = True) -> torch.Tensor:
        """Run the upsamplers that take ``pixels`` (B, 3, s, s; the decoder's output or an earlier
        stage's) to ``size`` (no guidance); stages at or below side s are skipped."""
        for slot in self.upsampler_chain(size):
            run = plan[slot]
            side = self.upsamplers[slot].cfg.sample_size
            if side <= pixels.shape[-1]:
                continue
            scheduler = run.scheduler()
            model_fn = self.upsampler_fn(slot, pixels, scheduler, run)
            noise = self.noise((len(pixels), 3, side, side), generator)
            x_T = noised_start(run.diffusion, upsample_condition(pixels, side), noise)
            pixels = sample_loop(model_fn, scheduler, x_T, run.steps, channels=3, generator=generator,
                                 desc=slot, progress=progress, start=run.diffusion.sample_start).clamp(-1, 1)
        return pixels

    def upsampler_fn(self, slot: str, low_res: torch.Tensor, scheduler, run: StageRun):
        """Upsampler ``slot`` as ``model_fn(x_t, t)`` conditioned on ``low_res``; sampled with
        ``run`` on ``scheduler``, Karlo's last-step UNet (if loaded) takes the final step."""
        net, last = self.upsamplers[slot], self.last_steps.get(slot)
        final_t = int(set_timesteps(scheduler, run.steps, run.diffusion.sample_start)[-1])

        def model_fn(x_t, t):
            model = last if last is not None and int(t[0]) == final_t else net
            return model(x_t, t, low_res=low_res)

        return model_fn

    # ------------------------------------------------------------------------------------------
    # randomness

    def make_generator(self, seed: int | None, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()
        else:
            g.manual_seed(int(seed))
        return g

    def noise(self, shape: tuple[int, ...], generator) -> torch.Tensor:
        """N(0, I) of ``shape``; a list of generators draws one row each (diffusers' convention)."""
        if isinstance(generator, (list, tuple)):
            rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
            return torch.cat(rows).to(self.device)
        device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=device).to(self.device)

    # ------------------------------------------------------------------------------------------
    # manipulations (paper §3), implemented in unclip.manipulate

    def invert(self, image: ImageInput, **kwargs) -> Latent:
        """(z_i, DDIM-inverted x_T) of an image; see ``manipulate.invert``."""
        from unclip.manipulate import invert

        return invert(self, image, **kwargs)

    def variations(self, image: ImageInput, n: int = 4, **kwargs) -> list[Image.Image]:
        """``n`` variations of an image; see ``manipulate.variations``."""
        from unclip.manipulate import variations

        return variations(self, image, n, **kwargs)

    def interpolate(self, image_a: ImageInput, image_b: ImageInput, frames: int = 8, **kwargs) -> list[Image.Image]:
        """Frames from image_a to image_b; see ``manipulate.interpolate``."""
        from unclip.manipulate import interpolate

        return interpolate(self, image_a, image_b, frames, **kwargs)

    def text_diff(self, image: ImageInput, from_text: str, to_text: str, thetas: Sequence[float] | None = None,
                  **kwargs) -> list[Image.Image]:
        """An image moved from one caption toward another; see ``manipulate.text_diff``."""
        from unclip.manipulate import text_diff

        return text_diff(self, image, from_text, to_text, thetas, **kwargs)


# ----------------------------------------------------------------------------------------------
# helpers


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _pick(value: StageValue, name: str, stage: str, default: Any, scalar: bool = True) -> Any:
    """The override of ``stage`` in ``value`` (see ``UnCLIPPipeline.plan``), else ``default``."""
    if value is None:
        return default
    if isinstance(value, Mapping):
        known = {*STAGES, "upsampler"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name}: unknown stage {unknown[0]!r} (stages: {', '.join(sorted(known))})")
        if stage in value:
            return value[stage]
        if stage in UPSAMPLERS and "upsampler" in value:
            return value["upsampler"]
        return default
    return value if scalar else default


def pipeline_meta(root: Path) -> dict:
    """The pipeline folder ``root``'s ``pipeline.json`` (components, per-stage sampling); {} if it has none."""
    meta_file = Path(root) / PIPELINE_FILE
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def stored_sampling(folder: Path, stored: dict | None = None, where: str | None = None) -> StageSampling | None:
    """A stage's sampling defaults: ``stored`` (from ``pipeline.json``, named ``where`` in errors)
    if given, else the ``diffusion`` (and ``sampler``) its component's config.json carries, else None."""
    where = where or f"{folder / CONFIG_NAME}"
    if stored is None:
        meta = json.loads((folder / CONFIG_NAME).read_text())
        if "diffusion" not in meta:
            return None
        stored = {"diffusion": meta["diffusion"], **({"sampler": meta["sampler"]} if "sampler" in meta else {})}
    return from_dict(StageSampling, stored, where=where)


def load_image(image: ImageInput, name: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image or a path; it must be square."""
    if not isinstance(image, Image.Image):
        path = Path(image)
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as err:  # missing file, not an image, truncated data
            raise ValueError(f"{name}: cannot read {path}: {err}") from None
    image = image.convert("RGB")
    w, h = image.size
    if w != h:
        side = min(w, h)
        raise ValueError(f"{name}: the image is {w}×{h}, not square; crop it to a square first, e.g. "
                         f"PIL.ImageOps.fit(image, ({side}, {side}))")
    return image
