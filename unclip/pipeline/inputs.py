"""Checks of what a user hands the pipeline: counts, prompts and images. Each ``ValueError`` names
the argument, so the CLI and the server can show it as it is."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from unclip.networks.clip import ClipEncoder

ImageInput = Image.Image | str | os.PathLike


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected a whole number >= {minimum}, got {value!r}")
    return value


def check_prompts(clip: ClipEncoder, prompts: str | Sequence[str], name: str = "prompt",
                  allow_empty: bool = False) -> list[str]:
    """The prompts as a list; each must be text, non-empty (unless ``allow_empty``) and fit the
    CLIP's context."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError(f"{name}: no prompt given")
    limit = clip.context_length
    for text in items:
        if not isinstance(text, str):
            raise ValueError(f"{name}: expected text, got {type(text).__name__}")
        if not text.strip() and not allow_empty:
            raise ValueError(f"{name}: the prompt is empty")
        count = clip.token_count(text)
        if count > limit:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ValueError(f"{name}: {shown!r} is {count} tokens long after tokenisation (start and end "
                             f"tokens included); this CLIP reads at most {limit}")
    return items


def fit_prompt(clip: ClipEncoder, text: str) -> str:
    """``text`` itself when it fits CLIP's context, else its longest run of leading words that does
    (whitespace joined by single spaces; one word longer than the context is cut in characters)."""
    limit = clip.context_length
    if clip.token_count(text) <= limit:
        return text
    words = text.split()
    if clip.token_count(words[0]) > limit:
        return words[0][:_longest_fit(lambda k: clip.token_count(words[0][:k]) <= limit, len(words[0]))]
    return " ".join(words[:_longest_fit(lambda k: clip.token_count(" ".join(words[:k])) <= limit, len(words))])


def _longest_fit(fits, n: int) -> int:
    """The largest k in [1, n) with ``fits(k)``, given fits(1) and not fits(n) (bisection)."""
    lo, hi = 1, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


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
