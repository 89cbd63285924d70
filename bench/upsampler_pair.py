"""Upsampler training pairs: the windowed conditioning (`condition_window`) against resizing the
whole degraded image and then cropping (what `upsampler_pair` did before), side by side.

    python bench/upsampler_pair.py [--batch 32] [--repeats 3] [--threads 1]

For each upsampler of the shapes cascade (64→256 with blur, 256→1024 with the BSR chain; crops a
quarter of the side), both ways make the pairs of the same batch of shapes renders from the same
seed (their outputs agree to 1e-5, which it checks); it prints the fastest of ``--repeats`` runs
of each and their ratio. Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from unclip.config import Degradation
from unclip.data.degradations import _DEGRADE, upsample_condition, upsampler_pair
from unclip.data.shapes import ShapesDataset

CASES = (("64→256", 64, 256, Degradation.blur), ("256→1024", 256, 1024, Degradation.bsr))


def full_resize_pair(hr: torch.Tensor, low_side: int, degradation: Degradation, crop: int, g: torch.Generator):
    """The peer: degrade, resize the whole conditioning to the target side, then crop (same draws)."""
    low = _DEGRADE[degradation](F.interpolate(hr, size=(low_side, low_side), mode="area"), g)
    cond = upsample_condition(low, hr.shape[-2:])
    side = hr.shape[-1]
    tops = torch.randint(0, side - crop + 1, (len(hr),), generator=g).tolist()
    lefts = torch.randint(0, side - crop + 1, (len(hr),), generator=g).tolist()
    windows = [(slice(None), slice(t, t + crop), slice(l, l + crop)) for t, l in zip(tops, lefts)]
    return torch.stack([x[w] for x, w in zip(hr, windows)]), torch.stack([c[w] for c, w in zip(cond, windows)])


def fastest(fn, repeats: int) -> tuple[float, tuple]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), fastest of {args.repeats}")
    print("| upsampler | whole resize, then crop (s) | windowed (s) | speed-up |\n|---|---|---|---|")
    for name, low_side, side, degradation in CASES:
        data = ShapesDataset(side, seed=4)
        hr = torch.stack([data.item(i)["image"] for i in range(args.batch)])
        crop = side // 4
        peer_s, (peer_hr, peer_cond) = fastest(
            lambda: full_resize_pair(hr, low_side, degradation, crop, torch.Generator().manual_seed(0)), args.repeats)
        ours_s, (our_hr, our_cond) = fastest(
            lambda: upsampler_pair(hr, low_side, degradation, crop, torch.Generator().manual_seed(0)), args.repeats)
        assert torch.equal(peer_hr, our_hr) and (peer_cond - our_cond).abs().max() < 1e-5, "the two ways disagree"
        print(f"| {name} | {peer_s:.3f} | {ours_s:.3f} | {peer_s / ours_s:.1f}× |")


if __name__ == "__main__":
    main()
