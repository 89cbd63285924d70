"""The pipeline's shared vocabulary: how a stage samples, the options of one sampling call, and
the per-stage plan that combines the two.

Every module of ``unclip.pipeline`` imports this one and none of them imports the pipeline class,
so the manipulations, inpainting, Karlo interop and folder I/O take a pipeline as an argument.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from unclip.config import (
    GUIDED_STAGES,
    SAMPLED_STAGES,
    UPSAMPLER,
    UPSAMPLERS,
    BetaSchedule,
    DecoderStageConfig,
    DiffusionConfig,
    PriorStageConfig,
    Stage,
    UpsamplerStageConfig,
    Variance,
)
from unclip.diffusion.sampling import set_timesteps
from unclip.diffusion.schedule import Sampler, make_scheduler, samplers_other_than_unclip

StageValue = Any  # a number or sampler name for every stage, or {stage: value}
PRECISIONS = {"auto": None, "fp32": None, "bf16": torch.bfloat16}  # SamplingOptions.precision → autocast dtype
# Under autocast the decoder's steps at t ≤ this fraction of its T run in float32 (``denoisers.fp32_below``):
# the last 2 of 10 DDPM steps; bf16 there costs FID 64 five points, float32 there none (README, Performance)
DECODER_FP32_BELOW = 0.125


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 matrix units, where bf16 autocast samples faster than fp32: a CUDA
    GPU that supports bf16, or a CPU with AVX512-BF16 or AMX. (On an AVX2-only CPU bf16 matmuls
    ran about 10× slower than fp32.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: float32); "auto" is bf16 where
    ``fast_bf16`` holds."""
    if precision == "auto":
        return torch.bfloat16 if fast_bf16(device) else None
    return PRECISIONS[precision]


@dataclass
class StageSampling:
    """How one stage samples by default (stored with its component, in ``config.json``)."""

    diffusion: DiffusionConfig  # schedule, parameterisation, default steps and guidance
    sampler: Sampler = Sampler.ddpm  # ddpm (Karlo's ancestral sampling), ddim, dpmpp, dpmpp-sde or unclip
    # upsamplers: run the network on overlapping tiles of this side (its training crops' side, so
    # that GroupNorm sees what it trained on; ``unclip.networks.tiling``); None: the whole image
    tile: int | None = None


@dataclass
class StageRun:
    """One stage's settings for one call (defaults with the caller's options applied)."""

    diffusion: DiffusionConfig
    sampler: Sampler
    steps: int
    guidance: float
    tile: int | None = None  # upsamplers: tile side (None: the whole image)

    def scheduler(self):
        return make_scheduler(self.diffusion, self.sampler)


