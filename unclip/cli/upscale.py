"""``unclip upscale IMAGE [--size 256|1024]``: a square image through the cascade's upsamplers
alone (the paper's upsamplers are general super-resolution models)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="a square image; it is first resized to the cascade side at or below its own")
    parser.add_argument("--size", type=int, help="output side (default: the cascade's largest)")
    parser.add_argument("--steps", nargs="+", type=common.stage_value(int), metavar="[STAGE=]N",
                        help="upsampler steps: N for every upsampler, or STAGE=N")
    common.add_tile_argument(parser)
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--watermark", action="store_true",
                        help="draw DALL·E 2's five-colour signature in the bottom-right corner")
    common.add_precision_argument(parser)
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import UPSAMPLERS
    from unclip.pipeline import SamplingOptions
    from unclip.pipeline.inputs import load_image

    image = load_image(args.image)
    options = SamplingOptions(size=args.size, steps=common.stage_values(args.steps, UPSAMPLERS),
                              tile=common.stage_values(args.tile, UPSAMPLERS), seed=args.seed,
                              progress=not args.quiet, precision=args.precision)
    result = common.load_pipeline(args).upscale(image, options)
    stem = common.slug(Path(args.image).stem) + f"-{result.size[0]}"
    common.write_images(common.signed(args, [result]), args.out, stem)
    return 0
