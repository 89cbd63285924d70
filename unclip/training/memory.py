"""How much memory a training run needs per GPU, before it runs (``unclip params --memory``).

Per process, for ``P`` trained parameters (fp32 master weights under mixed precision, as
accelerate keeps them):

- weights 4P, gradients 4P, AdamW's two moments 8P, and the loop's EMA copy 4P;
- the frozen CLIP a prior or decoder reads, and a LiT CLIP's frozen text encoder (fp32, every
  process holds them whole);
- activations: the tensors the forward pass keeps for the backward pass, counted at the per-GPU
  batch by running the network's forward on PyTorch's ``meta`` device (no memory, seconds even
  for the paper's sizes), attention counted as the fused kernels keep it and, with
  ``training.gradient_checkpointing``, only what the checkpointed blocks do not recompute; under
  bf16 autocast floating activations count 2 bytes and the bf16
  copies of the weights 2P more.

Sharding divides what it shards by the number of GPUs N: ZeRO-2 the gradients and optimiser
state, ZeRO-3 and FSDP (full shard) also the weights and (as this module assumes) the EMA. DDP
keeps everything whole and adds gradient buckets (4P) when N > 1. Transient buffers (FSDP's
gathered layer, the optimiser step's temporaries) are not counted. ``measure_peak`` measures the
real figure of one optimisation step on the CPU to check these estimates.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from unclip.config import ClipStageConfig, StageConfig
from unclip.networks.build import build_network, count_parameters, enable_gradient_checkpointing, example_inputs
from unclip.networks.clip import build_open_clip, is_lit

STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
GIB = 2**30


@dataclass
class MemoryPlan:
    """Bytes per GPU of one stage's training run."""

    weights: float
    gradients: float
    optimizer: float
    ema: float
    frozen: float  # the frozen CLIP's weights
    activations: float

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def plan_memory(cfg: StageConfig, *, batch: int | None = None, precision: str = "fp32", gpus: int = 1,
                strategy: str = "ddp") -> MemoryPlan:
    """The estimate for stage ``cfg`` at ``batch`` images per GPU (default: its training batch)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: {precision!r} is not fp32 or bf16")
    if gpus < 1 or (batch is not None and batch < 1):
        raise ValueError("gpus and batch must be at least 1")
    batch = batch or cfg.training.batch_size
    with torch.device("meta"):
        network = build_network(cfg)
        if cfg.training.gradient_checkpointing:
            enable_gradient_checkpointing(network)
        frozen = count_parameters(build_open_clip(cfg.clip)) if _reads_frozen_clip(cfg) else 0
    p = trainable(network)
    frozen += sum(q.numel() for q in network.parameters() if not q.requires_grad)  # a LiT CLIP's text encoder
    shard = {"ddp": (1, 1, 1), "zero2": (1, gpus, gpus), "zero3": (gpus, gpus, gpus), "fsdp": (gpus, gpus, gpus)}
    w, g, o = shard[strategy]
    buckets = 4 * p if strategy == "ddp" and gpus > 1 else 0
    return MemoryPlan(weights=4 * p / w, gradients=4 * p / g + buckets, optimizer=8 * p / o, ema=4 * p / w,
                      frozen=4 * frozen, activations=activation_bytes(network, cfg, batch, precision))


def activation_bytes(network: nn.Module, cfg: StageConfig, batch: int, precision: str = "fp32") -> float:
    """Bytes the forward pass of ``network`` (built on the meta device) keeps for the backward
    pass at ``batch``, each saved tensor counted once, the weights (already counted) left out."""
    kept: dict[int, torch.Tensor] = {}
    weights = {id(p) for p in network.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in weights and id(tensor._base) not in weights:
            kept[id(tensor)] = tensor
        return tensor

    args, kwargs = example_inputs(cfg, batch, torch.device("meta"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _fused_attention(pack):
        _loss(network, cfg, args, kwargs)
    half = precision == "bf16"
    total = sum(t.numel() * (2 if half and t.is_floating_point() else t.element_size()) for t in kept.values())
    return total + (2 * trainable(network) if half else 0)


@contextlib.contextmanager
def _fused_attention(pack):
    """On the meta device ``scaled_dot_product_attention`` takes its math path, which keeps the
    whole attention matrix for the backward pass; the fused kernels a real run uses (flash or
    memory-efficient, on CPU and GPU) keep q, k, v, the output and one log-sum-exp per query.
    Count those instead."""
    real = F.scaled_dot_product_attention

    def fused(q, k, v, *args, **kwargs):
        out = q.new_empty((*q.shape[:-1], v.shape[-1])).requires_grad_()
        for tensor in (q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32)):
            pack(tensor)
        return out

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def _loss(network: nn.Module, cfg: StageConfig, args: tuple, kwargs: dict) -> torch.Tensor:
    """A scalar of the training forward's output (the stage loss's shape of work, not its value)."""
    if isinstance(cfg, ClipStageConfig):
        image, text = args
        if is_lit(network) and text.is_meta:
            # the frozen encoder keeps nothing for the backward pass (and HF's masks cannot run on
            # meta tensors): only the trained projection of its pooled states counts
            pooled = text.new_empty((len(text), network.text.proj.in_features), dtype=torch.float32)
            return (network.encode_image(image) @ network.text.proj(pooled).T).float().mean()
        return (network.encode_image(image) @ network.encode_text(text).T).float().mean()
    return network(*args, **kwargs).float().pow(2).mean()


def _reads_frozen_clip(cfg: StageConfig) -> bool:
    """The prior and the decoder read a frozen CLIP; the CLIP stage trains it, the upsamplers have none."""
    return hasattr(cfg, "clip") and not isinstance(cfg, ClipStageConfig)


def measure_peak(cfg: StageConfig, batch: int) -> float:
    """Real peak bytes of tensors during one fp32 optimisation step of stage ``cfg`` on the CPU
    (network, AdamW state, EMA copy and, for a prior or decoder, the frozen CLIP allocated; then
    forward, backward and the AdamW step under the profiler's memory tracking)."""
    from torch.profiler import ProfilerActivity, profile

    network = build_network(cfg)
    frozen = [build_open_clip(cfg.clip)] if _reads_frozen_clip(cfg) else []
    ema = copy.deepcopy(network)
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):  # the first step allocates the AdamW moments; the second is measured
        args, kwargs = example_inputs(cfg, batch, torch.device("cpu"))
        live = _bytes(network, ema, *frozen) + _optimizer_bytes(optimizer)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _loss(network, cfg, args, kwargs).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return live + peak


def _bytes(*modules: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))
