"""The one training loop every stage shares (``unclip train STAGE`` and ``train/*.py``).

HuggingFace accelerate places the work (one CPU, one GPU, or ``accelerate launch`` data
parallelism), runs mixed precision (``no``/``fp16``/``bf16``; bf16 autocast also on CPU) and
gradient accumulation. AdamW with linear warm-up then a constant rate, gradient clipping, an EMA of
the weights. ``training.steps`` counts optimiser steps; one step sees ``batch_size ×
grad_accum × processes`` samples.

Reproducibility: every micro-batch reseeds python/numpy/torch from (seed, micro-batch, process)
and reads batch ``n`` of a stream that depends on nothing else (``unclip.training.batches``), so on CPU
a run interrupted and resumed ends with the weights of an uninterrupted one.

Run folder: ``config.yaml`` (resolved), ``checkpoints/step_XXXXXX`` + ``checkpoints/latest``,
``samples/step_XXXXXX.png``, ``log.jsonl`` (and ``tensorboard/`` when TensorBoard is installed),
``export/<component>/`` for the pipeline. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration, is_tensorboard_available, set_seed
from tqdm.auto import tqdm

from unclip.checkpoint import init_weights
from unclip.config import LrDecay, Precision, StageConfig, TrainingConfig, save_yaml, to_dict
from unclip.networks.build import enable_gradient_checkpointing
from unclip.training import resume as ckpt
from unclip.training import sharded
from unclip.training.batches import batch_stream
from unclip.training.ema import EMA
from unclip.training.stages import StageContext, StageTask, build_task


class TrainingError(RuntimeError):
    """A run stopped early because its state went bad (e.g. a non-finite loss)."""


class JsonlTracker(GeneralTracker):
    """An accelerate tracker appending one JSON object per ``log`` call to ``<output>/log.jsonl``."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self):
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


# torch.compile's backend for ``training.compile`` (tests trace with a counting backend instead)
COMPILE_BACKEND: str | Callable = "inductor"


@dataclass
class PreparedNetwork:
    """The network to call from a loss: the wrapper's forward (DDP's gradient sync, autocast),
    compiled with ``training.compile``; the plain network's attributes (``decoder.cfg``,
    ``decoder.text_proj``, ``prior.standardise``)."""

    wrapped: torch.nn.Module
    plain: torch.nn.Module
    compiled: Callable | None = None

    def __call__(self, *args, **kwargs):
        return (self.wrapped if self.compiled is None else self.compiled)(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.plain, name)


def prepared_network(wrapped: torch.nn.Module, plain: torch.nn.Module, compile: bool = False) -> PreparedNetwork:
    """``wrapped`` to call from a loss, through ``torch.compile`` when ``compile`` (static shapes:
    the batch is the same every step). The compiled module only refers to ``wrapped``, so the
    weights, their EMA and the checkpoints keep the plain network's names."""
    compiled = torch.compile(wrapped, backend=COMPILE_BACKEND, dynamic=False) if compile else None
    return PreparedNetwork(wrapped, plain, compiled)


def train(cfg: StageConfig, output: str | Path, *, resume: bool = False,
          keep_checkpoints: int = 3, progress: bool = True,
          build: Callable[[StageConfig, StageContext], StageTask] = build_task) -> Path:
    """Train the stage ``cfg`` describes into ``output``; returns ``output/export``.

    ``build`` makes the :class:`StageTask` once the devices are known (tests pass their own).
    """
    if Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"--output {output} is a file: give a folder for the run")
    accelerator = make_accelerator(cfg.training, Path(output))
    try:
        set_seed(cfg.training.seed)  # the same initial weights (and random frozen CLIP) everywhere
        ctx = StageContext(accelerator.device, accelerator.process_index, accelerator.num_processes)
        return run_task(build(cfg, ctx), cfg, accelerator, Path(output), resume=resume,
                        keep_checkpoints=keep_checkpoints, progress=progress)
    finally:
        accelerator.end_training()
        if accelerator.num_processes == 1:  # let a later run in this process pick another precision
            AcceleratorState._reset_state()
            GradientState._reset_state()


def make_accelerator(tc: TrainingConfig, output: Path) -> Accelerator:
    precision = Precision(tc.mixed_precision)
    if precision is Precision.fp16 and not torch.cuda.is_available():
        raise ValueError("training.mixed_precision=fp16 needs a GPU; use bf16 (autocast works on CPU) or no")
    trackers: list[Any] = [JsonlTracker(output / "log.jsonl")]
    if is_tensorboard_available():
        trackers.append("tensorboard")
    cpu = sharded.cpu_processes()
    fsdp = sharded.fsdp_plugin(cpu)
    accelerator = Accelerator(mixed_precision=precision.value, gradient_accumulation_steps=tc.grad_accum,
                              log_with=trackers, cpu=cpu, fsdp_plugin=fsdp,
                              project_config=ProjectConfiguration(str(output),
                                                                  logging_dir=str(output / "tensorboard")))
    if fsdp is not None:
        sharded.enable_on_cpu(accelerator, fsdp, precision.value)
    sharded.count_deepspeed_cpu_processes(accelerator)
    sharded.check_supported(accelerator)
    sharded.configure_deepspeed(accelerator, tc.batch_size, tc.grad_accum, tc.grad_clip)
    return accelerator


