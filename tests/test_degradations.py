"""Degradations of the upsamplers' conditioning: blur, BSR chain, aligned training crops."""

import math

import pytest
import torch

from unclip.config import Degradation
from unclip.data.degradations import (
    bsr_degrade,
    condition_window,
    gaussian_blur,
    upsample_condition,
    upsampler_pair,
)


def smooth_image(size: int, batch: int = 2) -> torch.Tensor:
    """Low-frequency colour ramps in [-1, 1]: survive downsampling almost unchanged."""
    r = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    img = torch.stack([torch.sin(math.pi * xx), torch.cos(math.pi * yy), xx * yy * 2 - 1])
    return torch.stack([img * (0.9 - 0.2 * b) for b in range(batch)])


def textured_image(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).clamp(-1, 1)


def test_blur_of_a_delta_is_the_normalised_gaussian():
    x = torch.zeros(3, 9, 9)
    x[:, 4, 4] = 1.0
    w = math.exp(-0.5 * (1 / 0.6) ** 2)  # weight one pixel away from the centre
    row = torch.tensor([w, 1.0, w])
    reference = torch.outer(row, row) / row.sum() ** 2

    out = gaussian_blur(x, kernel_size=3, sigma=0.6)

    assert out.shape == x.shape
    torch.testing.assert_close(out[:, 3:6, 3:6], reference.expand(3, 3, 3).float())
    assert out[:, :3].abs().max() == 0 and out[:, 6:].abs().max() == 0
    torch.testing.assert_close(out.sum(dim=(1, 2)), torch.ones(3))  # mass preserved


def test_blur_batched_matches_single():
    x = textured_image(16, batch=3)
    torch.testing.assert_close(gaussian_blur(x)[1], gaussian_blur(x[1]))


