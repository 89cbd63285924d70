"""Assemble a pipeline folder from the exports of separately trained stages.

Each stage's training run exports ``<run>/export/<component>/``; the prior's and the decoder's
exports also carry a copy of the CLIP they were trained on. ``assemble`` loads the parts, checks
that every stage was trained on the same CLIP (a prior or decoder trained on another CLIP would
load without complaint and draw nonsense), and writes one folder with ``UnCLIPPipeline.save_pretrained``,
optionally with fp16 parameters (how ``checkpoints/shapes/`` ships).
"""

from __future__ import annotations

from pathlib import Path

import torch

from unclip.checkpoint import CONFIG_NAME, load_component
from unclip.config import UPSAMPLERS, Stage
from unclip.pipeline.cascade import UnCLIPPipeline
from unclip.pipeline.folder import stored_sampling

PARTS = tuple(Stage)


def find_exports(runs: str | Path) -> dict[Stage, Path]:
    """The export folders under a runs root laid out as ``<runs>/<part>/export/<part>/``."""
    root = Path(runs)
    found = {part: root / part / "export" / part for part in PARTS}
    return {part: path for part, path in found.items() if (path / CONFIG_NAME).is_file()}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assemble(parts: dict[str, Path], out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the pipeline folder ``out`` from ``parts`` ({"clip": folder, "prior": folder, ...}).
    Each stage keeps the sampling defaults its folder carries (``folder.stored_sampling``)."""
    if Stage.clip not in parts:
        raise ValueError("assemble: no clip export given; every pipeline needs the CLIP its stages were trained on")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"assemble: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})")
    parts = {Stage(k): Path(v) for k, v in parts.items()}
    clip = load_component(parts[Stage.clip])
    for stage in (Stage.prior, Stage.decoder):
        beside = parts[stage].parent / "clip" if stage in parts else None
        if beside is not None and (beside / CONFIG_NAME).is_file() and not same_weights(clip, load_component(beside)):
            raise ValueError(f"assemble: {parts[stage]} was trained on the CLIP in {beside}, "
                             f"which differs from {parts[Stage.clip]}")
    modules = {part: load_component(path) for part, path in parts.items() if part is not Stage.clip}
    sampling = {part: found for part in modules if (found := stored_sampling(parts[part])) is not None}
    pipe = UnCLIPPipeline(clip, modules.get(Stage.prior), modules.get(Stage.decoder),
                          {slot: modules[slot] for slot in UPSAMPLERS if slot in modules}, sampling)
    return pipe.save_pretrained(out, dtype=dtype)
