"""How well outpainting restores a picture: shapes renders cut to their left part, outpainted
back to the full canvas on the right with their own caption, scored by the detector against that
caption. Objects the caption places on the right were cut away, so the fill must draw them where
the prompt says; those on the left must be continued without a copy or a seam.

    python bench/outpaint_shapes.py --scenes 60 --keep 32 --side 64

Prints the share of results the detector reads all right (colour, shape and position), beside
the same share for the cut renders padded with their mean colour (no outpainting) and for the
uncut renders (the detector's ceiling), the mean absolute error to the render (0–255) in the 8
columns right of the cut (the seam) and beyond them, and writes a sheet of examples (pad | outpainted | render)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unclip.data.shapes import PAIR_POOLS
from unclip.evaluation.detector import detect, score
from unclip.evaluation.report import one_object_scenes
from unclip.pipeline import UnCLIPPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--side", type=int, default=64, help="render side, and the cascade side used")
    parser.add_argument("--keep", type=int, default=32, help="width of the left part that is kept")
    parser.add_argument("--steps", type=int, default=10, help="prior and decoder steps")
    parser.add_argument("--context", type=float, default=0.25)
    parser.add_argument("--resample", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/outpaint"))
    args = parser.parse_args()

    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    scenes = one_object_scenes(list(PAIR_POOLS["train"]), args.scenes, args.seed)
    right = args.side - args.keep
    rows, sheet, start = {"outpainted": [], "mean_colour_pad": [], "full_render": []}, [], time.perf_counter()
    seam, far = [], []  # mean |outpainted − render| in the 8 columns right of the cut, and beyond them
    for i, scene in enumerate(scenes):
        full = scene.render(args.side)
        crop = full.crop((0, 0, args.keep, args.side))
        out = pipe.outpaint(crop, scene.caption, right=right, context=args.context, resample=args.resample,
                            size=args.side, seed=args.seed + i, progress=False,
                            steps={"prior": args.steps, "decoder": args.steps})
        pad = Image.new("RGB", full.size, tuple(int(c) for c in np.asarray(crop).reshape(-1, 3).mean(0).round()))
        pad.paste(crop, (0, 0))
        for key, image in (("outpainted", out), ("mean_colour_pad", pad), ("full_render", full)):
            rows[key].append(score(detect(image), scene)["all"])
        error = np.abs(np.asarray(out, dtype=float) - np.asarray(full, dtype=float))
        seam.append(error[:, args.keep:args.keep + 8].mean())
        far.append(error[:, args.keep + 8:].mean())
        sheet.append(np.concatenate([np.asarray(pad), np.asarray(out), np.asarray(full)], axis=1))
    seconds = time.perf_counter() - start
    report = {k: sum(v) / len(v) for k, v in rows.items()}
    report.update(seam_error=float(np.mean(seam)), far_error=float(np.mean(far)), scenes=len(scenes), side=args.side,
                  keep=args.keep, steps=args.steps, context=args.context, resample=args.resample,
                  seconds_per_scene=seconds / len(scenes), threads=torch.get_num_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(sheet[:12], axis=0)).save(args.out / "outpaint_sheet.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