def test_bsr_keeps_shape_and_range_and_changes_the_image():
    x = textured_image(32, batch=3)
    out = bsr_degrade(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert (out - x).abs().mean() > 0.05
    single = bsr_degrade(x[0], generator=torch.Generator().manual_seed(1))
    assert single.shape == x[0].shape


def test_bsr_is_deterministic_given_a_generator_and_varies_with_the_seed():
    x = textured_image(32)
    a = bsr_degrade(x, generator=torch.Generator().manual_seed(7))
    b = bsr_degrade(x, generator=torch.Generator().manual_seed(7))
    c = bsr_degrade(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_upsample_condition_size_and_clamp():
    low = textured_image(8) * 1.0
    up = upsample_condition(low, 32)
    assert up.shape == (2, 3, 32, 32)
    assert up.min() >= -1 and up.max() <= 1
    # bicubic of a ±1 checkerboard overshoots; the clamp must hold it
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    assert upsample_condition(checker.expand(3, 8, 8), 32).abs().max() <= 1


@pytest.mark.parametrize("degradation", [None, Degradation.blur, Degradation.bsr])
def test_upsampler_pair_sizes(degradation):
    hr = textured_image(64, batch=3)
    hr_crop, cond_crop = upsampler_pair(hr, 16, degradation, 16, generator=torch.Generator().manual_seed(0))
    assert hr_crop.shape == cond_crop.shape == (3, 3, 16, 16)
    assert cond_crop.min() >= -1 and cond_crop.max() <= 1


@pytest.mark.parametrize("degradation", [None, Degradation.blur])
def test_upsampler_pair_crops_are_aligned(degradation):
    hr = smooth_image(64, batch=4)
    g = torch.Generator().manual_seed(3)
    hr_crop, cond_crop = upsampler_pair(hr, 32, degradation, 16, generator=g)
    assert (hr_crop - cond_crop).abs().mean() < 0.02
    # a crop misaligned by 4 pixels is detectably worse, so the check above has teeth
    shifted = torch.roll(cond_crop, shifts=4, dims=-1)
    assert (hr_crop - shifted).abs().mean() > 0.05


def test_upsampler_pair_crop_is_a_window_of_the_image():
    hr = textured_image(32, batch=1)
    hr_crop, _ = upsampler_pair(hr[0], 8, None, 8, generator=torch.Generator().manual_seed(5))
    windows = hr[0].unfold(1, 8, 1).unfold(2, 8, 1)  # [3, 25, 25, 8, 8]
    matches = (windows == hr_crop[:, None, None]).flatten(3).all(-1).all(0)
    assert matches.sum() == 1



def test_a_given_low_res_image_is_the_conditioning_instead_of_the_area_downsampled_one():
    hr = textured_image(32, batch=2)
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    target, cond = upsampler_pair(hr, 8, None, 32, generator=g(), low_res=low)
    assert torch.equal(target, hr)
    assert torch.allclose(cond, upsample_condition(low, 32), atol=1e-5)
    _, area = upsampler_pair(hr, 8, None, 32, generator=g())
    assert not torch.allclose(cond, area, atol=0.1)
    with pytest.raises(ValueError, match="low_res: expected 8×8 images"):
        upsampler_pair(hr, 8, None, 16, low_res=torch.zeros(2, 3, 16, 16))


def test_crop_candidates_train_on_the_edges_of_a_mostly_flat_image():
    """One small white square on a flat grey 64×64: of 16×16 crops drawn at random most are flat
    (nothing for the upsampler to add); with 8 candidates per image the kept crop is the one with
    the most detail bicubic misses, so most crops hold an edge of the square."""
    hr = torch.full((32, 3, 64, 64), -0.2)
    hr[:, :, 40:48, 8:16] = 1.0

    def with_edges(candidates: int) -> float:
        target, cond = upsampler_pair(hr, 16, None, 16, generator=torch.Generator().manual_seed(0),
                                      candidates=candidates)
        detail = (target - cond).square().flatten(1).mean(1)
        return (detail > 1e-3).float().mean().item()

    plain, focused = with_edges(1), with_edges(8)
    assert plain < 0.3 and focused > 0.7, (plain, focused)  # 0.16 and 0.81 with this seed
    with pytest.raises(ValueError, match="candidates must be at least 1"):
        upsampler_pair(hr, 16, None, 16, candidates=0)


def test_bsr_conditioning_differs_from_clean():
    hr = textured_image(64, batch=2)
    # crop = whole image, so both calls cut the same window whatever their random draws
    _, clean = upsampler_pair(hr, 32, None, 64, generator=torch.Generator().manual_seed(0))
    _, degraded = upsampler_pair(hr, 32, Degradation.bsr, 64, generator=torch.Generator().manual_seed(0))
    assert (clean - degraded).abs().mean() > 0.02


@pytest.mark.parametrize("low_side, side, crop", [(16, 64, 16), (64, 256, 64), (8, 32, 32), (24, 64, 16)])
def test_condition_window_equals_the_window_of_the_full_resize(low_side, side, crop):
    low = textured_image(low_side, batch=1)[0]
    full = upsample_condition(low, side)
    corners = [(0, 0), (side - crop, side - crop), (0, side - crop), (5, 11), (side // 2 - 3, side // 3 + 1)]
    for top, left in [(t, l) for t, l in corners if t <= side - crop and l <= side - crop]:
        window = condition_window(low, (side, side), top, left, crop)
        assert window.shape == (3, crop, crop)
        assert (window - full[:, top : top + crop, left : left + crop]).abs().max() < 1e-5, (top, left)


def test_upsampler_pair_conditioning_is_the_crop_of_the_full_resize():
    hr = textured_image(64, batch=3)
    hr_crop, cond_crop = upsampler_pair(hr, 16, None, 16, generator=torch.Generator().manual_seed(2))
    full = upsample_condition(torch.nn.functional.interpolate(hr, size=(16, 16), mode="area"), 64)
    for i in range(3):  # find each target crop in the image, then compare the conditioning there
        windows = hr[i].unfold(1, 16, 1).unfold(2, 16, 1)
        (top, left), = ((windows == hr_crop[i][:, None, None]).flatten(3).all(-1).all(0)).nonzero().tolist()
        assert (cond_crop[i] - full[i, :, top : top + 16, left : left + 16]).abs().max() < 1e-5