def run_task(task: StageTask, cfg: StageConfig, accelerator: Accelerator, output: Path, *, resume: bool = False,
             keep_checkpoints: int = 3, progress: bool = True) -> Path:
    """The loop proper, for any :class:`StageTask`."""
    return _Run(task, cfg, accelerator, output, resume, keep_checkpoints).loop(progress)


class _Run:
    """One run's state: the network, its EMA, the optimiser and schedule, the step."""

    def __init__(self, task: StageTask, cfg: StageConfig, accelerator: Accelerator, output: Path, resume: bool,
                 keep: int):
        self.task, self.cfg, self.tc, self.accelerator, self.output, self.keep = (
            task, cfg, cfg.training, accelerator, output, keep)
        self.config = to_dict(cfg)
        tc = self.tc
        for name in ("batch_size", "grad_accum", "checkpoint_every", "sample_every", "log_every"):
            if getattr(tc, name) < 1:
                raise ValueError(f"training.{name} must be at least 1, got {getattr(tc, name)}")
        if tc.compile and sharded.engine_managed(accelerator):
            raise ValueError("training.compile works for single-process and DDP runs, not under FSDP or DeepSpeed")
        state = _resume_state(output, resume, self.config)
        self.model = task.model.to(accelerator.device)
        if tc.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        if state is None and task.init is not None:
            task.init(self.model)
        if state is None and tc.init_from:
            fresh = init_weights(self.model, tc.init_from)
            if fresh and accelerator.is_main_process:
                print(f"{task.name}: started from {tc.init_from}; new parameters: {', '.join(fresh)}")
        self.engine = sharded.engine_managed(accelerator)
        if state is not None and state.engine != self.engine:
            kind = "a sharded (FSDP / DeepSpeed)" if state.engine else "an unsharded"
            raise ValueError(f"{state.folder} was written by {kind} run: resume it under the same kind of "
                             "accelerate config (configs/accelerate/)")
        self.prepare(state)
        self.start = state.step if state is not None else 0
        self.call = prepared_network(self.wrapped, self.model, tc.compile)
        self.samples_per_step = tc.batch_size * tc.grad_accum * accelerator.num_processes
        # training samples consumed before this run (checkpoints from before it was kept: as if unchanged)
        self.start_samples = 0 if state is None else (
            state.samples if state.samples is not None else state.step * self.samples_per_step)

    def prepare(self, state: ckpt.ResumeState | None) -> None:
        """The optimiser, schedule and EMA, restored from ``state``, and the network handed to
        accelerate (DDP, FSDP or DeepSpeed). Under FSDP the EMA follows the shards."""
        tc, accelerator = self.tc, self.accelerator
        self.layout = layout = sharded.weight_layout(accelerator)
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=tc.lr,
                                      betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                                      weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(tc))
        full = layout == sharded.FULL
        self.template = None if full else sharded.meta_copy(self.model)  # the full network's layout
        if full:
            self.ema = EMA(self.model, tc.ema_decay)
        if state is not None and not self.engine:
            ckpt.load_weights(state, self.model, self.ema)
            ckpt.load_optimizer_states(state, optimizer, self.scheduler, accelerator.scaler)
        # the scheduler stays unprepared: accelerate would step it once per process
        self.wrapped, self.optimizer = accelerator.prepare(self.model, optimizer)
        if layout == sharded.FSDP:  # the weights became DTensor shards in place: the EMA averages the shards
            self.ema = EMA(sharded.sharded_shadow(self.template, self.model), tc.ema_decay, copy=False)
            if accelerator.is_main_process:
                print(sharded.describe(self.model))
        if layout == sharded.ZERO3:  # each parameter keeps its slice in ds_tensor: the EMA averages the slices
            self.ema = EMA(sharded.zero3_shadow(self.template, self.model), tc.ema_decay, copy=False,
                           view=sharded.partition)
        if state is not None and self.engine:
            sharded.load_state(accelerator, state.folder, self.ema.model, slices=layout == sharded.ZERO3)
            ckpt.load_scheduler(state, self.scheduler)
            self.ema.updates = state.ema_updates
        if state is not None:
            apply_training_settings(self.optimizer, self.scheduler, tc)

    def loop(self, progress: bool) -> Path:
        tc, accelerator, main = self.tc, self.accelerator, self.accelerator.is_main_process
        ranks = accelerator.num_processes
        per_rank = (self.start_samples + ranks - 1) // ranks  # each rank's share consumed so far, rounded up
        batches = batch_stream(self.task.dataset, tc.batch_size, start_sample=per_rank,
                               seed=self.cfg.data.seed, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, num_workers=tc.num_workers,
                               pin_memory=accelerator.device.type == "cuda")
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, self.output / "config.yaml")
        accelerator.init_trackers(self.task.name, config=_flat(self.config))
        bar = tqdm(total=tc.steps, initial=self.start, desc=f"train {self.task.name}",
                   disable=not (main and progress), dynamic_ncols=True)
        self.call.wrapped.train()
        self.clock = (time.perf_counter(), self.start)
        for step in range(self.start + 1, tc.steps + 1):
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            logs = optimisation_step(self.task, self.call, batches, self.optimizer, accelerator, tc, step)
            self.scheduler.step()
            if self.task.after_step is not None:
                self.task.after_step(self.model)
            self.ema.update(self.model)
            rate = (step - self.clock[1]) / max(time.perf_counter() - self.clock[0], 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4g}", step_s=f"{rate:.2f}",
                            samples_s=f"{rate * self.samples_per_step:.1f}")
            self.after_step(step, {**logs, "lr": lr}, rate)
        bar.close()
        export = self.output / "export"
        network = self.ema_network()
        if main:
            self.task.export(network, export)
            bar.write(f"exported {', '.join(sorted(p.name for p in export.iterdir()))} to {export}")
        accelerator.wait_for_everyone()
        return export

    def after_step(self, step: int, logs: dict[str, float], rate: float) -> None:
        """Log, monitor and checkpoint, each every N steps and at the last step."""
        tc, accelerator, last = self.tc, self.accelerator, step == self.tc.steps
        if step % tc.log_every == 0 or last:
            logs = {k: _mean_over_processes(accelerator, v) for k, v in logs.items()}
            accelerator.log({**logs, "ema_decay": self.ema.current_decay(), "steps_per_s": rate,
                             "samples_per_s": rate * self.samples_per_step}, step=step)
            self.clock = (time.perf_counter(), step)
        if self.task.sample is not None and (step % tc.sample_every == 0 or last):
            network = self.ema_network()
            if accelerator.is_main_process:
                metrics = self.task.sample(network, step, self.output)
                if metrics:
                    accelerator.log(metrics, step=step)
            accelerator.wait_for_everyone()
        if step % tc.checkpoint_every == 0 or last:
            self.checkpoint(step)

    def ema_network(self) -> torch.nn.Module | None:
        """The EMA as a full, plain network on the main process, None on the others; every process
        calls it (gathering a sharded EMA is a collective)."""
        main = self.accelerator.is_main_process
        if self.layout == sharded.FSDP:
            return sharded.gather_full(self.ema.model, self.template, main)
        if self.layout == sharded.ZERO3:
            return sharded.gather_zero3(self.model, self.ema.model, self.template, main)
        return self.ema.model if main else None

    def samples_at(self, step: int) -> int:
        """Training samples all processes have consumed by the end of ``step``."""
        return self.start_samples + (step - self.start) * self.samples_per_step

    def checkpoint(self, step: int) -> None:
        """Save the resume state (main process) after checking that every process holds the same weights."""
        accelerator = self.accelerator
        if self.template is not None:  # FSDP, ZeRO-3: every process holds other shards, and saves them
            self.engine_checkpoint(step)
            return
        checksums = accelerator.gather(_checksum(self.model).reshape(1).to(accelerator.device)).tolist()
        if max(checksums) - min(checksums) > 1e-6 * max(1.0, abs(checksums[0])):
            raise TrainingError(f"processes out of step at step {step}: weight checksums {checksums}")
        if self.engine:
            self.engine_checkpoint(step)
        elif accelerator.is_main_process:
            folder = ckpt.save_checkpoint(self.output, step, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                          scheduler=self.scheduler, scaler=accelerator.scaler, config=self.config,
                                          samples=self.samples_at(step), rank=accelerator.process_index,
                                          keep=self.keep)
            tqdm.write(f"saved {folder}")
        accelerator.log({f"checksum/process_{i}": c for i, c in enumerate(checksums)}, step=step)
        accelerator.wait_for_everyone()

    def engine_checkpoint(self, step: int) -> None:
        """Every process writes its part through accelerate and torch's distributed checkpoint into
        one temporary folder, which the main process completes and renames."""
        accelerator, main = self.accelerator, self.accelerator.is_main_process
        tmp = ckpt.temporary_folder(self.output, step, unique=False)
        if main:
            ckpt.begin_checkpoint(self.output, step, unique=False)
        accelerator.wait_for_everyone()
        sharded.save_state(accelerator, tmp, self.ema.model, slices=self.layout == sharded.ZERO3)
        accelerator.wait_for_everyone()
        if main:
            folder = ckpt.finish_checkpoint(tmp, step, ema=self.ema, scheduler=self.scheduler, config=self.config,
                                            samples=self.samples_at(step), rank=accelerator.process_index,
                                            keep=self.keep, engine=True)
            tqdm.write(f"saved {folder}")
        accelerator.wait_for_everyone()


