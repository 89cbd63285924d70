"""``unclip vary IMAGE``: variations of an image (paper §3.1): CLIP embedding + DDIM-inverted
noise, decoded with DDIM η > 0, then upsampled."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="a square image file (crop it first if needed)")
    parser.add_argument("-n", type=int, default=4, help="variations to make (default 4)")
    parser.add_argument("--eta", type=float, default=1.0,
                        help="DDIM eta in [0, 1]: 0 reconstructs the image, larger values vary more (default 1)")
    common.add_sampling_arguments(parser, guidance_stages="decoder (used for inversion and decoding alike; "
                                  "default 1, as DDIM inversion of a guided decoder does not retrace)")
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import Stage
    from unclip.pipeline.inputs import check_count, load_image

    check_count("-n", args.n)
    image = load_image(args.image)
    options = common.sampling_options(args, guided=(Stage.decoder,))
    images = common.load_pipeline(args).variations(image, args.n, options, eta=args.eta)
    images = common.signed(args, images)
    stem = common.slug(Path(args.image).stem) + "-variation"
    common.write_images(images, args.out, stem, grid="grid" if len(images) > 1 else None)
    return 0
