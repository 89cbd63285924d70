"""``unclip generate PROMPT``: text → images with the prior, the decoder and the upsamplers."""

from __future__ import annotations

import argparse

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the caption to draw")
    parser.add_argument("-n", type=int, default=1, help="images to make (default 1); n > 1 also writes a grid")
    common.add_sampling_arguments(parser, guidance_stages="prior and the decoder")
    parser.add_argument("--sampler", nargs="+", type=str, metavar="[STAGE=]NAME",
                        help="ddpm, ddim, dpmpp, dpmpp-sde or unclip: for every stage, or STAGE=NAME")
    parser.add_argument("--prior-candidates", type=int, default=2,
                        help="prior samples per image; the one closest to the caption is kept (default 2)")
    parser.add_argument("--decoder-candidates", type=int, default=1,
                        help="64×64 decoder samples per image; the one CLIP finds closest to the caption is kept "
                             "and upsampled (default 1; more costs that many decoder runs and helps which colour "
                             "goes with which shape)")
    common.add_filter_argument(parser)
    common.add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import GUIDED_STAGES
    from unclip.pipeline.inputs import check_count

    check_count("-n", args.n)  # cheap checks before loading anything
    check_count("--prior-candidates", args.prior_candidates)
    check_count("--decoder-candidates", args.decoder_candidates)
    common.check_prompt(args, args.prompt)
    options = common.sampling_options(args, guided=GUIDED_STAGES)
    images = common.load_pipeline(args).generate(args.prompt, args.n, options, prior_candidates=args.prior_candidates,
                                                  decoder_candidates=args.decoder_candidates)
    images = common.signed(args, images)
    common.write_images(images, args.out, common.slug(args.prompt), grid="grid" if len(images) > 1 else None)
    return 0
