"""The unCLIP cascade at inference: text → image, and the paper's image manipulations (§3).

``UnCLIPPipeline`` holds a frozen CLIP and whichever stages a folder provides (the prior, the
64×64 decoder, up to two upsamplers) and is the public face of the package: loading and saving
(``folder``, ``karlo``), sampling (``sampling``), the manipulations (``manipulate``) and edits
(``inpaint``) live in their own modules, which take the pipeline as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import takewhile
from pathlib import Path

import torch
from PIL import Image

import unclip.pipeline.folder as folder
import unclip.pipeline.inpaint as inpaint
import unclip.pipeline.karlo as karlo
import unclip.pipeline.manipulate as manipulate
import unclip.pipeline.outpaint as outpaint
from unclip.config import SAMPLED_STAGES, UPSAMPLERS, ClipConfig, Stage
from unclip.networks.clip import ClipEncoder, TextEncoding
from unclip.networks.decoder import Decoder, check_context_fits
from unclip.networks.layers import inference_memory_format
from unclip.networks.prior import Prior
from unclip.networks.upsampler import Upsampler
from unclip.pipeline.inputs import ImageInput
from unclip.pipeline.plan import (
    Generation,
    Latent,
    SamplingOptions,
    StageRun,
    StageSampling,
    default_sampling,
    make_plan,
)
from unclip.pipeline.sampling import text_to_image, upscale

DEFAULT_MAX_SIZE = 256  # default output side: the largest the pipeline makes up to this


class UnCLIPPipeline:
    """CLIP + prior + decoder + upsamplers; any stage but CLIP may be missing."""

    def __init__(self, clip: ClipEncoder, prior: Prior | None = None, decoder: Decoder | None = None,
                 upsamplers: Mapping[Stage, Upsampler] | None = None,
                 sampling: Mapping[Stage, StageSampling] | None = None,
                 last_steps: Mapping[Stage, Upsampler] | None = None):
        self.clip, self.prior, self.decoder = clip, prior, decoder
        self.upsamplers = {Stage(s): m for s, m in (upsamplers or {}).items() if s in UPSAMPLERS}
        self.last_steps = {Stage(s): m for s, m in (last_steps or {}).items() if s in self.upsamplers}
        unknown = sorted({*(upsamplers or {}), *(last_steps or {})} - set(self.upsamplers))
        if unknown:
            raise ValueError(f"upsamplers: unknown or unpaired slot {unknown[0]!r} (slots: {', '.join(UPSAMPLERS)})")
        _check_widths(self)
        learned = decoder is None or decoder.cfg.learned_variance
        self.sampling = {**{s: default_sampling(s, learned) for s in SAMPLED_STAGES},
                         **{Stage(s): v for s, v in (sampling or {}).items()}}
        self._empty: dict[tuple, TextEncoding] = {}
        for module in self._modules():
            module.eval().requires_grad_(False)
        self.to(self.device)  # the UNets' memory format for this device

    @classmethod
    def from_configs(cls, config_dir: str | Path, seed: int = 0, device: str | torch.device = "cpu") -> UnCLIPPipeline:
        """Random weights built from a config folder such as ``configs/tiny`` (tests, smoke runs)."""
        return cls(**vars(folder.random_parts(config_dir, seed))).to(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", clip: ClipConfig | None = None,
                        prior: str = "prior") -> UnCLIPPipeline:
        """Load a pipeline folder (see ``unclip.pipeline.folder``); ``clip`` replaces its ``clip/``,
        ``prior`` names the sub-folder whose prior it uses (``prior_ar``: the autoregressive one)."""
        return cls(**vars(folder.read_folder(path, clip, prior))).to(device)

    @classmethod
    def from_karlo(cls, path: str | Path, clip: ClipConfig | None = None, *,
                   device: str | torch.device = "cpu") -> UnCLIPPipeline:
        """Load a diffusers-format Karlo folder with an open_clip CLIP on disk (see ``unclip.pipeline.karlo``)."""
        return cls(**vars(karlo.read_karlo(path, clip))).to(device)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the pipeline folder; ``dtype`` (e.g. torch.float16) casts the weight matrices."""
        return folder.write_pipeline_folder(self, path, dtype)

    def component(self, stage: Stage | str) -> torch.nn.Module | None:
        return {Stage.clip: self.clip, Stage.prior: self.prior, Stage.decoder: self.decoder}.get(
            Stage(stage), self.upsamplers.get(Stage(stage)))

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.clip, self.prior, self.decoder, *self.upsamplers.values(), *self.last_steps.values())
                if m is not None]

    def to(self, device: str | torch.device) -> UnCLIPPipeline:
        """Move every network to ``device`` (see ``move_networks``)."""
        move_networks(self, torch.device(device))
        return self

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @property
    def sizes(self) -> list[int]:
        """Sides of the cascade: the decoder's (else the first upsampler's input), then the upsamplers'."""
        ups = [self.upsamplers[s].cfg for s in takewhile(self.upsamplers.__contains__, UPSAMPLERS)]
        base = [self.decoder.cfg.sample_size] if self.decoder else [ups[0].low_res_size] if ups else []
        return [*base, *(up.sample_size for up in ups)]

    @property
    def default_size(self) -> int:
        """The side made when none is asked for: the largest up to ``DEFAULT_MAX_SIZE`` (256), as
        the 256→1024 stage costs minutes per image on a CPU; ask for 1024 with ``size=1024``."""
        return max([s for s in self.sizes if s <= DEFAULT_MAX_SIZE] or self.sizes[:1])

    def empty_caption(self) -> TextEncoding:
        """The empty caption's encodings (one row), guidance's unconditional text: encoded once per
        device and autocast setting."""
        key = (self.device, torch.is_autocast_enabled(self.device.type), torch.get_autocast_dtype(self.device.type))
        if key not in self._empty:
            self._empty[key] = self.clip.encode_text([""])
        return self._empty[key]

    def require(self, stage: Stage, purpose: str) -> None:
        if self.component(stage) is None:
            raise ValueError(f"missing component: this pipeline has no {stage}/, which {purpose} needs")

    def check_size(self, size: int | None) -> int:
        if self.decoder is None:
            raise ValueError("missing component: this pipeline has no decoder/, so it makes no images")
        if size is None:
            return self.default_size
        if size not in self.sizes:
            raise ValueError(f"size: {size} is not supported by this pipeline; it makes "
                             f"{', '.join(map(str, self.sizes))}")
        return int(size)

    def upsampler_chain(self, size: int) -> list[Stage]:
        """Upsampler slots that take the decoder's output to ``size``."""
        return list(UPSAMPLERS[: self.sizes.index(size)])

    def plan(self, stages: Sequence[Stage], options: SamplingOptions | None = None,
             **overrides) -> dict[Stage, StageRun]:
        """Per-stage settings for one call (see ``plan.make_plan``)."""
        return make_plan(self.sampling, [Stage(s) for s in stages], SamplingOptions.of(options, overrides))

    def generate(self, prompts: str | Sequence[str], n: int = 1, options: SamplingOptions | None = None, *,
                 prior_candidates: int = 2, decoder_candidates: int = 1, return_embeddings: bool = False,
                 **overrides) -> list[Image.Image] | Generation:
        """``n`` images per prompt, each the best of ``prior_candidates`` z_i and ``decoder_candidates`` images by CLIP."""
        return text_to_image(self, prompts, n, SamplingOptions.of(options, overrides),
                             prior_candidates=prior_candidates, decoder_candidates=decoder_candidates,
                             return_embeddings=return_embeddings)

    def invert(self, image: ImageInput, options: SamplingOptions | None = None, **overrides) -> Latent:
        """(z_i, DDIM-inverted x_T) of an image; see ``manipulate.invert``."""
        return manipulate.invert(self, image, SamplingOptions.of(options, overrides))

    def variations(self, image: ImageInput, n: int = 4, options: SamplingOptions | None = None, *,
                   eta: float = 1.0, **overrides) -> list[Image.Image]:
        """``n`` variations of an image; see ``manipulate.variations``."""
        return manipulate.variations(self, image, n, SamplingOptions.of(options, overrides), eta=eta)

    def interpolate(self, image_a: ImageInput, image_b: ImageInput, frames: int = 8,
                    options: SamplingOptions | None = None, *, noise: str = "fixed", **overrides) -> list[Image.Image]:
        """Frames from image_a to image_b; see ``manipulate.interpolate``."""
        return manipulate.interpolate(self, image_a, image_b, frames, SamplingOptions.of(options, overrides),
                                      noise=noise)

    def text_diff(self, image: ImageInput, from_text: str, to_text: str, thetas: Sequence[float] | None = None,
                  options: SamplingOptions | None = None, **overrides) -> list[Image.Image]:
        """An image moved from one caption toward another; see ``manipulate.text_diff``."""
        return manipulate.text_diff(self, image, from_text, to_text, thetas, SamplingOptions.of(options, overrides))

    def inpaint(self, image: Image.Image, prompt: str, options: SamplingOptions | None = None, *,
                mask: Image.Image | None = None, n: int = 1, output_side: int | None = None, resample: int = 0,
                **overrides) -> list[Image.Image]:
        """Edits of a square image: its transparent pixels regenerated; see ``inpaint.inpaint``."""
        return inpaint.inpaint(self, image, prompt, SamplingOptions.of(options, overrides), mask=mask, n=n,
                               output_side=output_side, resample=resample)

    def upscale(self, image: ImageInput, options: SamplingOptions | None = None, **overrides) -> Image.Image:
        """A square image through the upsamplers alone, to ``size``; see ``sampling.upscale``."""
        return upscale(self, image, SamplingOptions.of(options, overrides))

    def outpaint(self, image: Image.Image, prompt: str, options: SamplingOptions | None = None, *, left: int = 0,
                 right: int = 0, top: int = 0, bottom: int = 0, context: float = 0.25, resample: int = 0,
                 **overrides) -> Image.Image:
        """``image`` on a canvas grown by the margins, the new area drawn to fit; see ``outpaint.outpaint``."""
        return outpaint.outpaint(self, image, prompt, SamplingOptions.of(options, overrides),
                                 margins=outpaint.Margins(left, right, top, bottom), context=context, resample=resample)


