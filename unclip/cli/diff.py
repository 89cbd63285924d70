"""``unclip diff IMAGE --from TEXT --to TEXT``: a text diff (paper §3.3): the image's CLIP
embedding slerped toward normalise(z_to − z_from), decoded from its inverted noise."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="a square image file")
    parser.add_argument("--from", dest="from_text", required=True,
                        help='a caption of the image as it is ("" for none)')
    parser.add_argument("--to", dest="to_text", required=True, help="the caption to move toward")
    parser.add_argument("--thetas", nargs="+", type=float, metavar="THETA",
                        help="slerp amounts in [0, 1], one frame each (default 0 0.125 0.25 0.375 0.5)")
    common.add_sampling_arguments(parser, guidance_stages="decoder (inversion and decoding; default 1)")
    common.add_filter_argument(parser)
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import Stage
    from unclip.pipeline.inputs import load_image

    common.check_prompts(args, args.from_text, args.to_text)
    image = load_image(args.image)
    options = common.sampling_options(args, guided=(Stage.decoder,))
    frames = common.load_pipeline(args).text_diff(image, args.from_text, args.to_text, args.thetas, options)
    frames = common.signed(args, frames)
    stem = f"{common.slug(Path(args.image).stem)}-to-{common.slug(args.to_text)}"
    common.write_images(frames, args.out, stem, grid="strip", columns=len(frames))
    return 0
