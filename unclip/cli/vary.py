"""``unclip vary IMAGE``: variations of an image (paper §3.1): CLIP embedding + DDIM-inverted
noise, decoded with DDIM η > 0, then upsampled."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli.common import (
    add_pipeline_arguments,
    add_sampling_arguments,
    load_pipeline,
    report,
    save_grid,
    save_images,
    slug,
    stage_values,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="a square image file (crop it first if needed)")
    parser.add_argument("-n", type=int, default=4, help="variations to make (default 4)")
    parser.add_argument("--eta", type=float, default=1.0,
                        help="DDIM eta: 0 reconstructs the image, larger values vary more (default 1)")
    add_sampling_arguments(parser, guidance_stages="decoder (used for inversion and decoding alike)")
    add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import SAMPLED_STAGES as STAGES
    from unclip.config import Stage
    from unclip.pipeline.inputs import check_count, load_image

    check_count("-n", args.n)
    image = load_image(args.image)
    pipe = load_pipeline(args)
    images = pipe.variations(image, n=args.n, eta=args.eta, size=args.size, seed=args.seed,
                             steps=stage_values(args.steps, STAGES), guidance=stage_values(args.guidance, (Stage.decoder,)),
                             progress=not args.quiet)
    stem = slug(Path(args.image).stem) + "-variation"
    paths = save_images(images, args.out, stem)
    if len(images) > 1:
        paths.append(save_grid(images, args.out / f"{stem}-grid.png"))
    report(paths)
    return 0