def unets(pipe: UnCLIPPipeline) -> list[Decoder | Upsampler]:
    """The pipeline's convolutional networks: the decoder, the upsamplers and their last-step UNets."""
    return [m for m in (pipe.decoder, *pipe.upsamplers.values(), *pipe.last_steps.values()) if m is not None]


def move_networks(pipe: UnCLIPPipeline, device: torch.device) -> None:
    """Every network to ``device``, weights float32 (``precision="bf16"`` autocasts), the UNets'
    weights in the memory format that is fastest there (``inference_memory_format``)."""
    for module in (pipe.clip, pipe.prior):
        if module is not None:
            module.to(device)
    for unet in unets(pipe):
        unet.to(device, memory_format=inference_memory_format(device))


def _check_widths(pipe: UnCLIPPipeline) -> None:
    """The prior and the decoder read embeddings of the pipeline's CLIP: their widths must fit it."""
    d, length = pipe.clip.embed_dim, pipe.clip.context_length
    if pipe.prior is not None and (pipe.prior.cfg.embedding_dim, pipe.prior.cfg.num_embeddings) != (d, length):
        raise ValueError(f"prior: embedding_dim={pipe.prior.cfg.embedding_dim}, num_embeddings="
                         f"{pipe.prior.cfg.num_embeddings} do not fit the CLIP (D={d}, context {length})")
    if pipe.decoder is not None:
        if pipe.decoder.cfg.clip_embeddings_dim != d:
            raise ValueError(f"decoder: clip_embeddings_dim={pipe.decoder.cfg.clip_embeddings_dim} does not fit "
                             f"the CLIP (D={d})")
        check_context_fits(pipe.decoder.cfg, length)
