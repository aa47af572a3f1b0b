"""Mesh files in the formats people open: PLY, OBJ and GLB (trimesh's writers, vertex colours kept) and MRC, the raw
density grid (mrcfile), as EG3D's own scripts write shapes for ChimeraX.

PLY without colours keeps `meshes.mesh_to_ply`'s bytes (what shards have always held); with colours it is trimesh's
binary PLY with RGBA per vertex.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import trimesh

from regress.geometry.grids import StandIns
from regress.geometry.meshes import grids_to_ply, marched_meshes, mesh_from_ply, mesh_to_ply

MeshFormat = Literal["ply", "obj", "glb", "mrc"]
MESH_FORMATS: tuple[str, ...] = ("ply", "obj", "glb", "mrc")
SURFACE_FORMATS: tuple[str, ...] = ("ply", "obj", "glb")  # the formats of a surface; mrc holds a density grid


def check_mesh_format(name: str) -> str:
    """The format's name; a ValueError naming the formats when it is none of them."""
    if name not in MESH_FORMATS:
        raise ValueError(f"mesh format {name!r} is not one of {', '.join(MESH_FORMATS)} (mrc: the density grid, for ChimeraX)")
    return name


def mesh_formats(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The formats asked for, one or a list, each checked, in order, without repeats."""
    return tuple(dict.fromkeys(check_mesh_format(name) for name in ([value] if isinstance(value, str) else value)))


def mesh_files(stem: str, mesh: trimesh.Trimesh, formats: tuple[str, ...], grid: torch.Tensor | np.ndarray | None = None,
               box_size: float = 1.0) -> dict[str, bytes]:  # fmt: skip
    """`STEM.FORMAT` file bytes of a mesh in each surface format asked for, and `STEM.mrc` of its density grid when
    mrc is asked for and the mesh has one."""
    files = {f"{stem}.{f}": mesh_file_bytes(mesh, f) for f in formats if f in SURFACE_FORMATS}
    if "mrc" in formats and grid is not None:
        files[f"{stem}.mrc"] = density_mrc_bytes(grid, box_size)
    return files


def mesh_file_bytes(mesh: trimesh.Trimesh, file_format: str) -> bytes:
    """A surface as a PLY (binary), OBJ or GLB file, with the mesh's vertex colours when it has them."""
    if file_format not in SURFACE_FORMATS:
        raise ValueError(f"a surface is written as {', '.join(SURFACE_FORMATS)}, not {file_format!r}")
    coloured = mesh.visual.kind == "vertex"
    if file_format == "ply" and not coloured:
        return mesh_to_ply(mesh)
    if file_format == "obj":
        return mesh.export(file_type="obj", include_color=coloured, include_normals=False, include_texture=False, digits=9).encode()
    return mesh.export(file_type=file_format)


def read_mesh(data: bytes | memoryview, file_format: str) -> trimesh.Trimesh:
    """A surface file's mesh, vertex order and faces as stored (colours as RGBA uint8 when it has them)."""
    if file_format == "ply":
        return mesh_from_ply(bytes(data))
    if file_format not in SURFACE_FORMATS:
        raise ValueError(f"{file_format!r} is no surface format ({', '.join(SURFACE_FORMATS)})")
    return trimesh.load(io.BytesIO(bytes(data)), file_type=file_format, process=False, maintain_order=True, force="mesh")


def density_mrc_bytes(grid: torch.Tensor | np.ndarray, box_size: float) -> bytes:
    """A density grid [x, y, z] (R, R, R) as an MRC volume: float32, voxels box_size / (R - 1) apart, origin at the cube's
    corner, so ChimeraX shows it in world units; MRC stores sections [z, y, x]."""
    import mrcfile

    values = np.ascontiguousarray(torch.as_tensor(grid).float().cpu().numpy().transpose(2, 1, 0))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "grid.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(values)
            mrc.voxel_size = box_size / (values.shape[0] - 1)
            mrc.header.origin = (-box_size / 2,) * 3
        return path.read_bytes()


def read_density_mrc(data: bytes) -> tuple[np.ndarray, float]:
    """The density grid [x, y, z] of `density_mrc_bytes` and its box size."""
    import mrcfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "grid.mrc"
        path.write_bytes(data)
        with mrcfile.open(path, permissive=False) as mrc:
            values = np.array(mrc.data).transpose(2, 1, 0)
            box_size = float(mrc.voxel_size.x) * (values.shape[0] - 1)
    return values, box_size


def stand_ins_for(file_format: str) -> StandIns:
    """The coarse-to-fine stand-ins a file format wants: the smooth volume for MRC, the cheaper sides for surfaces."""
    return "trilinear" if file_format == "mrc" else "sides"


def grid_files(grids: torch.Tensor, level: float, box_size: float, keep_largest: bool, file_format: str) -> list[bytes | memoryview]:
    """One file per density grid (N, R, R, R): its marching-cubes surface as PLY (laid out on the grids' device, the
    shards' fast path), OBJ or GLB, or the grid itself as MRC."""
    if file_format == "ply":
        return grids_to_ply(grids, level, box_size, keep_largest)
    if file_format == "mrc":
        return [density_mrc_bytes(grid, box_size) for grid in grids]
    pieces = marched_meshes(grids, level, box_size, keep_largest)
    return [mesh_file_bytes(trimesh.Trimesh(v.cpu().numpy(), f.cpu().numpy(), process=False), file_format) for v, f in pieces]
