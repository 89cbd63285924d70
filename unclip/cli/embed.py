"""``unclip embed --config FILE --output DIR``: precompute CLIP encodings of a data set.

Writes sharded ``.npy`` files and ``metadata.json`` (``unclip.data.embeddings``: image and text
embeddings, text token states and masks, captions) plus the CLIP that made them in ``DIR/clip/``,
so that the prior trains with ``data.kind=embeddings data.path=DIR`` without touching images (and
picks that CLIP by itself unless ``training.clip_checkpoint`` names another).
"""

from __future__ import annotations

import argparse

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.kind=folder")
    parser.add_argument("--config", required=True, help="a stage YAML with clip and data sections (e.g. a prior config)")
    parser.add_argument("--output", required=True, help="folder for the shards and metadata.json")
    parser.add_argument("--clip", help="a clip/ component folder (default: training.clip_checkpoint, else the clip section)")
    parser.add_argument("--limit", type=int, help="samples to encode (required for endless sets such as shapes)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per shard")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    common.accept_overrides_anywhere(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from unclip.checkpoint import save_component
    from unclip.config import load_stage_config
    from unclip.data import build_dataset
    from unclip.data.embeddings import EmbeddingsWriter
    from unclip.training.stages.common import frozen_clip

    cfg = load_stage_config(args.config, args.overrides)
    if not hasattr(cfg, "clip"):
        raise ValueError(f"{args.config} has no clip section (use a clip, prior or decoder config)")
    out = Path(args.output)
    if (out / "metadata.json").exists():
        raise ValueError(f"{out} already holds embeddings (metadata.json); choose another --output")
    if args.clip:
        cfg.training.clip_checkpoint = args.clip
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clip = frozen_clip(cfg, device)
    dataset = build_dataset(cfg.data)
    count = _count(dataset, args.limit)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    done = 0
    with EmbeddingsWriter(out, args.shard_size) as writer, tqdm(total=count, desc="embed", unit="sample") as bar:
        for batch in loader:
            take = min(len(batch["caption"]), count - done)
            images, captions = batch["image"][:take].to(device), list(batch["caption"][:take])
            text = clip.encode_text(captions)
            writer.add(clip.encode_image(images), text.emb, text.tokens, text.mask, captions)
            done += take
            bar.update(take)
            if done >= count:
                break
    save_component(clip, out / "clip")
    print(f"wrote {count} encodings to {out}")
    return 0


def _count(dataset, limit: int | None) -> int:
    size = len(dataset) if hasattr(dataset, "__len__") else None
    if limit is None and size is None:
        raise ValueError("this data set is endless (e.g. shapes): pass --limit N")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    count = limit if size is None else min(size, limit or size)
    if count == 0:
        raise ValueError("the data set is empty: nothing to embed")
    return count

