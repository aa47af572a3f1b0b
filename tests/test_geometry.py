"""Geometry: marching cubes of known shapes, PLY files, depth maps to meshes, density grids of the generators."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from skimage import measure

from regress.camera import camera_rays, frontal_camera, make_cameras
from regress.generators import GeneratorSpec
from regress.generators.analytic import AnalyticGenerator
from regress.geometry.grids import available_memory_bytes, coarse_to_fine_grid, density_grid, grid_axis, grid_memory_bytes, grids_that_fit, heads_alone, heads_together, refine_grids
from regress.geometry.marching_cubes import EDGES, SEARCH_BLOCK, case_table, crossed_cells, cube_codes, marching_cubes
from regress.geometry.meshes import depth_to_mesh, extract_meshes, grid_to_mesh, grids_to_ply, mesh_from_ply, mesh_to_ply
from tests.eg3d_tiny import TINY_EG3D

BOX = 1.0


def sphere_grid(resolution: int, radius: float, center=(0.0, 0.0, 0.0), box: float = BOX) -> np.ndarray:
    """Density radius - |p - center| on the cube grid: positive inside, surface at level 0."""
    axis = grid_axis(resolution, box)
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
    mesh = grid_to_mesh(sphere_grid(64, radius, center), level=0.0, box_size=BOX)
    distance = np.linalg.norm(mesh.vertices - np.asarray(center), axis=1)
    assert np.abs(distance - radius).max() < 0.25 * BOX / 63  # within a quarter voxel
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)  # positive: faces wind outwards


def padded_noise(size: int, seed: int) -> np.ndarray:
    """Gaussian noise with an outside border: closed surfaces with many small pieces and every ambiguous cube case."""
    values = np.random.default_rng(seed).standard_normal((size, size, size)).astype(np.float32)
    values[[0, -1]] = values[:, [0, -1]] = values[:, :, [0, -1]] = -5.0
    return values


def sorted_rows(points: np.ndarray, decimals: int = 4) -> np.ndarray:
    return np.unique(np.round(points, decimals), axis=0)


def test_marching_cubes_puts_vertices_where_skimage_does_on_a_smooth_surface():
    values = sphere_grid(40, 0.3, (0.05, -0.1, 0.0))
    vertices, faces, _ = marching_cubes(torch.from_numpy(values)[None], 0.0)
    expected, expected_faces, _, _ = measure.marching_cubes(values, 0.0)
    np.testing.assert_allclose(sorted_rows(vertices.numpy()), sorted_rows(expected), atol=2e-4)
    assert len(faces) == len(expected_faces)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marching_cubes_of_noise_is_closed_and_faces_outwards(seed):
    values = padded_noise(18, seed)
    mesh = grid_to_mesh(values, 0.0, BOX, keep_largest=False)
    assert len(mesh.faces) > 5000
    assert mesh.is_watertight and mesh.is_winding_consistent  # ambiguous faces are cut alike from both sides
    assert mesh.volume > 0  # counter-clockwise seen from outside (lower density)
    # every vertex is a crossing skimage finds too (it adds extra vertices inside ambiguous cells)
    ours = (np.asarray(mesh.vertices, np.float64) + BOX / 2) / (BOX / 17)
    theirs = measure.marching_cubes(values, 0.0)[0]
    assert cKDTree(theirs).query(ours)[0].max() < 1e-4 and len(theirs) > len(ours)


@pytest.mark.parametrize("shape", [(2, 16, 16, 16), (3, 32, 24, 40), (1, 8, 8, 8), (2, 17, 16, 16)])
def test_crossed_cells_found_block_by_block_are_every_crossed_cell_in_c_order(shape):
    """Sizes that are multiples of SEARCH_BLOCK search blocks first (17 codes every cell): the same cells, codes and order
    as coding every cell, on smooth noise that crosses the grids' high ends, on the sides of a single plane and on none."""
    assert SEARCH_BLOCK == 8
    smooth = torch.nn.functional.avg_pool3d(torch.randn(shape, generator=torch.Generator().manual_seed(0))[:, None], 5, 1, 2)[:, 0]
    plane = torch.arange(shape[3], dtype=torch.float32).expand(shape) - (shape[3] - 1.5)  # crossed only in the last cells
    n, x, y, z = shape
    for grids, level in ((smooth, 0.0), (smooth, 0.2), (plane, 0.0), (smooth, 9.0)):
        inside = (grids > level).to(torch.uint8)
        codes = cube_codes(inside)
        every = ((codes != 0) & (codes != 255)).nonzero()
        flat, found = crossed_cells(inside)
        assert torch.equal(flat, ((every[:, 0] * x + every[:, 1]) * y + every[:, 2]) * z + every[:, 3])
        assert torch.equal(found, codes[tuple(every.T)])
    assert len(crossed_cells((plane > 0).to(torch.uint8))[0]) == n * (x - 1) * (y - 1)


