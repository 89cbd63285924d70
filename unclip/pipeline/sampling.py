"""Sampling each stage of a pipeline (paper §2): the prior's best-of-k embeddings, the decoder's
64×64 images and the upsampler chain, each run with ``diffusion.sampling.sample_loop`` on a
``StageRun``. Every function takes the pipeline (an ``UnCLIPPipeline``) as its first argument.

- **prior** (§2.2): guided on its full x0 output (the autoregressive prior: on each code's logits,
  ``pipeline.prior_ar``); ``candidates`` samples per image, keeping the one whose raw
  (unstandardised) embedding has the highest dot product with the text embedding.
- **decoder** (§2.1): guided on eps only; output clamped to [−1, 1]. ``decode_best_of`` draws
  ``candidates`` samples per image and keeps the one whose CLIP image embedding is closest (cosine)
  to the caption's text embedding: the prior's best-of-k rule applied to the decoder's pictures, an
  opt-in for attribute binding (the decoder's §7 failure) at k times the decoder's cost.
- **upsamplers**: never guided; conditioned on the previous stage's output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from PIL import Image

from unclip.config import Stage
from unclip.data.degradations import upsample_condition
from unclip.data.images import image_to_tensor, tensor_to_pil
from unclip.diffusion.sampling import sample_loop, set_timesteps
from unclip.diffusion.schedule import noised_start
from unclip.networks.clip import TextEncoding
from unclip.networks.prior_ar import ARPrior
from unclip.pipeline.denoisers import (
    decoder_denoiser,
    fp32_below,
    prior_denoiser,
    upsampler_denoiser,
)
from unclip.pipeline.inputs import ImageInput, check_count, check_prompts, load_image
from unclip.pipeline.plan import DECODER_FP32_BELOW, Generation, SamplingOptions, StageRun, make_plan
from unclip.pipeline.prior_ar import sample_ar_prior


def draw_noise(shape: tuple[int, ...], generator, device: torch.device) -> torch.Tensor:
    """N(0, I) of ``shape`` on ``device``; a list of generators draws one row each (diffusers' convention)."""
    if isinstance(generator, (list, tuple)):
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.cat(rows).to(device)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def per_candidate(generator, candidates: int):
    """``generator`` for ``candidates`` samples per row: a list (one generator per row) repeated so
    that each row's generator draws its row's candidates; a single generator (or None) as it is."""
    if isinstance(generator, (list, tuple)):
        return [g for g in generator for _ in range(candidates)]
    return generator


def keep_best(samples: torch.Tensor, score: torch.Tensor, candidates: int) -> torch.Tensor:
    """From ``samples`` (B·k, ...), k consecutive candidates per row, the one with the highest
    ``score`` (B·k,) in each row: (B, ...)."""
    batch = len(samples) // candidates
    best = score.reshape(batch, candidates).argmax(dim=1)  # (B,)
    return samples.reshape(batch, candidates, *samples.shape[1:])[torch.arange(batch, device=samples.device), best]


@torch.no_grad()
def sample_prior(pipe, text: TextEncoding, run: StageRun, generator, *, candidates: int = 2,
                 progress: bool = True) -> torch.Tensor:
    """Raw CLIP image embeddings (B, D) for ``text`` (B rows): ``candidates`` samples each, the one
    with the highest ⟨z_i, text_emb⟩ kept."""
    batch = len(text.emb)
    rows = torch.arange(batch, device=text.emb.device).repeat_interleave(candidates)  # (B·k,)
    cond, generator = text[rows], per_candidate(generator, candidates)
    if isinstance(pipe.prior, ARPrior):  # K code steps; the run's steps and sampler do not apply
        z = sample_ar_prior(pipe.prior, cond, pipe.empty_caption(), run.guidance, generator, progress=progress)
    else:
        fn = prior_denoiser(pipe.prior, cond, pipe.empty_caption(), run.guidance)
        x_T = draw_noise((batch * candidates, pipe.prior.cfg.embedding_dim), generator, pipe.device)
        x0 = sample_loop(fn, run.scheduler(), x_T, run.steps, generator=generator, desc="prior", progress=progress)
        z = pipe.prior.unstandardise(x0)
    return keep_best(z, (z * text.emb[rows]).sum(-1), candidates)


def decoder_fn(pipe, image_emb: torch.Tensor, text: TextEncoding, guidance: float):
    """The pipeline's decoder as a guided ``model_fn(x_t, t)`` (see ``denoisers.decoder_denoiser``);
    under autocast its low-noise steps run in float32 (``plan.DECODER_FP32_BELOW``)."""
    fn = decoder_denoiser(pipe.decoder, image_emb, text, pipe.empty_caption(), guidance)
    return fp32_below(fn, int(DECODER_FP32_BELOW * pipe.sampling[Stage.decoder].diffusion.num_train_timesteps))


@torch.no_grad()
def decode(pipe, image_emb: torch.Tensor, text: TextEncoding, run: StageRun, generator, *,
           x_T: torch.Tensor | None = None, eta: float = 0.0, progress: bool = True) -> torch.Tensor:
    """Decoder samples (B, 3, S, S) in [−1, 1] for image embeddings (B, D) and captions (B)."""
    side = pipe.decoder.cfg.sample_size
    if x_T is None:
        x_T = draw_noise((len(image_emb), 3, side, side), generator, pipe.device)
    fn = decoder_fn(pipe, image_emb, text, run.guidance)
    x0 = sample_loop(fn, run.scheduler(), x_T, run.steps, channels=3, generator=generator, eta=eta,
                     desc="decoder", progress=progress)
    return x0.clamp(-1, 1)


@torch.no_grad()
def decode_best_of(pipe, image_emb: torch.Tensor, text: TextEncoding, run: StageRun, generator, *,
                   candidates: int = 1, progress: bool = True) -> torch.Tensor:
    """``decode`` with ``candidates`` samples per row, the one whose CLIP image embedding has the
    highest cosine to the row's text embedding kept; (B, 3, S, S). One candidate is plain ``decode``."""
    if candidates == 1:
        return decode(pipe, image_emb, text, run, generator, progress=progress)
    rows = torch.arange(len(image_emb), device=image_emb.device).repeat_interleave(candidates)  # (B·k,)
    pixels = decode(pipe, image_emb[rows], text[rows], run, per_candidate(generator, candidates),
                    progress=progress)  # (B·k, 3, S, S)
    score = torch.nn.functional.cosine_similarity(pipe.clip.encode_image(pixels), text.emb[rows].float(), dim=-1)
    return keep_best(pixels, score, candidates)


def upsampler_fn(pipe, slot: Stage, low_res: torch.Tensor, scheduler, run: StageRun):
    """Upsampler ``slot`` as ``model_fn(x_t, t)`` conditioned on ``low_res``; sampled with ``run``
    on ``scheduler``, Karlo's last-step UNet (if loaded) takes the final step."""
    last = pipe.last_steps.get(slot)
    final_t = int(set_timesteps(scheduler, run.steps, run.diffusion.sample_start)[-1]) if last is not None else None
    return upsampler_denoiser(pipe.upsamplers[slot], low_res, last, final_t, run.tile)


@torch.no_grad()
def upsample(pipe, pixels: torch.Tensor, size: int, plan: Mapping[Stage, StageRun], generator, *,
             progress: bool = True) -> torch.Tensor:
    """Run the upsamplers that take ``pixels`` (B, 3, s, s; the decoder's output or an earlier
    stage's) to ``size``; stages at or below side s are skipped."""
    for slot in pipe.upsampler_chain(size):
        run = plan[slot]
        side = pipe.upsamplers[slot].cfg.sample_size
        if side <= pixels.shape[-1]:
            continue
        scheduler = run.scheduler()
        model_fn = upsampler_fn(pipe, slot, pixels, scheduler, run)
        offset = pipe.upsamplers[slot].offset(pixels, side)
        x_T = noised_start(run.diffusion, upsample_condition(pixels, side) - offset,
                           draw_noise((len(pixels), 3, side, side), generator, pipe.device))
        pixels = sample_loop(model_fn, scheduler, x_T, run.steps, channels=3, generator=generator, desc=str(slot),
                             progress=progress, start=run.diffusion.sample_start).add(offset).clamp(-1, 1)
    return pixels


@torch.no_grad()
def text_to_image(pipe, prompts: str | Sequence[str], n: int, options: SamplingOptions, *,
                  prior_candidates: int = 2, decoder_candidates: int = 1,
                  return_embeddings: bool = False) -> list[Image.Image] | Generation:
    """``n`` images per prompt: prior → decoder (best of ``decoder_candidates`` by CLIP) →
    upsamplers to ``options.size`` (paper §2)."""
    prompts = check_prompts(pipe.clip, prompts)
    check_count("n", n)
    check_count("prior_candidates", prior_candidates)
    check_count("decoder_candidates", decoder_candidates)
    pipe.require(Stage.prior, "generate")
    pipe.require(Stage.decoder, "generate")
    size = pipe.check_size(options.size)
    plan = make_plan(pipe.sampling, [Stage.prior, Stage.decoder, *pipe.upsampler_chain(size)], options)
    g = options.make_generator(pipe.device)
    with options.autocast(pipe.device):
        rows = torch.arange(len(prompts), device=pipe.device).repeat_interleave(n)
        text = pipe.clip.encode_text(prompts)[rows]  # (B, ...), B = len(prompts)·n
        image_emb = sample_prior(pipe, text, plan[Stage.prior], g, candidates=prior_candidates,
                                 progress=options.progress)
        pixels = decode_best_of(pipe, image_emb, text, plan[Stage.decoder], g, candidates=decoder_candidates,
                                progress=options.progress)
        pixels = upsample(pipe, pixels, size, plan, g, progress=options.progress)
    images = tensor_to_pil(pixels)
    if return_embeddings:
        return Generation(images=images, pixels=pixels, image_emb=image_emb, text_emb=text.emb)
    return images


@torch.no_grad()
def upscale(pipe, image: ImageInput, options: SamplingOptions) -> Image.Image:
    """A square image (PIL or path) to side ``options.size`` by the upsamplers alone (no text, no
    guidance). The image is first resized (bicubic, antialiased) to the largest side of the cascade
    at or below its own, at least the decoder's, and only the stages above that side run: a 256
    image goes to 1024 through the 256→1024 stage only."""
    image = load_image(image)
    if not pipe.upsamplers:
        raise ValueError("missing component: this pipeline has no upsampler, so it cannot upscale")
    size = options.size if options.size is not None else pipe.sizes[-1]
    if size not in pipe.sizes:
        raise ValueError(f"size: {size} is not supported by this pipeline; it makes {', '.join(map(str, pipe.sizes))}")
    start = max([s for s in pipe.sizes if s <= max(image.size[0], pipe.sizes[0])])
    if size <= start:
        raise ValueError(f"size: {size} is not above the image's side in this cascade ({start}); upscaling "
                         f"goes to one of {', '.join(str(s) for s in pipe.sizes if s > pipe.sizes[0])}")
    plan = make_plan(pipe.sampling, pipe.upsampler_chain(size), options)
    pixels = image_to_tensor(image.resize((start, start), Image.Resampling.BICUBIC) if image.size[0] != start
                             else image)[None].to(pipe.device)
    with options.autocast(pipe.device):
        out = upsample(pipe, pixels, size, plan, options.make_generator(pipe.device), progress=options.progress)
    return tensor_to_pil(out)[0]
