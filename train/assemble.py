"""Assemble the trained stages' exports into one pipeline folder (how checkpoints/shapes/ is made).

    python train/assemble.py --runs runs/shapes --out checkpoints/shapes --fp16

Takes ``<runs>/<part>/export/<part>/`` for clip, prior, decoder, upsampler_256 and upsampler_1024
(any of the last four may be missing), checks that the prior and the decoder were trained on that
CLIP, and writes the folder that ``UnCLIPPipeline.from_pretrained`` and ``unclip generate --checkpoint``
load. ``--fp16`` stores weight matrices in float16 (1-D tensors such as biases, norms and the prior's
statistics stay float32).
"""

import argparse
import sys

import torch

from unclip.pipeline.assemble import assemble, find_exports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="runs root holding <part>/export/<part>/ folders")
    parser.add_argument("--out", required=True, help="pipeline folder to write")
    parser.add_argument("--fp16", action="store_true", help="store weight matrices in float16")
    args = parser.parse_args()
    parts = find_exports(args.runs)
    if not parts:
        print(f"error: no exports under {args.runs} (expected <part>/export/<part>/config.json)", file=sys.stderr)
        return 2
    try:
        out = assemble(parts, args.out, torch.float16 if args.fp16 else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {', '.join(parts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