def test_case_table_cuts_single_corners_with_one_triangle_and_has_at_most_five():
    table = case_table()
    counts = (table >= 0).sum(1) // 3
    assert counts[0] == counts[255] == 0 and counts.max() == 5
    assert all(counts[1 << c] == 1 and counts[255 ^ 1 << c] == 1 for c in range(8))
    for case in range(256):  # each crossed edge carries a vertex
        inside = [case >> c & 1 for c in range(8)]
        crossed = {e for e, (a, axis) in enumerate(EDGES) if inside[a] != inside[a | 1 << axis]}
        assert set(table[case][table[case] >= 0].tolist()) == crossed


def test_a_batch_of_grids_marches_like_each_grid_alone():
    grids = torch.from_numpy(np.stack([padded_noise(12, 3), sphere_grid(12, 0.3), np.full((12, 12, 12), -1, np.float32), padded_noise(12, 4)]))
    vertices, faces, vertex_counts, face_counts = extract_meshes(grids, 0.0, BOX)
    assert vertex_counts[2] == face_counts[2] == 0
    for grid, v, f in zip(grids, vertices.split(vertex_counts.tolist()), faces.split(face_counts.tolist())):
        alone = extract_meshes(grid[None], 0.0, BOX)
        torch.testing.assert_close(v, alone[0], rtol=0, atol=0)
        torch.testing.assert_close(f, alone[1], rtol=0, atol=0)


def test_ply_files_laid_out_for_a_batch_equal_the_single_mesh_writer():
    grids = torch.from_numpy(np.stack([sphere_grid(16, 0.3), padded_noise(16, 5)]))
    files = grids_to_ply(grids, 0.0, BOX)
    for data, grid in zip(files, grids):
        mesh, data = grid_to_mesh(grid, 0.0, BOX), bytes(data)
        assert data == mesh_to_ply(mesh)
        parsed = mesh_from_ply(data)
        np.testing.assert_array_equal(parsed.vertices, mesh.vertices)
        np.testing.assert_array_equal(parsed.faces, mesh.faces)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_marching_on_the_gpu_equals_the_cpu():
    grids = torch.from_numpy(np.stack([padded_noise(40, 6), sphere_grid(40, 0.3)]))
    cpu = extract_meshes(grids, 0.0, BOX)
    gpu = extract_meshes(grids.cuda(), 0.0, BOX)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)


def test_keep_largest_component_drops_the_smaller_piece():
    values = np.maximum(sphere_grid(48, 0.2, (-0.2, 0, 0)), sphere_grid(48, 0.1, (0.3, 0, 0)))
    both = grid_to_mesh(values, 0.0, BOX, keep_largest=False)
    largest = grid_to_mesh(values, 0.0, BOX, keep_largest=True)
    assert both.volume == pytest.approx(4 / 3 * math.pi * (0.2**3 + 0.1**3), rel=0.03)
    assert largest.volume == pytest.approx(4 / 3 * math.pi * 0.2**3, rel=0.03)
    assert largest.vertices[:, 0].max() < 0.05 and largest.is_watertight


