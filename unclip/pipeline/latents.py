"""Vector arithmetic on unCLIP's latents (paper §3): slerp and text-diff directions.

An image's bipartite latent is (z_i, x_T): its CLIP image embedding and its DDIM-inverted decoder
noise. Interpolations (§3.2) slerp either part; text diffs (§3.3) slerp z_i toward the normalised
difference of two text embeddings. Embeddings are raw (unnormalised) CLIP vectors, so the slerp
here treats a tensor as one vector, moves its direction along the great circle and its norm
linearly — for equal norms that is the textbook slerp and the norm is kept.
"""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the vectors ``a`` and ``b`` (same shape, any number of dims,
    each taken as one flattened vector).

    ``slerp(a, b, θ) = r(θ)·(sin((1−θ)Ω)·â + sin(θΩ)·b̂) / sin Ω`` with Ω = arccos(â·b̂), the angle
    between the unit vectors, and r(θ) = (1−θ)‖a‖ + θ‖b‖. θ = 0 gives ``a``, θ = 1 gives ``b``.
    A scalar θ returns ``a.shape``; a 1-D θ of length F returns ``(F, *a.shape)``.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    thetas = torch.as_tensor(theta, dtype=torch.float64, device=a.device)
    flat_a, flat_b = a.reshape(-1).double(), b.reshape(-1).double()
    norm_a, norm_b = flat_a.norm(), flat_b.norm()
    unit_a, unit_b = flat_a / norm_a, flat_b / norm_b
    omega = torch.arccos((unit_a @ unit_b).clamp(-1.0, 1.0))
    th = thetas.reshape(-1, 1)  # (F, 1)
    if omega < 1e-6:  # (nearly) parallel: the great circle degenerates to the line
        direction = (1 - th) * unit_a + th * unit_b
        direction = direction / direction.norm(dim=-1, keepdim=True)
    else:
        direction = (torch.sin((1 - th) * omega) * unit_a + torch.sin(th * omega) * unit_b) / torch.sin(omega)
    out = ((1 - th) * norm_a + th * norm_b) * direction  # (F, N)
    out = out.to(a.dtype).reshape(-1, *a.shape)
    return out[0] if thetas.dim() == 0 else out


def normalise(v: torch.Tensor) -> torch.Tensor:
    """``v / ‖v‖`` along the last dimension."""
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def text_diff_target(image_emb: torch.Tensor, from_text_emb: torch.Tensor, to_text_emb: torch.Tensor) -> torch.Tensor:
    """The end point of a text diff (paper §3.3): z_d = normalise(z_to − z_from), rescaled to ‖z_i‖.

    The paper slerps z_i toward the unit vector z_d; with raw (unnormalised) CLIP embeddings a unit
    z_d would mostly shrink z_i instead of turning it, so it is given z_i's norm.
    All arguments are (D,) vectors.
    """
    direction = normalise(to_text_emb - from_text_emb)
    return direction * image_emb.norm()


def text_diff_embeddings(image_emb: torch.Tensor, from_text_emb: torch.Tensor, to_text_emb: torch.Tensor,
                         thetas: torch.Tensor) -> torch.Tensor:
    """z_θ = slerp(z_i, z_d·‖z_i‖, θ) for each θ: (F, D) from (D,) vectors and F values of θ."""
    target = text_diff_target(image_emb, from_text_emb, to_text_emb)
    return slerp(image_emb, target, thetas.reshape(-1))
