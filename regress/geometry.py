"""Geometry of generated heads: density on a cube grid, marching-cubes meshes, depth-map meshes.

Grids are indexed [x, y, z] in world axes and sample the cube of edge `box_size` around the
origin at `resolution` points per axis, ends included (voxel size box_size / (resolution - 1)),
like EG3D's shape extraction. Meshes are trimesh objects in world units, float32 vertices.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np
import torch
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from skimage import measure
from torch.nn import functional as F

from regress.camera import camera_rays, frontal_camera

DensityField = Callable[[torch.Tensor], torch.Tensor]  # world points (N, P, 3) -> density (N, P, 1)
MESH_FORMATS = ("ply", "obj")


def grid_axis(resolution: int, box_size: float) -> np.ndarray:
    """World coordinates of the grid's samples along one axis (float64, ends included)."""
    return np.linspace(-box_size / 2, box_size / 2, resolution)


def grid_memory_bytes(resolution: int, grids_in_flight: int = 1) -> int:
    """Host memory for meshing: the float32 grids held at once, plus marching cubes' own copy and mask."""
    return 4 * resolution**3 * (grids_in_flight + 2)


def available_memory_bytes() -> int:
    """Memory the kernel can still hand out (MemAvailable), or total physical memory elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_grid_fits(resolution: int, grids_in_flight: int = 1) -> None:
    """Raise MemoryError before any work when density grids of this size would not fit in memory."""
    needed, available = grid_memory_bytes(resolution, grids_in_flight), available_memory_bytes()
    if needed > 0.8 * available:
        raise MemoryError(
            f"meshes at grid {resolution}^3 need about {needed / 2**30:.1f} GiB of memory "
            f"({grids_in_flight} grids in flight), only {available / 2**30:.1f} GiB are available; "
            "lower the mesh resolution, the batch size or the number of workers"
        )


def density_fields(generator: torch.nn.Module, w: torch.Tensor) -> list[DensityField]:
    """One density function per latent of w; backends with tri-planes build them once here, not per chunk."""
    if hasattr(generator, "planes") and hasattr(generator, "density_from_planes"):
        planes = generator.planes(w)
        return [lambda points, i=i: generator.density_from_planes(planes[i : i + 1], points) for i in range(len(w))]
    return [lambda points, i=i: generator.density(points, w[i : i + 1]) for i in range(len(w))]


@torch.inference_mode()
def density_grid(
    generator: torch.nn.Module,
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
    fields = density_fields(generator, w)
    for start in range(0, total, chunk_points):
        index = torch.arange(start, min(start + chunk_points, total), device=device)
        # flat index i -> (x, y, z) = (i // R^2, i // R % R, i % R), the C order of an [x, y, z] array
        points = torch.stack([axis[index // resolution**2], axis[index // resolution % resolution], axis[index % resolution]], -1)
        for i, field in enumerate(fields):
            values[i, start : start + len(index)] = field(points[None]).reshape(-1)
    return values.reshape(-1, resolution, resolution, resolution)


def keep_largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The piece with the most faces (vertex-connected; ties: the lowest label), unused vertices dropped."""
    if len(mesh.faces) == 0:
        return mesh
    faces = np.asarray(mesh.faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = sparse.csr_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(len(mesh.vertices),) * 2)
    labels = connected_components(graph, directed=True, connection="weak")[1][faces[:, 0]]  # weak: no transpose
    faces = faces[labels == np.argmax(np.bincount(labels))]
    used = np.zeros(len(mesh.vertices), bool)
    used[faces] = True
    renumber = np.cumsum(used) - 1  # kept vertices keep their order
    return trimesh.Trimesh(np.asarray(mesh.vertices)[used].astype(np.float32), renumber[faces], process=False)


@dataclass(frozen=True)
class GridBlock:
    """Density on a block of the cube grid: values [x, y, z] whose first sample is grid point `offset`."""

    values: np.ndarray  # a tensor on the grid's device inside `surface_block_tensor`
    offset: tuple[int, int, int]
    resolution: int  # points per axis of the whole cube
    box_size: float
    near_surface: np.ndarray | None = None  # bool, like values: the samples whose cells marching cubes must visit


Box = tuple[list[int], list[int]]  # index bounds [low, high) per axis


