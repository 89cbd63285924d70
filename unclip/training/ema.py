"""Exponential moving average of a network's weights (the weights every export ships).

One shadow copy of the network, updated after each optimisation step:
``shadow ← shadow + (1 − d)·(param − shadow)``, with ``d = min(decay, (1 + n) / (10 + n))`` after
``n`` updates. The warm-up term keeps a fresh run's average from being dominated by its random
initialisation for the first ~1/(1 − decay) steps; ``decay`` (the paper's 0.9999) is the ceiling.
Frozen parameters and buffers (e.g. the prior's embedding statistics) are copied, not averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, *, copy: bool = True,
                 view: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """``copy=False``: ``model`` is already the shadow (e.g. a sharded run's, see
        ``unclip.training.sharded``); ``view`` maps each training parameter to the tensor the shadow
        averages (ZeRO-3: this process's slice)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.view = decay, view or (lambda p: p)
        self.updates = 0
        self.model = (deepcopy(model) if copy else model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights toward ``model``'s (the unwrapped training network)."""
        d = self.current_decay()
        shadow = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            target, value = shadow[name], self.view(param).detach()
            if param.requires_grad:
                target.lerp_(value.to(target.dtype), 1.0 - d)
            else:
                target.copy_(value)
        shadow_buffers = dict(self.model.named_buffers())
        for name, buf in model.named_buffers():
            shadow_buffers[name].copy_(buf)
        self.updates += 1