def test_a_grid_without_surface_gives_an_empty_mesh():
    mesh = grid_to_mesh(np.zeros((8, 8, 8), np.float32), level=10.0, box_size=BOX)
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0
    assert mesh_from_ply(mesh_to_ply(mesh)).faces.shape == (0, 3)


def test_depth_mesh_vertices_lie_on_the_camera_rays_and_face_the_camera():
    camera = make_cameras(0.3, -0.1)
    resolution, center, radius = 32, torch.tensor([0.0, 0.0, 0.1]), 0.25
    depth, hit = ray_sphere_depth(camera, resolution, center, radius)
    mesh = depth_to_mesh(depth, camera[0], mask=hit.float())
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
    mesh = depth_to_mesh(depth, frontal_camera()[0])
    assert len(mesh.vertices) == 64 and len(mesh.faces) == 2 * 7 * 7
    origin = frontal_camera()[0, [3, 7, 11]].numpy()
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices - origin, axis=1), 2.0, atol=1e-6)


def test_density_grid_matches_the_generator_at_grid_points():
    generator = GeneratorSpec("analytic").create()
    w = generator.mapping(torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0)), frontal_camera(2))
    grid = density_grid(generator, w, 12, chunk_points=1000).numpy()
    assert grid.shape == (2, 12, 12, 12) and grid.dtype == np.float32
    axis = grid_axis(12, generator.box_size)
    ijk = [(0, 0, 0), (3, 7, 11), (6, 5, 6), (11, 2, 9)]
    points = torch.tensor([[axis[i], axis[j], axis[k]] for i, j, k in ijk], dtype=torch.float32)
    direct = generator.density(points.expand(2, -1, -1), w)[..., 0].numpy()
    np.testing.assert_allclose(grid[:, [p[0] for p in ijk], [p[1] for p in ijk], [p[2] for p in ijk]], direct, rtol=1e-6)
    np.testing.assert_array_equal(density_grid(generator, w[1:], 12, chunk_points=1000)[0].numpy(), grid[1])


def eg3d_tiny(device: str = "cpu"):
    torch.manual_seed(0)
    generator = GeneratorSpec("eg3d", options=TINY_EG3D).create().to(device)
    with torch.no_grad():
        z = torch.randn(2, 32).to(device)  # drawn on the CPU: CUDA's generator gives other numbers
        w = generator.mapping(z, frontal_camera(2).to(device))
    return generator, w


def test_density_grid_of_eg3d_reads_its_tri_planes_like_density():
    generator, w = eg3d_tiny()
    grid = density_grid(generator, w, 10).numpy()
    axis = grid_axis(10, generator.box_size)
    ijk = [(0, 9, 4), (5, 5, 5), (9, 1, 7)]
    points = torch.tensor([[axis[i], axis[j], axis[k]] for i, j, k in ijk], dtype=torch.float32)
    with torch.no_grad():
        direct = generator.density(points.expand(2, -1, -1), w)[..., 0].numpy()
    np.testing.assert_allclose(grid[:, [p[0] for p in ijk], [p[1] for p in ijk], [p[2] for p in ijk]], direct, rtol=1e-5, atol=1e-5)


class AnalyticHeadsTogether(AnalyticGenerator):
    """The analytic head declaring its density point by point, as EG3D's fused field is: the path of one call for all heads."""

    def batched_density_fn(self, w: torch.Tensor, state: torch.Tensor | None = None):
        return lambda points, heads: self.density(points, w if heads is None else w[heads])


