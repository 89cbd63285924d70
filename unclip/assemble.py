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
from unclip.pipeline import (
    DECODER,
    PIPELINE_FILE,
    PRIOR,
    UPSAMPLERS,
    StageSampling,
    UnCLIPPipeline,
    pipeline_meta,
    stored_sampling,
)

PARTS = ("clip", PRIOR, DECODER, *UPSAMPLERS)


def find_exports(runs: str | Path) -> dict[str, Path]:
    """The export folders under a runs root laid out as ``<runs>/<part>/export/<part>/``."""
    root = Path(runs)
    found = {part: root / part / "export" / part for part in PARTS}
    return {part: path for part, path in found.items() if (path / CONFIG_NAME).is_file()}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def part_sampling(part: str, folder: Path) -> StageSampling | None:
    """A part's sampling defaults: those its own config.json carries (a training export), else those
    of the pipeline folder it sits in (``pipeline.json``, e.g. a stage taken from ``checkpoints/shapes``)."""
    found = stored_sampling(folder)
    if found is not None:
        return found
    root = Path(folder).resolve().parent
    stored = pipeline_meta(root).get("stages", {}).get(part)
    return None if stored is None else stored_sampling(folder, stored, f"{root / PIPELINE_FILE}:{part}")


def assemble(parts: dict[str, Path], out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the pipeline folder ``out`` from ``parts`` ({"clip": folder, "prior": folder, ...})."""
    if "clip" not in parts:
        raise ValueError("assemble: no clip export given; every pipeline needs the CLIP its stages were trained on")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"assemble: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})")
    clip = load_component(parts["clip"])
    for stage in (PRIOR, DECODER):
        beside = parts[stage].parent / "clip" if stage in parts else None
        if beside is not None and (beside / CONFIG_NAME).is_file() and not same_weights(clip, load_component(beside)):
            raise ValueError(f"assemble: {parts[stage]} was trained on the CLIP in {beside}, "
                             f"which differs from {parts['clip']}")
    modules = {part: load_component(path) for part, path in parts.items() if part != "clip"}
    sampling = {part: found for part in modules if (found := part_sampling(part, Path(parts[part]))) is not None}
    pipe = UnCLIPPipeline(clip, modules.get(PRIOR), modules.get(DECODER),
                          {slot: modules[slot] for slot in UPSAMPLERS if slot in modules}, sampling)
    return pipe.save_pretrained(out, dtype=dtype)
