"""The mapping network: z and a conditioning camera -> ws, with truncation towards `w_avg` (docs/eg3d.md §2)."""

from __future__ import annotations

import torch
from torch import nn

from regress.generators.eg3d.layers import FullyConnected, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """norm(z) ++ norm(embed(c)) -> `num_layers` lrelu FCs -> w, broadcast to `num_ws` and truncated."""

    def __init__(
        self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2, lr_multiplier: float = 0.01
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.embed = FullyConnected(c_dim, w_dim)
        features = [z_dim + w_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            self.add_module(f"fc{i}", FullyConnected(features[i], features[i + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        assert z.shape[1:] == (self.z_dim,) and c.shape == (z.shape[0], self.c_dim), f"bad z {tuple(z.shape)} / c {tuple(c.shape)}"
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(c))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            cutoff = self.num_ws if cutoff is None else cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], psi)
        return ws
