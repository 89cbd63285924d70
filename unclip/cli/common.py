"""What the sampling subcommands share: choosing the pipeline, per-stage options, writing images."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from unclip.config import SAMPLED_STAGES, UPSAMPLER, UPSAMPLERS

OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*", re.DOTALL)  # a key.sub=value config override

STAGE_NAMES = (*SAMPLED_STAGES, UPSAMPLER)  # what STAGE= may name in --steps, --guidance and --sampler


def accept_overrides_anywhere(parser: argparse.ArgumentParser) -> None:
    """argparse takes a positional list only in one run; let key=value also follow the options."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, rest = parse(args, namespace)
        extra = [a for a in rest if OVERRIDE.fullmatch(a)]
        namespace.overrides = [*(namespace.overrides or []), *extra]
        return namespace, [a for a in rest if not OVERRIDE.fullmatch(a)]

    parser.parse_known_args = parse_known_args


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="pipeline folder (default: $UNCLIP_CHECKPOINT, else the shipped checkpoints/shapes)")
    source.add_argument("--random-from", metavar="CONFIG_DIR",
                        help="random weights built from a config folder such as configs/tiny: a smoke test, "
                             "the images are noise")
    parser.add_argument("--prior", default="prior", metavar="NAME",
                        help="the pipeline folder's sub-folder (with --random-from: the config file <NAME>.yaml) "
                             "whose prior to use, e.g. prior_ar for the autoregressive prior (default: prior)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def add_sampling_arguments(parser: argparse.ArgumentParser, *, guidance_stages: str) -> None:
    parser.add_argument("--size", type=int, help="output side; default: the largest the pipeline makes up to 256 (pass --size 1024 for 1024)")
    parser.add_argument("--steps", nargs="+", type=stage_value(int), metavar="[STAGE=]N",
                        help=f"sampling steps: N for every stage, or STAGE=N (stages: {', '.join(STAGE_NAMES)})")
    parser.add_argument("--guidance", nargs="+", type=stage_value(float), metavar="[STAGE=]G",
                        help=f"classifier-free guidance scale: G for the {guidance_stages}, or STAGE=G")
    add_tile_argument(parser)
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: out/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--watermark", action="store_true",
                        help="draw DALL·E 2's five-colour signature in each image's bottom-right corner")
    add_precision_argument(parser)


def add_tile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile", nargs="+", type=stage_value(int), metavar="[STAGE=]N",
                        help="run the upsamplers on overlapping N×N tiles (0: on the whole image), or STAGE=N; "
                             "default: each upsampler's own (its config.json's tile: its training crop's side)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto (default): bf16 autocast where the device has bf16 matrix units (a CUDA GPU "
                             "with bf16, a CPU with AVX512-BF16 or AMX), else fp32")


def add_filter_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocklist", type=Path, metavar="FILE",
                        help="refuse prompts that match a line of FILE (a term or regular expression, "
                             "case-insensitive, whole words); default: no filter")


def check_prompt(args: argparse.Namespace, prompt: str) -> None:
    """A command's main prompt: not empty, and not flagged by ``--blocklist`` (before anything loads)."""
    if not prompt.strip():
        raise ValueError("prompt: the prompt is empty")
    check_prompts(args, prompt)


def read_image(path: str, name: str):
    """The image at ``path`` with its alpha kept, fully read; a ValueError naming ``name`` if it cannot be."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, ValueError) as err:
        raise ValueError(f"{name}: cannot read {path}: {err}") from None


def check_prompts(args: argparse.Namespace, *prompts: str) -> None:
    """Refuse, before anything is loaded, a prompt that ``--blocklist`` flags."""
    from unclip.safety import Blocklist
    from unclip.safety import check_prompt as refuse_if_flagged

    if args.blocklist is not None:
        blocklist = Blocklist.from_file(args.blocklist)
        for prompt in prompts:
            refuse_if_flagged(blocklist, prompt)


def stage_value(cast):
    """argparse type for ``VALUE`` or ``STAGE=VALUE``: returns (stage or None, value)."""

    def parse(text: str):
        stage, sep, raw = text.rpartition("=")
        if sep and stage not in STAGE_NAMES:
            raise argparse.ArgumentTypeError(f"unknown stage {stage!r} in {text!r} (stages: {', '.join(STAGE_NAMES)})")
        try:
            return (stage or None, cast(raw))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a valid {cast.__name__}") from None

    parse.__name__ = cast.__name__
    return parse


def stage_values(items: list[tuple[str | None, object]] | None, bare_stages: tuple[str, ...]):
    """Per-stage dict from ``--steps``-style items; a bare value applies to ``bare_stages``,
    ``upsampler=V`` to both upsamplers. Whatever the order, ``upsampler=V`` wins over a bare value
    and an exact ``STAGE=V`` over both."""
    if not items:
        return None
    values: dict[str, object] = {}
    for stage, value in items:
        if stage is None:
            values.update({s: value for s in bare_stages})
    for stage, value in items:
        if stage == UPSAMPLER:
            values.update({s: value for s in UPSAMPLERS})
    values.update({stage: value for stage, value in items if stage not in (None, UPSAMPLER)})
    return values


def sampling_options(args: argparse.Namespace, guided: tuple[str, ...]):
    """The ``SamplingOptions`` of ``add_sampling_arguments``' flags (and ``--sampler`` where a
    command has it); a bare ``--guidance G`` applies to the ``guided`` stages."""
    from unclip.pipeline import SamplingOptions

    samplers = [tuple(s.split("=", 1)) if "=" in s else (None, s) for s in getattr(args, "sampler", None) or []]
    return SamplingOptions(size=args.size, seed=args.seed, steps=stage_values(args.steps, SAMPLED_STAGES),
                           guidance=stage_values(args.guidance, guided),
                           sampler=stage_values(samplers, SAMPLED_STAGES),
                           tile=stage_values(getattr(args, "tile", None), UPSAMPLERS), progress=not args.quiet,
                           precision=args.precision)


def signed(args: argparse.Namespace, images: list) -> list:
    """The images, with DALL·E 2's signature drawn on each when ``--watermark`` asks for it."""
    if not args.watermark:
        return images
    from unclip.pipeline.watermark import add_signature

    return [add_signature(image) for image in images]


