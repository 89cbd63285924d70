"""The ``unclip`` command. Each subcommand is a module of this package (``unclip.cli.<name>``) with
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports happen inside ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand → (module, one-line help); modules that do not exist yet are simply not offered
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("unclip.cli.generate", "text → images with a trained cascade"),
    "vary": ("unclip.cli.vary", "variations of an image (DDIM-inverted latent, eta > 0)"),
    "interpolate": ("unclip.cli.interpolate", "interpolate between two images (slerp)"),
    "diff": ("unclip.cli.diff", "text diff: move an image toward a new caption"),
    "edit": ("unclip.cli.edit", "regenerate the transparent part of an image to fit a prompt"),
    "outpaint": ("unclip.cli.outpaint", "expand an image beyond its canvas"),
    "upscale": ("unclip.cli.upscale", "an image through the upsamplers alone (super-resolution)"),
    "train": ("unclip.cli.train", "train one stage (clip, prior, decoder, upsampler)"),
    "embed": ("unclip.cli.embed", "precompute CLIP embeddings of a data set"),
    "data": ("unclip.cli.data", "build a data set from open packages (emoji in six styles)"),
    "eval": ("unclip.cli.evaluate", "measure a checkpoint's quality on the shapes set"),
    "serve": ("unclip.cli.serve", "OpenAI-compatible Images API and web page"),
    "params": ("unclip.cli.params", "parameter count of each stage in a config folder or file"),
}

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``unclip`` parser; with ``only``, only that subcommand gets its arguments (the others'
    ``add_arguments`` may import torch, which ``unclip --help`` or ``unclip generate`` need not wait for)."""
    parser = argparse.ArgumentParser(prog="unclip", description="unCLIP (DALL·E 2): train and sample.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=next((a for a in argv if not a.startswith("-")), ""))
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"unclip {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
