"""The paper's image manipulations (§3) on an ``UnCLIPPipeline``.

An image becomes its bipartite latent (z_i, x_T): z_i from the CLIP image encoder, x_T by DDIM
inversion of the decoder conditioned on z_i (and the empty caption). Decoding (z_i, x_T) with DDIM
η = 0 reconstructs the image; η > 0 gives variations around it (§3.1). Interpolations slerp z_i
between two images with x_T fixed, slerped, or slerped between both inverted latents (§3.2); text
diffs slerp z_i toward the normalised difference of two caption embeddings with x_T fixed (§3.3).

The decoder always samples with DDIM here, on the same timestep grid as the inversion and with
the same guidance, so that inversion and decoding retrace each other. Where an image is inverted
(``invert``, ``variations``, ``text_diff``, ``interpolate`` with inverted noise) that guidance is 1
unless the caller sets the decoder's: DDIM inversion of a guided decoder does not retrace (the
shipped shapes decoder at its guidance 3 reconstructed renders with a median error of 216 grey
levels of 255, white backgrounds coming back black; unguided, 2.8). Frames of one interpolation
or text diff share their upsampler noise (a fixed seed per row, as in the paper's figures).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from PIL import Image

from unclip.config import Prediction, Stage
from unclip.data.images import image_to_tensor, tensor_to_pil
from unclip.diffusion.sampling import sample_loop
from unclip.diffusion.schedule import Sampler, inverse_scheduler
from unclip.pipeline.inputs import ImageInput, check_count, check_prompts, load_image
from unclip.pipeline.latents import slerp, text_diff_embeddings
from unclip.pipeline.plan import Latent, SamplingOptions, StageRun, make_plan
from unclip.pipeline.sampling import decode, decoder_fn, draw_noise, upsample

DEFAULT_THETAS = (0.0, 0.125, 0.25, 0.375, 0.5)  # paper §3.3: θ from 0 to a maximum in [0.25, 0.5]


class NoiseMode(str, enum.Enum):
    """Decoder noise x_T along an interpolation (paper §3.2)."""

    fixed = "fixed"  # one random x_T for every frame (the paper's Fig. 4)
    slerp = "slerp"  # slerp between two random x_T
    inverted = "inverted"  # slerp between the endpoints' DDIM-inverted x_T: the ends reconstruct both images


INVERSION_GUIDANCE = 1.0  # the decoder's guidance where an image is inverted, unless the caller sets it


def manipulation_plan(pipe, size: int, options: SamplingOptions, *, inverts: bool = False) -> dict[Stage, StageRun]:
    """Stage settings for a manipulation: the decoder samples with DDIM, the upsamplers as
    configured; with ``inverts``, the decoder's guidance is ``INVERSION_GUIDANCE`` unless
    ``options`` sets it (one number for every stage, or a ``"decoder"`` entry)."""
    guidance = options.guidance
    if inverts and (guidance is None or (isinstance(guidance, Mapping) and "decoder" not in guidance)):
        options = replace(options, guidance={**(guidance or {}), "decoder": INVERSION_GUIDANCE})
    plan = make_plan(pipe.sampling, [Stage.decoder, *pipe.upsampler_chain(size)], options)
    plan[Stage.decoder] = replace(plan[Stage.decoder], sampler=Sampler.ddim)
    return plan


def _prepare(pipe, purpose: str, options: SamplingOptions, *, inverts: bool) -> tuple[int, dict[Stage, StageRun]]:
    """(output side, stage plan) of a manipulation, once the pipeline is known to have a decoder."""
    pipe.require(Stage.decoder, purpose)
    size = pipe.check_size(options.size)
    plan = manipulation_plan(pipe, size, options, inverts=inverts)
    if inverts and plan[Stage.decoder].diffusion.prediction is Prediction.x0:
        raise ValueError(f"{purpose}: DDIM inversion needs an eps or v decoder; this one predicts x0, whose "
                         "first inverse step divides by zero")
    return size, plan


def _one_generator(options: SamplingOptions, device: torch.device, purpose: str) -> torch.Generator:
    """The single random source of a call that draws one set of frames (not one row per generator)."""
    if isinstance(options.generator, (list, tuple)):
        raise ValueError(f"generator: {purpose} draws one set of frames; pass one torch.Generator, not a list")
    return options.make_generator(device)


@torch.no_grad()
def invert_pixels(pipe, x0: torch.Tensor, image_emb: torch.Tensor, run: StageRun, *,
                  progress: bool = True) -> torch.Tensor:
    """DDIM inversion x_0 (B, 3, S, S) → x_T of the decoder conditioned on ``image_emb`` (B, D) and
    the empty caption, with ``run``'s steps and guidance (paper §3; Dhariwal & Nichol App. F)."""
    fn = decoder_fn(pipe, image_emb, pipe.empty_caption().expand(len(x0)), run.guidance)
    return sample_loop(fn, inverse_scheduler(run.diffusion), x0, run.steps, channels=3, desc="inversion",
                       progress=progress)