def optimisation_step(task: StageTask, call: PreparedNetwork, batches, optimizer, accelerator: Accelerator,
                       tc: TrainingConfig, step: int) -> dict[str, float]:
    """``grad_accum`` micro-batches, then one clipped AdamW step; returns the mean of each loss term."""
    totals: dict[str, float] = {}
    for micro in range(tc.grad_accum):
        batch = next(batches, None)
        if batch is None:
            raise ValueError("the training data set yielded nothing")
        batch = {k: v.to(accelerator.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        _reseed(tc.seed, (step - 1) * tc.grad_accum + micro, accelerator.process_index)
        # autocast covers the network's forward only (accelerate wraps it): data preparation such
        # as degradations and the frozen CLIP's encodings stay in float32
        with accelerator.accumulate(call.wrapped):
            out = task.loss(call, batch)
            _check_finite(out["loss"], step, batch, accelerator)
            accelerator.backward(out["loss"])
            if accelerator.sync_gradients and tc.grad_clip > 0:
                norm = accelerator.clip_grad_norm_(call.wrapped.parameters(), tc.grad_clip)
                if norm is not None:  # DeepSpeed clips inside its step and may not report it
                    totals["grad_norm"] = float(norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in out.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach()) / tc.grad_accum
    return totals


def _reseed(seed: int, micro_batch: int, rank: int) -> None:
    """Noise, timesteps and dropout of micro-batch n depend only on (seed, n, process)."""
    set_seed(zlib.crc32(f"{seed}:{micro_batch}:{rank}".encode()))


def _check_finite(loss: torch.Tensor, step: int, batch: dict, accelerator: Accelerator) -> None:
    bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:  # stop every process together, never leave one waiting
        bad = accelerator.reduce(bad, "sum")
    if bad.item() > 0:
        captions = batch.get("caption")
        shown = "" if captions is None else f"; this process's batch captions: {list(captions)}"
        raise TrainingError(f"non-finite loss at step {step} (local value {loss.item()}){shown}. "
                            "Lower training.lr, raise training.warmup_steps or use mixed_precision=no.")


def _mean_over_processes(accelerator: Accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean").item()


def _checksum(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return sum((p.double() * (i % 7 + 1)).sum() for i, p in enumerate(model.parameters())).float()


def _resume_state(output: Path, resume: bool, config: dict) -> ckpt.ResumeState | None:
    folder = ckpt.latest_checkpoint(output)
    if folder is None:
        if resume:
            tqdm.write(f"no checkpoint in {output}: starting from step 0")
        return None
    if not resume:
        raise ValueError(f"{output} already holds checkpoints: pass --resume to continue, or choose another --output")
    state = ckpt.read_resume_state(folder)
    ckpt.check_compatible(state, config)
    if state.step >= config["training"]["steps"]:
        tqdm.write(f"{folder.name} is at step {state.step} >= training.steps: nothing to train, exporting")
    return state


def lr_factor(tc: TrainingConfig):
    """Step index i (0-based: the scheduler's count of steps taken) → the share of training.lr that
    step i + 1 uses: the linear warm-up times the decay (training.lr_decay)."""
    span = max(tc.steps - tc.lr_decay_start, 1)

    def factor(i: int) -> float:
        warm = min(1.0, (i + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else 1.0
        if tc.lr_decay == LrDecay.constant or i < tc.lr_decay_start:
            return warm
        done = min(1.0, (i - tc.lr_decay_start) / span)
        left = 0.5 * (1.0 + math.cos(math.pi * done)) if tc.lr_decay == LrDecay.cosine else 1.0 - done
        return warm * (tc.lr_final + (1.0 - tc.lr_final) * left)

    return factor


def apply_training_settings(optimizer, scheduler, tc: TrainingConfig) -> None:
    """A resumed run trains with the config's optimiser settings, not the checkpoint's: the restored
    state carries the old peak rate (base_lrs, initial_lr), betas, eps and weight decay, and the rate
    of the old schedule for the next step. Set them from ``tc``; the schedule's position is kept."""
    rate = tc.lr * lr_factor(tc)(scheduler.last_epoch)  # the rate the next step uses
    for group in optimizer.param_groups:
        group.update(lr=rate, initial_lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                     weight_decay=tc.weight_decay)
    scheduler.base_lrs = [tc.lr] * len(optimizer.param_groups)


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config → flat hyper-parameters (scalars only) for the trackers."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