@dataclass(frozen=True)
class SamplingOptions:
    """The options every sampling call takes (``generate``, ``variations``, ``interpolate``,
    ``text_diff``, ``inpaint``); the public methods also accept them as keyword arguments.

    ``steps``, ``guidance`` and ``sampler`` are one value for every stage (guidance: the prior and
    the decoder) or a ``{stage: value}`` dict, where ``"upsampler"`` names both upsamplers, e.g.
    ``steps={"prior": 25, "decoder": 50}``, ``guidance={"decoder": 3}``, ``sampler="dpmpp"``.
    """

    size: int | None = None  # output side; None: the pipeline's default (at most 256)
    steps: StageValue = None  # None: each stage's default
    guidance: StageValue = None
    sampler: StageValue = None
    tile: StageValue = None  # upsamplers: tile side, 0 for the whole image; None: each one's default
    seed: int | None = None  # None (and no generator): a fresh seed
    generator: torch.Generator | Sequence[torch.Generator] | None = None  # wins over seed; a list: one per row
    progress: bool = True  # tqdm bars per stage
    # "bf16": bf16 autocast on the pipeline's device; "auto": bf16 where the device has bf16 matrix
    # units (``fast_bf16``; the CLI's and the server's default), else fp32. The library's default
    # stays fp32: exact, the same on every machine, and equal to diffusers' pipeline.
    precision: str = "fp32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @staticmethod
    def of(options: SamplingOptions | None, overrides: Mapping[str, Any]) -> SamplingOptions:
        """``options`` (default: all defaults) with ``overrides`` (keyword arguments) applied."""
        if options is not None and not isinstance(options, SamplingOptions):
            raise TypeError(f"options: expected SamplingOptions, got {type(options).__name__} (pass the output "
                            "side as size=...)")
        known = {f.name for f in dataclasses.fields(SamplingOptions)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown sampling option {unknown[0]!r} (options: {', '.join(sorted(known))})")
        return replace(options or SamplingOptions(), **overrides)

    def autocast(self, device: torch.device):
        """The context a call samples in: bf16 autocast when ``precision`` asks for it."""
        dtype = autocast_dtype(self.precision, device)
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def make_generator(self, device: torch.device):
        """The call's random source: ``generator`` if given, else one seeded with ``seed`` (or afresh)."""
        if self.generator is not None:
            return self.generator
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(int(self.seed))
        return g


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


def default_sampling(stage: Stage, learned_variance: bool = True) -> StageSampling:
    """Sampling defaults for a stage when its folder does not say: prior 25 steps guidance 4,
    decoder 25 steps guidance 8, upsamplers 7 steps (Karlo's), all ancestral DDPM."""
    if stage is Stage.prior:
        diffusion = PriorStageConfig().diffusion
    elif stage is Stage.decoder:
        diffusion = DecoderStageConfig().diffusion
        if not learned_variance:
            diffusion = replace(diffusion, variance=Variance.fixed_small)
    else:
        diffusion = UpsamplerStageConfig().diffusion
    return StageSampling(diffusion=diffusion)


def make_plan(sampling: Mapping[Stage, StageSampling], stages: Sequence[Stage],
              options: SamplingOptions) -> dict[Stage, StageRun]:
    """Per-stage settings for one call: each stage's defaults in ``sampling`` with ``options``'
    steps, guidance and sampler applied, every value checked."""
    plan = {}
    for stage in stages:
        defaults = sampling[stage]
        n = _pick(options.steps, "steps", stage, defaults.diffusion.sample_steps)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"steps: the {stage} needs a whole number of steps, at least 1; got {n!r}")
        g = _pick(options.guidance, "guidance", stage, defaults.diffusion.guidance_scale,
                  scalar=stage in GUIDED_STAGES)
        if isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0:
            raise ValueError(f"guidance: expected a number >= 0 for the {stage}, got {g!r}")
        if stage in UPSAMPLERS and g != 1:
            raise ValueError(f"guidance: the upsamplers are never guided (got {g} for {stage})")
        kind = _pick(options.sampler, "sampler", stage, defaults.sampler)
        try:
            kind = Sampler(kind)
        except ValueError:
            raise ValueError(f"sampler: {kind!r} is not one of {', '.join(s.value for s in Sampler)}") from None
        if kind is Sampler.unclip and defaults.diffusion.beta_schedule is not BetaSchedule.cosine:
            raise ValueError(f"sampler: 'unclip' needs the cosine schedule, but the {stage} uses "
                             f"{defaults.diffusion.beta_schedule.value}; use {samplers_other_than_unclip()}")
        if kind is Sampler.unclip and n < 2:
            raise ValueError(f"steps: the 'unclip' sampler needs at least 2 steps (the {stage} got 1); "
                             f"use {samplers_other_than_unclip()} for one step")
        if n == 1 and defaults.diffusion.sample_start is None and _first_timestep(defaults.diffusion, kind) == 0:
            raise ValueError(f"steps: one {kind.value} step of the {stage} would run at t = 0, on pure noise; "
                             "use the ddpm sampler (its one step runs at t = 999) or more steps")
        plan[stage] = StageRun(defaults.diffusion, kind, n, float(g), _tile(options.tile, stage, defaults.tile))
    return plan


def _first_timestep(diffusion: DiffusionConfig, sampler: Sampler) -> int:
    """The timestep a one-step sample from pure noise would run at on ``sampler``'s own grid."""
    return int(set_timesteps(make_scheduler(diffusion, sampler), 1)[0])


def _tile(value: StageValue, stage: Stage, default: int | None) -> int | None:
    """The upsampler ``stage``'s tile side for one call (None: the whole image)."""
    if stage not in UPSAMPLERS:
        if isinstance(value, Mapping) and stage in value:
            raise ValueError(f"tile: only the upsamplers run in tiles, not the {stage}")
        return None
    tile = _pick(value, "tile", stage, default)
    if tile is None or tile == 0:
        return None
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise ValueError(f"tile: expected a whole number of pixels for the {stage} (0: the whole image); got {tile!r}")
    return tile


def _pick(value: StageValue, name: str, stage: Stage, default: Any, scalar: bool = True) -> Any:
    """The override of ``stage`` in ``value`` (see ``SamplingOptions``), else ``default``."""
    if value is None:
        return default
    if isinstance(value, Mapping):
        known = {*SAMPLED_STAGES, UPSAMPLER}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name}: unknown stage {unknown[0]!r} (stages: {', '.join(sorted(known))})")
        if stage in value:
            return value[stage]
        if stage in UPSAMPLERS and UPSAMPLER in value:
            return value[UPSAMPLER]
        return default
    return value if scalar else default
