"""``unclip train STAGE --config FILE --output DIR [--resume] [key=value ...]``: train one stage.

Works unchanged under ``accelerate launch`` (any number of processes). ``train/<stage>.py`` runs
the same code.
"""

from __future__ import annotations

import argparse
import sys

from unclip.cli import common
from unclip.cli import main as cli_main
from unclip.config import UPSAMPLER, UPSAMPLERS, Stage

STAGES = tuple(map(str, (Stage.clip, Stage.prior, Stage.decoder, UPSAMPLER, *UPSAMPLERS)))  # "upsampler": either


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=STAGES, help="the stage to train; must match the config's 'stage'")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. training.steps=100 data.kind=embeddings")
    parser.add_argument("--config", required=True, help="stage YAML file, e.g. configs/tiny/decoder.yaml")
    parser.add_argument("--output", required=True, help="run folder: checkpoints, samples, logs, export/")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    parser.add_argument("--keep", type=int, default=3, metavar="N", help="checkpoints to keep (default 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.accept_overrides_anywhere(parser)


def run(args: argparse.Namespace) -> int:
    from unclip.config import load_stage_config
    from unclip.training.loop import TrainingError, train

    cfg = load_stage_config(args.config, args.overrides)
    if args.stage not in (cfg.stage, cfg.stage.component):
        raise ValueError(f"{args.config} configures the {cfg.stage} stage, not {args.stage}")
    try:
        train(cfg, args.output, resume=args.resume, keep_checkpoints=args.keep,
              progress=not args.no_progress)
    except TrainingError as err:
        print(f"unclip train: stopped: {err}", file=sys.stderr)
        return 1
    return 0


def main(stage: str, argv: list[str] | None = None) -> int:
    """What ``train/<stage>.py`` runs: ``unclip train <stage> ARGS``."""

    return cli_main(["train", stage, *(sys.argv[1:] if argv is None else argv)])
