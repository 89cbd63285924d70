"""The built-in synthetic *shapes* data set.

A square canvas with one background and one or two coloured shapes, captioned from fixed
templates and carrying exact ground truth, so that a detector (`unclip.evaluation.detector`) can score
generated images. All geometry is in canvas fractions (x right, y down, both in [0, 1]), so a
scene renders at any resolution.

Vocabulary: a `SceneSpec` is what a caption says; a `Scene` is a laid-out spec (with bounding
boxes) that can be rendered. ``parse_caption(scene.caption) == scene.spec``.

The colour–shape pairs in `HELD_OUT_PAIRS` are never produced for training (``pairs="train"``);
evaluation asks for them with ``pairs="held_out"`` or builds them explicitly.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from unclip.data.images import image_to_tensor

# ----------------------------------------------------------------------------------------------
# vocabulary

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (0xF5, 0xF5, 0xF5),
    "black": (0x14, 0x14, 0x14),
    "gray": (0x80, 0x80, 0x80),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (0xDC, 0x28, 0x28),
    "green": (0x28, 0xAA, 0x3C),
    "blue": (0x28, 0x50, 0xDC),
    "yellow": (0xF0, 0xC8, 0x28),
    "purple": (0x8C, 0x3C, 0xB4),
    "orange": (0xF5, 0x82, 0x20),
}
SIZES: dict[str, float] = {"small": 0.25, "large": 0.45}  # bounding-box width / canvas side

# Positions are the cells of a 3×3 grid, centred at 1/4, 1/2, 3/4 of the canvas.
POSITION_GRID: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITIONS: dict[str, tuple[float, float]] = {
    name: ((col + 1) / 4, (row + 1) / 4) for row, names in enumerate(POSITION_GRID) for col, name in enumerate(names)
}

# Direction of the first object as seen from the second, in grid steps (x right, y down).
RELATIONS: dict[str, tuple[int, int]] = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
INVERSE_RELATIONS: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("orange", "circle"), ("green", "triangle")}
)


# ----------------------------------------------------------------------------------------------
# shape outlines: polygons normalised to their own tight bounding box [0, 1]²


@dataclass(frozen=True)
class Outline:
    """A shape's polygon in its unit bounding box, its height/width ratio and its anchor height.

    The anchor (the point placed at a grid position) lies halfway between the bounding-box centre
    and the area centroid, so that both stay well inside the grid cell's third of the canvas even
    for the bottom-heavy triangle.
    """

    points: tuple[tuple[float, float], ...]
    aspect: float  # height / width
    anchor_y: float  # in [0, 1] of the box height; the anchor's x is always 1/2


def _polygon_centroid_y(points: list[tuple[float, float]]) -> float:
    """Area centroid's y of a simple polygon (shoelace formula)."""
    area2 = cy = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        cross = x0 * y1 - x1 * y0
        area2 += cross
        cy += (y0 + y1) * cross
    return cy / (3 * area2)


def _outline(points: list[tuple[float, float]]) -> Outline:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    unit = [((x - min(xs)) / w, (y - min(ys)) / h) for x, y in points]
    return Outline(tuple(unit), h / w, (0.5 + _polygon_centroid_y(unit)) / 2)


def _radial(radii: list[float]) -> list[tuple[float, float]]:
    """Vertices at equal angles starting straight up (apex up, y down), one per radius."""
    n = len(radii)
    return [
        (r * math.cos(-math.pi / 2 + 2 * math.pi * k / n), r * math.sin(-math.pi / 2 + 2 * math.pi * k / n))
        for k, r in enumerate(radii)
    ]


_STAR_INNER = math.sin(math.radians(18)) / math.sin(math.radians(54))  # regular pentagram, ≈ 0.382

OUTLINES: dict[str, Outline] = {
    "circle": _outline(_radial([1.0] * 128)),
    "square": _outline([(0, 0), (1, 0), (1, 1), (0, 1)]),
    "triangle": _outline(_radial([1.0] * 3)),
    "star": _outline(_radial([1.0, _STAR_INNER] * 5)),
}
SHAPES: tuple[str, ...] = tuple(OUTLINES)

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
PAIR_POOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS),
    "held_out": tuple(p for p in ALL_PAIRS if p in HELD_OUT_PAIRS),
    "all": ALL_PAIRS,
}


# ----------------------------------------------------------------------------------------------
# scenes


