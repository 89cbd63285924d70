"""Corruptions of the upsamplers' low-resolution conditioning (paper §2.1 and App. C).

The 64→256 upsampler sees its conditioning blurred (Gaussian, kernel 3, σ 0.6); the 256→1024
upsampler sees a "more diverse BSR degradation" (Zhang et al. 2021, BSRGAN): blur, resize, noise
and JPEG compression in random order. Both are trained on random crops of a quarter of the target
size, cut at the same place from the target and from the upsampled conditioning
(:func:`upsampler_pair`).

Every function takes images in [-1, 1], either one ``[3, H, W]`` or a batch ``[B, 3, H, W]``, and
an optional CPU ``torch.Generator`` for its randomness (``None``: torch's global generator).
Random parameters are drawn per sample.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from unclip.config import Degradation
from unclip.data.images import image_to_tensor, tensor_to_image

# ----------------------------------------------------------------------------------------------
# helpers


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` (written for [B,3,H,W]) to a single image [3,H,W] or to a batch."""
    if x.dim() == 3:
        return fn(x.unsqueeze(0)).squeeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected an image [3,H,W] or a batch [B,3,H,W], got shape {tuple(x.shape)}")
    return fn(x)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """An integer in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> torch.Tensor:
    """Normalised 2-D Gaussian [k, k], axes σx, σy rotated by θ (radians); float64."""
    half = (kernel_size - 1) / 2
    r = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    cos, sin = math.cos(theta), math.sin(theta)
    u = cos * xx + sin * yy  # coordinates along the kernel's own axes
    v = -sin * xx + cos * yy
    kernel = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return kernel / kernel.sum()


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution of [B,C,H,W] with one [k,k] kernel, reflect padding (size kept)."""
    k = kernel.shape[-1]
    pad = k // 2
    channels = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(channels, 1, k, k)
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"  # reflect needs pad < side
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode=mode), weight, groups=channels)


# ----------------------------------------------------------------------------------------------
# the 64→256 corruption and the conditioning upsample


def gaussian_blur(x: torch.Tensor, kernel_size: int = 3, sigma: float = 0.6) -> torch.Tensor:
    """Isotropic Gaussian blur (64→256 stage: kernel 3, σ 0.6), reflect padding, same shape."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    kernel = _gaussian_kernel(kernel_size, sigma, sigma)
    return _batched(lambda b: _convolve(b, kernel), x)


def upsample_condition(low_res: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic (antialiased) resize of the low-res conditioning to ``size``, clamped to [-1, 1].

    Bicubic overshoots at edges, hence the clamp; this is what the upsampler's extra three input
    channels hold, in training and at sampling alike.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)

    def up(b: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(b.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        return out.clamp(-1, 1).to(b.dtype)

    return _batched(up, low_res)


# ----------------------------------------------------------------------------------------------
# the 256→1024 corruption: a BSR-like chain
#
# Kinds of corruption follow BSRGAN; the ranges are milder than its ×4 setting because they act on
# the already downsampled conditioning, and at sampling the upsampler sees the decoder's clean
# output, not a real-world photograph.

_RESIZE_MODES = ("bilinear", "bicubic", "area")


def _random_blur(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Isotropic (σ∈[0.2,1.2]) or, half of the time, anisotropic rotated Gaussian (σ∈[0.2,1.6])."""
    if torch.rand((), generator=g).item() < 0.5:
        sigma = _uniform(g, 0.2, 1.2)
        sx, sy, theta = sigma, sigma, 0.0
    else:
        sx, sy, theta = _uniform(g, 0.2, 1.6), _uniform(g, 0.2, 1.6), _uniform(g, 0.0, math.pi)
    kernel_size = 2 * math.ceil(2.5 * max(sx, sy)) + 1  # covers ±2.5σ along the wider axis
    return _convolve(x, _gaussian_kernel(kernel_size, sx, sy, theta))


