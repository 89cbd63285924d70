"""Classifier-free guidance, written once: ``mix`` and a wrapper around any ``model_fn(x_t, t)``."""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(model_fn: ModelFn, scale: float, guide_channels: int | None = None) -> ModelFn:
    """Classifier-free guidance (GLIDE / paper §2.1) as a wrapper.

    ``model_fn`` must see a doubled batch whose conditioning is ordered ``[uncond; cond]``; the
    wrapper doubles x_t and t, then returns ``u + scale·(c − u)`` on the first
    ``guide_channels`` channels (eps only, for learned variance) and the conditional half's
    remaining channels (its variance), unchanged.
    """

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t2 = t.expand(len(x_t)) if t.dim() else t.reshape(1).expand(len(x_t))
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t2, t2]))
        uncond, cond = out.chunk(2)
        k = out.shape[1] if guide_channels is None else guide_channels
        return torch.cat([mix(uncond[:, :k], cond[:, :k], scale), cond[:, k:]], dim=1)

    return fn


def mix(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``u + scale·(c − u)``: the guided output (the autoregressive prior applies it to logits)."""
    return uncond + scale * (cond - uncond)
