"""Meshes of generated heads: marching cubes of density grids (batched, where the grids live), their binary PLY
files, meshes of depth maps, and generators' surfaces in their own colours. Meshes are trimesh objects in world units, float32 vertices.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import trimesh

from regress.camera import camera_rays
from regress.generators.base import Generator
from regress.geometry.marching_cubes import group_sizes, largest_pieces, marching_cubes


def extract_meshes(
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
    vertices, faces, vertex_grid = marching_cubes(grids, level)
    if keep_largest and len(faces):
        faces = faces[largest_pieces(faces, vertex_grid, count)]
        used = torch.zeros(len(vertices), dtype=torch.bool, device=faces.device)
        used[faces.reshape(-1)] = True
        renumber = torch.cumsum(used, 0) - 1  # kept vertices keep their order
        vertices, vertex_grid, faces = vertices[used], vertex_grid[used], renumber[faces]
    vertex_counts = group_sizes(vertex_grid, count)
    face_grid = vertex_grid[faces[:, 0]]
    faces = faces - (torch.cumsum(vertex_counts, 0) - vertex_counts)[face_grid][:, None]
    spacing = box_size / (grids.shape[1] - 1)
    return vertices * spacing - box_size / 2, faces, vertex_counts, group_sizes(face_grid, count)


def grids_to_ply(grids: torch.Tensor, level: float, box_size: float, keep_largest: bool = True) -> list[memoryview]:
    """`extract_meshes` as one binary PLY file per grid: the files are laid out back to back where the grids live and
    copied to the host once (into pinned memory from a GPU); each is a zero-copy view of that buffer."""
    vertices, faces, vertex_counts, face_counts = extract_meshes(grids, level, box_size, keep_largest)
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


def marched_meshes(grids: torch.Tensor, level: float, box_size: float, keep_largest: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`extract_meshes` split into one (vertices, faces) pair per grid, where the grids live."""
    vertices, faces, vertex_counts, face_counts = extract_meshes(grids, level, box_size, keep_largest)
    return list(zip(vertices.split(vertex_counts.tolist()), faces.split(face_counts.tolist())))


def grid_to_mesh(values: torch.Tensor | np.ndarray, level: float, box_size: float, keep_largest: bool = True) -> trimesh.Trimesh:
    """Marching cubes of one cube grid [x, y, z] (where it lives), as a trimesh on the CPU."""
    [(vertices, faces)] = marched_meshes(torch.as_tensor(values)[None], level, box_size, keep_largest)
    return trimesh.Trimesh(vertices.cpu().numpy(), faces.cpu().numpy(), process=False)


def depth_to_mesh(
    depth: torch.Tensor,
    camera: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_threshold: float = 0.5,
    colours: np.ndarray | None = None,
) -> trimesh.Trimesh:
    """A mesh from a depth map (R, R) seen by a 25-number camera: pixel rays scaled by depth, two triangles per quad.

    Depth is the distance along each unit pixel ray (the renderer's expected ray depth); quads
    with a corner whose mask is below `mask_threshold` are left out. Faces look at the camera.
    `colours` (R, R, 3) uint8, e.g. the photo at the depth's side, colour the vertices.
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
    vertex_colors = None if colours is None else np.asarray(colours, np.uint8).reshape(-1, 3)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=vertex_colors, process=False)
    mesh.remove_unreferenced_vertices()
    return mesh


def generator_meshes(generator: Generator, w: torch.Tensor, grids: torch.Tensor, keep_largest: bool = True) -> list[trimesh.Trimesh]:
    """The surfaces of latents w (N, num_ws, w_dim) in their density grids (N, R, R, R) (`grids.density_grid`) at the
    generator's level, marched where the grids live, vertices coloured by the generator's own colour
    (`Generator.point_colours`) when it has one."""
    meshes = []
    pieces = marched_meshes(grids, generator.surface_level, generator.box_size, keep_largest)
    for (points, triangles), colour_of in zip(pieces, generator.colour_fns(w)):
        colours = colour_of(points[None]) if len(points) else None
        rgba = None if colours is None else (colours[0].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        meshes.append(trimesh.Trimesh(points.cpu().numpy(), triangles.cpu().numpy(), vertex_colors=rgba, process=False))
    return meshes


def mesh_to_ply(mesh: trimesh.Trimesh) -> bytes:
    """A mesh as a binary little-endian PLY file (float32 vertices, int32 faces): same mesh, same bytes."""
    vertices, faces = np.asarray(mesh.vertices, "<f4"), torch.as_tensor(np.asarray(mesh.faces, np.int64)).reshape(-1, 3)
    return _ply_header(len(vertices), len(faces)) + vertices.tobytes() + _ply_face_records(faces).numpy().tobytes()


def mesh_from_ply(data: bytes) -> trimesh.Trimesh:
    """Parse PLY bytes written by `mesh_to_ply` or `grids_to_ply`, keeping vertex order and faces as stored."""
    return trimesh.load(io.BytesIO(data), file_type="ply", process=False, maintain_order=True, force="mesh")
