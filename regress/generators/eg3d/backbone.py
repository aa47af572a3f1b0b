"""The tri-plane backbone: a StyleGAN2 "skip" synthesis network with 3 x 32 output channels (docs/eg3d.md §3)."""

from __future__ import annotations

import torch
from torch import nn

from regress.generators.eg3d.layers import SynthesisBlock
from regress.generators.eg3d.mapping import MappingNetwork


class SynthesisNetwork(nn.Module):
    """Blocks b4 ... b{resolution}; block k reads ws from the running conv count (ws overlap at each torgb)."""

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.w_dim, self.resolution, self.img_channels = w_dim, resolution, img_channels
        self.resolutions = [2**i for i in range(2, resolution.bit_length())]
        channels = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        self.num_ws = 0
        for r in self.resolutions:
            in_channels = channels[r // 2] if r > 4 else 0
            block = SynthesisBlock(in_channels, channels[r], w_dim, r, img_channels, conv_clamp=conv_clamp)
            self.add_module(f"b{r}", block)
            self.num_ws += block.num_ws - 1
        self.num_ws += 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        assert ws.shape[1:] == (self.num_ws, self.w_dim), f"expected ws (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}"
        x = img = None
        start = 0
        for r in self.resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws[:, start : start + block.num_ws], noise_mode, dtype)
            start += block.num_ws - 1
        return img


class TriplaneBackbone(nn.Module):
    """Mapping + synthesis; `synthesis` returns the tri-planes (N, 3, C, R, R)."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        resolution: int,
        triplane_channels: int,
        channel_base: int,
        channel_max: int,
        conv_clamp: float | None = None,
        mapping_layers: int = 2,
        mapping_lr_multiplier: float = 0.01,
    ):
        super().__init__()
        self.triplane_channels = triplane_channels
        self.synthesis = SynthesisNetwork(w_dim, resolution, 3 * triplane_channels, channel_base, channel_max, conv_clamp)
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.synthesis.num_ws, mapping_layers, mapping_lr_multiplier)

    def planes(self, ws: torch.Tensor, noise_mode: str = "const", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float32 tri-planes; the convolutions run in `dtype`."""
        img = self.synthesis(ws, noise_mode, dtype)
        return img.reshape(len(img), 3, self.triplane_channels, *img.shape[-2:])
