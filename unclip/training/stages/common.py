"""What each stage hands the shared training loop (``unclip.training.loop``): a :class:`StageTask`.

A stage module (``clip``, ``prior``, ``decoder``, ``upsampler``) has ``build(cfg, ctx) ->
StageTask``: it builds the network, the data set and a loss closure, plus an optional monitoring
hook and the inference export. The loop owns everything else (devices, precision, optimiser,
EMA, checkpoints, logs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import save_image

from unclip.checkpoint import load_clip, load_component
from unclip.config import DataConfig, DatasetKind, StageConfig, from_dict
from unclip.data import require_path
from unclip.data.embeddings import source_data
from unclip.data.shapes import ShapesDataset

Batch = dict[str, Any]


@dataclass
class StageContext:
    """Where a stage is built: the loop's device and process layout."""

    device: torch.device
    rank: int = 0
    world_size: int = 1


@dataclass
class StageTask:
    """A stage, as the loop consumes it.

    ``loss(model, batch)`` gets the network to call (wrapped for data parallelism; its attributes
    are the plain network's) and a batch on the device; it returns ``{"loss": scalar, ...}``.
    ``sample(ema_model, step, output)`` monitors the run (grids under ``output/samples``) and
    returns scalars to log. ``export(ema_model, folder)`` writes the inference components under
    ``folder`` (``<output>/export``). ``init(model)`` runs on fresh runs only, before the EMA copy
    (e.g. the prior's embedding statistics); ``after_step(model)`` after each optimiser step.
    """

    name: str
    model: nn.Module
    dataset: Any  # torch Dataset or IterableDataset of sample dicts
    loss: Callable[[nn.Module, Batch], dict[str, torch.Tensor]]
    export: Callable[[nn.Module, Path], None]
    sample: Callable[[nn.Module, int, Path], dict[str, float]] | None = None
    init: Callable[[nn.Module], None] | None = None
    after_step: Callable[[nn.Module], None] | None = None


# ----------------------------------------------------------------------------------------------
# helpers the stages share


def frozen_clip(cfg: StageConfig, device: torch.device):
    """The frozen CLIP of a prior/decoder run: ``training.clip_checkpoint`` (a ``clip/`` component
    folder, e.g. the CLIP stage's export) when set, else ``load_clip(cfg.clip)``."""
    path = cfg.training.clip_checkpoint
    if not path:
        return load_clip(cfg.clip, device)
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"training.clip_checkpoint={path} is not a CLIP component folder (no config.json); "
            "train one with `unclip train clip` (its export/clip) or unset it"
        )
    return load_component(path, device)


def check_clip_width(clip, width: int, field: str) -> None:
    if clip.embed_dim != width:
        raise ValueError(f"{field}={width} but the frozen CLIP's embedding width is {clip.embed_dim}")


def monitor_data(data: DataConfig) -> DataConfig:
    """The data config whose held-out samples the monitors read: for precomputed embeddings, the
    data set ``unclip embed`` encoded them from (where its metadata names one), else ``data``."""
    if data.kind is not DatasetKind.embeddings or not data.path:
        return data
    source = source_data(data.path)
    if source is None:
        print(f"note: {data.path} does not name the data it was encoded from (written before `unclip embed` "
              "kept it); the monitor reads held-out shapes captions")
        return data
    found = from_dict(DataConfig, source, f"{data.path}: source")
    if found.path and not Path(found.path).exists():
        print(f"note: {found.path}, the data {data.path} was encoded from, is not there; the monitor reads "
              "held-out shapes captions")
        return data
    return found


def held_out_samples(data: DataConfig, resolution: int, count: int,
                     seed: int = 10_000) -> tuple[torch.Tensor, list[str]]:
    """``count`` fixed samples the training stream never shows, for the monitors: images (N, 3, R, R)
    in [-1, 1] and their captions. Shapes: another seed, held-out colour–shape pairs included;
    emoji: the held-out (concept, style) pairs, evenly spaced, with their canonical captions.
    Precomputed embeddings: those of the data set they were encoded from (their metadata's
    ``source``), shapes where it does not say."""
    data = monitor_data(data)
    if data.kind is DatasetKind.emoji:
        from unclip.data.emoji_dataset import EmojiDataset

        held = EmojiDataset(require_path(data, "a folder written by `unclip data emoji`"), resolution,
                            split="heldout", forms=("canonical",))
        items = [held[i * len(held) // count] for i in range(min(count, len(held)))]
    else:
        shapes = ShapesDataset(resolution=resolution, seed=seed, held_out=True)
        items = [shapes.item(i) for i in range(count)]
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def save_grid(rows: list[torch.Tensor], path: Path) -> Path:
    """Save rows of images (each (N, 3, H, W) in [-1, 1], resized to the first row's side) as one PNG."""
    side = rows[0].shape[-1]
    rows = [F.interpolate(r.float().cpu(), size=(side, side), mode="nearest") if r.shape[-1] != side
            else r.float().cpu() for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((torch.cat(rows).clamp(-1, 1) + 1) / 2, path, nrow=len(rows[0]), padding=2)
    return path


def step_png(output: Path, step: int) -> Path:
    return Path(output) / "samples" / f"step_{step:06d}.png"
