"""Preview grids for the logger: input images next to colormapped true and predicted depth.

Loggers that store images (wandb, TensorBoard) get the grid; the others (CSV) get nothing.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from regress.sample import MASK_THRESHOLD

# Polynomial fit of the Turbo colormap (Mikhailov, Google 2019), coefficients of x^0..x^5 per channel.
TURBO = torch.tensor(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def depth_range(depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image near/far (N, 1, 1, 1): the 2nd and 98th percentiles of depth on the mask."""
    near, far = [], []
    for d, m in zip(depth, mask):
        values = d[m > MASK_THRESHOLD]
        if values.numel() == 0:
            values = d.flatten()
        q = torch.quantile(values.float(), torch.tensor([0.02, 0.98], device=values.device))
        near.append(q[0])
        far.append(torch.maximum(q[1], q[0] + 1e-3))
    return torch.stack(near).view(-1, 1, 1, 1), torch.stack(far).view(-1, 1, 1, 1)


def colormap_depth(depth: torch.Tensor, mask: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Depth (N, 1, R, R) as Turbo-coloured uint8 (N, 3, R, R): near is red, far is blue, background black."""
    x = (1 - (depth - near) / (far - near)).clamp(0, 1)
    powers = torch.cat([x**k for k in range(6)], dim=1)  # (N, 6, R, R)
    rgb = torch.einsum("ck,nkhw->nchw", TURBO.to(depth), powers).clamp(0, 1)
    rgb = rgb * (mask > MASK_THRESHOLD)
    return (rgb * 255).round().to(torch.uint8)


def preview_grid(columns: list[torch.Tensor], size: int = 128) -> torch.Tensor:
    """uint8 image columns [(N, 3, H, W), ...] as one uint8 grid (3, N * size, len(columns) * size)."""
    resized = [F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False) for c in columns]
    rows = torch.cat(resized, dim=3)  # (N, 3, size, C * size)
    return torch.cat(list(rows), dim=1).round().clamp(0, 255).to(torch.uint8).cpu()


def log_preview(loggers: Iterable[Logger], key: str, grid: torch.Tensor, step: int) -> None:
    """Send a uint8 grid (3, H, W) to every logger that stores images."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid.permute(1, 2, 0).numpy()], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
