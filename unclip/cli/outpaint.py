"""``unclip outpaint IMAGE "prompt" --expand PX`` (or ``--left/--right/--top/--bottom PX``): the
canvas grows and the new area is drawn to fit the prompt and the picture, by inpainting in
overlapping windows; the original's pixels come back exactly."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the picture to expand (any size)")
    parser.add_argument("prompt", help="what the whole expanded picture should show")
    parser.add_argument("--expand", type=int, default=0, metavar="PX", help="pixels to add on every side")
    for side in ("left", "right", "top", "bottom"):
        parser.add_argument(f"--{side}", type=int, metavar="PX",
                            help=f"pixels to add on the {side} (wins over --expand)")
    parser.add_argument("--context", type=float, default=0.25,
                        help="0..1: how much each window follows what it already shows rather than the prompt "
                             "(default 0.25)")
    parser.add_argument("--resample", type=int, default=0, metavar="R",
                        help="RePaint resampling of each window (default 0)")
    common.add_sampling_arguments(parser, guidance_stages="prior and the decoder")
    common.add_filter_argument(parser)
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import GUIDED_STAGES
    from unclip.pipeline.inputs import check_count
    from unclip.pipeline.outpaint import Margins

    check_count("--expand", args.expand, minimum=0)
    check_count("--resample", args.resample, minimum=0)
    margins = Margins(**{side: args.expand if getattr(args, side) is None else getattr(args, side)
                         for side in ("left", "right", "top", "bottom")})
    common.check_prompt(args, args.prompt)
    image = common.read_image(args.image, "image")
    options = common.sampling_options(args, guided=GUIDED_STAGES)
    result = common.load_pipeline(args).outpaint(image, args.prompt, options, left=margins.left, right=margins.right,
                                                 top=margins.top, bottom=margins.bottom, context=args.context,
                                                 resample=args.resample)
    common.write_images(common.signed(args, [result]), args.out, common.slug(Path(args.image).stem) + "-outpaint")
    return 0
