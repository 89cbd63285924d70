"""Training throughput: samples/s of one optimisation step of each stage, fp32 and bf16.

    python bench/train_throughput.py [--configs configs/tiny configs/shapes] [--precisions no bf16] [--steps 3]
    python bench/train_throughput.py --configs configs/shapes/decoder.yaml --precisions bf16 --layouts nchw channels_last
    python bench/train_throughput.py --configs configs/shapes/decoder.yaml --precisions bf16 --compile

Each stage is built exactly as `unclip train` builds it (frozen CLIP encoding, condition dropout,
degradations, loss, backward, clipping, AdamW, EMA) and timed on one batch of its configured size
already on the device (the fastest of ``--steps`` steps after a warm-up step, so that other
programs on a shared machine disturb it least); data loading is not included. A config's
``training.clip_checkpoint`` is ignored (a randomly initialised CLIP of the same shape costs the
same). ``--configs`` takes config folders or single files; ``--layouts channels_last`` times the
network with its weights in channels_last (NHWC) too, beside the NCHW that training uses;
``--compile`` times each row eager and with ``training.compile`` (``torch.compile`` of the
forward), the compiled row's first step (the compile) reported apart. Not a test: prints a table
for the README's performance section.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState

from unclip.config import load_stage_config
from unclip.training.batches import batch_stream
from unclip.training.ema import EMA
from unclip.training.loop import make_accelerator, optimisation_step, prepared_network
from unclip.training.stages import StageContext, build_task


def measure(config: Path, precision: str, steps: int, workdir: Path, layout: str = "nchw",
            compile: bool = False) -> tuple[str, int, float, float]:
    """(stage, samples per step, seconds of the fastest step, seconds of the first step) of
    ``config`` at ``precision``, the network's weights in ``layout`` (``nchw`` or
    ``channels_last``), its forward compiled when ``compile``."""
    cfg = load_stage_config(config, [f"training.mixed_precision={precision}", "training.grad_accum=1"])
    cfg.training.clip_checkpoint = None
    accelerator = make_accelerator(cfg.training, workdir)
    try:
        task = build_task(cfg, StageContext(accelerator.device))
        model = task.model.to(accelerator.device).train()
        if layout == "channels_last":
            model.to(memory_format=torch.channels_last)
        if task.init is not None:
            task.init(model)
        ema = EMA(model, cfg.training.ema_decay)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.training.lr)
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        batch = next(batch_stream(task.dataset, cfg.training.batch_size))
        one = itertools.repeat(batch)  # the same batch every step: data loading is not timed
        call = prepared_network(wrapped, model, compile)
        times = []
        for step in range(steps + 1):  # step 0 warms up (allocations, kernel selection)
            _sync(accelerator.device)
            start = time.perf_counter()
            optimisation_step(task, call, one, optimizer, accelerator, cfg.training, step + 1)
            ema.update(model)
            _sync(accelerator.device)
            times.append(time.perf_counter() - start)
        return task.name, cfg.training.batch_size, min(times[1:]), times[0]
    finally:
        accelerator.end_training()
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/tiny", "configs/shapes"])
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (the fastest is reported)")
    parser.add_argument("--layouts", nargs="+", default=["nchw"], choices=["nchw", "channels_last"],
                        help="the networks' weight layouts to time (training uses nchw)")
    parser.add_argument("--compile", action="store_true",
                        help="also time each row with training.compile (its first step, the compile, apart)")
    parser.add_argument("--workdir", default="/tmp/unclip-bench")
    args = parser.parse_args()

    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu: {platform.processor() or platform.machine()}"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'config':<36} {'stage':<10} {'precision':<9} {'layout':<13} {'compiled':<8} {'batch':>5} {'s/step':>8} "
          f"{'samples/s':>10} {'first step s':>12}")
    configs = [c for f in map(Path, args.configs) for c in (sorted(f.glob("*.yaml")) if f.is_dir() else [f])]
    for config in configs:
        for precision in args.precisions:
            for layout, compiled in itertools.product(args.layouts, [False, True] if args.compile else [False]):
                stage, batch, seconds, first = measure(config, precision, args.steps, Path(args.workdir), layout,
                                                       compiled)
                name = "fp32" if precision == "no" else precision
                print(f"{config!s:<36} {stage:<10} {name:<9} {layout:<13} {'yes' if compiled else 'no':<8} {batch:>5} "
                      f"{seconds:>8.3f} {batch / seconds:>10.1f} {first:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