def surface_boxes(grids: torch.Tensor, level: float) -> list[Box | None]:
    """Per cube grid of grids (N, R, R, R): bounds of the cells its surface can cross, None without a surface.

    That is the box of the inside samples (density > level), one sample wider: every cell the
    surface crosses has an inside corner. One transfer from the grids' device for the whole batch.
    """
    inside = grids > level
    occupied = torch.stack([inside.any(3).any(2), inside.any(3).any(1), inside.any(2).any(1)], 1)  # (N, axis, R)
    everywhere = inside.flatten(1).all(1)
    occupied, everywhere = occupied.cpu().numpy(), everywhere.cpu().numpy()
    boxes: list[Box | None] = []
    for axes, full in zip(occupied, everywhere):
        if full or not axes[0].any():
            boxes.append(None)
            continue
        index = [np.flatnonzero(axis) for axis in axes]
        boxes.append(([max(int(i[0]) - 1, 0) for i in index], [min(int(i[-1]) + 2, grids.shape[1]) for i in index]))
    return boxes


def surface_block_tensor(values: torch.Tensor, box: Box | None, box_size: float) -> GridBlock:
    """The block of a cube grid (R, R, R) inside `box` (see `surface_boxes`), still where the values live."""
    low, high = box if box is not None else ([0, 0, 0], [2, 2, 2])  # no surface: any corner marches to nothing
    return GridBlock(values[low[0] : high[0], low[1] : high[1], low[2] : high[2]], tuple(low), values.shape[0], box_size)


def _check_cubes(grids: torch.Tensor) -> None:
    if grids.ndim != 4 or grids.shape[1:] != (grids.shape[1],) * 3:
        raise ValueError(f"density grids must be cubes (N, R, R, R), got shape {tuple(grids.shape)}")


def surface_block(values: torch.Tensor | np.ndarray, level: float, box_size: float) -> GridBlock:
    """The block of a cube grid (R, R, R) that holds its surface, cut where the values live, then brought to the CPU."""
    grids = torch.as_tensor(values)[None]
    _check_cubes(grids)
    block = surface_block_tensor(grids[0], surface_boxes(grids, level)[0], box_size)
    return dataclasses.replace(block, values=block.values.cpu().numpy())


@dataclass(frozen=True)
class PackedBlock:
    """A surface block in the few bytes marching cubes reads: which samples are inside (one bit each) and
    the exact values of the samples next to the surface; a few MiB where the dense 256³ block is 64 MiB.
    The samples next to the surface also tell marching cubes which cells to visit.

    Marching cubes reads values only at the corners of the cells the surface crosses, and every such
    corner has a sample on the other side of the level among its 26 neighbours. All other samples
    become level ± 1, on their own side, so `unpack` marches to the same mesh, bit for bit.
    """

    shape: tuple[int, int, int]
    offset: tuple[int, int, int]
    resolution: int
    box_size: float
    level: float
    inside_bits: np.ndarray  # uint8, np.packbits of (values > level) in C order
    near_index: np.ndarray  # int64 flat indices of the samples next to the surface
    near_values: np.ndarray  # float32 values there

    def unpack(self) -> GridBlock:
        inside = np.unpackbits(self.inside_bits, count=int(np.prod(self.shape))).astype(bool)
        values = np.where(inside, np.float32(self.level + 1), np.float32(self.level - 1))
        values[self.near_index] = self.near_values
        near_surface = np.zeros(values.shape, bool)
        near_surface[self.near_index] = True
        return GridBlock(values.reshape(self.shape), self.offset, self.resolution, self.box_size, near_surface.reshape(self.shape))


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """np.packbits of a flat bool tensor, where it lives: uint8, first flag in the highest bit."""
    padded = F.pad(flags.to(torch.uint8), (0, -len(flags) % 8)).reshape(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flags.device)
    return (padded * weights).sum(dim=1, dtype=torch.uint8)


def packed_surface_blocks(grids: torch.Tensor, level: float, box_size: float) -> list[PackedBlock]:
    """`surface_block` of every cube grid of grids (N, R, R, R), packed where the values live (the GPU) before they come to the CPU."""
    grids = torch.as_tensor(grids)
    _check_cubes(grids)
    return [_pack(surface_block_tensor(values, box, box_size), level) for values, box in zip(grids, surface_boxes(grids, level))]


def _pack(block: GridBlock, level: float) -> PackedBlock:
    inside = block.values > level
    occupied = inside[None, None].float()
    # a sample is next to the surface when its 3x3x3 neighbourhood holds both sides of the level
    has_inside = F.max_pool3d(occupied, 3, stride=1, padding=1)[0, 0] > 0
    has_outside = F.max_pool3d(1 - occupied, 3, stride=1, padding=1)[0, 0] > 0
    near_index = (has_inside & has_outside).flatten().nonzero()[:, 0]
    return PackedBlock(
        tuple(block.values.shape),
        block.offset,
        block.resolution,
        block.box_size,
        level,
        pack_bits(inside.flatten()).cpu().numpy(),
        near_index.cpu().numpy(),
        block.values.flatten()[near_index].float().cpu().numpy(),
    )


