"""Geometry: marching cubes of known shapes, mesh/volume file round trips, depth maps to meshes, previews."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import measure

from regress import geometry
from regress.camera import camera_rays, frontal_camera, make_cameras
from regress.generators import create_generator
from tests.eg3d_tiny import TINY_EG3D

BOX = 1.0


def sphere_grid(resolution: int, radius: float, center=(0.0, 0.0, 0.0), box: float = BOX) -> np.ndarray:
    """Density radius - |p - center| on the cube grid: positive inside, surface at level 0."""
    axis = geometry.grid_axis(resolution, box)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    return (radius - np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)).astype(np.float32)


def ray_sphere_depth(camera: torch.Tensor, resolution: int, center: torch.Tensor, radius: float):
    """Distance along each unit pixel ray to the sphere's front surface, and which rays hit it."""
    origins, directions = camera_rays(camera.double(), resolution)
    oc = origins[0] - center.double()
    b = (oc * directions[0]).sum(-1)
    disc = b**2 - (oc**2).sum(-1) + radius**2
    hit = disc > 0
    depth = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, 10.0))
    return depth.reshape(resolution, resolution), hit.reshape(resolution, resolution)


def test_marching_cubes_of_a_sphere_has_its_radius_and_volume():
    radius, center = 0.3, (0.05, -0.02, 0.1)
    mesh = geometry.grid_to_mesh(sphere_grid(64, radius, center), level=0.0, box_size=BOX)
    distance = np.linalg.norm(mesh.vertices - np.asarray(center), axis=1)
    assert np.abs(distance - radius).max() < 0.25 * BOX / 63  # within a quarter voxel
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)  # positive: faces wind outwards


def test_marching_only_around_the_inside_voxels_gives_the_full_grid_mesh():
    values = sphere_grid(40, 0.2, (0.25, -0.1, 0.0))
    spacing = BOX / 39
    vertices, faces, _, _ = measure.marching_cubes(values, 0.0, spacing=(spacing,) * 3, gradient_direction="ascent")
    block = geometry.surface_block(torch.from_numpy(values), 0.0, BOX)
    inside_x = np.flatnonzero((values > 0).any(axis=(1, 2)))  # the sphere's x extent in grid indices
    assert block.offset[0] == inside_x[0] - 1 and block.values.shape[0] == inside_x[-1] - inside_x[0] + 3
    assert max(block.values.shape) < 20  # a sphere of radius 0.2 in a 40-point unit box
    mesh = geometry.block_to_mesh(block, 0.0, keep_largest=False)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_allclose(mesh.vertices, vertices - BOX / 2, atol=1e-6)


@pytest.mark.parametrize("count", [1, 7, 8, 13, 1001])
def test_pack_bits_equals_numpy_packbits(count):
    flags = torch.from_numpy(np.random.default_rng(count).random(count) > 0.5)
    np.testing.assert_array_equal(geometry.pack_bits(flags).numpy(), np.packbits(flags.numpy()))


@pytest.mark.parametrize("grid", ["sphere", "noise"])
def test_packed_surface_block_marches_to_the_same_mesh_bit_for_bit(grid):
    if grid == "sphere":
        values = sphere_grid(40, 0.2, (0.25, -0.1, 0.0))
    else:  # a rough field with many small pieces and the ambiguous cube cases
        values = np.random.default_rng(0).standard_normal((24, 24, 24)).astype(np.float32)
    dense = geometry.surface_block(torch.from_numpy(values), 0.0, BOX)
    packed = geometry.packed_surface_blocks(torch.from_numpy(values)[None], 0.0, BOX)[0]
    unpacked = packed.unpack()
    assert unpacked.offset == dense.offset and unpacked.values.shape == dense.values.shape
    assert not np.array_equal(unpacked.values, dense.values)  # far samples were replaced
    assert dense.near_surface is None and 0 < unpacked.near_surface.sum() < unpacked.near_surface.size
    a, b = geometry.block_to_mesh(dense, 0.0, keep_largest=False), geometry.block_to_mesh(unpacked, 0.0, keep_largest=False)
    assert len(a.faces) > 100
    np.testing.assert_array_equal(b.faces, a.faces)
    np.testing.assert_array_equal(b.vertices, a.vertices)
    if grid == "sphere":
        assert packed.near_index.size < 0.5 * dense.values.size


