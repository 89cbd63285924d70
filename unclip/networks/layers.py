"""Layers the networks share: GroupNorm sizing, the decoder's coordinate-map input, the UNets'
memory format at inference and gradient checkpointing of a block."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def norm_groups(channels: tuple[int, ...]) -> int:
    """GroupNorm groups: 32 (ADM's choice) unless a narrow tiny model needs fewer."""
    return math.gcd(32, *channels)


class ConvInWithCoordinates(nn.Conv2d):
    """``conv_in`` plus ``position(x, y maps)``: the same parameter names as the plain convolution
    (so weights trained without coordinates load) and a zero-initialised ``position`` convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        self.load_state_dict(conv.state_dict())
        self.position = nn.Conv2d(2, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=False)
        nn.init.zeros_(self.position.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.position(coordinate_maps(x))


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 2, H, W): x from −1 (left) to 1 (right), y from −1 (top) to 1 (bottom)."""
    height, width = x.shape[-2:]
    ys = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
    grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)])
    return grid[None].expand(x.shape[0], -1, -1, -1)


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """The memory format of the UNets' weights at inference on ``device``: channels_last (NHWC)
    on the CPU, where oneDNN's convolutions run 1.2–1.6× faster in it (README, Performance);
    PyTorch's default elsewhere (not measured on a GPU). Training keeps the default: there
    channels_last was slower on the CPU (the backward pass)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def like_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) in the memory format of a convolution's ``weight``: a channels_last
    network's first convolution then needs no reordering of its input."""
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x


_CHECKPOINTED: dict[type, type] = {}  # block class → its checkpointing subclass


def checkpoint_forward(block: nn.Module) -> None:
    """Make ``block`` recompute its activations in the backward pass instead of keeping them
    (``torch.utils.checkpoint``, non-reentrant, RNG state kept so that dropout repeats) while it
    trains with gradients on. The block becomes an instance of a subclass of its class whose
    ``forward`` checkpoints, so parameters, state dict and copies (the EMA's) behave as before."""
    cls = type(block)
    if cls in _CHECKPOINTED.values():
        return
    if cls not in _CHECKPOINTED:

        def forward(self, *args, **kwargs):
            inner = super(subclass, self).forward
            if self.training and torch.is_grad_enabled():
                return checkpoint(inner, *args, use_reentrant=False, **kwargs)
            return inner(*args, **kwargs)

        # the same name: FSDP's wrapping policy finds blocks by class name
        subclass = type(cls.__name__, (cls,), {"forward": forward, "__qualname__": f"checkpointed {cls.__qualname__}"})
        _CHECKPOINTED[cls] = subclass
    block.__class__ = _CHECKPOINTED[cls]
