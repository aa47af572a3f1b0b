"""Mesh files: one mesh as PLY, OBJ and GLB reads back the same; MRC holds the density grid; depth meshes and
generator meshes lie on the analytic head's surface in its own colours; shards in every format."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
import trimesh

from regress.camera import make_cameras
from regress.datamodules.shards import ShardDataModule
from regress.generate import generate
from regress.generators import GeneratorSpec
from regress.generators.analytic import head
from regress.geometry.grids import density_grid
from regress.geometry.mesh_files import MESH_FORMATS, SURFACE_FORMATS, density_mrc_bytes, mesh_file_bytes, read_density_mrc, read_mesh
from regress.geometry.meshes import depth_to_mesh, generator_meshes, grid_to_mesh, mesh_to_ply
from tests.test_geometry import sphere_grid

ANALYTIC = GeneratorSpec("analytic", options={"image_resolution": 64, "render_resolution": 64, "depth_resolution": 64})


def coloured_sphere() -> trimesh.Trimesh:
    mesh = grid_to_mesh(sphere_grid(24, 0.3), 0.0, 1.0)
    colours = np.random.default_rng(0).integers(0, 256, (len(mesh.vertices), 4), dtype=np.uint8)
    colours[:, 3] = 255
    mesh.visual.vertex_colors = colours
    return mesh


@pytest.mark.parametrize("file_format", SURFACE_FORMATS)
def test_one_mesh_reads_back_the_same_from_every_surface_format(file_format):
    mesh = coloured_sphere()
    back = read_mesh(mesh_file_bytes(mesh, file_format), file_format)
    tolerance = 1e-6 if file_format == "obj" else 0.0  # OBJ is text: 9 significant digits
    np.testing.assert_allclose(back.vertices, mesh.vertices, rtol=0, atol=tolerance)
    assert np.array_equal(back.faces, mesh.faces)
    assert np.array_equal(np.asarray(back.visual.vertex_colors), np.asarray(mesh.visual.vertex_colors))


def test_a_mesh_without_colours_is_the_shards_ply_and_other_formats_are_refused():
    mesh = grid_to_mesh(sphere_grid(16, 0.3), 0.0, 1.0)
    assert mesh_file_bytes(mesh, "ply") == mesh_to_ply(mesh)
    with pytest.raises(ValueError, match="a surface is written as ply, obj, glb, not 'mrc'"):
        mesh_file_bytes(mesh, "mrc")
    assert MESH_FORMATS == ("ply", "obj", "glb", "mrc")


def test_mrc_holds_the_density_grid_in_world_units(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    grid = torch.from_numpy(sphere_grid(20, 0.3, center=(0.1, 0.0, -0.05), box=0.8))
    data = density_mrc_bytes(grid, 0.8)
    values, box_size = read_density_mrc(data)
    assert np.array_equal(values, grid.numpy()) and box_size == pytest.approx(0.8, rel=1e-6)
    (tmp_path / "grid.mrc").write_bytes(data)
    with mrcfile.open(tmp_path / "grid.mrc") as mrc:  # what ChimeraX reads
        assert mrc.data.shape == (20, 20, 20) and float(mrc.voxel_size.x) == pytest.approx(0.8 / 19, rel=1e-6)
        peak = np.unravel_index(np.argmax(mrc.data), mrc.data.shape)  # sections [z, y, x]: the centre's x is last
        assert peak[2] > peak[0]


def test_a_depth_mesh_of_an_analytic_render_lies_on_the_head_and_takes_the_photos_colours():
    generator = ANALYTIC.create()
    w = generator.mean_latent()[None]
    camera = make_cameras(0.3, 0.1)
    out = generator.synthesis(w, camera)
    colours = np.full((64, 64, 3), 7, np.uint8)
    colours[:, 32:] = 200
    mesh = depth_to_mesh(out["depth"][0, 0], camera[0], out["mask"][0, 0], 0.99, colours)
    p = {name: value.unsqueeze(1) for name, value in generator.params(w).items()}
    distance = head.sdf(torch.from_numpy(np.asarray(mesh.vertices, np.float32))[None], p).abs()
    # measured: median 1.1e-5, 95th percentile 8.9e-5, worst 9.5e-4 world units (the head is about 0.5 wide)
    assert len(mesh.vertices) > 1000 and float(distance.median()) < 5e-5 and float(distance.quantile(0.95)) < 3e-4
    vertex_colours = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert set(np.unique(vertex_colours)) == {7, 200}


def test_generator_meshes_are_coloured_by_the_analytic_heads_albedo():
    generator = ANALYTIC.create()
    w = torch.stack([generator.mean_latent(), generator.mapping(torch.randn(1, generator.z_dim), make_cameras(0.0, 0.0))[0]])
    meshes = generator_meshes(generator, w, density_grid(generator, w, 48))
    assert len(meshes) == 2 and all(len(m.faces) > 1000 for m in meshes)
    for i, mesh in enumerate(meshes):
        p = {name: value[i : i + 1].unsqueeze(1) for name, value in generator.params(w).items()}
        albedo = head.albedo(torch.from_numpy(np.asarray(mesh.vertices, np.float32))[None], p)[0].numpy()
        colours = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255
        assert np.abs(colours - albedo).max() <= 0.5 / 255 + 1e-6
        assert np.ptp(colours, 0).max() > 0.2  # hair, skin, lips and eyes differ
    assert not np.array_equal(meshes[0].visual.vertex_colors, meshes[1].visual.vertex_colors)


SHARDS = dict(generator="analytic", generator_options={"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16},
              num_samples=2, samples_per_shard=2, batch_size=2, with_mesh=True, mesh_resolution=20, progress=False)  # fmt: skip


@pytest.mark.parametrize("file_format", ["obj", "glb", "mrc"])
def test_generate_writes_meshes_in_the_format_asked_and_the_shard_module_reads_surfaces(tmp_path, file_format):
    ply = generate(tmp_path / "ply", **SHARDS)
    other = generate(tmp_path / file_format, mesh_format=file_format, **SHARDS)
    with tarfile.open(tmp_path / "ply" / ply["written"][0]) as a, tarfile.open(tmp_path / file_format / other["written"][0]) as b:
        assert [n.replace("mesh.ply", f"mesh.{file_format}") for n in a.getnames()] == b.getnames()
        first_ply, first_other = a.extractfile("0000000000.mesh.ply").read(), b.extractfile(f"0000000000.mesh.{file_format}").read()
    settings = [json.loads((tmp_path / name / "manifest.json").read_text())["settings"]["mesh"] for name in ("ply", file_format)]
    assert "format" not in settings[0] and settings[1]["format"] == file_format  # PLY sets keep their settings
    module = ShardDataModule(tmp_path / file_format, batch_size=2, val_shards=0, with_mesh=True, num_workers=0, shuffle_buffer=1)
    module.setup("fit")
    if file_format == "mrc":
        values, box_size = read_density_mrc(first_other)
        assert values.shape == (20, 20, 20) and box_size == pytest.approx(GeneratorSpec("analytic").create().box_size, rel=1e-6)
        with pytest.raises(ValueError, match=r"holds a density grid \(mesh.mrc\), not a surface"):
            next(iter(module.train_dataloader()))
        return
    mesh = read_mesh(first_other, file_format)
    reference = read_mesh(first_ply, "ply")
    np.testing.assert_allclose(mesh.vertices, reference.vertices, atol=1e-6)
    assert np.array_equal(mesh.faces, reference.faces)
    assert next(iter(module.train_dataloader()))["mesh"][0]["faces"].shape[1] == 3
