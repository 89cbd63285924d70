"""Component folders: ``config.json`` + ``model.safetensors``, loadable with one call, no pickle.

``config.json`` is ``{"component": <name>, "config": {...}}`` where the config is the component's
dataclass as a dict; extra keys (e.g. the prior's training statistics) live in the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unclip.config import (
    UPSAMPLER,
    ClipConfig,
    ConfigError,
    PriorConfig,
    Stage,
    from_dict,
    to_dict,
)
from unclip.networks.build import build_prior
from unclip.networks.clip import ClipEncoder, external_keys, load_open_clip_weights
from unclip.networks.decoder import Decoder
from unclip.networks.prior import Prior
from unclip.networks.prior_ar import ARPrior
from unclip.networks.upsampler import Upsampler

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# name in config.json → (module classes, config class); a prior's config says which kind it is
COMPONENTS: dict[str, tuple[tuple[type[nn.Module], ...], type]] = {
    Stage.clip.component: ((ClipEncoder,), ClipConfig),
    Stage.prior.component: ((Prior, ARPrior), PriorConfig),
    Stage.decoder.component: ((Decoder,), Decoder.config_class),
    UPSAMPLER: ((Upsampler,), Upsampler.config_class),
}


def component_name(module: nn.Module) -> str:
    for name, (classes, _) in COMPONENTS.items():
        if isinstance(module, classes):
            return name
    raise TypeError(f"not a unclip component: {type(module).__name__}")


def build_component(name: str, cfg) -> nn.Module:
    """The (randomly initialised) module of component ``name`` with config ``cfg``."""
    return build_prior(cfg) if name == Stage.prior.component else COMPONENTS[name][0][0](cfg)


def _trained_name(module: nn.Module) -> str:
    """``component_name``, or "clip" for the bare open_clip model the CLIP stage trains (its
    export wraps it in a ClipEncoder, whose weights carry a ``model.`` prefix)."""
    if isinstance(module, (open_clip.CLIP, open_clip.CustomTextCLIP)):
        return "clip"
    return component_name(module)


def is_matrix(tensor: torch.Tensor) -> bool:
    """Two or more dimensions longer than one: weight matrices, kernels, embedding tables (what
    fp16 export casts; vectors such as biases, norms and the prior's statistics stay as they are)."""
    return sum(d > 1 for d in tensor.shape) >= 2


def save_component(module: nn.Module, folder: str | Path, dtype: torch.dtype | None = None,
                   extra: dict | None = None) -> Path:
    """Write ``module`` (its config and weights) to ``folder``; ``dtype`` casts the floating weight
    matrices and kernels (e.g. torch.float16 for shipped checkpoints) while 1-D tensors (biases,
    norms, the prior's embedding statistics; see ``is_matrix``) and buffers (statistics set from
    data, such as the AR prior's PCA basis) keep their precision at a negligible cost in bytes;
    ``extra`` adds keys to config.json: a stage's sampling defaults (``diffusion``,
    ``sampler``)."""
    meta = {"component": component_name(module), "config": to_dict(module.cfg), **(extra or {})}
    buffers = {name for name, _ in module.named_buffers()}  # statistics (e.g. the AR prior's PCA basis)
    external = external_keys(module)  # a LiT CLIP's frozen text encoder: read from its own folder
    state = {key: value for key, value in module.state_dict().items() if key not in external}
    return write_folder(folder, state, meta, dtype, keep=buffers)


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], where: str | Path) -> None:
    """``load_state_dict`` after ``check_fit`` (so a mismatch names the folder and the keys), strict
    except for the weights a component reads from elsewhere (a LiT CLIP's frozen text encoder)."""
    external = external_keys(module)
    check_fit(module, weights, where, skip=external)
    module.load_state_dict(weights, strict=not external)


