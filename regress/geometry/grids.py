"""Density of generated heads on a cube grid, and whether such grids fit in memory.

Grids are indexed [x, y, z] in world axes and sample the cube of edge `box_size` around the
origin at `resolution` points per axis, ends included (voxel size box_size / (resolution - 1)),
like EG3D's shape extraction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from regress.generators.base import Generator


def grid_axis(resolution: int, box_size: float) -> np.ndarray:
    """World coordinates of the grid's samples along one axis (float64, ends included)."""
    return np.linspace(-box_size / 2, box_size / 2, resolution)


def grid_memory_bytes(resolution: int, grids_in_flight: int = 1) -> int:
    """Memory for meshing: the float32 grids held at once and marching cubes' masks and cube codes (about 6 bytes a point)."""
    return 10 * resolution**3 * grids_in_flight


def available_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory still free on the device; on the CPU what the kernel can hand out (MemAvailable), or all physical memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_grid_fits(resolution: int, grids_in_flight: int = 1, device: torch.device | str = "cpu") -> None:
    """Raise MemoryError before any work when density grids of this size would not fit in the device's memory."""
    needed, available = grid_memory_bytes(resolution, grids_in_flight), available_memory_bytes(device)
    if needed > 0.8 * available:
        raise MemoryError(
            f"meshes at grid {resolution}^3 need about {needed / 2**30:.1f} GiB of {torch.device(device).type} memory "
            f"({grids_in_flight} grids at once), only {available / 2**30:.1f} GiB are available; "
            "lower the mesh resolution or the batch size"
        )


@torch.inference_mode()
def density_grid(
    generator: Generator,
    w: torch.Tensor,
    resolution: int,
    box_size: float | None = None,
    chunk_points: int = 2**20,
) -> torch.Tensor:
    """Density (N, R, R, R) float32 on the cube grid for latents w (N, num_ws, w_dim), on w's device.

    Each latent is evaluated alone in fixed chunks, so a grid does not depend on the batch it came in.
    """
    box_size = generator.box_size if box_size is None else box_size
    device, total = w.device, resolution**3
    axis = torch.as_tensor(grid_axis(resolution, box_size), dtype=torch.float32, device=device)
    values = torch.empty((len(w), total), dtype=torch.float32, device=device)
    densities = generator.density_fns(w)
    for start in range(0, total, chunk_points):
        index = torch.arange(start, min(start + chunk_points, total), device=device)
        # flat index i -> (x, y, z) = (i // R^2, i // R % R, i % R), the C order of an [x, y, z] array
        points = torch.stack([axis[index // resolution**2], axis[index // resolution % resolution], axis[index % resolution]], -1)
        for i, density in enumerate(densities):
            values[i, start : start + len(index)] = density(points[None]).reshape(-1)
    return values.reshape(-1, resolution, resolution, resolution)
