"""The synthetic shapes data set: captions, held-out pairs, determinism, rendering, layout."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unclip.data import shapes
from unclip.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    ObjectSpec,
    SceneSpec,
    ShapesDataset,
    parse_caption,
    sample_scene,
    scene_from_attributes,
    scene_from_spec,
)


def _scenes(n, **kwargs):
    rng = random.Random(1234)
    return [sample_scene(rng, **kwargs) for _ in range(n)]


def test_captions_follow_the_templates_exactly():
    scene = scene_from_attributes("red", "circle", size="large", position="top left", background="white")
    assert scene.caption == "a large red circle in the top left on a white background"
    scene = scene_from_attributes("blue", "star", size="small", position="center", background="black")
    assert scene.caption == "a small blue star in the center on a black background"
    spec = SceneSpec("gray", (ObjectSpec("green", "square"), ObjectSpec("yellow", "triangle")), "left of")
    assert scene_from_spec(spec).caption == "a green square left of a yellow triangle on a gray background"


def test_parse_caption_round_trips_and_matches_ground_truth():
    for scene in _scenes(300, two_object_prob=0.5, pairs="all"):
        spec = parse_caption(scene.caption)
        assert spec == scene.spec
        assert spec.background == scene.background and spec.relation == scene.relation
        assert [(o.colour, o.shape) for o in spec.objects] == [(o.colour, o.shape) for o in scene.objects]
        if scene.relation is None:
            assert (spec.objects[0].size, spec.objects[0].position) == (
                scene.objects[0].size,
                scene.objects[0].position,
            )
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a red circle, large, top left, white background")


def test_paraphrases_only_when_asked():
    plain = ShapesDataset(16, seed=5)
    varied = ShapesDataset(16, seed=5, paraphrase=True)
    captions = [(plain.item(i)["caption"], varied.item(i)["caption"]) for i in range(40)]
    assert all(p == plain.scene_at(i).caption for i, (p, _) in enumerate(captions))
    changed = [(p, v) for p, v in captions if p != v]
    assert 5 < len(changed) < 40
    for p, v in changed:  # a paraphrase keeps the colours and shapes
        spec = parse_caption(p)
        assert all(o.colour in v and o.shape in v for o in spec.objects)


def test_held_out_pairs_only_when_asked():
    def pairs_of(scenes):
        return {(o.colour, o.shape) for s in scenes for o in s.objects}

    assert not pairs_of(_scenes(2000, two_object_prob=0.5)) & HELD_OUT_PAIRS
    held = _scenes(200, two_object_prob=0.5, pairs="held_out")
    assert all({(o.colour, o.shape) for o in s.objects} & HELD_OUT_PAIRS for s in held)
    assert pairs_of(held) >= HELD_OUT_PAIRS
    assert not pairs_of(ShapesDataset(16).scene_at(i) for i in range(1000)) & HELD_OUT_PAIRS
    assert pairs_of(ShapesDataset(16, held_out=True).scene_at(i) for i in range(1000)) >= HELD_OUT_PAIRS


def test_same_seed_same_samples_and_items_collate():
    a, b, other = ShapesDataset(32, seed=3), ShapesDataset(32, seed=3), ShapesDataset(32, seed=4)
    items = [a.item(i) for i in range(4)]
    for i, item in enumerate(items):
        assert item["caption"] == b.item(i)["caption"]
        assert torch.equal(item["image"], b.item(i)["image"])
    assert any(not torch.equal(x["image"], other.item(i)["image"]) for i, x in enumerate(items))
    streamed = [x for x, _ in zip(iter(a), range(4))]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(streamed, items))
    batch = torch.utils.data.default_collate(items)
    assert set(batch) == {"image", "caption"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0 and batch["image"].std() > 0.1


def test_workers_and_ranks_partition_the_index_stream(monkeypatch):
    seen = []
    for rank in range(2):
        for worker in range(3):
            info = SimpleNamespace(id=worker, num_workers=3)
            monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
            stream = ShapesDataset(8, rank=rank, world_size=2).indices()
            seen += [next(stream) for _ in range(5)]
    assert sorted(seen) == list(range(30))


def test_dataloader_workers_give_the_same_samples():
    dataset = ShapesDataset(16, seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    for i, item in zip(range(6), loader):
        expected = dataset.item(i)
        assert item["caption"] == expected["caption"] and torch.equal(item["image"], expected["image"])


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_render_size_and_placement(resolution):
    scene = scene_from_attributes("blue", "square", size="large", position="bottom right", background="white")
    image = scene.render(resolution)
    assert image.size == (resolution, resolution) and image.mode == "RGB"
    pixels = np.asarray(image, dtype=np.float64)
    x0, y0, x1, y1 = (round(v * resolution) for v in scene.objects[0].bbox)
    assert (x0, y0, x1, y1) == tuple(round(v * resolution) for v in (0.525, 0.525, 0.975, 0.975))
    inside = pixels[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].reshape(-1, 3).mean(0)
    assert np.abs(inside - COLOURS["blue"]).max() < 2
    outside = pixels[: y0 - 1].reshape(-1, 3).mean(0)
    assert np.abs(outside - BACKGROUNDS["white"]).max() < 2


def test_objects_stay_on_the_canvas_and_two_never_overlap():
    for scene in _scenes(500, two_object_prob=0.5, pairs="all"):
        for x0, y0, x1, y1 in (o.bbox for o in scene.objects):
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        if scene.relation is None:
            continue
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (o.bbox for o in scene.objects)
        assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0, scene
        (acx, acy), (bcx, bcy) = (((o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2) for o in scene.objects)
        dx, dy = shapes.RELATIONS[scene.relation]  # direction of the first object from the second
        along, across = (acx - bcx) * dx + (acy - bcy) * dy, abs((acx - bcx) * dy - (acy - bcy) * dx)
        assert along > 0.35 and across < 0.1, scene


def test_swap_places_inverts_the_relation_and_keeps_the_objects():
    for scene in _scenes(200, two_object_prob=1.0):
        twin = shapes.swap_places(scene)
        assert twin.relation == shapes.INVERSE_RELATIONS[scene.relation] and twin.background == scene.background
        assert [(o.colour, o.shape, o.size) for o in twin.objects] == [(o.colour, o.shape, o.size) for o in scene.objects]
        assert [o.position for o in twin.objects] == [o.position for o in reversed(scene.objects)]
        # the twin is laid out exactly as its own spec would be, and its caption says so
        assert parse_caption(twin.caption) == twin.spec and twin.caption != scene.caption
        places = tuple(o.position for o in twin.objects)
        assert any(shapes._pair_positions(twin.relation, lane) == places for lane in range(3))
    with pytest.raises(ValueError, match="two-object"):
        shapes.swap_places(scene_from_attributes("red", "circle"))


def test_swapped_pairs_follow_every_two_object_sample_by_its_twin():
    plain, paired = ShapesDataset(16, seed=4), ShapesDataset(16, seed=4, swapped_pairs=True)
    twins = 0
    for k in range(40):
        first, second = paired.item(2 * k), paired.item(2 * k + 1)
        scene = plain.scene_at(k)
        assert first["caption"] == plain.item(k)["caption"] and paired.scene_at(2 * k) == scene
        if scene.relation:
            expected, twins = shapes.swap_places(scene), twins + 1
            assert second["caption"] == expected.caption and paired.scene_at(2 * k + 1) == expected
            assert torch.equal(second["image"], shapes.image_to_tensor(expected.render(16)))
        else:
            assert paired.scene_at(2 * k + 1).relation is None
    assert twins >= 5
    stream = iter(paired)  # the iterator yields the same samples
    assert [next(stream)["caption"] for _ in range(6)] == [paired.item(i)["caption"] for i in range(6)]
    with pytest.raises(ValueError, match="two_object_prob"):
        ShapesDataset(16, two_object_prob=1.5)
