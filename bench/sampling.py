"""Wall time of full text → image generation: unclip's pipeline and diffusers' (deprecated)
UnCLIPPipeline on identical weights, side by side in one run.

    python bench/sampling.py                        # tiny random weights (configs/tiny)
    python bench/sampling.py --configs configs/shapes --repeats 1
    python bench/sampling.py --checkpoint checkpoints/shapes

Both pipelines run the same weights (diffusers' gets them through ``unclip.pipeline.karlo.to_diffusers``)
and Karlo's default steps (prior 25, decoder 25, upsampler 7) at batch 1 and 4. The first
rows are like for like (UnCLIPScheduler everywhere, one prior sample per image, text → the first
upsampler's size); the others show unclip's own defaults (ancestral DDPM, best of 2 prior samples),
DPM-Solver++ with fewer steps, bf16 autocast and the second upsampler where one exists. unclip's
UNets run in the memory format the pipeline picks for the device (channels_last on the CPU);
where that is not NCHW, diffusers' pipeline gets an NCHW copy, as it loads weights, and rows
"NCHW UNets" run unclip on that copy too, to show what the layout is worth. Each
figure is the best of ``--repeats`` rounds (rows interleaved) after one warm-up run. ``--compile``
compiles unclip's networks (``torch.compile``, ``unclip.pipeline.compiled``; diffusers' pipeline
calls the inner UNets and stays eager) and prints each row's first call, which pays the compile
time, apart. ``--profile`` runs the like-for-like rows once more under ``torch.profiler`` and
splits their wall time into operator kinds and the time outside operators (``bench/op_profile.py``).
Not a test; needs transformers for the diffusers side (skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unclip.networks.layers import inference_memory_format
from unclip.pipeline import SamplingOptions, UnCLIPPipeline
from unclip.pipeline.cascade import unets

PROMPT = "a small red circle in the top left on a white background"
KARLO_STEPS = {"prior": 25, "decoder": 25, "upsampler": 7}
GUIDANCE = {"prior": 4.0, "decoder": 8.0}


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ours(pipe: UnCLIPPipeline, size: int, *, sampler=None, steps=KARLO_STEPS, candidates: int = 1,
         precision: str = "fp32"):
    options = SamplingOptions(size=size, steps=steps, guidance=GUIDANCE, sampler=sampler, seed=0, progress=False,
                              precision=precision)

    def run(batch: int):
        pipe.generate(PROMPT, n=batch, options=options, prior_candidates=candidates)

    return run


def theirs(oracle, steps):
    def run(batch: int):
        oracle(prompt=PROMPT, num_images_per_prompt=batch, prior_num_inference_steps=steps["prior"],
               decoder_num_inference_steps=steps["decoder"], super_res_num_inference_steps=steps["upsampler"],
               prior_guidance_scale=GUIDANCE["prior"], decoder_guidance_scale=GUIDANCE["decoder"],
               generator=torch.Generator(oracle.device).manual_seed(0), output_type="pil")  # PIL images, as unclip returns

    return run


def contiguous_copy(pipe: UnCLIPPipeline) -> UnCLIPPipeline:
    """A copy of ``pipe`` whose UNets keep PyTorch's default (NCHW) layout, as diffusers loads them."""
    twin = copy.deepcopy(pipe)
    for net in unets(twin):
        net.to(memory_format=torch.contiguous_format)
    return twin


def build_rows(pipe: UnCLIPPipeline, device: torch.device, steps: dict, bf16: bool) -> list[tuple[str, object]]:
    """(label, run(batch)) per row. The like-for-like rows need diffusers' UnCLIPScheduler on
    every stage, which has no v prediction: for a pipeline with a v stage (the shipped shapes
    decoder) they are left out, with the reason printed."""
    sizes, rows = pipe.sizes, []
    layout_rows = inference_memory_format(device) != torch.contiguous_format  # else the pipeline is NCHW already
    nchw = contiguous_copy(pipe) if layout_rows else pipe
    try:
        from unclip.pipeline.karlo import to_diffusers

        oracle = to_diffusers(nchw).to(device)
        oracle.set_progress_bar_config(disable=True)
        rows.append((f"diffusers UnCLIPPipeline  → {sizes[1]}", theirs(oracle, steps)))
        rows.append((f"unclip, same samplers     → {sizes[1]}", ours(pipe, sizes[1], sampler="unclip", steps=steps)))
        if layout_rows:
            rows.append((f"unclip as above, NCHW UNets → {sizes[1]}",
                         ours(nchw, sizes[1], sampler="unclip", steps=steps)))
        if bf16:
            rows.append((f"unclip bf16 autocast      → {sizes[1]}",
                         ours(pipe, sizes[1], sampler="unclip", steps=steps, precision="bf16")))
    except ImportError as err:
        print(f"(diffusers' UnCLIPPipeline unavailable: {err}; unclip rows only)\n")
    except ValueError as err:  # a stage UnCLIPScheduler cannot sample, e.g. v prediction
        print(f"(no like-for-like rows: {err})\n")
    rows.append((f"unclip defaults (best of 2) → {sizes[1]}", ours(pipe, sizes[1], sampler="ddpm", candidates=2,
                 steps=steps)))
    if layout_rows:
        rows.append((f"unclip defaults, NCHW UNets → {sizes[1]}", ours(nchw, sizes[1], sampler="ddpm", candidates=2,
                     steps=steps)))
    fast_steps = {"prior": 10, "decoder": 10, "upsampler": steps["upsampler"]}
    rows.append((f"unclip dpmpp 10/10/{fast_steps['upsampler']}      → {sizes[1]}",
                 ours(pipe, sizes[1], sampler={"prior": "dpmpp", "decoder": "dpmpp"}, steps=fast_steps)))
    if bf16:
        rows.append((f"unclip defaults, bf16     → {sizes[1]}", ours(pipe, sizes[1], sampler="ddpm", candidates=2,
                     steps=steps, precision="bf16")))
    if len(sizes) > 2:
        rows.append((f"unclip defaults (best of 2) → {sizes[2]}", ours(pipe, sizes[2], sampler="ddpm", candidates=2,
                     steps=steps)))
        if layout_rows:
            rows.append((f"unclip defaults, NCHW UNets → {sizes[2]}", ours(nchw, sizes[2], sampler="ddpm",
                         candidates=2, steps=steps)))
    return rows


