"""Outpainting, DALL·E 2's "expand beyond the canvas": the canvas grows by the given margins and
the new area is filled by inpainting (``inpaint.inpaint``) in overlapping square windows.

Windows are as large as the original's longer side, at least the decoder's side and at most the
canvas's shorter side, placed on a grid with half a window of overlap and filled nearest-first, so
each one sees the original and what the windows before it drew as known pixels. Each window is a
whole inpainting run, so a canvas that needs more than ``MAX_WINDOWS`` is refused up front.
Each is decoded from z = slerp(z_prompt, z_there, context): z_prompt is the prior's sample for the
prompt (one for the whole canvas), z_there the CLIP embedding of what the window already shows (its
unknown pixels painted with the known ones' mean colour), so that the fill follows both the prompt
and the picture and seams do not show. The original's pixels are kept exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from unclip.config import Stage
from unclip.pipeline.inpaint import inpaint
from unclip.pipeline.inputs import check_count, check_prompts
from unclip.pipeline.latents import slerp
from unclip.pipeline.plan import SamplingOptions, make_plan
from unclip.pipeline.sampling import sample_prior

MAX_MARGIN = 4096  # pixels per side: beyond this a canvas would not fit in memory
MAX_WINDOWS = 64  # windows per outpainted image: each one runs the whole inpainting cascade


@dataclass(frozen=True)
class Margins:
    """Pixels added on each side of the canvas."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def __post_init__(self):
        for side in ("left", "right", "top", "bottom"):
            check_count(side, getattr(self, side), minimum=0)
            if getattr(self, side) > MAX_MARGIN:
                raise ValueError(f"{side}: at most {MAX_MARGIN} pixels, got {getattr(self, side)}")
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("margins: nothing to outpaint; give at least one side a margin")


def window_starts(length: int, side: int) -> list[int]:
    """Where ``side``-long windows start along ``length`` pixels, with half a window of overlap."""
    stride = max(1, side // 2)
    return sorted({*range(0, length - side + 1, stride), length - side})


def window_origins(width: int, height: int, side: int, centre: tuple[float, float]) -> list[tuple[int, int]]:
    """Top-left corners of ``side``-square windows covering a ``width`` × ``height`` canvas with half
    a window of overlap, nearest to ``centre`` (x, y) first."""
    corners = [(x, y) for y in window_starts(height, side) for x in window_starts(width, side)]
    return sorted(corners, key=lambda c: (c[0] + side / 2 - centre[0]) ** 2 + (c[1] + side / 2 - centre[1]) ** 2)


def window_side(image_size: tuple[int, int], margins: Margins, base: int) -> int:
    """The side of an outpaint's square windows: the image's longer side, at least ``base`` (the
    decoder's side), at most the grown canvas's shorter side. A ValueError naming ``expand`` when
    the canvas would need more than ``MAX_WINDOWS`` windows."""
    w, h = image_size
    width, height = w + margins.left + margins.right, h + margins.top + margins.bottom
    side = min(width, height, max(w, h, base))
    count = len(window_starts(width, side)) * len(window_starts(height, side))
    if count > MAX_WINDOWS:
        raise ValueError(f"expand: a {w}×{h} image grown to {width}×{height} needs {count} windows of {side} px, "
                         f"more than {MAX_WINDOWS}; add fewer pixels or start from a larger image")
    return side


@torch.no_grad()
def outpaint(pipe, image: Image.Image, prompt: str, options: SamplingOptions, *, margins: Margins,
             context: float = 0.25, resample: int = 0) -> Image.Image:
    """``image`` on a canvas grown by ``margins``, the new area drawn to fit ``prompt`` and the
    picture; ``context`` in [0, 1] weighs what the window shows against the prompt (0: the prompt
    alone). The original's pixels come back exactly."""
    prompt = check_prompts(pipe.clip, prompt)[0]
    if isinstance(context, bool) or not isinstance(context, (int, float)) or not 0 <= context <= 1:
        raise ValueError(f"context: expected a number in [0, 1], got {context!r}")
    pipe.require(Stage.prior, "outpaint")
    pipe.require(Stage.decoder, "outpaint")
    side = window_side(image.size, margins, pipe.sizes[0])  # too many windows: refused before sampling
    original = np.asarray(image.convert("RGB"))
    h, w = original.shape[:2]
    width, height = w + margins.left + margins.right, h + margins.top + margins.bottom
    canvas = np.zeros((height, width, 3), np.uint8)
    known = np.zeros((height, width), bool)
    canvas[margins.top:margins.top + h, margins.left:margins.left + w] = original
    known[margins.top:margins.top + h, margins.left:margins.left + w] = True
    g = options.make_generator(pipe.device)
    options = replace(options, generator=g)  # one random stream for the prior and every window
    with options.autocast(pipe.device):
        run = make_plan(pipe.sampling, [Stage.prior], options)[Stage.prior]
        z_prompt = sample_prior(pipe, pipe.clip.encode_text([prompt]), run, g, progress=options.progress)[0]
        for x, y in window_origins(width, height, side, (margins.left + w / 2, margins.top + h / 2)):
            window = (slice(y, y + side), slice(x, x + side))
            have = known[window]
            if have.all():
                continue
            there = _embedding_of_what_is_there(pipe, canvas[window], have) if have.any() else z_prompt
            rgba = np.dstack([canvas[window], np.where(have, 255, 0).astype(np.uint8)])
            (filled,) = inpaint(pipe, Image.fromarray(rgba, "RGBA"), prompt, options, output_side=side,
                                resample=resample, image_emb=slerp(z_prompt, there, context))
            canvas[window][~have] = np.asarray(filled)[~have]
            known[window] = True
    return Image.fromarray(canvas)


def _embedding_of_what_is_there(pipe, pixels: np.ndarray, have: np.ndarray) -> torch.Tensor:
    """CLIP image embedding (D,) of a window whose unknown pixels are painted the known ones' mean colour."""
    filled = pixels.copy()
    filled[~have] = pixels[have].mean(axis=0).round().astype(np.uint8)
    return pipe.clip.encode_image([Image.fromarray(filled)])[0]