def _invert_image(pipe, image: Image.Image, run: StageRun, progress: bool) -> Latent:
    side = pipe.decoder.cfg.sample_size
    x0 = image_to_tensor(image.resize((side, side), Image.Resampling.BICUBIC))[None].to(pipe.device)  # (1, 3, S, S)
    image_emb = pipe.clip.encode_image([image])  # (1, D), from the full-resolution image
    return Latent(image_emb=image_emb, x_T=invert_pixels(pipe, x0, image_emb, run, progress=progress))


@torch.no_grad()
def invert(pipe, image: ImageInput, options: SamplingOptions) -> Latent:
    """The bipartite latent (z_i, x_T) of a square image (a PIL image or a path)."""
    run = _prepare(pipe, "invert", replace(options, size=None), inverts=True)[1][Stage.decoder]
    with options.autocast(pipe.device):
        return _invert_image(pipe, load_image(image), run, options.progress)


@torch.no_grad()
def variations(pipe, image: ImageInput, n: int, options: SamplingOptions, *, eta: float = 1.0) -> list[Image.Image]:
    """``n`` variations of an image (paper §3.1): its (z_i, x_T) decoded with DDIM ``eta``
    (0 reconstructs the image, larger values vary more), then upsampled to ``options.size``."""
    check_count("n", n)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta: expected a number in [0, 1] (0 reconstructs, 1 ≈ DDPM; above 1 DDIM's noise "
                         f"variance can go negative), got {eta!r}")
    size, plan = _prepare(pipe, "variations", options, inverts=True)
    image = load_image(image)
    with options.autocast(pipe.device):
        latent = _invert_image(pipe, image, plan[Stage.decoder], options.progress)
        g = options.make_generator(pipe.device)
        image_emb = latent.image_emb.expand(n, -1)
        x_T = latent.x_T.expand(n, -1, -1, -1)
        pixels = decode(pipe, image_emb, pipe.empty_caption().expand(n), plan[Stage.decoder], g, x_T=x_T,
                        eta=float(eta), progress=options.progress)
        pixels = upsample(pipe, pixels, size, plan, g, progress=options.progress)
    return tensor_to_pil(pixels)


@torch.no_grad()
def interpolate(pipe, image_a: ImageInput, image_b: ImageInput, frames: int, options: SamplingOptions, *,
                noise: NoiseMode | str = NoiseMode.fixed) -> list[Image.Image]:
    """``frames`` images from ``image_a`` to ``image_b`` (paper §3.2): z_θ = slerp(z_a, z_b, θ) for
    θ evenly spaced in [0, 1], decoded with DDIM η = 0 from x_T chosen by ``noise``."""
    check_count("frames", frames, minimum=2)
    try:
        mode = NoiseMode(noise)
    except ValueError:
        raise ValueError(f"noise: {noise!r} is not one of {', '.join(m.value for m in NoiseMode)}") from None
    size, plan = _prepare(pipe, "interpolate", options, inverts=mode is NoiseMode.inverted)
    a, b = load_image(image_a, "image_a"), load_image(image_b, "image_b")
    with options.autocast(pipe.device):
        g = _one_generator(options, pipe.device, "interpolate")
        image_emb, x_T = _interpolation_latents(pipe, a, b, frames, mode, plan[Stage.decoder], g, options.progress)
        return _decode_frames(pipe, image_emb, x_T, size, plan, g, options.progress)


