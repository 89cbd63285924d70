"""Sharded training: FSDP (torch's FSDP2) and DeepSpeed ZeRO-2, both through accelerate.

The loop asks this module three things: which accelerate plugin a launch wants, how the EMA
follows weights that an engine owns, and how such a run checkpoints, resumes and exports.

- **FSDP** (``configs/accelerate/fsdp.yaml``, ``fsdp_version: 2``): every parameter becomes a
  DTensor holding this process's shard; the networks name their blocks in ``_no_split_modules``
  (UNet resnet and attention blocks, transformer layers), which accelerate's transformer wrapping
  policy turns into one FSDP unit each. accelerate applies FSDP only on accelerators; torch's FSDP2
  also runs on CPU processes over gloo, so :func:`fsdp_plugin` / :func:`enable_on_cpu` switch it on
  there too (that is how the tests run it with two CPU processes).
- **DeepSpeed ZeRO-2** (``configs/accelerate/zero2.yaml``): optimiser states and gradients are
  partitioned, the weights are not, so the EMA is the usual full copy. ZeRO-3 partitions the
  weights outside of DeepSpeed's own modules and is refused: use FSDP, which shards the same way.

The EMA of a sharded network is a plain module whose parameters are DTensor clones of the shards
(:func:`sharded_shadow`), so averaging stays local; sampling and export gather it into a full
network (:func:`gather_full`, a collective every process calls). A checkpoint is accelerate's
``save_state`` (model and optimiser as torch distributed-checkpoint shards, or DeepSpeed's files)
plus the EMA written with ``torch.distributed.checkpoint``; resuming may change the process count.
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
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
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
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise ValueError("DeepSpeed ZeRO-3 partitions the weights inside DeepSpeed, where the loop's EMA "
                             "cannot follow them: use configs/accelerate/fsdp.yaml (full shard: weights, gradients "
                             "and optimiser states, like ZeRO-3) or zero2.yaml")


def configure_deepspeed(accelerator: Accelerator, batch_size: int, grad_accum: int, grad_clip: float) -> None:
    """Give DeepSpeed the loop's batch layout (it needs it before ``prepare``; there is no dataloader)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = AcceleratorState().deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = batch_size
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = batch_size * grad_accum * accelerator.num_processes
    config["gradient_clipping"] = grad_clip


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


def save_state(accelerator: Accelerator, folder: Path, ema_model: nn.Module) -> None:
    """Model and optimiser through accelerate (every process), then the EMA's shards."""
    accelerator.save_state(str(folder / ENGINE))
    dcp.save(ema_model.state_dict(), checkpoint_id=str(folder / EMA_SHARDS))


def load_state(accelerator: Accelerator, folder: Path, ema_model: nn.Module) -> None:
    accelerator.load_state(str(folder / ENGINE))
    state = ema_model.state_dict()
    dcp.load(state, checkpoint_id=str(folder / EMA_SHARDS))
    ema_model.load_state_dict(state)