def write_images(images, out: Path, stem: str, grid: str | None = None, columns: int | None = None) -> list[Path]:
    """Save each image as ``out/<stem>-<i>.png`` and, with ``grid``, all of them on one sheet
    ``out/<stem>-<grid>.png``; print the paths."""
    paths = save_images(images, out, stem)
    if grid:
        paths.append(save_grid(images, out / f"{stem}-{grid}.png", columns=columns))
    report(paths)
    return paths


def load_pipeline(args: argparse.Namespace):
    """The pipeline named by --checkpoint / --random-from, else the default checkpoint. --device
    and the command's --out folder (where it has one) are checked first, so that a mistake there
    is said before anything loads or samples."""
    from unclip.pipeline import UnCLIPPipeline, default_checkpoint
    from unclip.pipeline.folder import random_parts

    device = pick_device(args.device)
    if getattr(args, "out", None) is not None:
        check_folder(args.out, "--out")
    if args.random_from:
        pipe = UnCLIPPipeline(**vars(random_parts(args.random_from, seed=0, prior=args.prior))).to(device)
        print(f"note: random weights built from {args.random_from} (nothing trained): the images are noise; "
              "pass --checkpoint PATH for a trained pipeline", file=sys.stderr)
        return pipe
    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    if not path.is_dir():
        if args.checkpoint:
            raise FileNotFoundError(f"--checkpoint: no pipeline folder at {path}")
        raise ValueError(f"no --checkpoint given and the default checkpoint {path} does not exist yet; pass "
                         "--checkpoint PATH (a pipeline folder, e.g. training exports copied together), set "
                         "UNCLIP_CHECKPOINT, or try the command on random weights with --random-from configs/tiny")
    return UnCLIPPipeline.from_pretrained(path, device=device, prior=args.prior)


def pick_device(name: str | None):
    """The torch device ``--device`` names (default: cuda when available, else cpu); a ValueError
    naming --device when torch does not know it or this machine does not have it."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device: {name} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return device


def check_folder(path: Path, flag: str) -> None:
    """Refuse, before anything loads, an output folder that cannot be made or written: a file in
    its place or above it, or no write permission (it is created when the images are written)."""
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    if existing is None:  # not even the working folder exists: mkdir will say so
        return
    if not existing.is_dir():
        where = "" if existing == path else f", so {path} cannot be created"
        raise ValueError(f"{flag}: {existing} is a file, not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: cannot write in {existing} (permission denied)")


def slug(text: str, limit: int = 40) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)[:limit].strip("-") or "image"


def save_images(images, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{stem}-{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def save_grid(images, path: Path, columns: int | None = None, captions: list[str] | None = None) -> Path:
    """All images on one sheet, ``columns`` per row (default: as square as possible), each with
    its caption (wrapped) under it when ``captions`` are given."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    font = ImageFont.load_default(size=max(10, w // 18)) if captions else None
    lines = [textwrap.wrap(c, width=max(12, int(w / (0.55 * font.size)))) for c in captions] if captions else []
    line_h = int(font.size * 1.25) if captions else 0
    band = line_h * max(map(len, lines), default=0) + (line_h // 2 if captions else 0)
    sheet = Image.new("RGB", (columns * w, rows * (h + band)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x, y = (i % columns) * w, (i // columns) * (h + band)
        sheet.paste(image, (x, y))
        for j, line in enumerate(lines[i] if captions else []):
            draw.text((x + 4, y + h + 2 + j * line_h), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def report(paths: list[Path]) -> None:
    for path in paths:
        print(path)
