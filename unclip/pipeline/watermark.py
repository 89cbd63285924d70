"""DALL·E 2's signature: five coloured squares in an image's bottom-right corner (optional, as in
the API). On a 1024-pixel image each square is 16 pixels, so the strip is 80 × 16; other sizes
scale it, with squares of at least one pixel."""

from __future__ import annotations

from PIL import Image

SIGNATURE = ((255, 255, 102), (66, 255, 255), (81, 218, 76), (255, 110, 60), (60, 70, 255))  # left to right
SQUARE_PER_SIDE = 1 / 64  # square side as a share of the image width


def signature_square(width: int) -> int:
    return max(1, round(width * SQUARE_PER_SIDE))


def add_signature(image: Image.Image) -> Image.Image:
    """A copy of ``image`` (RGB) with the signature drawn flush with its bottom-right corner."""
    out = image.convert("RGB")  # always a copy
    width, height = out.size
    square = signature_square(width)
    if len(SIGNATURE) * square > width or square > height:
        raise ValueError(f"watermark: the image ({width}×{height}) is too small for the signature")
    top = height - square
    for i, colour in enumerate(SIGNATURE):
        left = width - (len(SIGNATURE) - i) * square
        out.paste(colour, (left, top, left + square, top + square))
    return out