def block_to_mesh(block: GridBlock, level: float, keep_largest: bool = True) -> trimesh.Trimesh:
    """Marching cubes of a grid block at `level` (inside where density > level), in world units."""
    values = block.values
    if values.ndim != 3 or min(values.shape) < 2 or not values.min() < level < values.max():
        return trimesh.Trimesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), process=False)
    spacing = block.box_size / (block.resolution - 1)
    # "ascent": density grows inwards, so faces wind counter-clockwise seen from outside
    # cells are visited only where `near_surface` is set (every crossed cell's first corner is): same mesh, less time
    vertices, faces, _, _ = measure.marching_cubes(values, level, spacing=(spacing,) * 3, gradient_direction="ascent", mask=block.near_surface)
    vertices = (vertices + np.asarray(block.offset) * spacing - block.box_size / 2).astype(np.float32)
    mesh = trimesh.Trimesh(vertices, faces.astype(np.int64), process=False)
    return keep_largest_component(mesh) if keep_largest else mesh


def grid_to_mesh(values: torch.Tensor | np.ndarray, level: float, box_size: float, keep_largest: bool = True) -> trimesh.Trimesh:
    """Marching cubes of a whole cube grid [x, y, z]: only its surface block is marched, the mesh is the same."""
    return block_to_mesh(surface_block(values, level, box_size), level, keep_largest)


def depth_to_mesh(
    depth: torch.Tensor, camera: torch.Tensor, mask: torch.Tensor | None = None, mask_threshold: float = 0.5
) -> trimesh.Trimesh:
    """A mesh from a depth map (R, R) seen by a 25-number camera: pixel rays scaled by depth, two triangles per quad.

    Depth is the distance along each unit pixel ray (the renderer's expected ray depth); quads
    with a corner whose mask is below `mask_threshold` are left out. Faces look at the camera.
    """
    depth = torch.as_tensor(depth).reshape(depth.shape[-2:]).double()
    resolution = depth.shape[-1]
    origins, directions = camera_rays(torch.as_tensor(camera).reshape(1, 25).double(), resolution)
    vertices = (origins[0] + depth.reshape(-1, 1) * directions[0]).float().numpy()
    valid = np.ones((resolution, resolution), bool) if mask is None else torch.as_tensor(mask).reshape(resolution, resolution).numpy() >= mask_threshold
    index = np.arange(resolution * resolution).reshape(resolution, resolution)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[:-1, 1:], index[1:, 1:]  # (row, col), (row+1, col), ...
    quad_ok = (valid[:-1, :-1] & valid[1:, :-1] & valid[:-1, 1:] & valid[1:, 1:]).reshape(-1)
    # camera y points down and x right, so (a, b, c) = (here, below, right) winds towards the camera
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3)[quad_ok], np.stack([c, b, d], -1).reshape(-1, 3)[quad_ok]])
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.remove_unreferenced_vertices()
    return mesh


def mesh_to_bytes(mesh: trimesh.Trimesh, mesh_format: str = "ply") -> bytes:
    """Serialize a mesh: binary little-endian PLY (float32 vertices) or Wavefront OBJ; same mesh, same bytes."""
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {mesh_format!r}; choose one of {MESH_FORMATS}")
    if mesh_format == "ply":
        return mesh.export(file_type="ply", encoding="binary")
    return mesh.export(file_type="obj", include_normals=False, include_texture=False).encode()


def mesh_from_bytes(data: bytes, mesh_format: str = "ply") -> trimesh.Trimesh:
    """Parse mesh bytes written by `mesh_to_bytes`, keeping vertex order and faces as stored."""
    return trimesh.load(io.BytesIO(data), file_type=mesh_format, process=False, maintain_order=True, force="mesh")


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write a mesh to .ply or .obj by the path's suffix, through a temporary name."""
    path = Path(path)
    data = mesh_to_bytes(mesh, path.suffix.lstrip(".").lower())
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    path = Path(path)
    return mesh_from_bytes(path.read_bytes(), path.suffix.lstrip(".").lower())