def profile_rows(rows: list[tuple[str, object]], batch: int) -> list[dict]:
    """The like-for-like rows (diffusers and unclip with the same samplers) under the profiler."""
    from op_profile import profile_cases

    chosen = [(label, fn) for label, fn in rows if label.startswith("diffusers") or "same samplers" in label]
    if not chosen:
        print("\n(no like-for-like rows to profile)")
        return []
    return profile_cases(f"where the time goes (torch.profiler, batch {batch}, fastest of 3 calls each; "
                         "share of its wall time):",
                         [(label, lambda fn=fn: fn(batch), {"label": label.strip(), "batch": batch})
                          for label, fn in chosen])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--configs", default="configs/tiny", help="random weights from this config folder")
    source.add_argument("--checkpoint", help="a pipeline folder instead of random weights")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs=3, metavar=("PRIOR", "DECODER", "UPSAMPLER"),
                        help="sampling steps (default Karlo's: 25 25 7)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    parser.add_argument("--compile", action="store_true", help="torch.compile unclip's networks (opt-in)")
    parser.add_argument("--profile", action="store_true",
                        help="split the like-for-like rows' time into operator kinds and the rest (torch.profiler)")
    parser.add_argument("--json", action="store_true",
                        help='end with one line {"rows": [{"label", "batch", "seconds", "ratio"}, ...]}')
    args = parser.parse_args()
    if args.profile and torch.device(args.device).type != "cpu":
        parser.error("--profile splits CPU time; on a GPU use the CUDA profiler")

    device = torch.device(args.device)
    if args.checkpoint:
        pipe, source = UnCLIPPipeline.from_pretrained(args.checkpoint, device=device), args.checkpoint
    else:
        pipe, source = UnCLIPPipeline.from_configs(args.configs, device=device), f"{args.configs} (random weights)"
    if len(pipe.sizes) < 2:
        print("the pipeline needs at least the decoder and one upsampler", file=sys.stderr)
        return 2
    steps = dict(zip(("prior", "decoder", "upsampler"), args.steps)) if args.steps else KARLO_STEPS
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"weights: {source}; device: {name}; torch {torch.__version__}")
    print(f"steps prior/decoder/upsampler = {steps['prior']}/{steps['decoder']}/{steps['upsampler']}, guidance "
          f"{GUIDANCE['prior']}/{GUIDANCE['decoder']}; best of {args.repeats} interleaved rounds after a warm-up\n")
    rows = build_rows(pipe, device, steps, not args.no_bf16)
    if args.compile:
        from unclip.pipeline.compiled import compile_networks

        print(f"compiled: {', '.join(compile_networks(pipe))} (unclip rows only)\n")

    # rows interleaved within each round, best of the rounds: robust to other load on the machine
    seconds: dict[tuple[str, int], list[float]] = {}
    first: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        for label, fn in rows:  # warm-up: kernel selection, allocator, caches (and compiling)
            first[label, batch] = timed(lambda fn=fn, batch=batch: fn(batch), device)
        for _ in range(args.repeats):
            for label, fn in rows:
                seconds.setdefault((label, batch), []).append(timed(lambda fn=fn, batch=batch: fn(batch), device))
    reference = {b: min(seconds[label, b]) for label, _ in rows if label.startswith("diffusers") for b in args.batches}
    made = lambda label: label.rsplit("→", 1)[-1].strip()  # noqa: E731  (the output side a row makes)
    compared = {made(label) for label, _ in rows if label.startswith("diffusers")}
    # a ratio only where the row makes what diffusers' row makes (another side is other work)
    table = [{"label": label.strip(), "batch": batch, "seconds": min(seconds[label, batch]),
              "ratio": (min(seconds[label, batch]) / reference[batch]
                        if batch in reference and not label.startswith("diffusers") and made(label) in compared
                        else None)}
             for label, _ in rows for batch in args.batches]
    print(f"{'':38}" + "".join(f"{'batch ' + str(b):>22}" for b in args.batches))
    for label, _ in rows:
        cells = [f"{r['seconds']:9.3f} s" + (f" ({r['ratio']:4.2f}×)" if r["ratio"] is not None else "")
                 for r in table if r["label"] == label.strip()]
        print(f"{label:38}" + "".join(f"{c:>22}" for c in cells))
    if reference:
        print("\n(×) = unclip's time / diffusers' time at the same batch: below 1 is faster")
    if args.compile:
        print("\nfirst call (warm-up; compiling on the unclip rows):")
        for label, _ in rows:
            print(f"{label:38}" + "".join(f"{first[label, b]:19.1f} s" for b in args.batches))
    profiles = profile_rows(rows, args.batches[0]) if args.profile else []
    if args.json:
        print(json.dumps({"rows": table, **({"profile": profiles} if args.profile else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
