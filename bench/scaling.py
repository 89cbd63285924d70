"""The paper-size stages on paper: training FLOPs per sample counted on the meta device, the
samples/s one GPU would reach at a stated MFU, and the GPU-days of the paper's training budget.

    python bench/scaling.py [--configs configs/paper] [--peak-tflops 989] [--mfu 0.4] [--gpus 64]

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward
of each network at batch 1 (matrix multiplications, convolutions and attention), the AR prior's
sequence at the paper's 319 kept components. The frozen CLIP's forward, which a prior or decoder run pays per sample
unless its features are precomputed, is counted apart. Writes the Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unclip.config import ClipStageConfig, load_stage_config  # noqa: E402
from unclip.networks.build import build_network, count_parameters, example_inputs  # noqa: E402
from unclip.networks.clip import build_open_clip  # noqa: E402

PAPER_AR_CODES = 319  # the principal components the paper's AR prior keeps (its sequence length)
# Table 3: (batch size, iterations) of each stage's training
PAPER_BUDGET = {"prior": (4096, 600_000), "prior_ar": (4096, 1_000_000), "decoder": (2048, 800_000),
                "upsampler_256": (1024, 1_000_000), "upsampler_1024": (512, 1_000_000)}


def training_flops(cfg) -> tuple[int, float, float]:
    """(parameters, trained network's forward + backward FLOPs, frozen CLIP forward FLOPs) per sample."""
    with torch.device("meta"):
        network = build_network(cfg)
        params = count_parameters(network)
        args, kwargs = example_inputs(cfg, 1, "meta", codes=PAPER_AR_CODES)
        with FlopCounterMode(display=False) as counter:
            out = network(*args, **kwargs)
            out.float().sum().backward()
        trained = counter.get_total_flops()
        clip = 0.0
        if hasattr(cfg, "clip") and not isinstance(cfg, ClipStageConfig):
            encoder = build_open_clip(cfg.clip)
            side, length = cfg.clip.image_size, cfg.clip.context_length
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                encoder.encode_image(torch.randn(1, 3, side, side))
                encoder.encode_text(torch.zeros(1, length, dtype=torch.long))
            clip = counter.get_total_flops()
    return params, float(trained), float(clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, default=ROOT / "configs" / "paper")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed")
    parser.add_argument("--gpus", type=int, default=64)
    args = parser.parse_args()
    rate = args.peak_tflops * 1e12 * args.mfu
    print(f"Peak {args.peak_tflops:g} TFLOP/s per GPU at {100 * args.mfu:g}% MFU; the paper's budget on "
          f"{args.gpus} GPUs.\n")
    print("| stage | parameters | training GFLOPs / sample | + frozen CLIP | samples/s per GPU | paper budget "
          f"(batch × iterations) | GPU-days | days on {args.gpus} GPUs |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (batch, iterations) in PAPER_BUDGET.items():
        path = args.configs / f"{name}.yaml"
        if not path.is_file():
            continue
        params, trained, clip = training_flops(load_stage_config(path))
        per_sample = trained + clip
        gpu_days = batch * iterations * per_sample / rate / 86_400
        print(f"| {name} | {params / 1e6:,.0f}M | {trained / 1e9:,.1f} | {clip / 1e9:,.1f} | "
              f"{rate / per_sample:,.0f} | {batch:,} × {iterations:,} | {gpu_days:,.0f} | "
              f"{gpu_days / args.gpus:,.1f} |")


if __name__ == "__main__":
    main()
