"""Edits by RePaint-style inpainting (unclip.pipeline.inpaint) on the tiny random cascade."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.config import DiffusionConfig, Variance
from unclip.diffusion.sampling import repaint_loop
from unclip.diffusion.schedule import Sampler, make_scheduler
from unclip.pipeline.inpaint import keep_mask, known_at, paste_known


def photo_with_hole(side: int = 96, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A random RGBA picture whose centre-left square is fully transparent; returns it and the keep mask."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(1, 256, (side, side))  # partly transparent pixels are kept too
    rgba[side // 4: side // 2, side // 8: side // 2, 3] = 0
    return Image.fromarray(rgba, "RGBA"), rgba[..., 3] > 0


def test_kept_pixels_come_back_exactly_and_the_hole_is_regenerated(tiny_pipeline):
    image, keep = photo_with_hole()
    out = tiny_pipeline.inpaint(image, "a red circle", n=2, steps=2, output_side=96, seed=0, progress=False)
    original = np.asarray(image.convert("RGB"))
    assert len(out) == 2
    for result in out:
        pixels = np.asarray(result)
        assert result.size == (96, 96)
        assert np.array_equal(pixels[keep], original[keep])
        changed = np.abs(pixels[~keep].astype(int) - original[~keep].astype(int)).sum(-1) > 0
        assert changed.mean() > 0.9  # the erased pixels were generated, not copied


def test_a_mask_marks_the_pixels_to_regenerate(tiny_pipeline):
    image, keep = photo_with_hole(64, seed=1)
    rgb = image.convert("RGB")
    mask = Image.fromarray(np.where(keep, 255, 0).astype(np.uint8)).convert("L")
    mask = Image.merge("RGBA", (mask, mask, mask, mask))  # alpha 0 where the hole is
    by_mask = tiny_pipeline.inpaint(rgb, "a blue square", mask=mask, steps=1, output_side=64, seed=3,
                      progress=False)[0]
    by_alpha = tiny_pipeline.inpaint(image, "a blue square", steps=1, output_side=64, seed=3, progress=False)[0]
    assert np.array_equal(np.asarray(by_mask), np.asarray(by_alpha))
    assert np.array_equal(np.asarray(by_mask)[keep], np.asarray(rgb)[keep])


def test_output_side_other_than_the_inputs_keeps_the_resized_original(tiny_pipeline):
    image, _ = photo_with_hole(96)
    keep = keep_mask(image)
    out = tiny_pipeline.inpaint(image, "a star", steps=1, size=64, output_side=48, progress=False)[0]
    expected = paste_known(Image.new("RGB", (48, 48)), image, keep, 48)
    kept = np.asarray(keep.resize((48, 48), Image.Resampling.NEAREST)) > 0
    assert out.size == (48, 48)
    assert np.array_equal(np.asarray(out)[kept], np.asarray(expected)[kept])


@pytest.mark.parametrize("case, message", [
    ("rgb_without_mask", "image: it has no alpha channel"),
    ("mask_other_size", "mask: mask and image must have the same dimensions"),
    ("mask_without_alpha", "mask: it has no alpha channel"),
    ("not_square", "image: the image is 96×64"),
    ("negative_resample", "resample"),
    ("opaque_image", r"image: no fully transparent \(alpha 0\) pixels: nothing to regenerate"),
    ("opaque_mask", r"mask: no fully transparent \(alpha 0\) pixels: nothing to regenerate"),
])
def test_bad_edits_are_refused(tiny_pipeline, case, message):
    image, _ = photo_with_hole(64)
    kwargs = {}
    if case == "rgb_without_mask":
        image = image.convert("RGB")
    elif case == "mask_other_size":
        kwargs["mask"] = Image.new("RGBA", (32, 32))
    elif case == "mask_without_alpha":
        kwargs["mask"] = Image.new("RGB", (64, 64))
    elif case == "not_square":
        image = Image.new("RGBA", (96, 64))
    elif case == "opaque_image":  # alpha, but no pixel at 0: the edit would return the original
        image = Image.new("RGBA", (64, 64), (10, 20, 30, 255))
    elif case == "opaque_mask":
        kwargs["mask"] = Image.new("RGBA", (64, 64), (0, 0, 0, 1))
    else:
        kwargs["resample"] = -1
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.inpaint(image, "a circle", steps=1, progress=False, **kwargs)


def test_repaint_replaces_the_known_region_at_every_step_with_the_noised_original():
    cfg = DiffusionConfig(variance=Variance.learned)  # cosine schedule, eps, learned variance
    scheduler = make_scheduler(cfg, Sampler.ddpm)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :, :4] = 1
    drawn, seen = [], []

    def noise_fn(shape):
        drawn.append(torch.randn(shape, generator=g))
        return drawn[-1]

    def model_fn(x_t, t):
        seen.append((x_t.clone(), int(t[0]), len(drawn)))
        return torch.cat([0.1 * x_t, torch.zeros_like(x_t)], dim=1)  # eps and variance channels

    x_T = torch.randn(2, 3, 8, 8, generator=g)
    out = repaint_loop(model_fn, scheduler, x_T, 5, known=x0, keep=keep, noise_fn=noise_fn, generator=g, resample=2)
    assert len(seen) == 5 * 3  # every step done 1 + resample times
    alphas = scheduler.alphas_cumprod
    left = keep.bool().expand_as(x_T)
    for x_t, t, n_drawn in seen:
        a = alphas[t]
        expected = a.sqrt() * x0 + (1 - a).sqrt() * drawn[n_drawn - 1]  # the last noise drawn before the call
        assert torch.allclose(x_t[left], expected.expand_as(x_t)[left], atol=1e-5)
        assert not torch.allclose(x_t[~left], expected.expand_as(x_t)[~left], atol=1e-2)
    assert torch.equal(out[left], x0.expand_as(out)[left])
    assert not torch.equal(out[~left], x0.expand_as(out)[~left])


def test_known_region_shrinks_conservatively():
    keep = np.full((96, 96), 255, np.uint8)
    keep[10, 10] = 0  # one regenerated pixel at 96 px
    known = known_at(Image.new("RGB", (96, 96)), Image.fromarray(keep), 32, "cpu")
    assert known.keep.shape == (1, 1, 32, 32)
    assert known.keep[0, 0, 3, 3] == 0  # the 3×3 block that holds it is not known at 32 px
    assert known.keep.sum() == 32 * 32 - 1


def test_the_mask_is_carried_through_the_upsamplers(tiny_pipeline, monkeypatch):
    """At the last step of each upsampler the known region of x_t is the original (up to the last
    step's tiny noise), the unknown region is not."""
    image, _ = photo_with_hole(128, seed=2)
    keep = keep_mask(image)
    last_inputs = {}
    for slot, net in list(tiny_pipeline.upsamplers.items()):
        def spy(x_t, t, *, low_res, net=net, slot=slot):
            last_inputs[slot] = x_t.clone()
            return net(x_t, t, low_res=low_res)

        spy.cfg, spy.offset = net.cfg, net.offset  # what the cascade reads of an upsampler besides calling it
        monkeypatch.setitem(tiny_pipeline.upsamplers, slot, spy)
    tiny_pipeline.inpaint(image, "a green triangle", steps=3, progress=False, seed=0)
    assert set(last_inputs) == set(tiny_pipeline.upsamplers)
    for slot, x_t in last_inputs.items():
        side = x_t.shape[-1]
        known = known_at(image, keep, side, "cpu")
        inside = known.keep.bool().expand_as(x_t)
        err_known = (x_t - known.x0)[inside].abs().mean()
        err_unknown = (x_t - known.x0)[~inside].abs().mean()
        assert err_known < 0.1, slot
        assert err_unknown > 4 * err_known, slot