def test_density_grids_of_all_heads_in_one_call_are_each_heads_own():
    together, alone = AnalyticHeadsTogether(), GeneratorSpec("analytic").create()
    w = alone.mapping(torch.randn(3, alone.z_dim, generator=torch.Generator().manual_seed(1)), frontal_camera(3))
    for stride in (None, 4):
        grids = density_grid(together, w, 25, chunk_points=4000, coarse_stride=stride)
        torch.testing.assert_close(grids, density_grid(alone, w, 25, chunk_points=4000, coarse_stride=stride), rtol=1e-6, atol=1e-6)
        assert grids.shape == (3, 25, 25, 25) and not torch.equal(grids[0], grids[1])


def test_density_grids_from_the_tri_planes_sample_kept_are_the_grids_from_the_latents():
    generator, _ = eg3d_tiny()
    with torch.no_grad():
        batch = generator.sample([3, 4], keep_density_state=True, jitter=False)
        state = batch["density_state"]
        assert state.shape[:2] == (2, 3)  # the tri-planes: three planes a head
        assert torch.equal(density_grid(generator, batch["w"], 16, state=state), density_grid(generator, batch["w"], 16))
        assert torch.equal(density_grid(generator, batch["w"], 16, coarse_stride=4, state=state), density_grid(generator, batch["w"], 16, coarse_stride=4))
        assert not torch.equal(density_grid(generator, batch["w"], 16, state=state.flip(0)), density_grid(generator, batch["w"], 16))
    assert "density_state" not in generator.sample([3], jitter=False)
    with torch.no_grad():  # synthesis hands out its tri-planes only when asked (a copy a call under CUDA graphs)
        w, camera = batch["w"], batch["camera"]
        assert "density_state" not in generator.synthesis(w, camera)
        assert torch.equal(generator.synthesis(w, camera, keep_density_state=True)["density_state"], generator.planes(w))


@pytest.mark.gpu
def test_density_grid_on_the_gpu_matches_the_cpu():
    cpu = density_grid(*eg3d_tiny("cpu"), 32).numpy()
    gpu = density_grid(*eg3d_tiny("cuda"), 32).cpu().numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_analytic_head_mesh_sits_inside_the_box_around_the_face():
    generator = GeneratorSpec("analytic").create()
    w = generator.mean_latent()[None]
    mesh = grid_to_mesh(density_grid(generator, w, 40)[0], generator.surface_level, generator.box_size)
    assert mesh.volume > 0 and len(mesh.faces) > 1000
    low, high = mesh.bounds
    assert (low >= -generator.box_size / 2 - 1e-6).all() and (high <= generator.box_size / 2 + 1e-6).all()
    assert 0.3 < high[2] < 0.45  # the nose tip, in front of the origin along +z


def test_coarse_to_fine_grids_of_the_analytic_head_give_the_dense_meshes_from_a_fraction_of_the_points():
    generator = GeneratorSpec("analytic").create()
    w = generator.mapping(torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0)), frontal_camera(2))
    level, dense = generator.surface_level, density_grid(generator, w, 49)
    for stride, stand_ins in itertools.product((4, 5), ("trilinear", "sides")):  # 5 leaves a shorter last block
        refined = coarse_to_fine_grid(generator, w, 49, stride, level, stand_ins=stand_ins)
        for keep_largest in (False, True):
            expected = [bytes(f) for f in grids_to_ply(dense, level, generator.box_size, keep_largest)]
            assert [bytes(f) for f in grids_to_ply(refined.values, level, generator.box_size, keep_largest)] == expected
        assert all(points < 0.3 * 49**3 for points in refined.points_evaluated)
        assert torch.equal(refined.values > level, dense > level)  # stand-ins keep their side of the surface
        if stand_ins == "sides":  # level ± 1 wherever the field was not evaluated
            assert ((refined.values - level).abs() != 1.0).sum().item() < 0.4 * 2 * 49**3
    assert torch.equal(density_grid(generator, w, 49, coarse_stride=4), coarse_to_fine_grid(generator, w, 49, 4, level).values)
    with pytest.raises(ValueError, match="stand_ins must be 'trilinear' or 'sides', got 'nearest'"):
        density_grid(generator, w, 49, coarse_stride=4, stand_ins="nearest")


