"""``unclip eval``: measure a cascade on the shapes set; writes report.json and report.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unclip.commands._common import add_pipeline_arguments, load_pipeline, stage_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("eval"), help="report folder (default: eval/)")
    parser.add_argument("--prompts", type=int, default=200, help="prompts per binding category (default 200)")
    parser.add_argument("--fid-images", type=int, default=1000, help="images per FID figure; 0 skips FID")
    parser.add_argument("--detector-scenes", type=int, default=500, help="real renders to check the detector on")
    parser.add_argument("--prior-captions", type=int, default=200, help="held-out captions for the prior figures")
    parser.add_argument("--variation-images", type=int, default=20, help="real renders to make variations of")
    parser.add_argument("--interpolations", type=int, default=10, help="image pairs to interpolate")
    parser.add_argument("--batch", type=int, default=50, help="images per pipeline call")
    parser.add_argument("--steps", nargs="+", metavar="STAGE=N",
                        help="sampling steps per stage, e.g. decoder=25 (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0)


def _settings(args: argparse.Namespace):
    from unclip.commands._common import _stage_value
    from unclip.evaluate import EvalSettings

    counts = dict(prompts=args.prompts, fid_images=args.fid_images, detector_scenes=args.detector_scenes,
                  prior_captions=args.prior_captions, variation_images=args.variation_images,
                  interpolations=args.interpolations, batch=args.batch)
    for name, value in counts.items():
        if value < (0 if name == "fid_images" else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive whole number, got {value}")
    parse = _stage_value(int)
    steps = stage_values([parse(s) for s in args.steps], ("prior", "decoder", "upsampler")) if args.steps else None
    return EvalSettings(**counts, seed=args.seed, steps=steps)


def run(args: argparse.Namespace) -> int:
    from unclip.evaluate import markdown, run_eval

    settings = _settings(args)
    pipe = load_pipeline(args)
    report = run_eval(pipe, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "report.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'}")
    return 0
