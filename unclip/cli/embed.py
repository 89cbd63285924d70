"""``unclip embed --config FILE --output DIR``: precompute CLIP encodings of a data set.

Writes sharded ``.npy`` files and ``metadata.json`` (``unclip.data.embeddings``: image and text
embeddings, text token states and masks, captions) plus the CLIP that made them in ``DIR/clip/``,
so that the prior trains with ``data.kind=embeddings data.path=DIR`` without touching images (and
picks that CLIP by itself unless ``training.clip_checkpoint`` names another). ``metadata.json`` is
written last: a run that fails or is interrupted leaves none, and a rerun into the same ``DIR``
overwrites what it left.

Under ``accelerate launch`` with N processes (GPUs, or CPU processes over gloo) each encodes 1/N of
the samples into its own shards (``pNNN-00000_*``) and the main process joins the metadata::

    accelerate launch --multi_gpu --num_processes 8 -m unclip embed --config configs/paper/prior.yaml \
        --output data/emb data.kind=webdataset data.path='shards/{00000..00999}.tar' --limit 1000000
"""

from __future__ import annotations

import argparse

from unclip.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.kind=folder")
    parser.add_argument("--config", required=True, help="a stage YAML with clip and data sections (e.g. a prior config)")
    parser.add_argument("--output", required=True, help="folder for the shards and metadata.json")
    parser.add_argument("--clip", help="a clip/ component folder (default: training.clip_checkpoint, else the clip section)")
    parser.add_argument("--limit", type=int, help="samples to encode (required for endless sets such as shapes; "
                        "default for folders and shards: one pass over all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per shard")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    common.accept_overrides_anywhere(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from accelerate import PartialState

    from unclip.config import load_stage_config
    from unclip.training.sharded import cpu_processes

    for flag, value in (("--batch-size", args.batch_size), ("--shard-size", args.shard_size)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.device is not None:
        common.pick_device(args.device)  # a device torch or this machine lacks: said before loading
    cfg = load_stage_config(args.config, args.overrides)
    if not hasattr(cfg, "clip"):
        raise ValueError(f"{args.config} has no clip section (use a clip, prior or decoder config)")
    out = Path(args.output)
    if (out / "metadata.json").exists():  # written last, so only a finished run has it
        raise ValueError(f"{out} already holds embeddings (metadata.json); choose another --output")
    if args.clip:
        cfg.training.clip_checkpoint = args.clip
    state = PartialState(cpu=cpu_processes())  # one process, or those `accelerate launch` started
    try:
        count = _encode(cfg, args, out, state)
    finally:
        if state.num_processes > 1:
            state.destroy_process_group()
    if state.is_main_process:
        print(f"wrote {count} encodings to {out}")
    return 0


def _encode(cfg, args: argparse.Namespace, out, state) -> int:
    """Every process encodes its share (``1/N`` of the samples) into its own shards; the main
    process writes the CLIP, then joins their metadata into ``metadata.json`` (last, so that only a
    finished run has it). Returns the rows written (by all processes, on the main one)."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, Subset
    from tqdm.auto import tqdm

    from unclip.checkpoint import save_component
    from unclip.config import to_dict
    from unclip.data import build_dataset
    from unclip.data.embeddings import EmbeddingsWriter, merge_metadata
    from unclip.training.stages.common import frozen_clip

    rank, world = state.process_index, state.num_processes
    device = common.pick_device(args.device) if args.device and world == 1 else state.device
    clip = frozen_clip(cfg, device)
    dataset = build_dataset(cfg.data, rank=rank, world_size=world)  # iterable sets read their share
    share = _share(dataset, args.limit, rank, world)
    if not isinstance(dataset, IterableDataset):
        dataset = Subset(dataset, range(rank, _count(dataset, args.limit), world))
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    done = 0
    # each process's metadata goes to a part file (none if it fails); metadata.json is written last
    with (EmbeddingsWriter(out, args.shard_size, prefix=f"p{rank:03d}-" if world > 1 else "",
                           metadata=_part(rank), source=to_dict(cfg.data)) as writer,
          tqdm(total=share, desc="embed", unit="sample", disable=not state.is_main_process) as bar):
        for batch in loader if share != 0 else []:
            take = len(batch["caption"]) if share is None else min(len(batch["caption"]), share - done)
            images, captions = batch["image"][:take].to(device), list(batch["caption"][:take])
            text = clip.encode_text(captions)
            writer.add(clip.encode_image(images), text.emb, text.tokens, text.mask, captions)
            done += take
            bar.update(take)
            if share is not None and done >= share:
                break
    state.wait_for_everyone()
    if not state.is_main_process:
        return done
    save_component(clip, out / "clip")
    return merge_metadata(out, [_part(r) for r in range(world)])["count"]


def _part(rank: int) -> str:
    return f"metadata.part{rank:03d}.json"


def _share(dataset, limit: int | None, rank: int, world: int) -> int | None:
    """Rows this process encodes: its part of ``limit`` (or of the whole set), or None for one
    pass over its share of a set split by files (folders and webdataset shards: one epoch, each
    sample once over all processes and workers, however unevenly the files divide)."""
    if getattr(dataset, "epochs", 0) is None:
        dataset.epochs = 1
        if limit is None:
            return None
    count = _count(dataset, limit)
    return count // world + (rank < count % world)


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