def test_keep_largest_component_drops_the_smaller_piece():
    values = np.maximum(sphere_grid(48, 0.2, (-0.2, 0, 0)), sphere_grid(48, 0.1, (0.3, 0, 0)))
    both = geometry.grid_to_mesh(values, 0.0, BOX, keep_largest=False)
    largest = geometry.grid_to_mesh(values, 0.0, BOX, keep_largest=True)
    assert both.volume == pytest.approx(4 / 3 * math.pi * (0.2**3 + 0.1**3), rel=0.03)
    assert largest.volume == pytest.approx(4 / 3 * math.pi * 0.2**3, rel=0.03)
    assert largest.vertices[:, 0].max() < 0.05 and largest.is_watertight


def test_a_grid_without_surface_gives_an_empty_mesh():
    mesh = geometry.grid_to_mesh(np.zeros((8, 8, 8), np.float32), level=10.0, box_size=BOX)
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0
    assert geometry.mesh_from_bytes(geometry.mesh_to_bytes(mesh)).faces.shape == (0, 3)


def test_ply_obj_and_mrc_round_trip(tmp_path):
    values = sphere_grid(24, 0.3)
    mesh = geometry.grid_to_mesh(values, 0.0, BOX)
    ply = geometry.load_mesh(geometry.save_mesh(mesh, tmp_path / "head.ply"))
    assert (tmp_path / "head.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")
    np.testing.assert_array_equal(ply.vertices, mesh.vertices)  # float32 in, float32 stored: exact
    np.testing.assert_array_equal(ply.faces, mesh.faces)
    assert geometry.mesh_to_bytes(mesh) == geometry.mesh_to_bytes(ply)
    obj = geometry.load_mesh(geometry.save_mesh(mesh, tmp_path / "head.obj"))
    np.testing.assert_allclose(obj.vertices, mesh.vertices, atol=1e-7)
    np.testing.assert_array_equal(obj.faces, mesh.faces)
    volume, voxel = geometry.load_mrc(geometry.save_mrc(values, tmp_path / "head.mrc", BOX))
    np.testing.assert_array_equal(volume, values)
    assert voxel == pytest.approx(BOX / 23, rel=1e-6)
    assert not list(tmp_path.glob("*.partial"))


def test_unknown_mesh_format_is_refused(tmp_path):
    mesh = geometry.grid_to_mesh(sphere_grid(16, 0.3), 0.0, BOX)
    with pytest.raises(ValueError, match="unknown mesh format 'stl'"):
        geometry.save_mesh(mesh, tmp_path / "head.stl")


def test_depth_mesh_vertices_lie_on_the_camera_rays_and_face_the_camera():
    camera = make_cameras(0.3, -0.1)
    resolution, center, radius = 32, torch.tensor([0.0, 0.0, 0.1]), 0.25
    depth, hit = ray_sphere_depth(camera, resolution, center, radius)
    mesh = geometry.depth_to_mesh(depth, camera[0], mask=hit.float())
    origins, directions = camera_rays(camera.double(), resolution)
    expected = (origins[0] + depth.reshape(-1, 1) * directions[0])[hit.reshape(-1)]
    # every kept vertex is a hit pixel's ray point; quads need four hit corners, so some hit pixels drop out
    kept = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
    assert torch.cdist(kept, expected).min(dim=1).values.max() < 1e-5
    assert 0.8 * hit.sum() < len(kept) <= hit.sum()
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices - center.numpy(), axis=1), radius, atol=1e-5)
    towards_camera = camera[0, [3, 7, 11]].numpy() - mesh.triangles_center
    assert ((mesh.face_normals * towards_camera).sum(1) > 0).all()


def test_depth_mesh_without_mask_keeps_every_pixel():
    depth = torch.full((1, 8, 8), 2.0)
    mesh = geometry.depth_to_mesh(depth, frontal_camera()[0])
    assert len(mesh.vertices) == 64 and len(mesh.faces) == 2 * 7 * 7
    origin = frontal_camera()[0, [3, 7, 11]].numpy()
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices - origin, axis=1), 2.0, atol=1e-6)


