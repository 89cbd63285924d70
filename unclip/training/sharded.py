"""Sharded training: FSDP (torch's FSDP2) and DeepSpeed ZeRO-2 / ZeRO-3, all through accelerate.

The loop asks this module three things: which accelerate plugin a launch wants, how the EMA
follows weights that an engine owns, and how such a run checkpoints, resumes and exports.

- **FSDP** (``configs/accelerate/fsdp.yaml``, ``fsdp_version: 2``): every parameter becomes a
  DTensor holding this process's shard; the networks name their blocks in ``_no_split_modules``
  (UNet resnet and attention blocks, transformer layers), which accelerate's transformer wrapping
  policy turns into one FSDP unit each. accelerate applies FSDP only on accelerators; torch's FSDP2
  also runs on CPU processes over gloo, so :func:`fsdp_plugin` / :func:`enable_on_cpu` switch it on
  there too (that is how the tests run it with two CPU processes).
- **DeepSpeed ZeRO-2** (``configs/accelerate/zero2.yaml``): optimiser states and gradients are
  partitioned, the weights are not, so the EMA is the usual full copy.
- **DeepSpeed ZeRO-3** (``configs/accelerate/zero3.yaml``): the weights are partitioned too; each
  parameter keeps this process's flat slice in ``ds_tensor``. The EMA averages those slices
  (:func:`zero3_shadow`); to gather it, the slices are swapped into the live parameters for one
  ``deepspeed.zero.GatheredParameters`` and swapped back (:func:`gather_zero3`). The loop sets
  ``stage3_param_persistence_threshold: 0`` so that every parameter is partitioned this way.

The EMA of a sharded network is a plain module whose parameters are DTensor clones of the shards
(:func:`sharded_shadow`), so averaging stays local; sampling and export gather it into a full
network (:func:`gather_full`, a collective every process calls). A checkpoint is accelerate's
``save_state`` (model and optimiser as torch distributed-checkpoint shards, or DeepSpeed's files)
plus the EMA written with ``torch.distributed.checkpoint`` (under ZeRO-3, one safetensors file of
slices per process). Under FSDP resuming may change the process count; under ZeRO-3 it may not.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import SCALER_NAME, DistributedType, FullyShardedDataParallelPlugin
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor

ENGINE = "engine"  # the checkpoint sub-folder accelerate's save_state writes
EMA_SHARDS = "ema"  # the checkpoint sub-folder of the EMA's distributed checkpoint


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def uses_deepspeed() -> bool:
    return _env_flag("ACCELERATE_USE_DEEPSPEED")


def cpu_processes() -> bool:
    """Several processes and no GPU: ask accelerate for CPU data parallelism (gloo), which it
    otherwise sets up only for its MPI launcher."""
    if os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        warnings.warn("`accelerate launch --cpu` starts several processes only through MPI (--mpirun_hostfile); "
                      "this is ONE process. Without MPI use `accelerate launch --multi_gpu --num_processes N`, "
                      "which runs on CPU with gloo when there is no GPU.", stacklevel=2)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return several and not torch.cuda.is_available() and not uses_deepspeed()  # DeepSpeed has its own


def fsdp_plugin(cpu_processes: bool) -> FullyShardedDataParallelPlugin | None:
    """The FSDP plugin an ``accelerate launch`` FSDP config asks for, when it starts CPU processes
    (on GPUs accelerate makes it itself); None otherwise."""
    if not (cpu_processes and _env_flag("ACCELERATE_USE_FSDP")):
        return None
    return FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch sets


def enable_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin, precision: str) -> None:
    """Turn FSDP on for CPU processes (gloo), which accelerate leaves at plain data parallelism."""
    if precision != "no":
        plugin.set_mixed_precision(precision)
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # read back by every state object
    accelerator.state.distributed_type = DistributedType.FSDP


def count_deepspeed_cpu_processes(accelerator: Accelerator) -> None:
    """On CPU, accelerate starts DeepSpeed's process group but keeps counting one process (no
    device backend): give every state object torch.distributed's rank and world size."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED or not torch.distributed.is_initialized():
        return
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if accelerator.num_processes == world:
        return
    local = int(os.environ.get("LOCAL_RANK", rank))
    PartialState._shared_state.update(num_processes=world, process_index=rank, local_process_index=local)


def check_supported(accelerator: Accelerator) -> None:
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ValueError("FSDP: the loop needs FSDP2 (fsdp_version: 2 in the accelerate config, as "
                         "configs/accelerate/fsdp.yaml); FSDP1's flat parameters are not supported")


FULL, FSDP, ZERO3 = "full", "fsdp", "zero3"  # how each process holds the weights


def weight_layout(accelerator: Accelerator) -> str:
    """``full`` (one process, DDP, ZeRO-2), ``fsdp`` (DTensor shards) or ``zero3`` (flat slices)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return FSDP
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        return ZERO3
    return FULL


def configure_deepspeed(accelerator: Accelerator, batch_size: int, grad_accum: int, grad_clip: float) -> None:
    """Give DeepSpeed the loop's batch layout (it needs it before ``prepare``; there is no dataloader)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = AcceleratorState().deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = batch_size
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = batch_size * grad_accum * accelerator.num_processes
    config["gradient_clipping"] = grad_clip
    if weight_layout(accelerator) == ZERO3:  # partition every parameter, so that the EMA can follow it
        config.setdefault("zero_optimization", {})["stage3_param_persistence_threshold"] = 0