def test_coarse_to_fine_follows_the_surface_and_misses_only_pieces_away_from_it():
    """A sphere with a thin rod out of it that no coarse point touches, and a droplet alone in a block of its own."""
    axis = torch.as_tensor(grid_axis(33, 2.0), dtype=torch.float32)  # blocks of 8 cells: coarse points at 0, ±0.5, ±1

    def field(points: torch.Tensor, droplet: bool = True) -> torch.Tensor:
        sphere = 0.45 - points.norm(dim=-1)
        rod = torch.minimum(0.05 - (points[..., 1:] - 0.25).norm(dim=-1), 0.95 - points[..., 0])  # along x at y = z = 0.25
        drop = 0.1 - (points - 0.75).norm(dim=-1)
        return torch.maximum(torch.maximum(sphere, rod), drop if droplet else torch.full_like(drop, -1.0))[..., None]

    grid = torch.cartesian_prod(axis, axis, axis)[None]
    dense, no_droplet = (field(grid, droplet).reshape(1, 33, 33, 33) for droplet in (True, False))
    ply = lambda grids, keep_largest=False: [bytes(f) for f in grids_to_ply(grids, 0.0, 2.0, keep_largest)]  # noqa: E731
    followed, [points] = refine_grids(heads_alone([field], axis), 1, axis, 0.0, stride=8, margin=0)
    assert ply(followed) == ply(no_droplet) != ply(dense)  # the rod in full, the droplet missed
    assert ply(followed, keep_largest=True) == ply(dense, keep_largest=True) and points < 33**3 / 2
    assert ply(refine_grids(heads_alone([field], axis), 1, axis, 0.0, stride=8, margin=1)[0]) == ply(dense)  # the droplet's block is next to the sphere's


