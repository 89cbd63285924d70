"""``unclip edit IMAGE "prompt" [--mask MASK]``: regenerate the pixels whose alpha (in MASK, or
in IMAGE itself) is 0 to fit the prompt; every other pixel comes back unchanged, byte for byte.
The results have the image's own size; the cascade runs at ``--size``."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="a square PNG; without --mask its fully transparent pixels are regenerated")
    parser.add_argument("prompt", help="what the whole edited image should show")
    parser.add_argument("--mask", help="a PNG of the image's size whose fully transparent pixels mark what to regenerate")
    parser.add_argument("-n", type=int, default=1, help="edits to make (default 1); n > 1 also writes a grid")
    parser.add_argument("--resample", type=int, default=0, metavar="R",
                        help="RePaint resampling: redo each decoder step R more times (slower, better seams; default 0)")
    common.add_sampling_arguments(parser, guidance_stages="prior and the decoder")
    common.add_filter_argument(parser)
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import GUIDED_STAGES
    from unclip.pipeline.inpaint import keep_mask
    from unclip.pipeline.inputs import check_count

    check_count("-n", args.n)  # cheap checks before loading anything
    check_count("--resample", args.resample, minimum=0)
    common.check_prompt(args, args.prompt)
    image = common.read_image(args.image, "image")
    mask = common.read_image(args.mask, "mask") if args.mask else None
    if image.size[0] != image.size[1]:
        raise ValueError(f"image: the image is {image.size[0]}×{image.size[1]}, not square; crop it to a square first")
    keep_mask(image, mask)  # no alpha, or a mask of another size: said before the pipeline loads
    options = common.sampling_options(args, guided=GUIDED_STAGES)
    images = common.load_pipeline(args).inpaint(image, args.prompt, options, mask=mask, n=args.n,
                                                output_side=image.size[0], resample=args.resample)
    images = common.signed(args, images)
    stem = common.slug(Path(args.image).stem) + "-edit"
    common.write_images(images, args.out, stem, grid="grid" if len(images) > 1 else None)
    return 0
