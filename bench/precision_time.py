"""Wall time of text → image at each precision: fp32, the default bf16 (the decoder's low-noise steps in fp32) and bf16 throughout.

    python bench/precision_time.py --checkpoint checkpoints/shapes --batches 1 4

Times ``pipe.generate`` of "a red circle" at ``--size`` with the pipeline's default steps and
samplers, best of ``--repeats`` calls after a warm-up, all rows in one process. "bf16 throughout"
switches off the float32 tail (``plan.DECODER_FP32_BELOW``) for its rows only, to show what the
tail costs. A timing: run it with nothing else on the machine. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = (("fp32", "fp32", True), ("bf16, decoder tail fp32 (default)", "bf16", True), ("bf16 throughout", "bf16", False))


@contextlib.contextmanager
def fp32_tail(on: bool):
    """The pipeline's decoder tail as it is (``on``) or switched off for the block."""
    import unclip.pipeline.sampling as sampling

    kept = sampling.DECODER_FP32_BELOW
    sampling.DECODER_FP32_BELOW = kept if on else -1.0
    try:
        yield
    finally:
        sampling.DECODER_FP32_BELOW = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from unclip.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    print(f"weights: {args.checkpoint}; text → {args.size}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    rows = []
    for batch in args.batches:
        prompts = ["a red circle"] * batch
        for label, precision, tail in MODES:
            with fp32_tail(tail):
                def call():
                    pipe.generate(prompts, size=args.size, seed=0, precision=precision, progress=False)
                call()  # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - start)
            rows.append({"label": label, "batch": batch, "seconds": min(times)})
            base = next(r["seconds"] for r in rows if r["batch"] == batch and r["label"] == "fp32")
            print(f"batch {batch}  {label:<36} {min(times):8.3f} s  ({base / min(times):.2f}× fp32's speed)")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