def test_preview_shows_a_shaded_sphere_where_the_camera_sees_it():
    mesh = geometry.grid_to_mesh(sphere_grid(48, 0.15), 0.0, BOX)
    image = geometry.render_preview(mesh, resolution=128)
    foreground = (image != 255).any(-1)
    # frontal camera 2.7 from the origin, focal 4.2647 (normalized): radius in pixels ~ 128 * f * r / d
    expected_radius = 128 * geometry.frontal_camera()[0, 16].item() * 0.15 / math.sqrt(2.7**2 - 0.15**2)
    assert foreground.sum() == pytest.approx(math.pi * expected_radius**2, rel=0.05)
    rows, cols = np.nonzero(foreground)
    assert rows.mean() == pytest.approx(63.5, abs=1) and cols.mean() == pytest.approx(63.5, abs=1)
    assert image[64, 64, 0] > image[64, int(64 + 0.95 * expected_radius), 0]  # lit centre, darker rim


def test_density_grid_matches_the_generator_at_grid_points():
    generator = create_generator("analytic")
    w = generator.mapping(torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0)), frontal_camera(2))
    grid = geometry.density_grid(generator, w, 12, chunk_points=1000).numpy()
    assert grid.shape == (2, 12, 12, 12) and grid.dtype == np.float32
    axis = geometry.grid_axis(12, generator.box_size)
    ijk = [(0, 0, 0), (3, 7, 11), (6, 5, 6), (11, 2, 9)]
    points = torch.tensor([[axis[i], axis[j], axis[k]] for i, j, k in ijk], dtype=torch.float32)
    direct = generator.density(points.expand(2, -1, -1), w)[..., 0].numpy()
    np.testing.assert_allclose(grid[:, [p[0] for p in ijk], [p[1] for p in ijk], [p[2] for p in ijk]], direct, rtol=1e-6)
    np.testing.assert_array_equal(geometry.density_grid(generator, w[1:], 12, chunk_points=1000)[0].numpy(), grid[1])


def eg3d_tiny(device: str = "cpu"):
    torch.manual_seed(0)
    generator = create_generator("eg3d", **TINY_EG3D).eval().to(device)
    with torch.no_grad():
        z = torch.randn(2, 32).to(device)  # drawn on the CPU: CUDA's generator gives other numbers
        w = generator.mapping(z, frontal_camera(2).to(device))
    return generator, w


def test_density_grid_of_eg3d_reads_its_tri_planes_like_density():
    generator, w = eg3d_tiny()
    grid = geometry.density_grid(generator, w, 10).numpy()
    axis = geometry.grid_axis(10, generator.box_size)
    ijk = [(0, 9, 4), (5, 5, 5), (9, 1, 7)]
    points = torch.tensor([[axis[i], axis[j], axis[k]] for i, j, k in ijk], dtype=torch.float32)
    with torch.no_grad():
        direct = generator.density(points.expand(2, -1, -1), w)[..., 0].numpy()
    np.testing.assert_allclose(grid[:, [p[0] for p in ijk], [p[1] for p in ijk], [p[2] for p in ijk]], direct, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_density_grid_on_the_gpu_matches_the_cpu():
    cpu = geometry.density_grid(*eg3d_tiny("cpu"), 32).numpy()
    gpu = geometry.density_grid(*eg3d_tiny("cuda"), 32).cpu().numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_analytic_head_mesh_sits_inside_the_box_around_the_face():
    generator = create_generator("analytic")
    w = generator.mean_latent()[None]
    mesh = geometry.grid_to_mesh(geometry.density_grid(generator, w, 40)[0], generator.surface_level, generator.box_size)
    assert mesh.volume > 0 and len(mesh.faces) > 1000
    low, high = mesh.bounds
    assert (low >= -generator.box_size / 2 - 1e-6).all() and (high <= generator.box_size / 2 + 1e-6).all()
    assert 0.3 < high[2] < 0.45  # the nose tip, in front of the origin along +z


def test_grid_memory_check_refuses_impossible_grids():
    with pytest.raises(MemoryError, match=r"grid 8192\^3 need about .* GiB.*lower the mesh resolution"):
        geometry.check_grid_fits(8192)
    geometry.check_grid_fits(64)
