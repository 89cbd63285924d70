"""What bf16 autocast costs FID 64, and why: the same images sampled in fp32 and in bf16 side by side.

    python bench/precision_fid.py --checkpoint checkpoints/shapes --images 500

Takes the scenes, captions and seeds of ``unclip eval``'s FID 64 (``--seed``, batches of
``--batch``), and for every batch samples prior → decoder twice from the same random draws, in
float32 and under bf16 autocast as the pipeline runs it (the decoder's low-noise steps in float32,
``plan.DECODER_FP32_BELOW``; the Inception network always in float32). It reports FID 64 of
both against the real renders, how far the bf16 images are from the fp32 ones (mean absolute
difference in grey levels of 255, per image), and, as a control, FID of the fp32 images with
Gaussian grain of ``--grain`` levels added before rounding: if a perturbation that small moves FID
as much as bf16 does, the FID gap is FID's sensitivity to sub-level noise on flat images rather than
a visible change. A quality figure, not a timing: it may run beside other work.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder-steps", type=int, default=10)
    parser.add_argument("--grain", type=float, default=0.5, help="the control's noise std, in grey levels")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from unclip.config import Stage
    from unclip.data.images import pil_to_tensor, tensor_to_pil
    from unclip.data.shapes import sample_scene
    from unclip.evaluation.fid import InceptionFeatures, frechet_distance, statistics
    from unclip.pipeline import SamplingOptions, UnCLIPPipeline
    from unclip.pipeline.sampling import decode, sample_prior

    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    features = InceptionFeatures(pipe.device)
    side = pipe.sizes[0]
    rng = random.Random(f"eval-fid:{args.seed}")  # unclip eval's FID scenes and seeds
    scenes = [sample_scene(rng, pairs="train") for _ in range(args.images)]
    plan = pipe.plan([Stage.prior, Stage.decoder], steps={"decoder": args.decoder_steps})
    noise = torch.Generator().manual_seed(args.seed)
    feats = {"real": [], "fp32": [], "bf16": [], "fp32 + grain": []}
    diffs = []
    for i in tqdm(range(0, len(scenes), args.batch), desc="fp32 and bf16"):
        chunk = scenes[i:i + args.batch]
        pixels = {}
        for name in ("fp32", "bf16"):
            g = SamplingOptions(seed=args.seed + 10_000 + i).make_generator(pipe.device)
            with torch.no_grad(), torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                text = pipe.clip.encode_text([s.caption for s in chunk])
                z = sample_prior(pipe, text, plan[Stage.prior], g, progress=False)
                pixels[name] = decode(pipe, z, text, plan[Stage.decoder], g, progress=False).float()
        grainy = pixels["fp32"] + torch.randn(pixels["fp32"].shape, generator=noise) * (args.grain / 127.5)
        feats["real"].append(features(pil_to_tensor([s.render(side) for s in chunk])))
        for name, x in (*pixels.items(), ("fp32 + grain", grainy)):
            feats[name].append(features(pil_to_tensor(tensor_to_pil(x.clamp(-1, 1)))))
        diffs.append((pixels["bf16"] - pixels["fp32"]).abs().mean(dim=(1, 2, 3)) * 127.5)
    real = statistics(torch.cat(feats.pop("real")))
    fid = {name: frechet_distance(*real, *statistics(torch.cat(f))) for name, f in feats.items()}
    diff = torch.cat(diffs)
    result = {"images": len(scenes), "seed": args.seed, "decoder_steps": args.decoder_steps, "grain": args.grain,
              "fid": fid, "bf16_vs_fp32_levels": {"mean": float(diff.mean()), "max": float(diff.max())}}
    print(f"FID {side} on {len(scenes)} images: fp32 {fid['fp32']:.2f}, bf16 {fid['bf16']:.2f}, fp32 + "
          f"{args.grain} levels of grain {fid['fp32 + grain']:.2f}; bf16 images differ from fp32 by "
          f"{diff.mean():.2f} grey levels on average (at most {diff.max():.2f})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
