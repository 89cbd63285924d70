"""``unclip params PATH``: build each stage on the meta device and print its parameter count."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a config folder (e.g. configs/karlo) or one stage YAML file")


def stage_parameter_counts(path: str | Path) -> list[tuple[str, int]]:
    """(file stem, parameter count) for each stage YAML under ``path``, built without memory."""
    import torch

    from unclip.config import load_stage_config
    from unclip.networks.build import build_network, count_parameters

    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no stage YAML files in {path}")
    counts = []
    for file in files:
        cfg = load_stage_config(file)
        with torch.device("meta"):
            model = build_network(cfg)
        counts.append((file.stem, count_parameters(model)))
    return counts


def run(args: argparse.Namespace) -> int:
    for name, count in stage_parameter_counts(args.path):
        print(f"{name:<16} {count:>15,d}  ({count / 1e6:,.1f}M)")
    return 0
