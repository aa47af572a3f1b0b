"""Preview grids for the logger: input images next to true and predicted depth, coloured on one scale per row.

Loggers that store images (wandb, TensorBoard) get the grid; the others (CSV) get nothing.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from regress.gallery.depth import colorize_depth, depth_range


def depth_columns(depths: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Depth maps [(N, 1, R, R), ...] as uint8 colour columns [(N, 3, R, R), ...], each row (sample) on one scale
    shared by all its maps (gallery.depth: the project's one depth colouring)."""
    columns = [[] for _ in depths]
    for row in range(len(depths[0])):
        near, far = depth_range([d[row] for d in depths], [m[row] for m in masks])
        for column, depth, mask in zip(columns, depths, masks):
            column.append(torch.from_numpy(colorize_depth(depth[row], mask[row], near, far)).permute(2, 0, 1))
    return [torch.stack(column) for column in columns]


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
