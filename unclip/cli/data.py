"""``unclip data emoji --out DIR``: build a data set from open packages (see ``unclip.data.emoji``).

Fetches the six emoji packages with ``npm pack`` (pinned versions; ``--packages`` names a folder
of already extracted ones), joins them by code point, renders every image on a white (or
``--background``) canvas at each ``--sizes`` side and writes webdataset shards
``DIR/<size>/{train,heldout,variations}/NNNNN.tar`` plus ``DIR/metadata.json`` (counts per style,
licences and credits, the held-out pairs and concepts). Train on them with
``data.kind=emoji data.path=DIR`` (``unclip.data.emoji_dataset``: every image in five caption
forms, at the smallest size built that is at least ``data.resolution``; the ``configs/emoji/``
stages do so); the shards also read as plain ``data.kind=webdataset``.
"""

from __future__ import annotations

import argparse

DATASETS = ("emoji",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unclip.data.emoji import SETS

    parser.add_argument("dataset", choices=DATASETS, help="which data set to build")
    parser.add_argument("--out", required=True, help="output folder (shards and metadata.json)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="image sides to render")
    parser.add_argument("--sets", nargs="+", default=list(SETS), metavar="STYLE",
                        help=f"styles to include (default all: {', '.join(SETS)}); quote two-word names")
    parser.add_argument("--background", default="white", help="canvas colour (CSS), default white")
    parser.add_argument("--packages", help="folder of the npm packages (default $UNCLIP_CACHE/emoji/packages); "
                        "missing ones are fetched there with npm pack")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice and the shard order")
    parser.add_argument("--held-out", type=float, default=0.05, help="share of (concept, style) pairs held out")
    parser.add_argument("--variation-concepts", type=float, default=0.02,
                        help="share of the concepts in every style held out of all of them (for variations)")
    parser.add_argument("--per-shard", type=int, default=1000, help="images per shard")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from unclip.data import emoji

    unknown = [s for s in args.sets if s not in emoji.SETS]
    if unknown:
        raise ValueError(f"unknown emoji set {unknown[0]!r}; choose from {', '.join(emoji.SETS)}")
    if any(size < 8 for size in args.sizes):
        raise ValueError(f"--sizes must be at least 8 pixels, got {args.sizes}")
    if args.per_shard < 1:
        raise ValueError(f"--per-shard must be at least 1, got {args.per_shard}")
    for name in ("held_out", "variation_concepts"):
        if not 0 <= getattr(args, name) < 0.5:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 0.5), got {getattr(args, name)}")
    out = Path(args.out)
    sizes = _new_sizes(out, args)
    if not sizes:
        print(f"{out} already holds sizes {', '.join(map(str, args.sizes))}: nothing to do")
        return 0
    cache = Path(os.environ.get("UNCLIP_CACHE", "~/.cache/unclip")).expanduser() / emoji.PACKAGE_CACHE
    root = Path(args.packages) if args.packages else cache
    needed = list(dict.fromkeys(args.sets + [emoji.SETS[s].chars_from for s in args.sets if emoji.SETS[s].chars_from]))
    packages = {style: emoji.fetch(style, root) for style in needed}
    meta = emoji.build(out, args.sets, packages, sizes=sizes, background=args.background, seed=args.seed,
                       held_out=args.held_out, variation_concepts=args.variation_concepts,
                       per_shard=args.per_shard, progress=not args.quiet)
    train = sum(c["train"] for c in meta["counts"].values())
    print(f"wrote {meta['images']} images of {meta['concepts']} concepts in {len(args.sets)} styles "
          f"({train} for training, {len(meta['held_out'])} held-out pairs, {len(meta['variation_concepts'])} "
          f"concepts for variations) at {', '.join(map(str, meta['sizes']))} px to {out}")
    return 0


SAME = ("styles", "seed", "background", "held_out_share", "variation_share")  # what later sizes must share


def _new_sizes(out, args: argparse.Namespace) -> list[int]:
    """The ``--sizes`` that ``out`` lacks; a folder built before may gain sizes, with the same sets,
    seed, background and held-out shares (so that every size holds the same split)."""
    import json

    path = out / "metadata.json"
    if not path.is_file():
        return sorted(set(args.sizes))
    meta = json.loads(path.read_text())
    asked = {"styles": args.sets, "seed": args.seed, "background": args.background,
             "held_out_share": args.held_out, "variation_share": args.variation_concepts}
    differs = [k for k in SAME if meta.get(k) != asked[k]]
    if differs:
        raise ValueError(f"{out} already holds a data set built with other {', '.join(differs)} "
                         f"({', '.join(f'{k}={meta.get(k)!r}' for k in differs)}); choose another --out")
    return sorted(set(args.sizes) - set(meta["sizes"]))
