"""The 8x-hybrid super-resolution: two StyleGAN2 blocks from the 128² neural render to 512² (docs/eg3d.md §7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regress.generators.eg3d.layers import SynthesisBlock


class SuperResolution(nn.Module):
    """(raw RGB, feature image) at the neural rendering resolution + ws -> RGB at 4x `input_resolution`.

    Only the last w is read; inputs at another resolution are first resized to `input_resolution`.
    The convolutions run in `dtype` (upstream uses float16 here: the clamp of 256 keeps it in range).
    """

    def __init__(
        self,
        in_channels: int,
        w_dim: int,
        input_resolution: int = 128,
        channels: tuple[int, int] = (256, 128),
        img_channels: int = 3,
        conv_clamp: float | None = 256.0,
        antialias: bool = True,
    ):
        super().__init__()
        self.input_resolution, self.antialias = input_resolution, antialias
        self.block0 = SynthesisBlock(in_channels, channels[0], w_dim, 2 * input_resolution, img_channels, conv_clamp)
        self.block1 = SynthesisBlock(channels[0], channels[1], w_dim, 4 * input_resolution, img_channels, conv_clamp)

    def forward(
        self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        assert rgb.shape[-2:] == x.shape[-2:], f"rgb {tuple(rgb.shape)} and features {tuple(x.shape)} differ in size"
        ws = ws[:, -1:].expand(-1, self.block0.num_ws, -1)
        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
        x, rgb = self.block0(x, rgb.float(), ws, noise_mode, dtype)
        _, rgb = self.block1(x, rgb, ws, noise_mode, dtype)
        return rgb