def check_fit(module: nn.Module, weights: dict[str, torch.Tensor], where: str | Path,
              skip: set[str] = frozenset()) -> None:
    """The weights fit ``module`` key for key and shape for shape (``skip``: keys it reads from
    elsewhere); else a ValueError naming ``where`` and the first keys that differ (weights from
    another run, or a config.json edited by hand)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights) - set(skip))
    unexpected = sorted(set(weights) - set(own))
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape]
    found = [(label, items) for label, items in (("missing", missing), ("unexpected", unexpected),
                                                 ("of another shape (file vs config)", wrong)) if items]
    if found:
        listed = "; ".join(f"{len(items)} {label}: {', '.join(items[:3])}{', …' if len(items) > 3 else ''}"
                           for label, items in found)
        raise ValueError(f"{where}: the weights do not fit the network its config describes ({listed})")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a file that is not one (a Git LFS pointer left by a clone
    without LFS, a cut download) is a ValueError naming it."""
    path = Path(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        with open(path, "rb") as handle:
            pointer = handle.read(64).startswith(b"version https://git-lfs")
        hint = "it is a Git LFS pointer, not the weights (run `git lfs pull`)" if pointer else str(err)
        raise ValueError(f"{path} is not a readable safetensors file: {hint}") from None


def write_folder(folder: str | Path, state: dict[str, torch.Tensor], config: dict,
                 dtype: torch.dtype | None = None, keep: set[str] = frozenset()) -> Path:
    """``config.json`` + ``model.safetensors`` in ``folder``, the weights written to a temporary
    name and then renamed; ``dtype`` casts the floating matrices (see ``save_component``) except
    those named in ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        cast = dtype is not None and value.is_floating_point() and is_matrix(value) and key not in keep
        tensors[key] = value.to(dtype) if cast else value
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return folder


def read_component_config(folder: str | Path):
    """(component name, typed config) of a component folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not a unclip component folder")
    meta = json.loads(path.read_text())
    name = meta.get("component")
    if name not in COMPONENTS:
        raise ConfigError(f"{path}: unknown component {name!r} (known: {', '.join(COMPONENTS)})")
    return name, from_dict(COMPONENTS[name][1], meta["config"], where=str(path))


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in a component folder, as saved (fp16 matrices stay fp16)."""
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder}")
    return read_safetensors(weights)


def load_component(folder: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the component described by ``folder/config.json`` and load its weights."""
    name, cfg = read_component_config(folder)
    module = build_component(name, cfg)
    load_weights(module, read_weights(folder), folder)  # fp16 files are cast to the module's dtype
    return module.to(device=device, dtype=dtype).eval()


def init_weights(module: nn.Module, folder: str | Path) -> list[str]:
    """Load a component folder's weights into ``module`` for fine-tuning; parameters the folder
    lacks (e.g. a part added by a config option) keep their values and are returned by name.
    A different component, an unknown parameter or a shape mismatch is an error."""
    name, _ = read_component_config(folder)
    trained = _trained_name(module)
    if name != trained:
        raise ValueError(f"training.init_from={folder} holds a {name}, this run trains a {trained}")
    own, loaded = module.state_dict(), read_weights(folder)
    if not isinstance(module, ClipEncoder) and trained == "clip":  # the CLIP stage's bare open_clip model
        loaded = {key.removeprefix("model."): value for key, value in loaded.items()}
    unknown = sorted(set(loaded) - set(own))
    wrong = sorted(k for k in set(loaded) & set(own) if loaded[k].shape != own[k].shape)
    if unknown or wrong:
        raise ValueError(f"training.init_from={folder} does not fit this run's {name}: "
                         f"unknown parameters {unknown[:5]}, different shapes {wrong[:5]}")
    module.load_state_dict(loaded, strict=False)  # cast to the module's dtype
    return sorted(set(own) - set(loaded) - external_keys(module))


def load_clip(cfg: ClipConfig, device: str | torch.device = "cpu") -> ClipEncoder:
    """A frozen CLIP from a config: ``pretrained`` may be our ``clip/`` folder or an open_clip
    weights file; with no ``pretrained`` the weights are random (tests, or a CLIP to be trained)."""
    if cfg.pretrained and (Path(cfg.pretrained) / CONFIG_NAME).is_file():
        return load_component(cfg.pretrained, device)
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        load_open_clip_weights(None, cfg.pretrained)  # raises the clear "not found" error before building
    encoder = ClipEncoder(cfg)
    if cfg.pretrained:
        load_open_clip_weights(encoder.model, cfg.pretrained)
    return encoder.to(device).eval()


def is_component(folder: Path) -> bool:
    """A folder written by ``save_component`` (diffusers' own config.json has no "component")."""
    path = folder / CONFIG_NAME
    return path.is_file() and "component" in json.loads(path.read_text())


def load_expected(folder: Path, kind: str) -> nn.Module:
    """``load_component`` that first checks the folder holds a ``kind`` (clip, prior, …)."""
    name, _ = read_component_config(folder)
    if name != kind:
        raise ValueError(f"{folder}: holds a {name}, expected a {kind}")
    return load_component(folder)  # on the CPU in float32