@dataclass(frozen=True)
class ObjectSpec:
    """An object as a caption names it; size and position are None in two-object captions."""

    colour: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says: background, one or two objects and, for two, their relation."""

    background: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


@dataclass(frozen=True)
class ShapeObject:
    """A laid-out object; bbox = (x0, y0, x1, y1) of the drawn shape in canvas fractions."""

    colour: str
    shape: str
    size: str
    bbox: tuple[float, float, float, float]
    position: str  # grid cell of the object's anchor


@dataclass(frozen=True)
class Scene:
    """A renderable scene with its ground truth and canonical caption."""

    background: str
    objects: tuple[ShapeObject, ...]
    relation: str | None
    caption: str

    @property
    def spec(self) -> SceneSpec:
        """What the caption conveys (two-object captions carry neither size nor position)."""
        if self.relation is None:
            objects = tuple(ObjectSpec(o.colour, o.shape, o.size, o.position) for o in self.objects)
        else:
            objects = tuple(ObjectSpec(o.colour, o.shape) for o in self.objects)
        return SceneSpec(self.background, objects, self.relation)

    def render(self, resolution: int) -> Image.Image:
        """RGB image of side `resolution`, anti-aliased by supersampling and box-filtering."""
        factor = max(2, min(4, 2048 // resolution))
        side = resolution * factor
        image = Image.new("RGB", (side, side), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            x0, y0, x1, y1 = obj.bbox
            # PIL puts integer coordinates at pixel centres, hence the half-pixel shift.
            points = [
                ((x0 + u * (x1 - x0)) * side - 0.5, (y0 + v * (y1 - y0)) * side - 0.5)
                for u, v in OUTLINES[obj.shape].points
            ]
            draw.polygon(points, fill=COLOURS[obj.colour])
        return image.resize((resolution, resolution), Image.Resampling.BOX)


def place(colour: str, shape: str, size: str, position: str) -> ShapeObject:
    """Lay out one object with its anchor at the centre of grid cell `position`."""
    outline = OUTLINES[shape]
    width = SIZES[size]
    height = width * outline.aspect
    cx, cy = POSITIONS[position]
    x0, y0 = cx - width / 2, cy - outline.anchor_y * height
    return ShapeObject(colour, shape, size, (x0, y0, x0 + width, y0 + height), position)


def _pair_positions(relation: str, lane: int) -> tuple[str, str]:
    """Grid cells of (first, second) object: opposite ends of the relation's axis, same `lane`."""
    dx, dy = RELATIONS[relation]
    if dx:
        first, second = (1 + dx, lane), (1 - dx, lane)
    else:
        first, second = (lane, 1 + dy), (lane, 1 - dy)
    return POSITION_GRID[first[1]][first[0]], POSITION_GRID[second[1]][second[0]]


def scene_from_spec(spec: SceneSpec, rng: random.Random | None = None) -> Scene:
    """Lay out a spec. What it leaves open (sizes, the shared lane of two objects, a one-object
    position) is drawn from `rng`, or defaults to large / the middle lane / center without one."""
    _validate(spec)

    def pick(value: str | None, choices: list[str], default: str) -> str:
        return value if value is not None else (rng.choice(choices) if rng else default)

    sizes = [pick(o.size, list(SIZES), "large") for o in spec.objects]
    if spec.relation is None:
        positions = [pick(spec.objects[0].position, list(POSITIONS), "center")]
    else:
        positions = list(_pair_positions(spec.relation, rng.randrange(3) if rng else 1))
    objects = tuple(place(o.colour, o.shape, s, p) for o, s, p in zip(spec.objects, sizes, positions))
    scene = Scene(spec.background, objects, spec.relation, caption="")
    return dataclasses.replace(scene, caption=caption(scene.spec))


def scene_from_attributes(
    colour: str, shape: str, *, size: str = "large", position: str = "center", background: str = "white"
) -> Scene:
    """A one-object scene, e.g. for an evaluation prompt."""
    return scene_from_spec(SceneSpec(background, (ObjectSpec(colour, shape, size, position),)))


def swap_places(scene: Scene) -> Scene:
    """A two-object scene with its objects' places exchanged (so its relation is inverted): the
    same objects, sizes and background, a caption that differs from ``scene``'s in the relation."""
    if scene.relation is None:
        raise ValueError("only a two-object scene has places to swap")
    first, second = scene.objects
    objects = (place(first.colour, first.shape, first.size, second.position),
               place(second.colour, second.shape, second.size, first.position))
    swapped = Scene(scene.background, objects, INVERSE_RELATIONS[scene.relation], caption="")
    return dataclasses.replace(swapped, caption=caption(swapped.spec))