def save_mrc(values: np.ndarray, path: str | Path, box_size: float) -> Path:
    """Write a density grid as an MRC volume (voxel size in world units, origin at the cube's corner)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    spacing = box_size / (values.shape[0] - 1)
    with mrcfile.new(partial, overwrite=True) as mrc:
        # MRC stores sections along z, rows along y, columns along x: [z, y, x]
        mrc.set_data(np.ascontiguousarray(values.transpose(2, 1, 0), dtype=np.float32))
        mrc.voxel_size = spacing
        mrc.header.origin = (-box_size / 2,) * 3
    partial.replace(path)
    return path


def load_mrc(path: str | Path) -> tuple[np.ndarray, float]:
    """A density grid [x, y, z] and its voxel size from an MRC file written by `save_mrc`."""
    with mrcfile.open(path, permissive=False) as mrc:
        return np.ascontiguousarray(mrc.data.transpose(2, 1, 0)), float(mrc.voxel_size.x)


def render_preview(
    mesh: trimesh.Trimesh,
    camera: torch.Tensor | None = None,
    resolution: int = 256,
    color: tuple[float, float, float] = (0.8, 0.78, 0.75),
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """A flat-shaded image (H, W, 3) uint8 of a mesh seen by a 25-number camera (frontal by default).

    A numpy z-buffer rasterizer with a head light: small and dependency-free, for logs and docs.
    """
    camera = (frontal_camera() if camera is None else torch.as_tensor(camera)).reshape(25).double().numpy()
    cam2world, k = camera[:16].reshape(4, 4), camera[16:].reshape(3, 3)
    world2cam = np.linalg.inv(cam2world)
    image = np.empty((resolution, resolution, 3), np.uint8)
    image[:] = background
    if len(mesh.faces) == 0:
        return image
    points = np.asarray(mesh.vertices, np.float64) @ world2cam[:3, :3].T + world2cam[:3, 3]
    triangles = points[mesh.faces]  # (F, 3, 3) camera space
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    centers = triangles.mean(1)
    view = -centers / np.linalg.norm(centers, axis=1, keepdims=True).clip(1e-12)
    shade = 0.25 + 0.75 * np.abs((normals * view).sum(1))  # head light, two-sided
    z = triangles[..., 2]
    front = (z > 1e-6).all(1)
    pixels = (triangles[..., :2] / z.clip(1e-6)[..., None] * k[[0, 1], [0, 1]] + k[[0, 1], [2, 2]]) * resolution
    hits_pixel, hits_depth, hits_face = _rasterize(pixels[front], z[front], resolution)
    order = np.lexsort((hits_depth, hits_pixel))
    first = np.unique(hits_pixel[order], return_index=True)[1]
    pixel, face = hits_pixel[order][first], hits_face[order][first]
    values = shade[front][face, None] * np.asarray(color) * 255
    image.reshape(-1, 3)[pixel] = values.round().clip(0, 255).astype(np.uint8)
    return image


def _rasterize(pixels: np.ndarray, depth: np.ndarray, resolution: int, budget: int = 2**22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments (pixel index, depth, face) of triangles (F, 3, 2) in pixel units whose pixel centres they cover."""
    low = np.floor(pixels.min(1) - 0.5).clip(0, resolution - 1).astype(np.int64)
    high = np.floor(pixels.max(1) - 0.5).clip(-1, resolution - 1).astype(np.int64)
    size = (high - low + 1).max(1)
    faces = np.flatnonzero(size > 0)
    found = []
    for bucket in np.unique(np.ceil(np.log2(size[faces].clip(1))).astype(int)):
        span = 2**bucket
        members = faces[np.ceil(np.log2(size[faces].clip(1))).astype(int) == bucket]
        oy, ox = np.meshgrid(np.arange(span), np.arange(span), indexing="ij")
        offsets = np.stack([ox.reshape(-1), oy.reshape(-1)], -1)
        step = max(1, budget // len(offsets))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            cells = low[chunk, None, :] + offsets[None]  # (F, S, 2) integer pixel (x, y)
            p = cells + 0.5
            a, b, c = (pixels[chunk, i, None, :] for i in range(3))
            area = _edge(a, b, c)
            w0, w1, w2 = _edge(b, c, p), _edge(c, a, p), _edge(a, b, p)
            sign = np.sign(area)
            inside = (w0 * sign >= 0) & (w1 * sign >= 0) & (w2 * sign >= 0) & (area != 0)
            inside &= (cells < resolution).all(-1) & (cells <= high[chunk, None, :]).all(-1)
            f, s = np.nonzero(inside)
            weights = np.stack([w0[f, s], w1[f, s], w2[f, s]], -1) / area[f, 0, None]
            z = (weights * depth[chunk[f]]).sum(-1)
            found.append((cells[f, s, 1] * resolution + cells[f, s, 0], z, chunk[f]))
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, np.zeros(0), empty
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _edge(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Twice the signed area of (a, b, p): the edge function of edge a -> b at p."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])
