"""A quick reading of an emoji decoder between full evaluations: ``unclip eval --suite emoji``'s
*recognisable* and *style* figures with the cascade's own CLIP image tower in place of the FID
Inception network, and a captioned sample sheet of the same prompts.

    python bench/emoji_clip_nearest.py --checkpoint checkpoints/emoji --data runs/emoji-data --prompts 100

The official figures use an extractor this project did not train (Inception), whose gallery of
21,877 real renders takes about half an hour on one CPU core; the CLIP's takes about a minute. The
CLIP was trained on these renders, so its figures are a progress reading between decoder
checkpoints, not the issue's targets: compare them only with each other. Same prompts
(``prompt_pairs``), seeds and caption grammar as the eval; text → the decoder's size.
``--read decoder`` takes the prior out of the reading: the decoder draws from the CLIP image
embedding of each prompt's real render (how well the decoder alone turns a known z_i into the
concept); ``--read prior`` takes the decoder out: the prior's sampled z_i is itself the query
(seconds instead of minutes). ``--sheet`` writes the first four seen and four held-out prompts'
images at ``--sheet-size``.
A quality figure, not a timing: it may run beside other work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/emoji")
    parser.add_argument("--data", required=True, help="a folder written by `unclip data emoji`")
    parser.add_argument("--prompts", type=int, default=100, help="seen and held-out prompts, each")
    parser.add_argument("--steps", type=int, help="decoder steps (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", nargs=2, type=float, metavar=("PRIOR", "DECODER"),
                        help="guidance scales (default: the checkpoint's)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the networks")
    parser.add_argument("--read", choices=("cascade", "decoder", "prior"), default="cascade",
                        help="cascade: text → image (default); decoder: the decoder alone, from each prompt's real "
                             "render's CLIP image embedding; prior: the prior alone, its z_i as the query")
    parser.add_argument("--sheet", type=Path, help="write a captioned sample sheet here (PNG)")
    parser.add_argument("--sheet-size", type=int, default=256)
    args = parser.parse_args()

    from unclip.cli.common import save_grid
    from unclip.data.emoji import caption
    from unclip.evaluation.emoji import EmojiEvalSettings, gallery, prompt_pairs, read_metadata, recognisable
    from unclip.pipeline import UnCLIPPipeline

    root = Path(args.data)
    try:
        meta = read_metadata(root)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    steps = {"decoder": args.steps} if args.steps else None
    guidance = dict(zip(("prior", "decoder"), args.guidance)) if args.guidance else None
    settings = EmojiEvalSettings(data=str(root), prompts=args.prompts, seed=args.seed, steps=steps, guidance=guidance)
    features = pipe.clip.encode_image
    with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        found = gallery(root, pipe.sizes[0], features, cache=False)
        pairs = prompt_pairs(meta, found, args.prompts, args.seed)
        rows = {name: recognisable(pipe, p, meta, found, features, settings, read=args.read)
                for name, p in pairs.items()}
        if args.sheet:
            chosen = pairs["seen"][:4] + pairs["held_out"][:4]
            prompts = [caption(meta["annotations"][c], s) for c, s in chosen]
            images = pipe.generate(prompts, size=args.sheet_size, steps=steps, guidance=guidance, seed=args.seed,
                                   progress=False)
            save_grid(images, args.sheet, columns=4, captions=prompts)
    print("| prompts | top-1 concept | top-5 concept | style | n |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['top1']:.1f}% | {100 * r['top5']:.1f}% | {100 * r['style']:.1f}% | {r['n']} |")
    print(json.dumps({"checkpoint": args.checkpoint, "features": "cascade CLIP", "seed": args.seed,
                      "bf16": args.bf16, "read": args.read, "guidance": guidance, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
