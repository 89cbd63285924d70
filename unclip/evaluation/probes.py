"""Fixed probes of what a cascade's parts know, shared by ``unclip eval`` and the training monitors:
whether a CLIP tells a two-object scene from its places-swapped twin (relation), and whether a
decoder draws the right colour, shape and place from a render's embedding (binding)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unclip.data.images import image_to_tensor, tensor_to_pil
from unclip.data.shapes import sample_scene, swap_places
from unclip.evaluation.detector import detect, score


def relation_probe(resolution: int, count: int, seed: int = 10_001) -> tuple[torch.Tensor, list[str], list[str]]:
    """``count`` fixed two-object renders (training pairs, another seed than any run's), their
    captions and the captions of their `swap_places` twins (the relation inverted)."""
    rng = random.Random(f"relation-probe:{seed}")
    scenes = [sample_scene(rng, two_object_prob=1.0) for _ in range(count)]
    images = torch.stack([image_to_tensor(s.render(resolution)) for s in scenes])
    return images, [s.caption for s in scenes], [swap_places(s).caption for s in scenes]


@torch.no_grad()
def relation_accuracy(encode_image: Callable, encode_text: Callable, images: torch.Tensor, captions: list[str],
                      swapped: list[str]) -> float:
    """Share of images closer to their own caption than to the one with the relation inverted
    (chance = 0.5): whether a CLIP knows which object is where. ``encode_image`` maps images in
    [-1, 1] and ``encode_text`` captions to (B, D) embeddings."""
    image = F.normalize(encode_image(images), dim=-1)
    own = (image * F.normalize(encode_text(captions), dim=-1)).sum(-1)
    other = (image * F.normalize(encode_text(swapped), dim=-1)).sum(-1)
    return (own > other).float().mean().item()


def binding_probe(count: int, seed: int = 10_002) -> dict[str, list]:
    """``count`` fixed one-object and two-object scenes (training pairs, a seed no run uses)."""
    rng = random.Random(f"binding-probe:{seed}")
    return {kind: [sample_scene(rng, two_object_prob=prob) for _ in range(count)]
            for kind, prob in (("one_object", 0.0), ("two_object", 1.0))}


def binding_accuracy(reconstruct: Callable[[torch.Tensor, list[str]], torch.Tensor], scenes: list, side: int) -> float:
    """Share of ``scenes`` whose reconstruction the detector scores all right. ``reconstruct`` maps
    renders in [-1, 1] and their captions to decoded images in [-1, 1]."""
    renders = torch.stack([image_to_tensor(s.render(side)) for s in scenes])
    decoded = tensor_to_pil(reconstruct(renders, [s.caption for s in scenes]))
    return sum(score(detect(im), s)["all"] for im, s in zip(decoded, scenes)) / len(scenes)