def _random_resize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Down by a factor in [0.5, 1) and back up, each with a random interpolation mode."""
    h, w = x.shape[-2:]
    scale = _uniform(g, 0.5, 1.0)
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    down_mode = _RESIZE_MODES[_randint(g, 0, 2)]
    up_mode = _RESIZE_MODES[_randint(g, 0, 1)]  # "area" is a box filter: meaningless upwards
    x = _resize(x, small, down_mode)
    return _resize(x, (h, w), up_mode).clamp(-1, 1)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def _random_noise(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Additive Gaussian noise, σ∈[1,15]/255 of the [0,1] range; colour or (40%) grey noise."""
    sigma = 2 * _uniform(g, 1 / 255, 15 / 255)  # ×2: our range [-1,1] is twice [0,1]
    grey = torch.rand((), generator=g).item() < 0.4
    shape = (x.shape[0], 1 if grey else x.shape[1], *x.shape[-2:])
    noise = torch.randn(shape, generator=g).to(device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp(-1, 1)


def _random_jpeg(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """JPEG round trip with quality in [40, 95] (PIL's libjpeg, on the CPU)."""
    quality = _randint(g, 40, 95)
    out = []
    for img in x:
        encoded = io.BytesIO()
        tensor_to_image(img).save(encoded, format="JPEG", quality=quality)
        out.append(image_to_tensor(Image.open(encoded)))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


_BSR_STEPS = (_random_blur, _random_resize, _random_noise, _random_jpeg)


def bsr_degrade(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """BSR-like degradation: blur, resize down/up, Gaussian noise, JPEG, in a shuffled order.

    Each sample draws its own order and parameters from ``generator``. Output has the input's
    shape, dtype and device, in [-1, 1].
    """

    def chain(batch: torch.Tensor) -> torch.Tensor:
        out = []
        for img in batch:
            img = img.unsqueeze(0)
            for i in torch.randperm(len(_BSR_STEPS), generator=generator).tolist():
                img = _BSR_STEPS[i](img, generator)
            out.append(img)
        return torch.cat(out).clamp(-1, 1)

    return _batched(chain, x)


# ----------------------------------------------------------------------------------------------
# training pairs for the upsamplers

_DEGRADE: dict[Degradation, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    Degradation.blur: lambda x, g: gaussian_blur(x, kernel_size=3, sigma=0.6),
    Degradation.bsr: bsr_degrade,
}


_BICUBIC_REACH = 3  # low-res pixels beyond a window that bicubic output inside it can read (2, plus one to spare)


def condition_window(low: torch.Tensor, size: tuple[int, int], top: int, left: int, crop: int) -> torch.Tensor:
    """``upsample_condition(low, size)[..., top:top+crop, left:left+crop]`` for one image [3,h,w],
    without upsampling the rest: only the low-res pixels the window reads (plus bicubic's reach)
    are resized, by the same integer factor, so the result equals the full resize's window up to
    float rounding. Falls back to the full resize when ``size`` is not a multiple of ``low``."""
    (h, w), (lh, lw) = size, low.shape[-2:]
    if h % lh or w % lw:
        return upsample_condition(low, size)[:, top : top + crop, left : left + crop]
    sy, sx = h // lh, w // lw
    y0, x0 = max(0, top // sy - _BICUBIC_REACH), max(0, left // sx - _BICUBIC_REACH)
    y1 = min(lh, -(-(top + crop) // sy) + _BICUBIC_REACH)
    x1 = min(lw, -(-(left + crop) // sx) + _BICUBIC_REACH)
    part = upsample_condition(low[:, y0:y1, x0:x1], ((y1 - y0) * sy, (x1 - x0) * sx))
    return part[:, top - y0 * sy : top - y0 * sy + crop, left - x0 * sx : left - x0 * sx + crop]


def upsampler_pair(
    high_res: torch.Tensor,
    low_res_size: int,
    degradation: Degradation | None,
    crop_size: int,
    generator: torch.Generator | None = None,
    candidates: int = 1,
    low_res: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One upsampler training pair: (target crop, conditioning crop), both ``crop_size`` square.

    Batched: ``high_res`` is [B,3,H,W] (or one [3,H,W]) in [-1, 1]. The image is downsampled to
    ``low_res_size`` (area filter), corrupted (``degradation``; ``None`` leaves it clean), upsampled
    back to H×W with :func:`upsample_condition` (only the crop's window of it is computed, see
    :func:`condition_window`), and the same random crop — drawn per sample — is
    cut from the target and from the conditioning, so pixel (i, j) of one lies over pixel (i, j)
    of the other (paper: crops a quarter of the target side, ``UpsamplerConfig.crop_fraction``).
    With ``candidates`` k > 1, k crops are drawn per sample and the one where the target differs
    most from its conditioning (the detail the upsampler has to add) is kept, so that images that
    are mostly flat background still train on their edges (``UpsamplerConfig.crop_candidates``).
    ``low_res`` (shaped like ``high_res``, side ``low_res_size``) is the low-res image itself, used
    instead of the area-downsampled one (``DataConfig.low_res``: a native render of the scene).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if low_res is not None and (low_res.dim() != high_res.dim() or low_res.shape[-1] != low_res_size
                                or low_res.shape[-2] != low_res_size or len(low_res) != len(high_res)):
        raise ValueError(f"low_res: expected {low_res_size}×{low_res_size} images, one per high-res image, "
                         f"got shape {tuple(low_res.shape)} beside {tuple(high_res.shape)}")

    def pair(hr: torch.Tensor, given: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = hr.shape[-2:]
        if crop_size > min(h, w):
            raise ValueError(f"crop_size {crop_size} exceeds the image ({h}×{w})")
        if given is not None:
            low = given.float()
        else:
            low = F.interpolate(hr.float(), size=(low_res_size, low_res_size), mode="area")
        if degradation is not None:
            low = _DEGRADE[Degradation(degradation)](low, generator)
        shape = (hr.shape[0], candidates)
        tops = torch.randint(0, h - crop_size + 1, shape, generator=generator).tolist()
        lefts = torch.randint(0, w - crop_size + 1, shape, generator=generator).tolist()
        hr_crops, cond_crops = [], []
        for i in range(hr.shape[0]):
            best = None
            for top, left in zip(tops[i], lefts[i]):
                target = hr[i, :, top : top + crop_size, left : left + crop_size]
                cond = condition_window(low[i], (h, w), top, left, crop_size).to(hr.dtype)
                detail = (target.float() - cond.float()).square().mean().item() if candidates > 1 else 0.0
                if best is None or detail > best[0]:
                    best = (detail, target, cond)
            hr_crops.append(best[1])
            cond_crops.append(best[2])
        return torch.stack(hr_crops), torch.stack(cond_crops)

    if high_res.dim() == 3:
        hr_crop, cond_crop = pair(high_res.unsqueeze(0), None if low_res is None else low_res.unsqueeze(0))
        return hr_crop.squeeze(0), cond_crop.squeeze(0)
    if high_res.dim() != 4:
        raise ValueError(f"expected [3,H,W] or [B,3,H,W], got shape {tuple(high_res.shape)}")
    return pair(high_res, low_res)
