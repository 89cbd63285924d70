"""The CLIP stage's relation monitor: does an image prefer its caption to the relation-inverted one?"""

import torch

from unclip.data.shapes import parse_caption
from unclip.evaluation.probes import relation_accuracy, relation_probe


def _sign_embedding(signs):
    """Embeddings (+1 or -1 along one axis) that a stand-in CLIP gives in turn."""
    return torch.tensor(signs, dtype=torch.float32)[:, None] * torch.tensor([[1.0, 0.0]]) + 1e-3


def _text(captions):
    """A stand-in text tower: +1 for "left of"/"above" captions, -1 for "right of"/"below"."""
    return _sign_embedding([1.0 if (" left of " in c or " above " in c) else -1.0 for c in captions])


def test_relation_probe_pairs_each_caption_with_its_inverse():
    images, captions, swapped = relation_probe(16, 12)
    assert images.shape == (12, 3, 16, 16)
    for own, other in zip(captions, swapped):
        a, b = parse_caption(own), parse_caption(other)
        assert a.objects == b.objects and a.background == b.background and a.relation != b.relation
    assert relation_probe(16, 12)[1] == captions  # fixed


def test_relation_accuracy_counts_images_closer_to_their_own_caption():
    images, captions, swapped = relation_probe(8, 20)
    truth = _text(captions)[:, 0].sign().tolist()
    image = lambda signs: (lambda x: _sign_embedding(signs))  # noqa: E731
    assert relation_accuracy(image(truth), _text, images, captions, swapped) == 1.0
    assert relation_accuracy(image([-t for t in truth]), _text, images, captions, swapped) == 0.0
    half = truth[:10] + [-t for t in truth[10:]]
    assert relation_accuracy(image(half), _text, images, captions, swapped) == 0.5
