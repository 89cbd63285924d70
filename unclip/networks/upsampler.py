"""Diffusion upsamplers 64→256 and 256→1024 (paper §2.1, App. C).

Convolution-only ADM UNets (diffusers' ``UNet2DModel``, no attention, no text, no guidance) that
see the noised high-res image concatenated with the low-res conditioning, bicubic-upsampled to
the same size (6 input channels). Fully convolutional: trained on quarter-size crops, applied at
full size. With ``residual`` the diffused variable is the image minus that bicubic conditioning
(``offset``): training targets ``high_res - offset`` and sampling adds ``offset`` back.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from unclip.config import UpsamplerConfig
from unclip.data.degradations import upsample_condition
from unclip.networks.layers import like_weight, norm_groups


class Upsampler(nn.Module):
    config_class = UpsamplerConfig
    _no_split_modules = ["ResnetBlock2D"]  # FSDP units (unclip.training.sharded)

    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        levels = len(cfg.block_out_channels)
        self.unet = UNet2DModel(
            sample_size=cfg.sample_size, in_channels=6, out_channels=3,
            down_block_types=("ResnetDownsampleBlock2D",) * levels,
            up_block_types=("ResnetUpsampleBlock2D",) * levels,
            block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            add_attention=False, dropout=cfg.dropout, norm_num_groups=norm_groups(cfg.block_out_channels),
        )

    @property
    def side_multiple(self) -> int:
        """The UNet takes sides that are multiples of this: one halving per level but the last."""
        return 2 ** (len(self.cfg.block_out_channels) - 1)

    def offset(self, low_res: torch.Tensor, side: int) -> torch.Tensor:
        """What the diffused variable is measured from at ``side``: the bicubic-upsampled
        conditioning for a residual upsampler, else zeros (B, 3, side, side)."""
        cond = upsample_condition(low_res, side)
        return cond if self.cfg.residual else torch.zeros_like(cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, low_res: torch.Tensor) -> torch.Tensor:
        """eps (B, 3, H, W) from x_t (B, 3, H, W) and the conditioning ``low_res`` (B, 3, h, w),
        which is bicubic-upsampled to H here unless it already has that size."""
        cond = upsample_condition(low_res, x_t.shape[-1]).to(x_t.dtype)
        return self.unet(like_weight(torch.cat([x_t, cond], dim=1), self.unet.conv_in.weight), t).sample
