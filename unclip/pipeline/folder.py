"""Pipeline folders on disk, and pipelines of random weights built from a config folder.

A pipeline folder holds one component folder per stage (``clip/``, ``prior/``, ``decoder/``,
``upsampler_256/``, ``upsampler_1024/``; each ``config.json`` + ``model.safetensors``, the config
carrying the stage's sampling defaults as ``diffusion`` and ``sampler``), a ``text_proj/`` mirror
of the decoder's TextProj in diffusers' layout (``decoder/`` is what loads), optionally Karlo's
last-step upsampler (``upsampler_256_last/``), and ``pipeline.json`` listing the components.
Folders of format version 1 kept the sampling defaults in ``pipeline.json`` instead; they load
the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from unclip.checkpoint import (
    WEIGHTS_NAME,
    is_component,
    load_clip,
    load_expected,
    read_component_config,
    save_component,
    write_folder,
)
from unclip.config import (
    SAMPLED_STAGES,
    UPSAMPLERS,
    ClipConfig,
    Stage,
    from_dict,
    load_stage_config,
    to_dict,
)
from unclip.networks.build import build_network
from unclip.networks.clip import ClipEncoder
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.upsampler import Upsampler
from unclip.pipeline.plan import StageSampling

PIPELINE_FILE = "pipeline.json"
FORMAT, VERSION = "unclip-pipeline", 2
LAST_STEP_SUFFIX = "_last"  # Karlo's "improved SR": a separate UNet for an upsampler's final step


@dataclass
class PipelineParts:
    """What an ``UnCLIPPipeline`` is made of (its constructor's arguments)."""

    clip: ClipEncoder
    prior: Prior | None = None
    decoder: Decoder | None = None
    upsamplers: dict[Stage, Upsampler] = field(default_factory=dict)
    sampling: dict[Stage, StageSampling] = field(default_factory=dict)
    last_steps: dict[Stage, Upsampler] = field(default_factory=dict)  # upsampler slot → its last-step UNet

    @classmethod
    def of(cls, clip: ClipEncoder, modules: dict[Stage, torch.nn.Module], **rest) -> PipelineParts:
        upsamplers = {s: modules[s] for s in UPSAMPLERS if s in modules}
        return cls(clip, modules.get(Stage.prior), modules.get(Stage.decoder), upsamplers, **rest)


def default_checkpoint() -> Path:
    """The pipeline used when none is named: ``$UNCLIP_CHECKPOINT``, else the shipped
    ``checkpoints/shapes/`` beside the package."""
    env = os.environ.get("UNCLIP_CHECKPOINT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "checkpoints" / "shapes"


def pipeline_meta(root: Path) -> dict:
    """The pipeline folder ``root``'s ``pipeline.json`` (components, format); {} if it has none."""
    meta_file = Path(root) / PIPELINE_FILE
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def stored_sampling(folder: Path) -> StageSampling | None:
    """A stage component folder's sampling defaults: the ``diffusion`` (and ``sampler``, ``tile``) its
    config.json carries; for a folder inside a version-1 pipeline folder, the ``stages`` entry of
    that folder's ``pipeline.json``; else None."""
    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text())
    if "diffusion" in meta:
        stored, where = {k: meta[k] for k in ("diffusion", "sampler", "tile") if k in meta}, str(folder / "config.json")
    else:
        root = folder.resolve().parent  # a link to a stage of a pipeline folder reads that folder's file
        stored = pipeline_meta(root).get("stages", {}).get(folder.name)
        where = f"{root / PIPELINE_FILE}:{folder.name}"
    return None if stored is None else from_dict(StageSampling, stored, where=where)


def read_folder(path: str | Path, clip: ClipConfig | None = None, prior: str = Stage.prior.value) -> PipelineParts:
    """The parts of the pipeline folder ``path``; ``clip`` replaces its ``clip/``; ``prior`` names
    the sub-folder that fills the prior slot (e.g. ``prior_ar``, the autoregressive prior)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"pipeline folder not found: {root}")
    folders = {s: root / s for s in Stage}  # each slot's sub-folder
    chosen = set()  # slots filled by a sub-folder the caller named, listed in pipeline.json or not
    if prior != Stage.prior:
        check_prior_folder(root, prior)
        folders[Stage.prior], chosen = root / prior, {Stage.prior}
    listed = pipeline_meta(root).get("components")
    names = [s for s in Stage if is_component(folders[s]) and (listed is None or s in listed or s in chosen)]
    if not names:
        karlo = (root / "super_res_first").is_dir() or (root / "model_index.json").is_file()
        hint = (" It looks like a diffusers (Karlo) folder: load it with UnCLIPPipeline.from_karlo(path, clip=...)."
                if karlo else "")
        raise ValueError(f"{root} holds none of the pipeline sub-folders clip/, prior/, decoder/, "
                         f"upsampler_256/, upsampler_1024/ (each config.json + {WEIGHTS_NAME}).{hint}")
    if clip is not None:
        encoder = load_clip(clip)
    elif Stage.clip in names:
        encoder = load_expected(root / Stage.clip, Stage.clip.component)
    else:
        raise ValueError(f"missing component: {root} has no clip/ sub-folder; pass clip=ClipConfig(...) naming "
                         "the CLIP the prior and decoder were trained with")
    modules = {s: load_expected(folders[s], s.component) for s in SAMPLED_STAGES if s in names}
    last = {s: load_expected(root / (s + LAST_STEP_SUFFIX), Stage.upsampler_256.component)
            for s in UPSAMPLERS if s in modules and is_component(root / (s + LAST_STEP_SUFFIX))}
    sampling = {s: found for s in modules if (found := stored_sampling(folders[s])) is not None}
    return PipelineParts.of(encoder, modules, sampling=sampling, last_steps=last)


def prior_folders(root: Path) -> list[str]:
    """The sub-folders of pipeline folder ``root`` that hold a prior (``prior``, ``prior_ar``, …)."""
    return sorted(p.name for p in Path(root).iterdir() if is_component(p) and read_component_config(p)[0]
                  == Stage.prior.component)


def check_prior_folder(root: Path, name: str) -> None:
    """A clear error unless sub-folder ``name`` of pipeline folder ``root`` holds a prior."""
    if not is_component(root / name) or read_component_config(root / name)[0] != Stage.prior.component:
        raise ValueError(f"prior: {root} has no prior in a sub-folder {name!r} (priors here: "
                         f"{', '.join(prior_folders(root)) or 'none'})")


def write_pipeline_folder(pipe, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` (an ``UnCLIPPipeline``) as a pipeline folder; ``dtype`` (e.g. torch.float16)
    casts the weight matrices, 1-D tensors keep their precision (see ``checkpoint.is_matrix``)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    save_component(pipe.clip, root / Stage.clip, dtype)
    components = [Stage.clip]
    for stage in SAMPLED_STAGES:
        module = pipe.component(stage)
        if module is not None:
            sampling = to_dict(pipe.sampling[stage])
            if sampling.get("tile") is None:  # the whole image: said by leaving it out
                sampling.pop("tile", None)
            save_component(module, root / stage, dtype, extra=sampling)
            components.append(stage)
    for stage, module in pipe.last_steps.items():
        save_component(module, root / (stage + LAST_STEP_SUFFIX), dtype)
    if pipe.decoder is not None:
        proj = pipe.decoder.text_proj
        write_folder(root / "text_proj", proj.state_dict(), {"_class_name": "UnCLIPTextProjModel", **proj.config()},
                     dtype)
    meta = {"format": FORMAT, "version": VERSION, "components": [str(c) for c in components]}
    (root / PIPELINE_FILE).write_text(json.dumps(meta, indent=2))
    return root


def random_parts(config_dir: str | Path, seed: int = 0, prior: str = Stage.prior.value) -> PipelineParts:
    """Random weights built from a config folder such as ``configs/tiny``: the stage YAML files
    named after their stages (``clip.yaml``, ``prior.yaml``, …), each naming its ``stage``; the
    prior's is ``<prior>.yaml`` (e.g. ``prior_ar.yaml``). For tests and smoke runs only."""
    folder = Path(config_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"config folder not found: {folder}")
    if prior != Stage.prior and not (folder / f"{prior}.yaml").is_file():
        raise FileNotFoundError(f"prior: no {prior}.yaml in {folder}")
    cfgs = {}
    for stage in Stage:  # in cascade order: the CLIP comes from the first
        path = folder / f"{prior if stage is Stage.prior else stage}.yaml"
        if path.is_file():
            cfgs[stage] = load_stage_config(path)
            if cfgs[stage].stage is not stage:
                raise ValueError(f"{path} configures the {cfgs[stage].stage} stage, not the {stage}")
    if not cfgs:
        raise ValueError(f"{folder} holds no stage YAML files ({', '.join(f'{s}.yaml' for s in Stage)})")
    clip_cfg = next((c.clip for c in cfgs.values() if hasattr(c, "clip")), None)
    if clip_cfg is None:
        raise ValueError(f"{folder}: no stage file has a clip section, so the pipeline has no CLIP")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = ClipEncoder(replace(clip_cfg, pretrained=None))
        modules = {s: build_network(cfgs[s]) for s in SAMPLED_STAGES if s in cfgs}
    sampling = {s: StageSampling(diffusion=cfgs[s].diffusion) for s in modules}
    return PipelineParts.of(clip, modules, sampling=sampling)
