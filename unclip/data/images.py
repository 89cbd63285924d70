"""PIL ↔ tensor, the one conversion every layer uses: RGB pixels 0..255 ↔ floats in [-1, 1]
(``x = p / 127.5 − 1``), channels first, contiguous (a layout that does not match a UNet's
weights makes every convolution slower on the CPU; the UNets put their input in their weights'
layout themselves, ``networks.layers.like_weight``)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image (converted to RGB) → FloatTensor (3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """FloatTensor (3, H, W) in [-1, 1] → RGB PIL image, rounded to the nearest of 256 levels."""
    pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size → (B, 3, H, W) in [-1, 1]."""
    return torch.stack([image_to_tensor(im) for im in images])


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images."""
    return [tensor_to_image(row) for row in x]
