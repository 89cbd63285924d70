"""``unclip generate PROMPT``: text → images with the prior, the decoder and the upsamplers."""

from __future__ import annotations

import argparse

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
    parser.add_argument("prompt", help="the caption to draw")
    parser.add_argument("-n", type=int, default=1, help="images to make (default 1); n > 1 also writes a grid")
    add_sampling_arguments(parser, guidance_stages="prior and the decoder")
    parser.add_argument("--sampler", nargs="+", type=str, metavar="[STAGE=]NAME",
                        help="ddpm, ddim, dpmpp or unclip: for every stage, or STAGE=NAME")
    parser.add_argument("--prior-candidates", type=int, default=2,
                        help="prior samples per image; the one closest to the caption is kept (default 2)")
    add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import GUIDED_STAGES
    from unclip.config import SAMPLED_STAGES as STAGES
    from unclip.pipeline.inputs import check_count

    check_count("-n", args.n)  # cheap checks before loading anything
    if not args.prompt.strip():
        raise ValueError("prompt: the prompt is empty")
    pipe = load_pipeline(args)
    samplers = [tuple(s.split("=", 1)) if "=" in s else (None, s) for s in args.sampler or []]
    images = pipe.generate(
        args.prompt, n=args.n, size=args.size, seed=args.seed, prior_candidates=args.prior_candidates,
        steps=stage_values(args.steps, STAGES), guidance=stage_values(args.guidance, GUIDED_STAGES),
        sampler=stage_values(samplers, STAGES), progress=not args.quiet,
    )
    stem = slug(args.prompt)
    paths = save_images(images, args.out, stem)
    if len(images) > 1:
        paths.append(save_grid(images, args.out / f"{stem}-grid.png"))
    report(paths)
    return 0
