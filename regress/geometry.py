"""Geometry of generated heads: density on a cube grid, marching-cubes meshes, depth-map meshes.

Grids are indexed [x, y, z] in world axes and sample the cube of edge `box_size` around the
origin at `resolution` points per axis, ends included (voxel size box_size / (resolution - 1)),
like EG3D's shape extraction. Meshes are trimesh objects in world units, float32 vertices.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np
import torch
import trimesh

from regress.camera import camera_rays, frontal_camera
from regress.marching_cubes import largest_pieces, march

DensityField = Callable[[torch.Tensor], torch.Tensor]  # world points (N, P, 3) -> density (N, P, 1)
MESH_FORMATS = ("ply", "obj")


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


def march_grids(
    grids: torch.Tensor, level: float, box_size: float, keep_largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Meshes of cube grids (N, R, R, R) at `level` (inside: density > level), computed where the grids live.

    Returns vertices (V, 3) float32 in world units, faces (F, 3) int64 numbered within their own
    mesh, and each mesh's vertex and face counts (N,): the meshes one after the other. With
    `keep_largest`, only each mesh's piece with the most faces is kept (unused vertices dropped).
    """
    grids = torch.as_tensor(grids)
    if grids.ndim != 4 or grids.shape[1:] != (grids.shape[1],) * 3:
        raise ValueError(f"density grids must be cubes (N, R, R, R), got shape {tuple(grids.shape)}")
    count = len(grids)
    vertices, faces, vertex_grid = march(grids, level)
    if keep_largest and len(faces):
        faces = faces[largest_pieces(faces, vertex_grid, count)]
        used = torch.zeros(len(vertices), dtype=torch.bool, device=faces.device)
        used[faces.reshape(-1)] = True
        renumber = torch.cumsum(used, 0) - 1  # kept vertices keep their order
        vertices, vertex_grid, faces = vertices[used], vertex_grid[used], renumber[faces]
    vertex_counts = torch.bincount(vertex_grid, minlength=count)
    face_grid = vertex_grid[faces[:, 0]]
    faces = faces - (torch.cumsum(vertex_counts, 0) - vertex_counts)[face_grid][:, None]
    spacing = box_size / (grids.shape[1] - 1)
    return vertices * spacing - box_size / 2, faces, vertex_counts, torch.bincount(face_grid, minlength=count)


def grids_to_meshes(grids: torch.Tensor, level: float, box_size: float, keep_largest: bool = True) -> list[trimesh.Trimesh]:
    """`march_grids` as one trimesh per grid (on the CPU)."""
    vertices, faces, vertex_counts, face_counts = (t.cpu() for t in march_grids(grids, level, box_size, keep_largest))
    return [
        trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        for v, f in zip(vertices.split(vertex_counts.tolist()), faces.split(face_counts.tolist()))
    ]


def grids_to_ply(grids: torch.Tensor, level: float, box_size: float, keep_largest: bool = True) -> list[memoryview]:
    """`march_grids` as one binary PLY file per grid: the files are laid out back to back where the grids live and
    copied to the host once (into pinned memory from a GPU); each is a zero-copy view of that buffer."""
    vertices, faces, vertex_counts, face_counts = march_grids(grids, level, box_size, keep_largest)
    vertex_counts, face_counts = vertex_counts.tolist(), face_counts.tolist()
    headers = [_ply_header(v, f) for v, f in zip(vertex_counts, face_counts)]
    header_bytes = torch.frombuffer(bytearray(b"".join(headers)), dtype=torch.uint8).to(vertices.device)
    parts = zip(
        header_bytes.split([len(h) for h in headers]),
        vertices.contiguous().view(torch.uint8).reshape(-1).split([12 * v for v in vertex_counts]),
        _ply_face_records(faces).reshape(-1).split([13 * f for f in face_counts]),
    )
    files = torch.cat([piece for file in parts for piece in file])
    if files.device.type != "cpu":
        files = torch.empty(files.shape, dtype=torch.uint8, pin_memory=True).copy_(files)
    buffer = memoryview(files.numpy())
    ends = np.cumsum([len(h) + 12 * v + 13 * f for h, v, f in zip(headers, vertex_counts, face_counts)]).tolist()
    return [buffer[start:end] for start, end in zip([0] + ends[:-1], ends)]


def _ply_header(num_vertices: int, num_faces: int) -> bytes:
    return (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {num_vertices}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {num_faces}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()


def _ply_face_records(faces: torch.Tensor) -> torch.Tensor:
    """Binary PLY face records (F, 13) uint8: the count 3, then three little-endian int32 indices."""
    indices = faces.to(torch.int32).reshape(-1).clone().view(torch.uint8).reshape(len(faces), 12)  # torch is little-endian everywhere
    return torch.cat([torch.full((len(faces), 1), 3, dtype=torch.uint8, device=faces.device), indices], 1)



def grid_to_mesh(values: torch.Tensor | np.ndarray, level: float, box_size: float, keep_largest: bool = True) -> trimesh.Trimesh:
    """Marching cubes of one cube grid [x, y, z] (where it lives), as a trimesh on the CPU."""
    return grids_to_meshes(torch.as_tensor(values)[None], level, box_size, keep_largest)[0]


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
        vertices, faces = np.asarray(mesh.vertices, "<f4"), torch.as_tensor(np.asarray(mesh.faces, np.int64)).reshape(-1, 3)
        return _ply_header(len(vertices), len(faces)) + vertices.tobytes() + _ply_face_records(faces).numpy().tobytes()
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
