"""Density of generated heads on a cube grid, and whether such grids fit in memory.

Grids are indexed [x, y, z] in world axes and sample the cube of edge `box_size` around the
origin at `resolution` points per axis, ends included (voxel size box_size / (resolution - 1)),
like EG3D's shape extraction. Coarse to fine (`coarse_to_fine_grid`), only the blocks of cells near the surface are
evaluated point by point: the same marching-cubes surface for a fraction of the points.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from regress.generators.base import Generator


def grid_axis(resolution: int, box_size: float) -> np.ndarray:
    """World coordinates of the grid's samples along one axis (float64, ends included)."""
    return np.linspace(-box_size / 2, box_size / 2, resolution)


def grid_memory_bytes(resolution: int, grids_in_flight: int = 1, coarse_to_fine: bool = False) -> int:
    """Memory for meshing: the float32 grids held at once and marching cubes' masks and cube codes (about 6 bytes a point);
    coarse to fine, the one grid under refinement's masks and interpolation (about 12 bytes a point) besides."""
    return 10 * resolution**3 * grids_in_flight + 12 * resolution**3 * coarse_to_fine


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


def grids_that_fit(resolution: int, batch_size: int, coarse_to_fine: bool = False, device: torch.device | str = "cpu") -> int:
    """How many of a batch's density grids to mesh at once (all, or as many as fit in 80 % of the device's free memory);
    a MemoryError before any work when not even one fits."""
    available = available_memory_bytes(device)
    one, each_more = grid_memory_bytes(resolution, 1, coarse_to_fine), grid_memory_bytes(resolution)
    if one > 0.8 * available:
        raise MemoryError(
            f"meshes at grid {resolution}^3 need about {one / 2**30:.1f} GiB of {torch.device(device).type} memory for one grid, "
            f"only {available / 2**30:.1f} GiB are available; lower the mesh resolution"
        )
    return min(batch_size, 1 + int((0.8 * available - one) // each_more))


def check_coarse_stride(stride: int | None) -> int | None:
    """The `mesh_coarse_stride` option as it is; a ValueError saying what it takes when it is below 1."""
    if stride is not None and stride < 1:
        raise ValueError(f"mesh_coarse_stride is a number of grid cells, 1 or more (or null: every grid point), got {stride}")
    return stride


COARSE_MARGIN = 0  # blocks around the coarse grid's crossings refined at once: following the surface finds it all, in half the points


@torch.inference_mode()
def density_grid(
    generator: Generator,
    w: torch.Tensor,
    resolution: int,
    box_size: float | None = None,
    chunk_points: int = 2**20,
    coarse_stride: int | None = None,
    level: float | None = None,
) -> torch.Tensor:
    """Density (N, R, R, R) float32 on the cube grid for latents w (N, num_ws, w_dim), on w's device.

    Each latent is evaluated alone in fixed chunks, so a grid does not depend on the batch it came in.
    With `coarse_stride`, the grid is `coarse_to_fine_grid`'s at `level` (default: the generator's surface level):
    exact near that surface, stand-ins elsewhere.
    """
    if coarse_stride is not None:
        level = generator.surface_level if level is None else level
        return coarse_to_fine_grid(generator, w, resolution, coarse_stride, level, box_size=box_size, chunk_points=chunk_points).values
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


@dataclasses.dataclass
class RefinedGrids:
    """Coarse-to-fine density grids (N, R, R, R) float32 and how many grid points each head's field was evaluated at."""

    values: torch.Tensor
    points_evaluated: list[int]


@torch.inference_mode()
def coarse_to_fine_grid(
    generator: Generator,
    w: torch.Tensor,
    resolution: int,
    stride: int,
    level: float,
    margin: int = COARSE_MARGIN,
    box_size: float | None = None,
    chunk_points: int = 2**20,
) -> RefinedGrids:
    """`density_grid`'s grids, evaluated point by point only in the blocks of `stride`^3 cells the surface at `level`
    passes through (`refine_grid`); their marching cubes at `level` are the dense grids' but for pieces the coarse grid
    never sees (see there). Each latent alone, in chunks, as `density_grid`."""
    box_size = generator.box_size if box_size is None else box_size
    axis = torch.as_tensor(grid_axis(resolution, box_size), dtype=torch.float32, device=w.device)
    refined = [refine_grid(density, axis, level, stride, margin, chunk_points) for density in generator.density_fns(w)]
    return RefinedGrids(torch.stack([values for values, _ in refined]), [count for _, count in refined])


def refine_grid(
    density: Callable[[torch.Tensor], torch.Tensor], axis: torch.Tensor, level: float, stride: int, margin: int = COARSE_MARGIN, chunk_points: int = 2**20
) -> tuple[torch.Tensor, int]:
    """One density function (1, P, 3) -> (1, P, 1) on the grid axis^3, evaluated coarse to fine; (R, R, R) and the points evaluated.

    The grid's cells are cut into blocks of `stride` cells a side (the last ones shorter), whose corners form a coarse
    grid evaluated first. Blocks whose corners straddle `level`, and `margin` blocks around them, are evaluated at every
    point; then any block not yet evaluated whose points (those it shares with evaluated blocks, and stand-ins) straddle
    the level is evaluated too, until none does. Every point not evaluated holds the coarse grid's trilinear
    interpolation, on the side of the level of its block's corners.

    So every grid cell the surface crosses lies in an evaluated block, with its exact values, except in surface pieces
    wholly inside blocks none of whose corners is on the other side (a piece crossing into an evaluated block would
    make its neighbour straddle the level): marching cubes gives the dense grid's vertices and faces less those pieces,
    and with only the largest piece kept the same mesh, unless that piece is one of them.
    """
    resolution, device = len(axis), axis.device
    check_coarse_stride(stride)
    corners = torch.arange(0, resolution - 1 + stride, stride, device=device).clamp(max=resolution - 1)  # fine index of each coarse point
    blocks = len(corners) - 1
    fine = torch.arange(resolution, device=device)
    block = (fine // stride).clamp(max=blocks - 1)  # the block holding each fine index (the lower one at a block's end)
    previous_block = ((fine - 1).clamp(min=0) // stride).clamp(max=blocks - 1)  # the block ending at it, where one does
    coarse = _evaluate(density, axis, torch.cartesian_prod(corners, corners, corners), chunk_points).reshape(blocks + 1, blocks + 1, blocks + 1)
    weight = (fine - corners[block]) / (corners[block + 1] - corners[block])
    values = coarse
    for dim in range(3):  # trilinear interpolation, one axis at a time (indexing: far faster than index_select on a CPU)
        along = (slice(None),) * dim
        shape = [1, 1, 1]
        shape[dim] = resolution
        values = values[(*along, block)] * (1 - weight).reshape(shape) + values[(*along, block + 1)] * weight.reshape(shape)
    evaluated = torch.zeros((resolution,) * 3, dtype=torch.bool, device=device)
    evaluated[corners[:, None, None], corners[None, :, None], corners[None, None, :]] = True
    done = torch.zeros((blocks,) * 3, dtype=torch.bool, device=device)
    todo = _straddling(coarse > level, 1)
    if margin > 0:
        todo = torch.nn.functional.max_pool3d(todo[None, None].float(), 2 * margin + 1, 1, margin)[0, 0].bool()
    while todo.any():
        points = _block_points(todo, block, previous_block) & ~evaluated
        index = points.nonzero()
        values[tuple(index.T)] = _evaluate(density, axis, index, chunk_points)
        evaluated |= points
        done |= todo
        todo = _straddling(values > level, stride, blocks) & ~done
    return values, int(evaluated.sum())


def _evaluate(density: Callable[[torch.Tensor], torch.Tensor], axis: torch.Tensor, index: torch.Tensor, chunk_points: int) -> torch.Tensor:
    """The density (P,) at the grid points of index (P, 3), in chunks."""
    parts = [density(axis[chunk][None]).reshape(-1) for chunk in index.split(chunk_points)]
    return torch.cat(parts).float() if parts else torch.empty(0, device=axis.device)


def _straddling(inside: torch.Tensor, stride: int, blocks: int | None = None) -> torch.Tensor:
    """Which blocks (B, B, B) of `stride` cells a side hold points on both sides of the level, of `inside` (R, R, R) bool."""
    blocks = len(inside) - 1 if blocks is None else blocks
    end = torch.arange(blocks * stride + 1, device=inside.device).clamp(max=len(inside) - 1)  # the last point repeated: any and all keep
    some = every = inside[end][:, end][:, :, end].to(torch.uint8)
    for dim in range(3):  # a block's window of points: stride + 1 of them, sharing the ends with its neighbours
        some, every = some.unfold(dim, stride + 1, stride).amax(-1), every.unfold(dim, stride + 1, stride).amin(-1)
    return some != every


def _block_points(chosen: torch.Tensor, block: torch.Tensor, previous_block: torch.Tensor) -> torch.Tensor:
    """Which grid points (R, R, R) lie in a chosen block (B, B, B): those whose block, or the block ending at them, is chosen
    along every axis (taken one axis at a time)."""
    points = chosen
    for dim in range(3):
        along = (slice(None),) * dim
        points = points[(*along, block)] | points[(*along, previous_block)]
    return points
