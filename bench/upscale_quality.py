"""PSNR of a cascade's upsamplers alone against bicubic, on real renders (emoji or shapes).

    python bench/upscale_quality.py --checkpoint checkpoints/emoji --data runs/emoji-data --size 256 --images 40
    python bench/upscale_quality.py --checkpoint checkpoints/shapes --data shapes --size 256 --images 200

Takes ``--images`` real renders at the upsampler's input side (emoji: the held-out split of a
folder written by ``unclip data emoji``; ``shapes``: scenes of a seed no stage trained on, each
rendered at both sides), upscales each with ``pipe.upscale`` (fixed seeds) and with bicubic
resampling, and compares both with the real render at ``--size``: mean PSNR over the images, in dB
on [0, 255], and the standard deviation of flat background pixels away from edges (grain), beside the real
render's. On shapes it also reports the detector's ``all`` on the upscaled images (and on the real
renders, its ceiling). A quality figure, not a timing: it may run beside other work.
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


HELD_OUT_SEED = 1000  # shapes scenes of this seed: the stages train on seeds 0-3


def flat_region(real: np.ndarray) -> np.ndarray:
    """Where the real render is flat background: pixels equal to its corner pixel (pure white for
    emoji) with no other colour within side/32 pixels, so that edge halos do not count as grain."""
    import torch
    import torch.nn.functional as F

    other = torch.from_numpy(~(real == real[0, 0]).all(-1)).float()[None, None]
    r = max(1, real.shape[0] // 32)
    return (F.max_pool2d(other, 2 * r + 1, stride=1, padding=r)[0, 0] == 0).numpy()


def background_std(image: np.ndarray, real: np.ndarray) -> float:
    """Mean over channels of the std of ``image`` in the real render's ``flat_region`` (grain)."""
    flat = flat_region(real)
    return float(image[flat].std(0).mean()) if flat.any() else 0.0


def emoji_renders(folder: str, low: int, size: int, count: int, seed: int):
    """(source PIL at ``low``, real uint8 array at ``size``, None) for held-out emoji renders."""
    from unclip.data.emoji_dataset import EmojiDataset
    from unclip.data.images import tensor_to_pil

    small, large = (EmojiDataset(folder, side, "heldout", forms=("canonical",)) for side in (low, size))
    for i in random.Random(seed).sample(range(len(small.entries)), min(count, len(small.entries))):
        if small.meta(i)["concept"] != large.meta(i)["concept"] or small.meta(i)["style"] != large.meta(i)["style"]:
            raise SystemExit(f"{folder}: the {low} and {size} splits hold different images at {i}")
        yield tensor_to_pil(small[i]["image"][None])[0], np.asarray(tensor_to_pil(large[i]["image"][None])[0]), None


def shapes_renders(low: int, size: int, count: int):
    """(source PIL at ``low``, real uint8 array at ``size``, scene) for shapes scenes of a held-out seed."""
    from unclip.data.shapes import ShapesDataset

    data = ShapesDataset(size, seed=HELD_OUT_SEED)
    for i in range(count):
        scene = data.scene_at(i)
        yield scene.render(low), np.asarray(scene.render(size)), scene


def main(argv: list[str] | None = None) -> int:
    from unclip.diffusion.schedule import Sampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="`shapes`, or a folder written by `unclip data emoji`")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler", choices=[s.value for s in Sampler if s is not Sampler.unclip],
                        help="default: the upsampler's own")
    parser.add_argument("--tile", type=int, help="tile side (0: the whole image; default: the upsamplers' own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from unclip.evaluation.detector import detect, score
    from unclip.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    if args.size not in pipe.sizes[1:]:
        raise SystemExit(f"--size {args.size}: this cascade upscales to {', '.join(map(str, pipe.sizes[1:]))}")
    low = pipe.sizes[pipe.sizes.index(args.size) - 1]
    if args.data == "shapes":
        renders = shapes_renders(low, args.size, args.images)
    else:
        renders = emoji_renders(args.data, low, args.size, args.images, args.seed)
    rows, detected = [], []
    for k, (source, real, scene) in enumerate(tqdm(renders, total=args.images, desc=f"{low}->{args.size}")):
        ours = np.asarray(pipe.upscale(source, size=args.size, steps=args.steps, sampler=args.sampler, tile=args.tile,
                                       seed=args.seed + k, precision=args.precision, progress=False))
        bicubic = np.asarray(source.resize((args.size, args.size), Image.Resampling.BICUBIC))
        rows.append((psnr(ours, real), psnr(bicubic, real), background_std(ours, real), background_std(real, real)))
        if scene is not None:
            detected.append((score(detect(ours), scene)["all"], score(detect(real), scene)["all"]))
    ours, bicubic, grain, real_grain = (float(np.mean(col)) for col in zip(*rows))
    result = {"images": len(rows), "size": args.size, "steps": args.steps, "sampler": args.sampler, "tile": args.tile, "psnr": ours,
              "bicubic_psnr": bicubic, "background_std": grain, "real_background_std": real_grain}
    line = (f"{low}→{args.size} on {len(rows)} held-out renders: PSNR {ours:.2f} dB (bicubic {bicubic:.2f} dB); "
            f"background std {grain:.2f} (real {real_grain:.2f})")
    if detected:
        result["detector_all"], result["real_detector_all"] = (float(np.mean(col)) for col in zip(*detected))
        line += f"; detector all {result['detector_all']:.1%} (real renders {result['real_detector_all']:.1%})"
    print(line)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