def engine_managed(accelerator: Accelerator) -> bool:
    """True when FSDP or DeepSpeed owns the weights and the optimiser (their checkpoints, not ours)."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def describe(module: nn.Module) -> str:
    """One line on how ``module`` is sharded over this process."""
    from torch.distributed.fsdp import FSDPModule

    units = sum(isinstance(m, FSDPModule) for m in module.modules())
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())
    total = sum(p.numel() for p in module.parameters())
    return f"FSDP: {units} units; this process holds {local:,} of {total:,} parameters"


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (no memory)."""
    memo: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def _assign(module: nn.Module, name: str, tensor: torch.Tensor, *, parameter: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if parameter:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[leaf] = tensor


@torch.no_grad()
def sharded_shadow(template: nn.Module, sharded: nn.Module) -> nn.Module:
    """The EMA's network for a sharded one: ``template`` (a :func:`meta_copy` of the plain network)
    holding clones of ``sharded``'s parameter shards (DTensors) and buffers."""
    shadow = meta_copy(template).eval()
    for name, p in sharded.named_parameters():
        _assign(shadow, name, p.detach().clone(), parameter=True)
    for name, b in sharded.named_buffers():
        _assign(shadow, name, b.detach().clone(), parameter=False)
    return shadow


@torch.no_grad()
def gather_full(shadow: nn.Module, template: nn.Module, main: bool) -> nn.Module | None:
    """A full, plain copy of a sharded ``shadow`` on the main process (None on the others).
    Every process must call it: gathering the shards is a collective."""
    state = {}
    for name, value in shadow.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if main:
            state[name] = full.cpu()
    if not main:
        return None
    full_model = meta_copy(template)
    full_model.load_state_dict(state, assign=True)
    return full_model.requires_grad_(False).eval()


def partition(p: torch.Tensor) -> torch.Tensor:
    """This process's flat slice of a ZeRO-3 parameter."""
    return p.ds_tensor


@torch.no_grad()
def zero3_shadow(template: nn.Module, model: nn.Module) -> nn.Module:
    """The EMA's network for a ZeRO-3 one: ``template`` holding clones of each parameter's slice
    (:func:`partition`) and of the buffers (which ZeRO-3 does not partition)."""
    shadow = meta_copy(template).eval()
    for name, p in model.named_parameters():
        _assign(shadow, name, partition(p).detach().clone(), parameter=True)
    for name, b in model.named_buffers():
        _assign(shadow, name, b.detach().clone(), parameter=False)
    return shadow


@torch.no_grad()
def gather_zero3(model: nn.Module, shadow: nn.Module, template: nn.Module, main: bool) -> nn.Module | None:
    """A full, plain copy of the ZeRO-3 EMA ``shadow`` on the main process: its slices are swapped
    into ``model``'s parameters for one DeepSpeed gather, then the training slices come back.
    Every process must call it."""
    import deepspeed

    params = dict(model.named_parameters())
    kept = {name: partition(p).detach().clone() for name, p in params.items()}
    for name, p in shadow.named_parameters():
        partition(params[name]).copy_(p)
    try:
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            state = {name: p.detach().cpu().clone() for name, p in params.items()} if main else {}
    finally:
        for name, p in params.items():
            partition(p).copy_(kept[name])
    if not main:
        return None
    state.update({name: b.cpu() for name, b in shadow.named_buffers()})
    full_model = meta_copy(template)
    full_model.load_state_dict(state, assign=True)
    return full_model.requires_grad_(False).eval()


def _slices_file(folder: Path, rank: int) -> Path:
    return folder / EMA_SHARDS / f"process_{rank:05d}.safetensors"


def save_state(accelerator: Accelerator, folder: Path, ema_model: nn.Module, *, slices: bool = False) -> None:
    """Model and optimiser through accelerate (every process), then the EMA: a distributed checkpoint,
    or with ``slices`` (ZeRO-3) one file of this process's slices."""
    accelerator.save_state(str(folder / ENGINE))
    if slices:
        path = _slices_file(folder, accelerator.process_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ema_model.state_dict().items()}, str(path))
    else:
        dcp.save(ema_model.state_dict(), checkpoint_id=str(folder / EMA_SHARDS))


def load_state(accelerator: Accelerator, folder: Path, ema_model: nn.Module, *, slices: bool = False) -> None:
    if accelerator.scaler is not None and not (folder / ENGINE / SCALER_NAME).is_file():
        raise ValueError(f"{folder} was written without fp16's loss scaler: resume it with the mixed_precision "
                         "it was trained with (bf16 or no)")
    accelerator.load_state(str(folder / ENGINE))
    # the micro-batch count came back too; checkpoints fall on optimiser steps, so counting afresh
    # keeps gradient accumulation in step when a resumed run changes training.grad_accum
    accelerator.step = 0
    if slices:
        path = _slices_file(folder, accelerator.process_index)
        written = len(list(path.parent.glob("process_*.safetensors")))
        if not path.is_file() or written != accelerator.num_processes:
            raise ValueError(f"{folder} was written by {written} ZeRO-3 processes; resume it with as many")
        ema_model.load_state_dict(load_file(str(path)))
        return
    state = ema_model.state_dict()
    dcp.load(state, checkpoint_id=str(folder / EMA_SHARDS))
    ema_model.load_state_dict(state)
