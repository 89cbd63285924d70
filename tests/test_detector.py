"""The shapes detector: accurate on real renders, and able to say no."""

import random
from collections import Counter

import numpy as np
from PIL import Image

from unclip.data.shapes import (
    BACKGROUNDS,
    ObjectSpec,
    SceneSpec,
    ShapesDataset,
    sample_scene,
    scene_from_attributes,
    scene_from_spec,
)
from unclip.evaluation.detector import _components, detect, score


def test_accuracy_on_real_renders():
    rng = random.Random(99)
    hits, counts = Counter(), Counter()
    for _ in range(200):
        scene = sample_scene(rng, two_object_prob=0.5, pairs="all")
        kind = "one" if scene.relation is None else "two"
        for key, value in score(detect(scene.render(64)), scene).items():
            hits[kind, key] += value
            counts[kind, key] += 1
    assert counts["one", "all"] > 50 and counts["two", "all"] > 50
    accuracy = {key: hits[key] / counts[key] for key in counts}
    assert min(accuracy.values()) >= 0.99, accuracy


def test_reads_every_attribute_at_several_resolutions():
    scene = scene_from_attributes("purple", "triangle", size="small", position="bottom left", background="gray")
    for resolution in (32, 64, 256):
        found = detect(scene.render(resolution))
        assert found.background == "gray" and len(found.objects) == 1
        obj = found.objects[0]
        assert (obj.colour, obj.shape, obj.size, obj.position) == ("purple", "triangle", "small", "bottom left")


def test_accepts_dataset_tensors_and_arrays():
    dataset = ShapesDataset(64, seed=2)
    for i in range(5):
        scene, image = dataset.scene_at(i), dataset.item(i)["image"]
        assert score(detect(image), scene)["all"]
        assert score(detect(np.asarray(scene.render(64))), scene)["all"]


def test_solid_and_noise_images_score_false():
    scene = scene_from_attributes("red", "circle", position="center", background="white")
    solid = detect(Image.new("RGB", (64, 64), BACKGROUNDS["white"]))
    assert solid.objects == () and not any(v for k, v in score(solid, scene).items() if k != "background")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    two = SceneSpec("white", (ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "left of")
    assert not score(detect(noise), scene)["all"] and not score(detect(noise), two)["all"]


def test_scores_a_mismatch_as_wrong():
    image = scene_from_attributes("red", "circle", size="large", position="top right", background="black").render(64)
    found = detect(image)
    good = SceneSpec("black", (ObjectSpec("red", "circle", "large", "top right"),))
    assert score(found, good) == {k: True for k in score(found, good)}
    wrong = SceneSpec("white", (ObjectSpec("blue", "square", "small", "bottom left"),))
    assert not any(v for k, v in score(found, wrong).items() if k != "count")

    pair = SceneSpec("gray", (ObjectSpec("green", "star"), ObjectSpec("orange", "square")), "above")
    found = detect(scene_from_spec(pair).render(64))
    assert score(found, pair)["all"]
    swapped = SceneSpec("gray", pair.objects, "below")
    result = score(found, swapped)
    assert result["objects"] and not result["relation"] and not result["all"]


def test_connected_components():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:7, 1] = mask[1:7, 3] = mask[6, 1:4] = True  # a U: one component despite the gap
    mask[0, 6] = mask[1, 7] = True  # diagonal neighbours: two components under 4-connectivity
    labels = _components(mask)
    assert (labels[~mask] == -1).all()
    assert len(np.unique(labels[mask])) == 3
    assert len(np.unique(labels[1:7, 1])) == 1 and labels[1, 1] == labels[1, 3]
