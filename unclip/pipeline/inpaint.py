"""Edits: inpainting with the unCLIP cascade, RePaint-style (Lugmayr et al. 2022).

The networks were never trained to inpaint, so the known pixels are imposed on the sampling
chain instead: before every denoising step of the decoder the known region of x_t is replaced
by the original forward-noised to that step's level, q(x_t | x_0) = N(√ᾱ_t·x_0, (1 − ᾱ_t)·I), so
that the model fills the unknown region in harmony with it. With ``resample`` > 0 each step is
redone that many times after jumping back to x_t with q(x_t | x_{t−1}) (RePaint's resampling,
jump length 1), which lets the fill agree better with the known region at the cost of
(1 + resample)× the decoder's network calls. The mask is carried through the upsamplers: each
of them replaces the known region of its x_t likewise (without resampling). Finally the kept
pixels are pasted back exactly at the output side, so they come back unchanged (up to PNG
rounding when the output side differs from the input's).

The image embedding comes from the prior and the prompt (paper §2; the fill follows the text).
Every stage samples with ancestral DDPM here, RePaint's sampler: its steps are stateless, so
a step can be redone, which multistep solvers (DPM-Solver++) do not allow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from PIL import Image

from unclip.config import Stage
from unclip.data.degradations import upsample_condition
from unclip.data.images import pil_to_tensor, tensor_to_pil
from unclip.diffusion.sampling import repaint_loop
from unclip.diffusion.schedule import Sampler, noised_start
from unclip.pipeline.inputs import check_count, check_prompts
from unclip.pipeline.plan import SamplingOptions, StageRun, make_plan
from unclip.pipeline.sampling import decoder_fn, draw_noise, sample_prior, upsampler_fn

KEEP, REGENERATE = 255, 0  # values of a keep mask (mode "L")


@dataclass
class KnownPixels:
    """The pixels to keep, at one stage's resolution."""

    x0: torch.Tensor  # (1, 3, S, S) the original in [-1, 1]
    keep: torch.Tensor  # (1, 1, S, S) 1 where the original is kept, 0 where the stage generates


def keep_mask(image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
    """The keep mask (mode "L", 255 = keep) of an edit: pixels whose alpha in ``mask`` (or, with no
    mask, in ``image``) is exactly 0 are regenerated, all others kept (OpenAI's edit semantics). An
    alpha with no 0 anywhere is refused: the edit would return the original."""
    source, name = (image, "image") if mask is None else (mask, "mask")
    if mask is not None and mask.size != image.size:
        raise ValueError(f"mask: mask and image must have the same dimensions, got {mask.size[0]}x{mask.size[1]} "
                         f"and {image.size[0]}x{image.size[1]}")
    if "A" not in source.getbands() and "transparency" not in source.info:
        hint = "" if mask is not None else "; pass a mask, or an image whose erased pixels are transparent"
        raise ValueError(f"{name}: it has no alpha channel (mode {source.mode}), so nothing marks the pixels to "
                         f"regenerate{hint}")
    alpha = source.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] > 0:
        raise ValueError(f"{name}: no fully transparent (alpha 0) pixels: nothing to regenerate")
    return alpha.point(lambda a: KEEP if a > 0 else REGENERATE)


def known_at(image: Image.Image, keep: Image.Image, side: int, device) -> KnownPixels:
    """``image`` and its keep mask at ``side``. When shrinking, a pixel counts as known only when
    every pixel it covers is kept (area average = 1), so no regenerated pixel leaks into the known
    region; growing uses nearest neighbours."""
    rgb = image.convert("RGB")
    if rgb.size != (side, side):
        rgb = rgb.resize((side, side), Image.Resampling.BICUBIC)
    x0 = pil_to_tensor([rgb]).to(device)  # (1, 3, S, S)
    m = pil_to_tensor([keep.convert("RGB")])[:, :1].add(1).div(2).to(device)  # (1, 1, s, s) in {0, 1}
    if m.shape[-1] > side:
        m = (F.interpolate(m, size=(side, side), mode="area") > 1 - 1e-4).float()
    elif m.shape[-1] < side:
        m = F.interpolate(m, size=(side, side), mode="nearest")
    return KnownPixels(x0=x0, keep=m)


def ddpm_run(run: StageRun) -> StageRun:
    return replace(run, sampler=Sampler.ddpm)


