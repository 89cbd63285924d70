"""Resume state of a training run: ``<output>/checkpoints/step_XXXXXX/`` and a ``latest`` pointer.

A checkpoint folder holds the network and its EMA (``model.safetensors``, ``ema.safetensors``: no
pickle for weights), the optimiser, learning-rate schedule and grad-scaler states and the RNG
states (``*.pt``, torch.save as accelerate writes them), ``state.json`` (step, EMA updates, who
wrote it) and ``config.json`` (the resolved stage config). It is written under a temporary name
and renamed; ``latest`` (the folder's name) is rewritten the same way afterwards, so a save that is
interrupted leaves the previous checkpoint and pointer intact.

A sharded run (FSDP, DeepSpeed; ``unclip.training.sharded``) writes ``engine/`` (accelerate's
``save_state``: model and optimiser) and ``ema/`` (a torch distributed checkpoint) in place of the
weight and optimiser files, and ``"engine": true`` in ``state.json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from unclip.config import STAGE_CONFIGS, UPSAMPLER, UPSAMPLERS, ConfigError, Stage, from_dict, to_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest"
RESUMABLE_SECTIONS = ("training", "data")  # may change between a checkpoint and its resumption


@dataclass
class ResumeState:
    folder: Path
    step: int
    ema_updates: int
    config: dict[str, Any]
    engine: bool = False  # written by FSDP / DeepSpeed (accelerate's save_state), not as safetensors
    samples: int | None = None  # training samples consumed by all processes (None: written before it was kept)


def checkpoints_dir(output: str | Path) -> Path:
    return Path(output) / CHECKPOINTS


def latest_checkpoint(output: str | Path) -> Path | None:
    """The folder ``latest`` names, or None when the run has no checkpoint yet."""
    pointer = checkpoints_dir(output) / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise ValueError(f"{pointer} names {folder.name}, which is missing or incomplete")
    return folder


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(output: str | Path, step: int, *, model: nn.Module, ema, optimizer, scheduler, scaler,
                    config: dict[str, Any], samples: int, rank: int = 0, keep: int = 3) -> Path:
    """Write the resume state of ``step``; keep the ``keep`` newest checkpoints. Main process only."""
    tmp = begin_checkpoint(output, step, unique=True)
    save_model(model, str(tmp / "model.safetensors"))
    save_model(ema.model, str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    torch.save(rng_states(), tmp / "rng.pt")
    return finish_checkpoint(tmp, step, ema=ema, scheduler=scheduler, config=config, samples=samples, rank=rank,
                             keep=keep)


def begin_checkpoint(output: str | Path, step: int, *, unique: bool) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (main process). ``unique=False``
    gives a name every process of a run can compute, for checkpoints they write together."""
    root = checkpoints_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a save that was interrupted
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temporary_folder(output, step, unique=unique)
    tmp.mkdir()
    return tmp


def temporary_folder(output: str | Path, step: int, *, unique: bool) -> Path:
    return checkpoints_dir(output) / (f".tmp-step_{step:06d}" + (f"-{os.getpid()}" if unique else ""))


def finish_checkpoint(tmp: Path, step: int, *, ema, scheduler, config: dict[str, Any], samples: int, rank: int = 0,
                      keep: int = 3, engine: bool = False) -> Path:
    """Add the schedule, config and ``state.json`` to ``tmp``, rename it and point ``latest`` at it."""
    root = tmp.parent
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {"step": step, "samples": samples, "ema_updates": ema.updates, "written_by": rank, "engine": engine}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    name = f"step_{step:06d}"
    final = root / name
    if final.exists():  # the same step saved again (a run resumed at its last step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, name)
    saved = sorted(root.glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")))
    for old in saved[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_resume_state(folder: Path) -> ResumeState:
    state = json.loads((folder / "state.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    samples = int(state["samples"]) if "samples" in state else None
    return ResumeState(folder, int(state["step"]), int(state["ema_updates"]), config, bool(state.get("engine")),
                       samples)


def load_weights(resume: ResumeState, model: nn.Module, ema) -> None:
    load_model(model, str(resume.folder / "model.safetensors"))
    load_model(ema.model, str(resume.folder / "ema.safetensors"))
    ema.updates = resume.ema_updates


def load_optimizer_states(resume: ResumeState, optimizer, scheduler, scaler) -> None:
    optimizer.load_state_dict(torch.load(resume.folder / "optimizer.pt", weights_only=True))
    load_scheduler(resume, scheduler)
    if scaler is not None and (resume.folder / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(resume.folder / "scaler.pt", weights_only=True))
    set_rng_states(torch.load(resume.folder / "rng.pt", weights_only=False))  # our own file


def load_scheduler(resume: ResumeState, scheduler) -> None:
    scheduler.load_state_dict(torch.load(resume.folder / "scheduler.pt", weights_only=True))


# How a stage samples by default; training never reads them, so a resumed run may change them.
SAMPLING_KEYS = ("diffusion.sample_steps", "diffusion.guidance_scale", "diffusion.sample_start")


# The frozen CLIP a prior or decoder is conditioned on: part of the model, though set under training.
FROZEN_KEYS = ("clip_checkpoint",)


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, outside the sections a resumed run may change."""
    diffs = []
    if not prefix:
        for key in FROZEN_KEYS:
            a, b = saved.get("training", {}).get(key), current.get("training", {}).get(key)
            if _path(a) != _path(b):
                diffs.append(f"training.{key} (checkpoint {a!r}, now {b!r}: the frozen CLIP the stage is "
                             "conditioned on)")
    for key in sorted(set(saved) | set(current)):
        if (not prefix and key in RESUMABLE_SECTIONS) or f"{prefix}{key}" in SAMPLING_KEYS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} (checkpoint {a!r}, now {b!r})")
    return diffs


def _path(value: str | None) -> str | None:
    return None if value is None else os.path.normpath(value)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the fields added since it was written at their defaults (e.g.
    ``prior.kind``: a prior checkpointed before the AR prior existed is a diffusion prior)."""
    try:
        return to_dict(from_dict(STAGE_CONFIGS[Stage(saved.get("stage"))], saved))
    except (ConfigError, ValueError):
        return saved  # a field since removed or renamed: compare as written, and report it


def check_compatible(resume: ResumeState, current: dict[str, Any]) -> None:
    saved = resume.config
    if saved.get("stage") == UPSAMPLER and current.get("stage") in UPSAMPLERS:
        saved = {**saved, "stage": current["stage"]}  # saved before the upsampler slots had names
    diffs = config_differences(with_defaults(saved), current)
    if diffs:
        raise ValueError(
            f"cannot resume from {resume.folder}: the config differs from the checkpoint's in "
            f"{'; '.join(diffs)}. Model and diffusion settings must match (training, data and the sampling defaults "
            f"diffusion.sample_steps, guidance_scale and sample_start may change)."
        )
