"""``unclip interpolate IMAGE_A IMAGE_B``: frames between two images (paper §3.2): a slerp of their
CLIP image embeddings with fixed, slerped or inverted decoder noise; PNGs and an animated GIF."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common

MAX_GIF_DURATION_MS = 655350  # a GIF stores a frame's delay in 16 bits of hundredths of a second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_a", help="the first square image")
    parser.add_argument("image_b", help="the last square image")
    parser.add_argument("--frames", type=int, default=8, help="frames including both ends (default 8)")
    parser.add_argument("--noise", default="fixed", choices=("fixed", "slerp", "inverted"),
                        help="decoder noise: one fixed x_T, a slerp of two random ones, or a slerp of both "
                             "images' inverted x_T (the ends then reconstruct the images)")
    parser.add_argument("--duration", type=int, default=150,
                        help=f"GIF milliseconds per frame, 0..{MAX_GIF_DURATION_MS} (default 150)")
    common.add_sampling_arguments(parser, guidance_stages="decoder (default: the checkpoint's; 1 with "
                                  "--noise inverted)")
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import Stage
    from unclip.pipeline.inputs import check_count, load_image

    check_count("--frames", args.frames, minimum=2)
    if not 0 <= args.duration <= MAX_GIF_DURATION_MS:
        raise ValueError(f"--duration: expected 0..{MAX_GIF_DURATION_MS} milliseconds per frame, got {args.duration}")
    image_a, image_b = load_image(args.image_a, "image_a"), load_image(args.image_b, "image_b")
    options = common.sampling_options(args, guided=(Stage.decoder,))
    frames = common.load_pipeline(args).interpolate(image_a, image_b, args.frames, options, noise=args.noise)
    frames = common.signed(args, frames)
    stem = f"{common.slug(Path(args.image_a).stem)}-to-{common.slug(Path(args.image_b).stem)}"
    common.write_images(frames, args.out, stem)
    gif = args.out / f"{stem}.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=args.duration, loop=0)
    common.report([gif])
    return 0
