"""``unclip params PATH``: build each stage on the meta device and print its parameter count;
with ``--memory``, the per-GPU memory its training needs under each sharding strategy."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a config folder (e.g. configs/karlo) or one stage YAML file")
    parser.add_argument("--memory", action="store_true",
                        help="estimate the per-GPU training memory: weights, gradients, AdamW state, EMA, frozen "
                             "CLIP and activations (counted on the meta device)")
    parser.add_argument("--batch", type=int, help="images per GPU (default: each config's training.batch_size)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs (processes) sharing the run (default 1)")
    parser.add_argument("--strategy", choices=("ddp", "zero2", "zero3", "fsdp"),
                        help="sharding strategy (default: show all of them)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                        help="memory of one GPU, to say what fits (default 80 GiB)")


def stage_parameter_counts(path: str | Path) -> list[tuple[str, int]]:
    """(file stem, parameter count) for each stage YAML under ``path``, built without memory."""
    import torch

    from unclip.config import load_stage_config
    from unclip.networks.build import build_network, count_parameters

    counts = []
    for file in stage_files(path):
        cfg = load_stage_config(file)
        with torch.device("meta"):
            model = build_network(cfg)
        counts.append((file.stem, count_parameters(model)))
    return counts


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return memory_table(args)
    for name, count in stage_parameter_counts(args.path):
        print(f"{name:<16} {count:>15,d}  ({count / 1e6:,.1f}M)")
    return 0


def stage_files(path: str | Path) -> list[Path]:
    """The stage YAML files of a config folder, or the one file ``path``."""
    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no stage YAML files in {path}")
    return files


def memory_table(args: argparse.Namespace) -> int:
    """Per stage and strategy: GiB per GPU by part, the total, and whether it fits ``--gpu-memory``."""
    from unclip.config import load_stage_config
    from unclip.training.memory import GIB, STRATEGIES, plan_memory

    if args.gpu_memory <= 0:
        raise ValueError(f"--gpu-memory: expected a positive size in GiB, got {args.gpu_memory}")
    print(f"GiB per GPU, {args.gpus} GPU(s), {args.precision}; batch per GPU: "
          f"{args.batch or 'each config’s training.batch_size'}")
    print(f"{'stage':<16} {'strategy':<8} {'weights':>8} {'grads':>8} {'AdamW':>8} {'EMA':>8} {'CLIP':>8} "
          f"{'activ.':>8} {'total':>8}  fits {args.gpu_memory:g} GiB")
    for file in stage_files(args.path):
        cfg = load_stage_config(file)
        for strategy in [args.strategy] if args.strategy else STRATEGIES:
            p = plan_memory(cfg, batch=args.batch, precision=args.precision, gpus=args.gpus, strategy=strategy)
            parts = (p.weights, p.gradients, p.optimizer, p.ema, p.frozen, p.activations, p.total)
            fits = "yes" if p.total <= args.gpu_memory * GIB else "no"
            print(f"{file.stem:<16} {strategy:<8} " + " ".join(f"{v / GIB:>8.2f}" for v in parts) + f"  {fits}")
    return 0
