"""What the prior's caption-prefix cache saves: sampling with ``Prior.prefix_cache`` on and off.

    python bench/prior_cache.py --checkpoint checkpoints/shapes --batches 1 4

Rows, each timed with the cache on and off in one process (best of ``--repeats`` after a warm-up,
on and off interleaved): the checkpoint's prior stage alone (``sample_prior`` with its default
steps, guidance and best of 2), text → ``--size`` end to end (``pipe.generate``, default precision),
and one step of a prior as wide as Karlo's (32 heads × 64, 77 tokens, D = 768; random weights,
``--karlo-layers`` of Karlo's 20 layers, each layer costing the same) on the guided batch. Also
prints the largest difference between the two ways' prior samples. ``--precision``: the CLI's
``auto`` by default (bf16 on a CPU with bf16 units). A timing: run it with nothing
else on the machine. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each call, after one warm-up each, the calls interleaved."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def switched(prior, fn: Callable[[], object]) -> dict[str, Callable[[], object]]:
    """``fn`` with the prior's prefix cache on and off."""
    def with_cache(on: bool):
        def call():
            prior.prefix_cache = on
            try:
                return fn()
            finally:
                prior.prefix_cache = True
        return call
    return {"on": with_cache(True), "off": with_cache(False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto (the CLI's default)")
    parser.add_argument("--karlo-layers", type=int, default=2, help="layers of the Karlo-wide prior row (0: leave it out)")
    args = parser.parse_args(argv)

    import torch

    from unclip.config import PriorConfig, Stage
    from unclip.networks.prior import Prior
    from unclip.pipeline import UnCLIPPipeline
    from unclip.pipeline.plan import SamplingOptions
    from unclip.pipeline.sampling import sample_prior

    pipe = UnCLIPPipeline.from_pretrained(args.checkpoint)
    autocast = SamplingOptions(precision=args.precision).autocast(pipe.device)
    print(f"weights: {args.checkpoint}; precision {args.precision}; {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}")
    rows = []

    def report(label: str, batch: int, seconds: dict[str, float]) -> None:
        rows.append({"label": label, "batch": batch, "cache_on": seconds["on"], "cache_off": seconds["off"],
                     "speedup": seconds["off"] / seconds["on"]})
        print(f"batch {batch}  {label:<44} cache off {seconds['off']:8.4f} s   on {seconds['on']:8.4f} s"
              f"   ({seconds['off'] / seconds['on']:.2f}×)")

    for batch in args.batches:
        prompts = ["a red circle"] * batch
        text = pipe.clip.encode_text(prompts)
        run = pipe.plan([Stage.prior])[Stage.prior]

        def prior_stage():
            return sample_prior(pipe, text, run, torch.Generator().manual_seed(0), progress=False)

        with torch.no_grad(), autocast:
            calls = switched(pipe.prior, prior_stage)
            diff = (calls["on"]() - calls["off"]()).abs().max().item()
            print(f"batch {batch}  prior samples, cache on against off: largest difference {diff:.2e}")
            report("prior stage (sample_prior)", batch, best_of(calls, args.repeats))
        report(f"text → {args.size} (generate)", batch, best_of(switched(pipe.prior, lambda: pipe.generate(
            prompts, size=args.size, seed=0, progress=False, precision=args.precision)), args.repeats))

    if args.karlo_layers:
        torch.manual_seed(0)
        prior = Prior(PriorConfig(num_attention_heads=32, attention_head_dim=64, num_layers=args.karlo_layers,
                                  embedding_dim=768, num_embeddings=77)).eval()
        for batch in args.batches:
            rows_ = 2 * 2 * batch  # guided [uncond; cond] of best-of-2 candidates
            text = dict(text_emb=torch.randn(rows_, 768), text_tokens=torch.randn(rows_, 77, 768),
                        text_mask=torch.ones(rows_, 77, dtype=torch.bool))
            x_t, t = torch.randn(rows_, 768), torch.tensor(500)
            with torch.no_grad(), autocast:
                step = prior.stepper(**text)
                step(x_t, t)  # the prefix, once per sampling run
                seconds = best_of({"on": lambda: step(x_t, t), "off": lambda: prior(x_t, t, **text)}, args.repeats)
            report(f"one step, Karlo-wide prior, {args.karlo_layers} layers", batch, seconds)
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