@torch.no_grad()
def inpaint(pipe, image: Image.Image, prompt: str, options: SamplingOptions, *, mask: Image.Image | None = None,
            n: int = 1, output_side: int | None = None, resample: int = 0,
            image_emb: torch.Tensor | None = None) -> list[Image.Image]:
    """``n`` edits of a square ``image``: the pixels that ``mask``'s alpha (or, without a mask, the
    image's own alpha) marks fully transparent are regenerated to fit ``prompt`` and the rest.

    The cascade runs to ``options.size`` (a side this pipeline makes, default its largest up to
    256); the results are resized to ``output_side`` (default that size) and the kept pixels pasted
    back there from the image, so they come back exactly. ``resample`` adds RePaint's resampling to
    the decoder. ``image_emb`` (D,) is the z_i to decode from instead of the prior's sample for the
    prompt (outpainting passes one). Every stage samples with DDPM (``options.sampler`` is not used).
    """
    prompt = check_prompts(pipe.clip, prompt)[0]
    check_count("n", n)
    check_count("resample", resample, minimum=0)
    if image.size[0] != image.size[1]:
        raise ValueError(f"image: the image is {image.size[0]}×{image.size[1]}, not square")
    keep = keep_mask(image, mask)
    if image_emb is None:
        pipe.require(Stage.prior, "inpaint")
    pipe.require(Stage.decoder, "inpaint")
    size = pipe.check_size(options.size)
    output_side = size if output_side is None else check_count("output_side", output_side)
    chain = pipe.upsampler_chain(size)
    plan = {stage: ddpm_run(run) for stage, run in
            make_plan(pipe.sampling, [*([Stage.prior] if image_emb is None else []), Stage.decoder, *chain],
                      replace(options, sampler=None)).items()}
    g = options.make_generator(pipe.device)

    def noise_fn(shape):
        return draw_noise(tuple(shape), g, pipe.device)

    with options.autocast(pipe.device):
        text = pipe.clip.encode_text([prompt])[torch.zeros(n, dtype=torch.long, device=pipe.device)]  # (n, ...)
        if image_emb is None:
            image_emb = sample_prior(pipe, text, plan[Stage.prior], g, progress=options.progress)
        else:
            image_emb = image_emb.reshape(1, -1).to(pipe.device).expand(n, -1)
        side = pipe.decoder.cfg.sample_size
        run = plan[Stage.decoder]
        known = known_at(image, keep, side, pipe.device)
        pixels = repaint_loop(decoder_fn(pipe, image_emb, text, run.guidance), run.scheduler(),
                              noise_fn((n, 3, side, side)), run.steps, known=known.x0, keep=known.keep,
                              noise_fn=noise_fn, generator=g, resample=resample).clamp(-1, 1)
        for slot in chain:
            known = known_at(image, keep, _side(pipe, slot), pipe.device)
            pixels = _upsample_known(pipe, slot, pixels, plan[slot], known, g, noise_fn)
    return [paste_known(out, image, keep, output_side) for out in tensor_to_pil(pixels)]


def _side(pipe, slot: Stage) -> int:
    return pipe.upsamplers[slot].cfg.sample_size


def _upsample_known(pipe, slot: Stage, low_res: torch.Tensor, run: StageRun, known: KnownPixels, generator,
                    noise_fn) -> torch.Tensor:
    """One upsampler, conditioned on ``low_res`` (B, 3, s, s), with the known region imposed."""
    side = _side(pipe, slot)
    scheduler = run.scheduler()
    model_fn = upsampler_fn(pipe, slot, low_res, scheduler, run)
    offset = pipe.upsamplers[slot].offset(low_res, side)
    x_T = noised_start(run.diffusion, upsample_condition(low_res, side) - offset,
                       noise_fn((len(low_res), 3, side, side)))
    return repaint_loop(model_fn, scheduler, x_T, run.steps, known=known.x0 - offset, keep=known.keep,
                        noise_fn=noise_fn, generator=generator,
                        start=run.diffusion.sample_start).add(offset).clamp(-1, 1)


def resize_square(image: Image.Image, side: int) -> Image.Image:
    """``image`` at ``side`` × ``side``: Lanczos when shrinking, bicubic when growing."""
    if image.size == (side, side):
        return image
    smaller = side < image.size[0]
    return image.resize((side, side), Image.Resampling.LANCZOS if smaller else Image.Resampling.BICUBIC)


def paste_known(generated: Image.Image, image: Image.Image, keep: Image.Image, side: int) -> Image.Image:
    """``generated`` at ``side`` with the kept pixels of ``image`` pasted back exactly (resized to
    ``side`` first when the sides differ; the mask by nearest neighbours, so it stays binary)."""
    base = resize_square(generated.convert("RGB"), side)
    original = resize_square(image.convert("RGB"), side)
    mask = keep if keep.size == (side, side) else keep.resize((side, side), Image.Resampling.NEAREST)
    return Image.composite(original, base, mask)