def _validate(spec: SceneSpec) -> None:
    if len(spec.objects) != (1 if spec.relation is None else 2):
        raise ValueError("a scene has one object without a relation or two objects with one")
    checks = [(spec.background, BACKGROUNDS), (spec.relation, RELATIONS)]
    for o in spec.objects:
        checks += [(o.colour, COLOURS), (o.shape, OUTLINES), (o.size, SIZES), (o.position, POSITIONS)]
    for value, vocabulary in checks:
        if value is not None and value not in vocabulary:
            raise ValueError(f"unknown value {value!r}; expected one of {list(vocabulary)}")


def sample_scene(rng: random.Random, *, two_object_prob: float = 0.3, pairs: str = "train") -> Scene:
    """Draw a random scene.

    pairs: "train" never uses `HELD_OUT_PAIRS`; "held_out" puts a held-out pair in every scene
    (the other object of a two-object scene may be any pair); "all" draws from all 24 pairs.
    Two objects always have distinct colour–shape pairs.
    """
    if pairs not in PAIR_POOLS:
        raise ValueError(f"pairs must be one of {list(PAIR_POOLS)}, got {pairs!r}")
    background = rng.choice(list(BACKGROUNDS))
    if rng.random() >= two_object_prob:
        colour, shape = rng.choice(PAIR_POOLS[pairs])
        objects = (ObjectSpec(colour, shape, rng.choice(list(SIZES)), rng.choice(list(POSITIONS))),)
        return scene_from_spec(SceneSpec(background, objects))
    if pairs == "held_out":
        first = rng.choice(PAIR_POOLS["held_out"])
        chosen = [first, rng.choice([p for p in ALL_PAIRS if p != first])]
        rng.shuffle(chosen)
    else:
        chosen = rng.sample(PAIR_POOLS[pairs], 2)
    objects = tuple(ObjectSpec(c, s, rng.choice(list(SIZES))) for c, s in chosen)
    return scene_from_spec(SceneSpec(background, objects, rng.choice(list(RELATIONS))), rng)


# ----------------------------------------------------------------------------------------------
# captions

ONE_OBJECT_TEMPLATE = "a {size} {colour} {shape} in the {position} on a {background} background"
TWO_OBJECT_TEMPLATE = "a {colour} {shape} {relation} a {colour2} {shape2} on a {background} background"

# Training-only variants; evaluation always uses the templates above.
ONE_OBJECT_PARAPHRASES = (
    "a {colour} {shape}, {size}, {position}, {background} background",
    "{size} {colour} {shape} in the {position}, {background} background",
    "a {background} background with a {size} {colour} {shape} in the {position}",
)
TWO_OBJECT_PARAPHRASES = (
    "a {colour2} {shape2} {inverse} a {colour} {shape} on a {background} background",
    "a {background} background with a {colour} {shape} {relation} a {colour2} {shape2}",
    "{colour} {shape} {relation} {colour2} {shape2}, {background} background",
)


def _fields(spec: SceneSpec) -> dict[str, str]:
    first = spec.objects[0]
    fields = {"background": spec.background, "colour": first.colour, "shape": first.shape}
    if spec.relation is None:
        return fields | {"size": first.size, "position": first.position}
    second = spec.objects[1]
    return fields | {
        "colour2": second.colour,
        "shape2": second.shape,
        "relation": spec.relation,
        "inverse": INVERSE_RELATIONS[spec.relation],
    }


def caption(spec: SceneSpec) -> str:
    """The canonical caption of a spec (exactly the templates evaluation prompts use)."""
    template = ONE_OBJECT_TEMPLATE if spec.relation is None else TWO_OBJECT_TEMPLATE
    return template.format(**_fields(spec))


def paraphrase(spec: SceneSpec, rng: random.Random) -> str:
    """The canonical caption half of the time, otherwise a random training paraphrase."""
    if rng.random() < 0.5:
        return caption(spec)
    templates = ONE_OBJECT_PARAPHRASES if spec.relation is None else TWO_OBJECT_PARAPHRASES
    return rng.choice(templates).format(**_fields(spec))


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOUR, _SHAPE = f"(?:{_alternatives(COLOURS)})", f"(?:{_alternatives(SHAPES)})"
_ONE_RE = re.compile(
    rf"a (?P<size>{_alternatives(SIZES)}) (?P<colour>{_COLOUR}) (?P<shape>{_SHAPE}) in the (?P<position>{_alternatives(POSITIONS)})"
    rf" on a (?P<background>{_alternatives(BACKGROUNDS)}) background"
)
_TWO_RE = re.compile(
    rf"a (?P<colour>{_COLOUR}) (?P<shape>{_SHAPE}) (?P<relation>{_alternatives(RELATIONS)}) a (?P<colour2>{_COLOUR}) (?P<shape2>{_SHAPE})"
    rf" on a (?P<background>{_alternatives(BACKGROUNDS)}) background"
)