def _interpolation_latents(pipe, a: Image.Image, b: Image.Image, frames: int, mode: NoiseMode, run: StageRun,
                           generator, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, D) slerped image embeddings and the (F, 3, S, S) decoder noise of each frame."""
    thetas = torch.linspace(0, 1, frames)
    side = pipe.decoder.cfg.sample_size
    if mode is NoiseMode.inverted:
        ends = [_invert_image(pipe, im, run, progress) for im in (a, b)]
        z_a, z_b = ends[0].image_emb[0], ends[1].image_emb[0]
        x_T = slerp(ends[0].x_T[0], ends[1].x_T[0], thetas)
    else:
        z_a, z_b = pipe.clip.encode_image([a])[0], pipe.clip.encode_image([b])[0]
        if mode is NoiseMode.fixed:
            x_T = draw_noise((1, 3, side, side), generator, pipe.device).expand(frames, -1, -1, -1)
        else:
            ends = draw_noise((2, 3, side, side), generator, pipe.device)
            x_T = slerp(ends[0], ends[1], thetas)
    return slerp(z_a, z_b, thetas), x_T


@torch.no_grad()
def text_diff(pipe, image: ImageInput, from_text: str, to_text: str, thetas: Sequence[float] | None,
              options: SamplingOptions) -> list[Image.Image]:
    """An image moved toward a new caption (paper §3.3), one frame per θ in ``thetas``.

    z_d = normalise(z_to − z_from) of the text embeddings, rescaled to ‖z_i‖; z_θ = slerp(z_i, z_d, θ);
    x_T is the image's inverted latent, fixed. ``from_text`` describes the image (it may be "",
    the empty caption); θ = 0 decodes the image itself.
    """
    to_text = check_prompts(pipe.clip, to_text, "to_text")[0]
    from_text = check_prompts(pipe.clip, from_text, "from_text", allow_empty=True)[0]
    values = list(DEFAULT_THETAS if thetas is None else thetas)
    if not values or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                         or not 0 <= t <= 1 for t in values):
        raise ValueError(f"thetas: expected one or more numbers in [0, 1], got {values!r}")
    size, plan = _prepare(pipe, "text_diff", options, inverts=True)
    image = load_image(image)
    g = _one_generator(options, pipe.device, "text_diff")
    with options.autocast(pipe.device):
        text_emb = pipe.clip.encode_text([from_text, to_text]).emb.float()  # (2, D)
        if (text_emb[1] - text_emb[0]).norm() <= 1e-6 * text_emb[1].norm():
            raise ValueError(f"to_text: {to_text!r} has the same CLIP text embedding as from_text {from_text!r}, "
                             "so there is no direction to move in")
        latent = _invert_image(pipe, image, plan[Stage.decoder], options.progress)
        z = text_diff_embeddings(latent.image_emb[0], text_emb[0], text_emb[1], torch.tensor(values))
        x_T = latent.x_T.expand(len(values), -1, -1, -1)
        return _decode_frames(pipe, z, x_T, size, plan, g, options.progress)


def _decode_frames(pipe, image_emb: torch.Tensor, x_T: torch.Tensor, size: int, plan: dict[Stage, StageRun],
                   generator: torch.Generator, progress: bool) -> list[Image.Image]:
    """Decode (F, D) embeddings from (F, 3, S, S) noise with DDIM η = 0 and upsample every frame
    with the same noise (F generators seeded alike), so that frames differ only where z differs."""
    frames = len(image_emb)
    pixels = decode(pipe, image_emb.to(pipe.device), pipe.empty_caption().expand(frames), plan[Stage.decoder], None,
                    x_T=x_T.to(pipe.device), eta=0.0, progress=progress)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    same = [torch.Generator(device=pipe.device).manual_seed(seed) for _ in range(frames)]
    return tensor_to_pil(upsample(pipe, pixels, size, plan, same, progress=progress))
