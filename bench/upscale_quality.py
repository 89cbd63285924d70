"""PSNR of a cascade's upsamplers alone against bicubic, on real renders of an emoji data folder.

    python bench/upscale_quality.py --checkpoint checkpoints/emoji --data runs/emoji-data --size 256 --images 40

Takes ``--images`` renders of the held-out split (pairs never trained on) at the upsampler's input
side, upscales each with ``pipe.upscale`` (fixed seeds) and with bicubic resampling, and compares
both with the real render at ``--size``: mean PSNR over the images, in dB on [0, 255], and the
standard deviation of flat white background pixels (grain), beside the real render's. A quality
figure, not a timing: it may run beside other work.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def background_std(image: np.ndarray, real: np.ndarray) -> float:
    """Std of ``image`` where the real render is pure white (the flat background)."""
    flat = (real >= 254).all(-1)
    return float(image[flat].std()) if flat.any() else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a folder written by `unclip data emoji`")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"], help="default: the upsampler's own")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from unclip.data.emoji_dataset import EmojiDataset
    from unclip.data.images import tensor_to_pil
    from unclip.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    low = pipe.sizes[pipe.sizes.index(args.size) - 1]
    small, large = (EmojiDataset(args.data, side, "heldout", forms=("canonical",)) for side in (low, args.size))
    chosen = random.Random(args.seed).sample(range(len(small.entries)), min(args.images, len(small.entries)))
    rows = []
    for k, i in enumerate(chosen):
        same = [(d.meta(i)["concept"], d.meta(i)["style"]) for d in (small, large)]
        if same[0] != same[1]:
            raise SystemExit(f"{args.data}: the {low} and {args.size} splits hold different images at {i}")
        source = tensor_to_pil(small[i]["image"][None])[0]
        real = np.asarray(tensor_to_pil(large[i]["image"][None])[0])
        ours = np.asarray(pipe.upscale(source, size=args.size, steps=args.steps, sampler=args.sampler,
                                       seed=args.seed + k, progress=False))
        bicubic = np.asarray(source.resize((args.size, args.size), Image.Resampling.BICUBIC))
        rows.append((psnr(ours, real), psnr(bicubic, real), background_std(ours, real), background_std(real, real)))
    ours, bicubic, grain, real_grain = (float(np.mean(col)) for col in zip(*rows))
    result = {"images": len(rows), "size": args.size, "steps": args.steps, "sampler": args.sampler, "psnr": ours,
              "bicubic_psnr": bicubic, "background_std": grain, "real_background_std": real_grain}
    print(f"{low}→{args.size} on {len(rows)} held-out renders: PSNR {ours:.2f} dB (bicubic {bicubic:.2f} dB); "
          f"background std {grain:.2f} (real {real_grain:.2f})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
