"""Priors side by side (paper §2.2 compares its AR and diffusion priors): each prior of a cascade
folder (``prior/``, ``prior_ar/``, …) through the same CLIP and decoder, scored the same way.

For each: cosine of its sample to the true z_i on held-out captions (best of 1 and 2, as
``report.prior_quality``), binding of the decoded images on the first ``ablation_prompts`` (or
``prompts``) of each prompt set, and the prior's sampling time per image (best of 2, the
pipeline's default, batches of ``settings.batch``, after one warm-up batch).
"""

from __future__ import annotations

import time

import torch

from unclip.config import Stage
from unclip.data.shapes import PAIR_POOLS
from unclip.evaluation.report import (
    EvalSettings,
    binding,
    one_object_scenes,
    prior_quality,
    prompt_sets,
)
from unclip.pipeline.plan import SamplingOptions
from unclip.pipeline.sampling import sample_prior


def compare_priors(pipes: dict, settings: EvalSettings, *, measured: tuple[object, dict] | None = None
                   ) -> dict[str, dict]:
    """``{name: {"cosine": …, "binding": {set: rates}, "seconds_per_image": s, "kind": …}}`` for
    pipelines ``{name: pipe}`` that differ in their prior only. ``measured`` = (pipe, the report's
    binding on all ``settings.prompts``): that pipe's binding is taken from it, not run again, when
    the comparison uses as many prompts (the same scenes and seeds give the same figures)."""
    count = settings.ablation_prompts or settings.prompts
    sets = {name: scenes[:count] for name, scenes in prompt_sets(settings.prompts, settings.seed).items()}
    out = {}
    for name, pipe in pipes.items():
        reuse = measured is not None and measured[0] is pipe and count >= settings.prompts
        out[name] = {"kind": pipe.prior.cfg.kind.value, "cosine": prior_quality(pipe, settings),
                     "binding": measured[1] if reuse else {s: binding(pipe, scenes, settings)
                                                           for s, scenes in sets.items()},
                     "seconds_per_image": prior_seconds(pipe, settings)}
    return out


@torch.no_grad()
def prior_seconds(pipe, settings: EvalSettings, batches: int = 2) -> float:
    """Wall seconds per image of the prior stage alone (best of 2), on seen-pair captions."""
    scenes = one_object_scenes(list(PAIR_POOLS["train"]), settings.batch, settings.seed + 5)
    text = pipe.clip.encode_text([s.caption for s in scenes])
    options = SamplingOptions(steps=settings.steps, seed=settings.seed, progress=False)
    run = pipe.plan([Stage.prior], options)[Stage.prior]
    g = options.make_generator(pipe.device)
    sample_prior(pipe, text, run, g, progress=False)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        sample_prior(pipe, text, run, g, progress=False)
    return (time.perf_counter() - start) / (batches * len(scenes))
