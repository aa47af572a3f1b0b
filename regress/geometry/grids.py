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
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from regress.generators.base import DensityFn, Generator
from regress.geometry.marching_cubes import CORNERS, group_sizes


def grid_axis(resolution: int, box_size: float) -> np.ndarray:
    """World coordinates of the grid's samples along one axis (float64, ends included)."""
    return np.linspace(-box_size / 2, box_size / 2, resolution)


def grid_memory_bytes(resolution: int, grids_in_flight: int = 1, coarse_to_fine: bool = False) -> int:
    """Memory for meshing: the float32 grids held at once and marching cubes' masks and cube codes (about 6 bytes a point);
    coarse to fine, besides, the stand-ins of the one grid being interpolated (about 12 bytes a point). The refinement's
    bookkeeping, a chunk of blocks at a time (`BLOCK_CHUNK_POINTS`), is left to the 20 % that `grids_that_fit` keeps."""
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
    state: torch.Tensor | None = None,
    stand_ins: StandIns = "trilinear",
) -> torch.Tensor:
    """Density (N, R, R, R) float32 on the cube grid for latents w (N, num_ws, w_dim), on w's device.

    Each latent is evaluated alone in fixed chunks, or all at once where the generator's density computes each point
    alone (`Generator.batched_density_fn`), so a grid does not depend on the batch it came in.
    With `coarse_stride`, the grid is `coarse_to_fine_grid`'s at `level` (default: the generator's surface level):
    exact near that surface, `stand_ins` elsewhere. `state`: the latents' `density_state` from `Generator.sample`, if kept.
    """
    if coarse_stride is not None:
        level = generator.surface_level if level is None else level
        refined = coarse_to_fine_grid(generator, w, resolution, coarse_stride, level, box_size=box_size, chunk_points=chunk_points, state=state, stand_ins=stand_ins)
        return refined.values
    box_size = generator.box_size if box_size is None else box_size
    device, total = w.device, resolution**3
    axis = torch.as_tensor(grid_axis(resolution, box_size), dtype=torch.float32, device=device)
    values = torch.empty((len(w), total), dtype=torch.float32, device=device)
    together = generator.batched_density_fn(w, state)
    densities = generator.density_fns(w, state) if together is None else []
    for start in range(0, total, chunk_points):
        index = torch.arange(start, min(start + chunk_points, total), device=device)
        # flat index i -> (x, y, z) = (i // R^2, i // R % R, i % R), the C order of an [x, y, z] array
        points = torch.stack([axis[index // resolution**2], axis[index // resolution % resolution], axis[index % resolution]], -1)
        if together is not None:  # each point's value its own: all heads in one call
            values[:, start : start + len(index)] = together(points.expand(len(w), -1, -1), None)[..., 0]
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
    state: torch.Tensor | None = None,
    stand_ins: StandIns = "trilinear",
) -> RefinedGrids:
    """`density_grid`'s grids, evaluated point by point only in the blocks of `stride`^3 cells the surface at `level`
    passes through (`refine_grids`); their marching cubes at `level` are the dense grids' but for pieces the coarse grid
    never sees (see there). Each latent's field alone, in chunks of `chunk_points`, as `density_grid`; or all at once
    where the generator has a density that computes each point alone (`Generator.batched_density_fn`). `state` as there;
    `stand_ins` as `refine_grids`."""
    box_size = generator.box_size if box_size is None else box_size
    axis = torch.as_tensor(grid_axis(resolution, box_size), dtype=torch.float32, device=w.device)
    together = generator.batched_density_fn(w, state)
    densities = heads_alone(generator.density_fns(w, state), axis, chunk_points) if together is None else heads_together(together, axis, chunk_points * len(w))
    return RefinedGrids(*refine_grids(densities, len(w), axis, level, stride, margin, stand_ins))


StandIns = Literal["trilinear", "sides"]
"""What coarse-to-fine grids hold where they were not evaluated: the coarse grid's trilinear interpolation (a smooth
volume, e.g. for `.mrc` files), or level ± 1 on the side of the level of their block's corners (`sides`: the same
marching cubes for one write of the grid, where only the meshes are wanted)."""
HeadDensities = Callable[[torch.Tensor, list[int]], torch.Tensor]
"""Densities (P,) at grid points (P, 3) given head after head, sizes[n] of head n: how refinement evaluates the heads."""
BatchedDensity = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""Densities (M, P, 1) at world points (M, P, 3) of the heads (M,) given (None: every head, in order)."""


def heads_alone(densities: Sequence[DensityFn], axis: torch.Tensor, chunk_points: int = 2**20) -> HeadDensities:
    """Each head's density function (1, P, 3) -> (1, P, 1) on its own points, in chunks: a head's grid does not
    depend on the others."""

    def evaluate(index: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        parts = [_evaluate(density, axis, points, chunk_points) for density, points in zip(densities, index.split(sizes)) if len(points)]
        return torch.cat(parts) if parts else torch.empty(0, device=axis.device)

    return evaluate


def heads_together(density: BatchedDensity, axis: torch.Tensor, chunk_points: int = 2**20) -> HeadDensities:
    """One density function of any of the heads (`Generator.batched_density_fn`: each point's value its own, so a grid
    still does not depend on the others), called on windows of the heads' points side by side, about `chunk_points` a
    call. A window is as long as the shortest rest of the heads still in it, so no row is padded: the heads a round's
    chunk of blocks holds may have millions of points or none (padding them all to the longest cost 32 times the field
    work at 512³ with 32 heads)."""

    def evaluate(index: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        device = index.device
        values = torch.empty(len(index), device=device)
        firsts = np.cumsum([0, *sizes[:-1]])
        start = 0
        while present := [head for head, size in enumerate(sizes) if size > start]:
            length = min(max(1, chunk_points // len(present)), *(sizes[head] - start for head in present))
            at = torch.as_tensor(firsts[present] + start, device=device)[:, None] + torch.arange(length, device=device)
            rows = None if len(present) == len(sizes) else torch.tensor(present, device=device)
            values[at] = density(axis[index[at]], rows)[..., 0].float()
            start += length
        return values

    return evaluate


UNTOUCHED, NEW, DONE = 0, 1, 2  # a block's state while refining: not (yet) evaluated, evaluated now, evaluated before
BLOCK_CHUNK_POINTS = 2**24  # block points handled at once by the bookkeeping (a few bytes each)


def refine_grids(
    densities: HeadDensities, count: int, axis: torch.Tensor, level: float, stride: int, margin: int = COARSE_MARGIN,
    stand_ins: StandIns = "trilinear",
) -> tuple[torch.Tensor, list[int]]:
    """`count` heads' densities (`heads_alone` or `heads_together`) on the grid axis^3, evaluated coarse to fine; the
    grids (N, R, R, R) and the points each head was evaluated at.

    The grid's cells are cut into blocks of `stride` cells a side (the last ones shorter), whose corners form a coarse
    grid evaluated first. Blocks whose corners straddle `level`, and `margin` blocks around them, are evaluated at every
    point; then any block not yet evaluated whose points shared with evaluated blocks lie on the other side of the level
    from its corners is evaluated too, until none is. Every point not evaluated holds a stand-in on the side of the level
    of its block's corners (`StandIns`: the coarse grid's trilinear interpolation, or level ± 1); every point is
    evaluated at most once.

    So every grid cell the surface crosses lies in an evaluated block, with its exact values, except in surface pieces
    wholly inside blocks none of whose corners is on the other side (a piece crossing into an evaluated block would
    make its neighbour straddle the level): marching cubes gives the dense grid's vertices and faces less those pieces,
    and with only the largest piece kept the same mesh, unless that piece is one of them.

    All heads' blocks are handled together, a few launches a round of the surface-following, whatever their number.
    """
    resolution, device = len(axis), axis.device
    check_coarse_stride(stride)
    if stand_ins not in ("trilinear", "sides"):
        raise ValueError(f"stand_ins must be 'trilinear' or 'sides', got {stand_ins!r}")
    blocks = _BlockGrid(resolution, stride, device)
    coarse_points = torch.cartesian_prod(blocks.corners, blocks.corners, blocks.corners)
    coarse = densities(coarse_points.repeat(count, 1), [len(coarse_points)] * count).reshape(count, *(blocks.count + 1,) * 3)
    values = blocks.interpolate(coarse) if stand_ins == "trilinear" else blocks.sides(coarse, level)
    inside = coarse > level
    corner_sides = torch.stack([inside[:, dx : blocks.count + dx, dy : blocks.count + dy, dz : blocks.count + dz] for dx, dy, dz in CORNERS])
    todo = corner_sides.any(0) & ~corner_sides.all(0)
    if margin > 0:
        todo = torch.nn.functional.max_pool3d(todo[:, None].float(), 2 * margin + 1, 1, margin)[:, 0].bool()
    side = inside[:, :-1, :-1, :-1].contiguous()  # a block's corners' side of the level, where they agree
    state = torch.full(todo.shape, UNTOUCHED, dtype=torch.uint8, device=device)
    evaluated = torch.full((count,), len(coarse_points), dtype=torch.int64, device=device)
    per_chunk = max(1, BLOCK_CHUNK_POINTS // len(blocks.local))
    cube = resolution**3
    while (chosen := todo.nonzero()).numel():
        state.masked_fill_(todo, NEW)
        for part in chosen.split(per_chunk):
            flat = blocks.points_to_evaluate(part, state)
            per_head = group_sizes(flat // cube, count)
            evaluated += per_head
            within = flat % cube  # flat index i -> (x, y, z) = (i // R^2, i // R % R, i % R)
            index = torch.stack([within // resolution**2, within // resolution % resolution, within % resolution], 1)
            values.view(-1)[flat] = densities(index, per_head.tolist())
        reached = torch.zeros(todo.numel() + 1, dtype=torch.bool, device=device)  # the last: where the unreached go
        for part in chosen.split(per_chunk):
            blocks.mark_reached(part, values, level, side, state, reached)
        state.masked_fill_(state == NEW, DONE)
        todo = reached[:-1].view(todo.shape) & (state == UNTOUCHED)
    return values, evaluated.tolist()


def _evaluate(density: Callable[[torch.Tensor], torch.Tensor], axis: torch.Tensor, index: torch.Tensor, chunk_points: int) -> torch.Tensor:
    """The density (P,) at the grid points of index (P, 3), in chunks."""
    parts = [density(axis[chunk][None]).reshape(-1) for chunk in index.split(chunk_points)]
    return torch.cat(parts).float() if parts else torch.empty(0, device=axis.device)


class _BlockGrid:
    """The blocks of `stride` cells a side a grid of `resolution` points per axis is cut into, and the bookkeeping of
    refining them, for any number of heads at once: blocks are rows (head, bx, by, bz), their points (the block's
    closure, (stride + 1)^3, shared with neighbours) are sorted into 27 kinds by where they sit on each axis (the low
    end, inside, the high end; 27 for none: beyond a shorter last block), which says the neighbours that share them."""

    def __init__(self, resolution: int, stride: int, device: torch.device) -> None:
        self.resolution, self.stride = resolution, stride
        self.corners = torch.arange(0, resolution - 1 + stride, stride, device=device).clamp(max=resolution - 1)  # fine index of each coarse point
        self.count = len(self.corners) - 1
        self.lengths = self.corners[1:] - self.corners[:-1]
        span = torch.arange(stride + 1, device=device)
        self.local = torch.cartesian_prod(span, span, span)  # (L, 3) offsets of a block's points from its low corner
        steps = torch.tensor([-1, 0, 1], device=device)
        self.offsets = torch.cartesian_prod(steps, steps, steps)  # (27, 3) neighbours, (0, 0, 0) the block itself
        first_step = self.offsets.gather(1, (self.offsets != 0).int().argmax(1, keepdim=True))[:, 0]
        self.before = first_step < 0  # neighbours that come before the block in row-major order
        kinds = torch.cartesian_prod(steps + 1, steps + 1, steps + 1)  # per axis 0: low end, 1: inside, 2: high end
        on_axis = (self.offsets[None] == 0) | ((self.offsets[None] == -1) & (kinds[:, None] == 0)) | ((self.offsets[None] == 1) & (kinds[:, None] == 2))
        self.shared = (on_axis.all(-1) & self.offsets.any(-1)[None]).float()  # (27 kinds, 27 neighbours): whose closure holds them
        self.coarse_kind = torch.cat([(kinds != 1).all(-1), torch.ones(1, dtype=torch.bool, device=device)])  # corners (and none)
        self.local_flat = (self.local[:, 0] * resolution + self.local[:, 1]) * resolution + self.local[:, 2]
        # a block's shape: bit d set where it is the shorter last block along axis d; per shape its points' kinds (L,)
        lengths = torch.tensor([[int(self.lengths[-1]) if shape >> d & 1 else stride for d in range(3)] for shape in range(8)], device=device)
        kind, beyond = torch.zeros(8, len(self.local), dtype=torch.int64, device=device), torch.zeros(8, len(self.local), dtype=torch.bool, device=device)
        for dim in range(3):
            offset, length = self.local[:, dim], lengths[:, dim, None]
            kind = kind * 3 + (offset > 0) + (offset >= length)
            beyond |= offset > length
        self.shape_kinds, self.shape_beyond = kind.masked_fill_(beyond, 27), beyond

    def interpolate(self, coarse: torch.Tensor) -> torch.Tensor:
        """The coarse grids (N, B + 1, B + 1, B + 1) trilinearly interpolated to every grid point (N, R, R, R), a head at a time."""
        fine = torch.arange(self.resolution, device=coarse.device)
        block = (fine // self.stride).clamp(max=self.count - 1)
        weight = (fine - self.corners[block]) / self.lengths[block]
        grids = torch.empty((len(coarse), *(self.resolution,) * 3), dtype=torch.float32, device=coarse.device)
        for values, grid in zip(coarse, grids):
            for dim in range(3):  # one axis at a time (indexing: far faster than index_select on a CPU)
                along = (slice(None),) * dim
                shape = [1, 1, 1]
                shape[dim] = self.resolution
                values = values[(*along, block)] * (1 - weight).reshape(shape) + values[(*along, block + 1)] * weight.reshape(shape)
            grid.copy_(values)
        return grids

    def sides(self, coarse: torch.Tensor, level: float) -> torch.Tensor:
        """Grids (N, R, R, R) holding the coarse grids (N, B + 1, B + 1, B + 1) at their points and elsewhere level ± 1 on
        the side of the level of the low corner of the block they start: in a block never evaluated all corners agree,
        and its points shared with evaluated blocks get their exact values, so marching cubes crosses the same cells."""
        fine = torch.arange(self.resolution, device=coarse.device)
        block = (fine // self.stride).clamp(max=self.count - 1)
        low = coarse[:, :-1, :-1, :-1]
        grids = torch.where(low > level, level + 1.0, level - 1.0).float()[:, block][:, :, block][:, :, :, block]
        corners = self.corners
        grids[:, corners[:, None, None], corners[None, :, None], corners[None, None, :]] = coarse.float()
        return grids

    def shapes(self, part: torch.Tensor) -> torch.Tensor:
        """The shape (K,) of each block (K, 4): bit d set where it is the shorter last block along axis d."""
        return sum((self.lengths[part[:, 1 + d]] != self.stride).long() << d for d in range(3))

    def closure(self, part: torch.Tensor) -> torch.Tensor:
        """Flat indices (K, L) into the heads' grids (N, R, R, R) of each block's (K, 4) points (0 for those beyond the grid)."""
        r, corners = self.resolution, self.corners
        low = ((part[:, 0] * r + corners[part[:, 1]]) * r + corners[part[:, 2]]) * r + corners[part[:, 3]]
        return (low[:, None] + self.local_flat).masked_fill_(self.shape_beyond[self.shapes(part)], 0)

    def kinds(self, part: torch.Tensor) -> torch.Tensor:
        """The kind (K, L) of each block's (K, 4) points: per axis 0 at the low end, 1 inside, 2 at the high end; 27 beyond."""
        return self.shape_kinds[self.shapes(part)]

    def by_kind(self, part: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Whether any of each block's (K, 4) points (K, L) bool of each kind is set (K, 27), one axis at a time."""
        span = self.stride + 1
        points = points.reshape(len(part), span, span, span)
        for dim in range(1, 4):
            length = self.lengths[part[:, dim]]
            at_length = length.reshape(-1, *([1] * 3)).expand(-1, *points.shape[1:]).narrow(dim, 0, 1)
            inner = (torch.arange(span, device=part.device) > 0) & (torch.arange(span, device=part.device) < length[:, None])
            shape = [len(part), 1, 1, 1]
            shape[dim] = span
            sides = [points.narrow(dim, 0, 1), (points & inner.reshape(shape)).any(dim, keepdim=True), points.gather(dim, at_length)]
            points = torch.cat(sides, dim)
        return points.reshape(len(part), 27)

    def neighbours(self, part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each block's (K, 4) 27 neighbours: flat index into the heads' blocks (N, B, B, B) and whether they exist (K, 27)."""
        b = self.count
        at = part[:, None, 1:] + self.offsets[None]
        exists = ((at >= 0) & (at < b)).all(-1)
        flat = ((part[:, None, 0] * b + at[..., 0]) * b + at[..., 1]) * b + at[..., 2]
        return flat.masked_fill_(~exists, 0), exists

    def points_to_evaluate(self, part: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Flat indices (P,), in the blocks' order, of the points of new blocks (K, 4) not evaluated yet: each point once,
        by the first new block that holds it, and none that a block evaluated before holds (nor the coarse points)."""
        kind, flat = self.kinds(part), self.closure(part)
        where, exists = self.neighbours(part)
        neighbour = state.view(-1)[where].masked_fill_(~exists, UNTOUCHED)
        taken = (neighbour == DONE) | ((neighbour == NEW) & self.before)
        skipped = torch.cat([(taken.float() @ self.shared.T) > 0, torch.ones(len(part), 1, dtype=torch.bool, device=part.device)], 1) | self.coarse_kind
        return flat[~skipped.gather(1, kind)]

    def mark_reached(self, part: torch.Tensor, values: torch.Tensor, level: float, side: torch.Tensor, state: torch.Tensor, reached: torch.Tensor) -> None:
        """Mark in `reached` (N·B³ + 1,) the untouched neighbours (flat index into (N, B, B, B)) of evaluated blocks
        (K, 4) whose shared points lie on the other side of the level from the neighbour's corners (`side`, (N, B, B, B));
        the last element takes the marks of the others, so that no count of them is waited for."""
        inside = values.view(-1)[self.closure(part)] > level
        shared_inside, shared_outside = ((self.by_kind(part, sides).float() @ self.shared) > 0 for sides in (inside, ~inside))
        where, exists = self.neighbours(part)
        crossed = torch.where(side.view(-1)[where], shared_outside, shared_inside)
        marked = exists & crossed & (state.view(-1)[where] == UNTOUCHED)
        reached[where.masked_fill_(~marked, len(reached) - 1)] = True
