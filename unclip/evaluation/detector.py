"""A hand-written detector for shapes images, to score generated samples against ground truth.

No learned model: background from the border, foreground by colour, connected components, and
per component its colour (nearest palette entry in CIELAB), shape (nearest prototype of a few
outline features), size (bounding-box side) and position (the third of the canvas its centroid
falls in). Works on RGB images at 32, 64, 256, … pixels; the palette, shapes and layout are
those of ``unclip.data.shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from unclip.data.images import tensor_to_image
from unclip.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    POSITION_GRID,
    RELATIONS,
    SIZES,
    Scene,
    SceneSpec,
)

# Outline features (see `shape_features`) of each shape, measured on 64×64 renders (the hull of pixel
# squares is a little larger than the true outline's, so convex shapes score ≈ 0.95, not 1).
SHAPE_PROTOTYPES: dict[str, tuple[float, float, float, float]] = {
    "circle": (0.785, 0.95, 0.5, 0.02),
    "square": (1.0, 1.0, 0.5, 1.0),
    "triangle": (0.54, 0.90, 0.656, 0.36),
    "star": (0.39, 0.53, 0.53, 0.045),
}
SHAPE_FEATURE_WEIGHTS = np.array([1.0, 1.0, 2.0, 0.5])
MIN_AREA = 0.003  # components smaller than this fraction of the canvas are noise
MIN_CONTRAST = 12.0  # CIELAB ΔE below which a pixel counts as background whatever its hue


@dataclass(frozen=True)
class DetectedObject:
    """One component; centroid (x, y) and bbox (x0, y0, x1, y1) in canvas fractions."""

    colour: str
    shape: str
    size: str
    position: str
    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """The background and the objects found, largest first."""

    background: str
    objects: tuple[DetectedObject, ...]


# ----------------------------------------------------------------------------------------------
# colour


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 255] (..., 3) → CIELAB (D65) (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_BACKGROUND_NAMES, _BACKGROUND_LAB = list(BACKGROUNDS), _lab(np.array(list(BACKGROUNDS.values())))
_COLOUR_NAMES, _COLOUR_LAB = list(COLOURS), _lab(np.array(list(COLOURS.values())))


def _distances(lab: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """ΔE76 from every pixel (..., 3) to every palette entry (P, 3) → (..., P)."""
    return np.linalg.norm(lab[..., None, :] - palette, axis=-1)


def _as_rgb(image) -> np.ndarray:
    """PIL image, uint8 (H, W, 3) array or float tensor (3, H, W) in [-1, 1] → uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):  # as the data set and the pipeline produce
        image = tensor_to_image(image)
        return np.asarray(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB image or uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    return array


# ----------------------------------------------------------------------------------------------
# connected components


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels of a boolean mask: -1 off the mask, 0..n-1 on it.

    Min-label propagation with pointer jumping: each pixel holds the flat index of a pixel of
    its component and takes its neighbours' minimum, then jumps to its label's label; the
    fixed point is every component's smallest index. Converges in a few dozen numpy passes.
    """
    h, w = mask.shape
    sentinel = h * w
    labels = np.where(mask, np.arange(h * w).reshape(h, w), sentinel)
    while True:
        new = labels.copy()
        np.minimum(new[1:], labels[:-1], out=new[1:])
        np.minimum(new[:-1], labels[1:], out=new[:-1])
        np.minimum(new[:, 1:], labels[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], labels[:, 1:], out=new[:, :-1])
        new[~mask] = sentinel
        flat = np.append(new.ravel(), sentinel)
        new = flat[flat[new]]
        if np.array_equal(new, labels):
            break
        labels = new
    _, compact = np.unique(labels, return_inverse=True)
    return np.where(mask, compact.reshape(h, w), -1)


# ----------------------------------------------------------------------------------------------
# per-component description


def _hull_area(rows: np.ndarray, cols: np.ndarray) -> float:
    """Area of the convex hull of a set of unit pixel squares (monotone chain on row extremes)."""
    points = set()
    for r in np.unique(rows):
        in_row = cols[rows == r]
        for x in (in_row.min(), in_row.max() + 1):
            points.update({(float(x), float(r)), (float(x), float(r + 1))})
    pts = sorted(points)

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while (
                len(chain) >= 2
                and (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])
                <= 0
            ):
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(pts) + half(pts[::-1])
    xs, ys = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    return 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def shape_features(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(fill, solidity, centroid height, corner fill) of a component from its pixels' rows/columns.

    fill: area / bounding-box area; solidity: area / convex-hull area; centroid height: as a
    fraction of the box height (the triangle is bottom-heavy); corner fill: covered fraction of
    the box's corners outside its inscribed ellipse (full for a square, empty for a circle).
    """
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    box = np.zeros((height, width), dtype=bool)
    box[rows - top, cols - left] = True
    v, u = np.mgrid[0:height, 0:width]
    corners = ((u + 0.5) / width - 0.5) ** 2 + ((v + 0.5) / height - 0.5) ** 2 > 0.25
    corner_fill = box[corners].mean() if corners.any() else 0.0
    centroid_y = (rows.mean() - top + 0.5) / height
    return np.array([rows.size / box.size, rows.size / _hull_area(rows, cols), centroid_y, corner_fill])


def _classify_shape(features: np.ndarray) -> str:
    names = list(SHAPE_PROTOTYPES)
    prototypes = np.array(list(SHAPE_PROTOTYPES.values()))
    distances = (((features - prototypes) * SHAPE_FEATURE_WEIGHTS) ** 2).sum(-1)
    return names[int(distances.argmin())]


def _colour(rgb: np.ndarray, component: np.ndarray) -> str:
    """Nearest palette colour of the component's median colour, away from its blended edge."""
    interior = component.copy()
    interior[1:] &= component[:-1]
    interior[:-1] &= component[1:]
    interior[:, 1:] &= component[:, :-1]
    interior[:, :-1] &= component[:, 1:]
    pixels = rgb[interior if interior.sum() >= 0.25 * component.sum() else component]
    median = _lab(np.median(pixels, axis=0))
    return _COLOUR_NAMES[int(_distances(median, _COLOUR_LAB).argmin())]


def _describe(rgb: np.ndarray, component: np.ndarray) -> DetectedObject:
    h, w = component.shape
    rows, cols = np.nonzero(component)
    bbox = (float(cols.min() / w), float(rows.min() / h), float((cols.max() + 1) / w), float((rows.max() + 1) / h))
    centroid = (float((cols.mean() + 0.5) / w), float((rows.mean() + 0.5) / h))
    side = max(bbox[2] - bbox[0], bbox[3] - bbox[1])
    size = min(SIZES, key=lambda name: abs(SIZES[name] - side))
    col, row = (min(int(c * 3), 2) for c in centroid)
    return DetectedObject(
        colour=_colour(rgb, component),
        shape=_classify_shape(shape_features(rows, cols)),
        size=size,
        position=POSITION_GRID[row][col],
        centroid=centroid,
        bbox=bbox,
    )


# ----------------------------------------------------------------------------------------------
# public API


def detect(image) -> Detection:
    """Find the background and the objects of a shapes image (PIL, uint8 array or [-1, 1] tensor)."""
    rgb = _as_rgb(image)
    lab = _lab(rgb)
    border = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    background = int(_distances(np.median(border, axis=0), _BACKGROUND_LAB).argmin())
    to_background = _distances(lab, _BACKGROUND_LAB[background : background + 1])[..., 0]
    # Foreground: nearer to some object colour than to the background, and not faint.
    foreground = (_distances(lab, _COLOUR_LAB).min(-1) < to_background) & (to_background > MIN_CONTRAST)
    labels = _components(foreground)
    areas = np.bincount(labels[labels >= 0].ravel()) if foreground.any() else np.zeros(0, int)
    keep = [k for k in np.argsort(-areas, kind="stable") if areas[k] >= max(4, MIN_AREA * labels.size)]
    objects = tuple(_describe(rgb, labels == k) for k in keep)
    return Detection(_BACKGROUND_NAMES[background], objects)


def _relation_holds(first: DetectedObject, second: DetectedObject, relation: str) -> bool:
    """The first object lies within 45° of the relation's direction as seen from the second."""
    dx, dy = (a - b for a, b in zip(first.centroid, second.centroid))
    rx, ry = RELATIONS[relation]
    along, across = dx * rx + dy * ry, abs(dx * ry - dy * rx)
    return along > across


def score(detection: Detection, target: Scene | SceneSpec) -> dict[str, bool]:
    """Booleans comparing a detection with the scene (or parsed caption) it should show.

    One object (scored on the largest detected object): colour, shape, size, position, and
    all = colour ∧ shape ∧ position. Two objects: objects (both colour–shape pairs found as
    distinct components), relation (holds between such a match), all = objects ∧ relation.
    Both report background and count (exactly as many objects as the scene has), which `all`
    leaves out.
    """
    spec = target.spec if isinstance(target, Scene) else target
    found = detection.objects
    result = {"background": detection.background == spec.background, "count": len(found) == len(spec.objects)}
    if spec.relation is None:
        want = spec.objects[0]
        got = found[0] if found else None
        for key in ("colour", "shape", "size", "position"):
            result[key] = got is not None and getattr(got, key) == getattr(want, key)
        result["all"] = result["colour"] and result["shape"] and result["position"]
        return result
    first, second = spec.objects
    matches = [
        (a, b)
        for a in found
        for b in found
        if a is not b
        and (a.colour, a.shape) == (first.colour, first.shape)
        and (b.colour, b.shape) == (second.colour, second.shape)
    ]
    result["objects"] = bool(matches)
    result["relation"] = any(_relation_holds(a, b, spec.relation) for a, b in matches)
    result["all"] = result["objects"] and result["relation"]
    return result
