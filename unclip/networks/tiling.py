"""Run a convolutional network on overlapping square tiles of an image and blend the results.

Why: the upsamplers train on crops (a quarter of the output side, as the paper does), and their
GroupNorm layers normalise over a crop. On a whole 1024×1024 image the statistics are the whole
image's, which for the shapes set's flat backgrounds moved every output pixel by up to 2.5 grey
levels (and a band along the left edge by about 10): a shift the crops never showed. Tiles of the
training crop's side give the network the inputs it was trained on. Overlaps are blended with
linear ramps, so that no seam shows; at the image's borders a tile's weight stays 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def tile_starts(side: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the tiles along one side: stride ``tile - overlap``, the last one flush with the
    far border (so it may overlap its neighbour by more than ``overlap``)."""
    if tile >= side:
        return [0]
    starts = list(range(0, side - tile, tile - overlap))
    return starts + [side - tile]


def ramp(tile: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """One tile's blending weights along one side (tile,): rising over the first ``overlap``
    pixels unless the tile starts at the image border, falling over the last unless it ends there."""
    weight = torch.ones(tile)
    if overlap > 0:
        rise = (torch.arange(overlap) + 0.5) / overlap
        if not first:
            weight[:overlap] = rise
        if not last:
            weight[-overlap:] = rise.flip(0)
    return weight


def check_tile(tile: int, overlap: int, multiple: int = 1) -> None:
    """A clear error for a tile size the network cannot take."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile: expected a whole number of pixels, at least 1 (0 for the whole image); got {tile!r}")
    if tile % multiple:
        raise ValueError(f"tile: {tile} is not a multiple of {multiple}, which this network's downsampling needs")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile: the overlap ({overlap}) must be at least 0 and less than the tile ({tile})")


def tiled(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], tile: int, overlap: int) -> torch.Tensor:
    """``fn(*windows)`` over overlapping ``tile``-square windows of ``inputs`` (each (B, C, H, W),
    all of one H × W), blended into one float32 (B, C', H, W) output. A tile at least the image's side runs
    ``fn`` on the whole image."""
    check_tile(tile, overlap)
    height, width = inputs[0].shape[-2:]
    if tile >= height and tile >= width:
        return fn(*inputs).float()
    if tile > min(height, width):
        raise ValueError(f"tile: {tile} fits one side of the {height}×{width} image but not the other")
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out = weight = None
    for top in rows:
        wy = ramp(tile, overlap, top == 0, top == height - tile)
        for left in cols:
            wx = ramp(tile, overlap, left == 0, left == width - tile)
            piece = fn(*(x[..., top : top + tile, left : left + tile] for x in inputs)).float()
            w = (wy[:, None] * wx[None, :]).to(piece.device)
            if out is None:
                out = piece.new_zeros((*piece.shape[:-2], height, width))
                weight = piece.new_zeros((height, width))
            out[..., top : top + tile, left : left + tile] += piece * w
            weight[top : top + tile, left : left + tile] += w
    return out / weight