def test_heads_refined_in_one_call_give_each_head_its_own_grid():
    """Spheres of three sizes (so the heads' point counts differ), in calls of a field that computes each point alone
    for any of the heads, against each head alone, in chunks small enough to take several calls: no point evaluated
    twice, and no row padded (a round's chunk may hold one head's millions of points and another's none)."""
    axis = torch.as_tensor(grid_axis(41, 2.0), dtype=torch.float32)
    radii = torch.tensor([0.3, 0.55, 0.8])
    field = lambda points, heads=None: ((radii if heads is None else radii[heads])[:, None] - points.norm(dim=-1))[..., None]  # noqa: E731
    alone = [lambda points, r=r: (r - points.norm(dim=-1))[..., None] for r in radii]
    through_field = []

    def counted(points: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
        through_field.append(points.shape[0] * points.shape[1])
        return field(points, heads)

    (together, together_points), (each, each_points) = (
        refine_grids(densities, 3, axis, 0.0, stride=4) for densities in (heads_together(counted, axis, chunk_points=3000), heads_alone(alone, axis))
    )
    assert torch.equal(together, each) and together_points == each_points
    assert sum(through_field) == sum(together_points) and len(through_field) > 3
    assert together_points[0] < together_points[1] < together_points[2] < 41**3 / 2
    assert [bytes(f) for f in grids_to_ply(together, 0.0, 2.0)] == [bytes(f) for f in grids_to_ply(field(torch.cartesian_prod(axis, axis, axis)[None]).reshape(3, 41, 41, 41), 0.0, 2.0)]


def test_coarse_to_fine_grids_of_eg3d_differ_only_by_small_pieces_off_the_refined_blocks():
    generator, w = eg3d_tiny()
    dense = density_grid(generator, w, 40)
    level = float(torch.quantile(dense[0].flatten(), 0.8))  # random weights: a level its field crosses often
    refined = coarse_to_fine_grid(generator, w, 40, 4, level, margin=0)
    ours, theirs = (extract_meshes(grids, level, generator.box_size, keep_largest=False) for grids in (refined.values, dense))
    assert (ours[3] <= theirs[3]).all() and (ours[3] < theirs[3]).any()  # some small pieces missed, none added
    dense_vertices = cKDTree(theirs[0].numpy())
    assert dense_vertices.query(ours[0].numpy())[0].max() < 1e-6  # every vertex a dense vertex
    assert [bytes(f) for f in grids_to_ply(refined.values, level, generator.box_size)] == [bytes(f) for f in grids_to_ply(dense, level, generator.box_size)]


@pytest.mark.gpu
def test_coarse_to_fine_grids_on_the_gpu_give_the_dense_largest_piece_and_the_cpu_mesh():
    """On the GPU a chunk's shape may change the field's float rounding, so meshes are compared within float tolerance."""
    generator, w = eg3d_tiny("cuda")
    dense = density_grid(generator, w, 64)
    level = float(torch.quantile(dense[0].flatten(), 0.8))
    refined = coarse_to_fine_grid(generator, w, 64, 8, level)
    assert refined.values.shape == dense.shape and max(refined.points_evaluated) < 64**3 / 2
    cpu = coarse_to_fine_grid(*eg3d_tiny(), 64, 8, level).values
    meshes = [[mesh_from_ply(bytes(f)) for f in grids_to_ply(grids, level, generator.box_size)] for grids in (refined.values, dense, cpu)]
    for ours, *others in zip(*meshes):
        for other in others:
            assert abs(len(ours.faces) - len(other.faces)) <= len(other.faces) // 1000
            assert cKDTree(other.vertices).query(ours.vertices)[0].max() < 1e-4


@pytest.mark.gpu
def test_coarse_to_fine_grids_of_the_fused_field_take_all_heads_at_once_and_give_the_dense_meshes():
    """Where the fused float16 kernel runs (each point alone), the heads are refined in one call each round: the same
    bytes as the dense grid's meshes."""
    torch.manual_seed(0)
    generator = GeneratorSpec("eg3d", options={**TINY_EG3D, "triplane_channels": 16, "render_precision": "float16"}).create().to("cuda")
    with torch.inference_mode():
        w = generator.mapping(torch.randn(3, 32).cuda(), frontal_camera(3).cuda())
        assert generator.batched_density_fn(w) is not None
        dense = density_grid(generator, w, 64)
        level = float(torch.quantile(dense[0].flatten(), 0.8))
        refined = coarse_to_fine_grid(generator, w, 64, 8, level)
        points = torch.cartesian_prod(*[torch.as_tensor(grid_axis(64, generator.box_size), dtype=torch.float32, device="cuda")] * 3)
        alone = torch.stack([density(points[None]).reshape(64, 64, 64) for density in generator.density_fns(w)])
    assert torch.equal(dense, alone)  # all heads in one call: each head's own values
    assert max(refined.points_evaluated) < 64**3  # this tiny random field crosses its level in most blocks
    assert [bytes(f) for f in grids_to_ply(refined.values, level, generator.box_size)] == [bytes(f) for f in grids_to_ply(dense, level, generator.box_size)]


def test_grids_are_meshed_as_many_at_once_as_fit_and_an_impossible_grid_is_refused():
    with pytest.raises(MemoryError, match=r"grid 8192\^3 need about .* GiB .* for one grid.*lower the mesh resolution"):
        grids_that_fit(8192, batch_size=8)
    assert grids_that_fit(64, batch_size=8) == grids_that_fit(64, batch_size=8, coarse_to_fine=True) == 8
    side = round((0.8 * available_memory_bytes() / 10 / 3) ** (1 / 3))  # about three dense grids fit
    assert 2 <= grids_that_fit(side, batch_size=8) <= 3 and grids_that_fit(side, batch_size=8, coarse_to_fine=True) < grids_that_fit(side, batch_size=8)
    assert grid_memory_bytes(512, 4, coarse_to_fine=True) == (40 + 12) * 512**3