def parse_caption(text: str) -> SceneSpec:
    """Inverse of `caption`; raises ValueError for text that does not follow a template."""
    text = text.strip()
    if m := _ONE_RE.fullmatch(text):
        obj = ObjectSpec(m["colour"], m["shape"], m["size"], m["position"])
        return SceneSpec(m["background"], (obj,))
    if m := _TWO_RE.fullmatch(text):
        objects = (ObjectSpec(m["colour"], m["shape"]), ObjectSpec(m["colour2"], m["shape2"]))
        return SceneSpec(m["background"], objects, m["relation"])
    raise ValueError(f"not a shapes caption: {text!r}")


# ----------------------------------------------------------------------------------------------
# torch data set


class ShapesDataset(torch.utils.data.IterableDataset):
    """An infinite, seeded stream of ``{"image": FloatTensor[3, R, R] in [-1, 1], "caption": str}``;
    with ``low_res`` also ``"low_res"``, the same scene rendered at that side (an upsampler's input).

    Sample i depends only on (seed, i): each has its own `random.Random`. DataLoader workers and
    processes (`rank` of `world_size`) take interleaved indices start + k·stride, so every sample
    is produced exactly once whatever the layout. `held_out=True` also draws the held-out pairs
    (``pairs="all"``); the default never does.

    ``swapped_pairs=True`` makes samples 2k and 2k + 1 a pair: a two-object scene and its
    `swap_places` twin (the same objects in exchanged places, the relation inverted), or two
    one-object scenes, so the share of two-object samples stays ``two_object_prob``. A contrastive
    batch (of even size) then holds captions that differ only in the relation: without them a CLIP
    can match most two-object captions by their objects alone and never learns which is where.
    """

    def __init__(
        self,
        resolution: int,
        seed: int = 0,
        paraphrase: bool = False,
        held_out: bool = False,
        *,
        two_object_prob: float = 0.3,
        swapped_pairs: bool = False,
        low_res: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.resolution = resolution
        self.seed = seed
        self.paraphrase = paraphrase
        self.pairs = "all" if held_out else "train"
        if not 0 <= two_object_prob <= 1:
            raise ValueError(f"two_object_prob must be in [0, 1], got {two_object_prob}")
        self.two_object_prob = two_object_prob
        self.swapped_pairs = swapped_pairs
        if low_res is not None and not 0 < low_res < resolution:
            raise ValueError(f"low_res must be between 0 and the resolution {resolution}, got {low_res}")
        self.low_res = low_res
        self.rank, self.world_size = rank, world_size

    def _rng(self, i: int) -> random.Random:
        # str seeds are hashed with SHA-512, independent of PYTHONHASHSEED and process.
        return random.Random(f"shapes:{self.seed}:{i}")

    def scene_at(self, i: int) -> Scene:
        """Ground truth of sample i."""
        return self._draw(i)[0]

    def item(self, i: int) -> dict:
        """Sample i as the iterator yields it."""
        scene, rng = self._draw(i)
        text = paraphrase(scene.spec, rng) if self.paraphrase else scene.caption
        item = {"image": image_to_tensor(scene.render(self.resolution)), "caption": text}
        if self.low_res is not None:
            item["low_res"] = image_to_tensor(scene.render(self.low_res))
        return item

    def _draw(self, i: int) -> tuple[Scene, random.Random]:
        """Scene i and the generator its caption paraphrase draws from."""
        if not self.swapped_pairs:
            rng = self._rng(i)
            return sample_scene(rng, two_object_prob=self.two_object_prob, pairs=self.pairs), rng
        k, odd = divmod(i, 2)  # samples 2k and 2k + 1 share scene k
        rng = self._rng(k)
        scene = sample_scene(rng, two_object_prob=self.two_object_prob, pairs=self.pairs)
        if not odd:
            return scene, rng
        if scene.relation:
            return swap_places(scene), rng  # the same draws: the same paraphrase template
        rng = random.Random(f"shapes:{self.seed}:{k}:second")  # a one-object scene's partner: another one
        return sample_scene(rng, two_object_prob=0.0, pairs=self.pairs), rng

    def indices(self):
        """The infinite index stream of this process and DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        i, stride = self.rank * workers + worker, self.world_size * workers
        while True:
            yield i
            i += stride

    def __iter__(self):
        return (self.item(i) for i in self.indices())
