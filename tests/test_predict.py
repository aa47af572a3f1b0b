"""`python -m regress.predict`: real photos through real checkpoints to files that open: meshes in every format,
depth in world units, renders at the photo's camera, orbit videos; bad photos listed, reruns skip finished ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from regress import fit, predict, render
from regress.camera import frontal_camera
from regress.generate import generate
from regress.gallery import read_depth_png
from regress.generators import GeneratorSpec
from regress.geometry.grids import density_grid
from regress.geometry.mesh_files import read_density_mrc, read_mesh
from regress.geometry.meshes import depth_to_mesh, generator_meshes
from regress.sample import MASK_THRESHOLD, image_to_uint8
from regress.store.video import read_video

pytestmark = pytest.mark.single_thread
OPTIONS = {"image_resolution": 64, "render_resolution": 32, "depth_resolution": 32}
GENERATOR = GeneratorSpec("analytic", options=OPTIONS)
STAGES = {"front end", "depth regressor", "latent regressor", "refine", "render", "generator mesh", "video", "depth mesh", "write"}


def _fit(model: str, root: Path) -> Path:
    fit.main([
        "--data", "synth-online", "--model", model, "--data.generator_options", json.dumps(OPTIONS), "--data.batch_size", "4",
        "--data.epoch_length", "8", "--data.val_size", "4", "--model.encoder", "test_resnet", "--trainer.max_steps", "2",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
    ])  # fmt: skip
    return next(root.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A DepthRegressor and a LatentRegressor fitted two steps on the small analytic head: real Lightning checkpoints."""
    return {model: _fit(model, tmp_path_factory.mktemp(model)) for model in ("depth", "latent")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage_data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(folder / "no_face.png")
    Image.fromarray(astronaut).resize((40, 40)).save(folder / "tiny.png")
    (folder / "not_an_image.jpg").write_text("not a picture\n")
    os.symlink(folder / "loop.png", folder / "loop.png")
    return folder


BAD = {"no_face.png": "no face found", "tiny.png": "too small", "not_an_image.jpg": "not an image file", "loop.png": "a symbolic link that leads nowhere"}


def _predict(photos: Path, output: Path, checkpoints: dict, *extra: str) -> dict:
    return predict.main([
        "--config", "analytic", "--images", str(photos), "--output", str(output), "--generator_options", json.dumps(OPTIONS),
        "--depth_checkpoint", str(checkpoints["depth"]), "--latent_checkpoint", str(checkpoints["latent"]),
        "--mesh_format", "[glb, ply, obj, mrc]", "--mesh_resolution", "40", "--video_frames", "6", "--refine", "2",
        "--num_workers", "0", "--device", "cpu", "--progress", "false", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def predicted(photos, checkpoints, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("predict") / "out"
    return output, _predict(photos, output, checkpoints)


def test_bad_photos_are_listed_with_their_reason_and_the_good_one_is_written(predicted):
    output, summary = predicted
    errors = {Path(source).name: error for source, error in summary["errors"].items()}
    assert set(errors) == set(BAD) and all(BAD[name] in errors[name] for name in BAD)
    assert json.loads((output / "errors.json").read_text())["errors"] == [{"source": s, "error": e} for s, e in sorted(summary["errors"].items())]
    [face] = [p for p in output.iterdir() if (p / "meta.json").is_file()]
    assert face.name.startswith("astronaut-") and summary["written"] == 1


def test_every_mesh_format_holds_the_same_generator_surface_in_the_generators_own_colours(predicted):
    output, _ = predicted
    face = next(output.glob("astronaut-*"))
    meshes = [read_mesh((face / f"mesh.{f}").read_bytes(), f) for f in ("glb", "ply", "obj")]
    assert len(meshes[0].faces) > 500
    for mesh in meshes[1:]:
        np.testing.assert_allclose(mesh.vertices, meshes[0].vertices, atol=1e-6)
        assert np.array_equal(mesh.faces, meshes[0].faces) and np.array_equal(mesh.visual.vertex_colors, meshes[0].visual.vertex_colors)
    generator, w = GENERATOR.create(), torch.from_numpy(np.load(face / "w.npy"))[None]
    albedo = generator.point_colours(torch.from_numpy(np.asarray(meshes[0].vertices, np.float32))[None], w)[0].numpy()
    assert np.abs(np.asarray(meshes[0].visual.vertex_colors)[:, :3] / 255 - albedo).max() <= 0.5 / 255 + 1e-6
    grid, box_size = read_density_mrc((face / "mesh.mrc").read_bytes())
    assert grid.shape == (40, 40, 40) and box_size == pytest.approx(generator.box_size, rel=1e-6)
    assert (grid > generator.surface_level).sum() > 100  # the head is inside the grid


def test_the_render_is_the_generator_at_the_photos_camera_and_the_depth_mesh_is_the_depth(predicted):
    output, _ = predicted
    face = next(output.glob("astronaut-*"))
    camera = torch.from_numpy(np.load(face / "camera.npy"))
    assert json.loads((face / "camera.json").read_text())["camera"] == pytest.approx(camera.tolist())
    generator, w = GENERATOR.create(), torch.from_numpy(np.load(face / "w.npy"))[None]
    out = generator.synthesis(w, camera[None])
    render = np.asarray(Image.open(face / "render.png"))
    assert np.abs(render.astype(int) - image_to_uint8(out["image"])[0].permute(1, 2, 0).numpy()).max() <= 1
    np.testing.assert_allclose(np.load(face / "render_depth.npy"), out["depth"][0, 0].numpy(), atol=1e-5)
    crop = np.asarray(Image.open(face / "crop.png"))
    assert crop.shape == (64, 64, 3)
    depth = np.load(face / "depth.npy")
    mask = torch.nn.functional.interpolate(out["mask"], size=depth.shape[-1], mode="area")[0, 0]
    expected = depth_to_mesh(torch.from_numpy(depth), camera, mask, MASK_THRESHOLD)
    for name in ("depth_mesh.glb", "depth_mesh.ply"):
        mesh = read_mesh((face / name).read_bytes(), name.rsplit(".", 1)[1])
        np.testing.assert_allclose(mesh.vertices, expected.vertices, atol=1e-6)
        assert np.array_equal(mesh.faces, expected.faces) and mesh.visual.kind == "vertex"


def test_the_orbit_video_and_the_meta_record_the_run(predicted, checkpoints):
    output, _ = predicted
    face = next(output.glob("astronaut-*"))
    frames = read_video(face / "orbit.mp4")
    assert frames.shape == (6, 64, 128, 3)  # render | depth, side by side
    assert np.abs(frames[0].astype(int) - frames[2].astype(int)).mean() > 1  # the head turns
    meta = json.loads((face / "meta.json").read_text())
    assert set(meta["seconds"]) == STAGES and all(v >= 0 for v in meta["seconds"].values())
    assert meta["checkpoints"]["latent"]["sha256"] == __import__("hashlib").sha256(checkpoints["latent"].read_bytes()).hexdigest()
    assert meta["generator"]["generator"]["checksum"] == GENERATOR.build().identity()["checksum"]
    assert meta["camera"]["kind"] == "fitted" and meta["refine_final_loss_batch"] > 0 and meta["source"].endswith("astronaut.png")
    assert 0 < meta["camera"]["confidence"] <= 1


def test_a_rerun_skips_finished_photos_and_other_settings_are_refused(predicted, photos, checkpoints):
    output, _ = predicted
    before = {p: p.stat().st_mtime_ns for p in output.glob("astronaut-*/*")}
    summary = _predict(photos, output, checkpoints)
    assert summary["written"] == 0 and summary["skipped"] == 1 and len(summary["errors"]) == len(BAD)
    assert {p: p.stat().st_mtime_ns for p in output.glob("astronaut-*/*")} == before
    for other in (["--refine", "0"], ["--mesh_coarse_stride", "4"]):  # coarse to fine is a setting of its own
        with pytest.raises(SystemExit) as exit_info:
            _predict(photos, output, checkpoints, *other)
        assert exit_info.value.code == 1


@pytest.mark.parametrize(
    "args, status",
    [
        (["--images", "missing-folder", "--latent_checkpoint", "x.ckpt"], 1),
        (["--images", ".", "--mesh_format", "stl"], 2),
        (["--images", ".", "--latent_checkpoint", "x.ckpt", "--mesh_coarse_stride", "0"], 1),
    ],
)
def test_bad_command_lines_exit_with_one_line(args, status, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        predict.main([*args, "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert exit_info.value.code == status
    assert len(capsys.readouterr().err.strip().splitlines()) <= 2


def test_depth_only_writes_no_generator_outputs(photos, checkpoints, tmp_path):
    summary = predict.main([
        "--images", str(photos / "astronaut.png"), "--output", str(tmp_path), "--generator_options", json.dumps(OPTIONS),
        "--depth_checkpoint", str(checkpoints["depth"]), "--num_workers", "0", "--device", "cpu", "--progress", "false",
    ])  # fmt: skip
    face = next(tmp_path.glob("astronaut-*"))
    assert summary["written"] == 1
    assert sorted(p.name for p in face.iterdir()) == ["camera.json", "camera.npy", "crop.png", "depth.npy", "depth.png", "depth_color.png", "depth_mesh.glb", "meta.json"]
    depth, mask = read_depth_png(face / "depth.png")  # 16 bits, world units kept
    assert mask.all() and np.nanmax(np.abs(depth - np.load(face / "depth.npy"))) <= (np.ptp(np.load(face / "depth.npy")) / 65534) * 0.51 + 1e-6


def test_render_orbits_a_predicted_face_and_walks_between_two_shard_samples(predicted, tmp_path):
    output, _ = predicted
    face = next(output.glob("astronaut-*"))
    options = ["--generator_options", json.dumps(OPTIONS), "--frames", "5", "--mesh_resolution", "32", "--device", "cpu"]
    orbit = render.main(["--w", str(face), "--output", str(tmp_path / "orbit"), *options])
    assert orbit["files"] == ["mesh.glb", "meta.json", "orbit.mp4"] and read_video(tmp_path / "orbit" / "orbit.mp4").shape == (5, 64, 128, 3)
    generate(tmp_path / "shards", generator="analytic", generator_options=OPTIONS, num_samples=4, samples_per_shard=2, progress=False)
    walk = render.main(["--w", f"{tmp_path / 'shards'}:1", "--to", f"{tmp_path / 'shards'}:2", "--output", str(tmp_path / "walk"), "--mesh_format", "[ply, mrc]", *options])
    assert walk["files"] == ["interpolation.mp4", *(f"mesh_{m}.{f}" for m in ("end", "middle", "start") for f in ("mrc", "ply")), "meta.json"]
    samples = GENERATOR.build().sample([1, 2])
    frames = read_video(tmp_path / "walk" / "interpolation.mp4")
    fronts = image_to_uint8(GENERATOR.build().synthesis(samples["w"], frontal_camera(2))["image"]).permute(0, 2, 3, 1).numpy().astype(float)
    for frame, i in ((frames[0], 0), (frames[-1], 1)):  # the walk starts and ends at the two samples, seen from the front
        errors = [np.abs(frame[:, :64] - front).mean() for front in fronts]
        assert errors[i] < 6 and errors[i] < errors[1 - i] / 2  # H.264 (crf 20) of a 64-pixel render
    middle = read_mesh((tmp_path / "walk" / "mesh_middle.ply").read_bytes(), "ply")
    expected = generator_meshes(GENERATOR.build(), (samples["w"][:1] + samples["w"][1:]) / 2, density_grid(GENERATOR.build(), (samples["w"][:1] + samples["w"][1:]) / 2, 32))[0]
    np.testing.assert_allclose(middle.vertices, expected.vertices, atol=1e-5)
    coarse = render.main(["--w", f"{tmp_path / 'shards'}:1", "--to", f"{tmp_path / 'shards'}:2", "--output", str(tmp_path / "coarse"), "--mesh_format", "ply",
                          "--mesh_coarse_stride", "4", *options])  # fmt: skip
    assert len(coarse["files"]) == 5 and all((tmp_path / "coarse" / f).read_bytes() == (tmp_path / "walk" / f).read_bytes() for f in coarse["files"] if f.endswith(".ply"))


def test_render_refuses_a_latent_of_another_generator_and_a_folder_it_did_not_write(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.zeros((14, 7), np.float32))
    with pytest.raises(SystemExit) as exit_info:
        render.main(["--w", str(tmp_path / "w.npy"), "--output", str(tmp_path / "out"), "--generator_options", json.dumps(OPTIONS), "--device", "cpu"])
    assert exit_info.value.code == 1 and "holds a w of shape (14, 7)" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    np.save(tmp_path / "w.npy", GENERATOR.build().mean_latent().numpy())
    with pytest.raises(SystemExit):
        render.main(["--w", str(tmp_path / "w.npy"), "--output", str(tmp_path / "mine"), "--generator_options", json.dumps(OPTIONS), "--device", "cpu"])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_the_predict_page_opens_in_a_real_browser_with_every_image_and_the_mesh_drawn(predicted):
    from tests.chromium import check_page, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary found: apt-get install chromium (or set REGRESS_CHROMIUM)")
    output, summary = predicted
    check = check_page(Path(summary["page"]), binary)
    assert check.state == "ready", check.failures
    assert check.console_errors == []
    face = next(output.glob("astronaut-*")).name
    assert [i["src"] for i in check.images] == [f"{face}/crop.png", f"{face}/render.png", f"{face}/depth_color.png"]
    assert all(i["width"] > 0 for i in check.images)
    (view,) = check.views
    assert view["changed"] > 0.05 and view["std"] > 5.0, view  # the generator's mesh, drawn
    page = Path(summary["page"]).read_text()
    assert all(name in page for name in BAD) and "orbit.mp4" in page  # failed photos listed with the reason, the video shown


def test_aligned_eg3d_crops_keep_their_given_cameras(checkpoints, tmp_path):
    from tests.test_photos import PHOTOS

    if not PHOTOS.is_dir():
        pytest.skip(f"no labelled EG3D photos at {PHOTOS}")
    photo = tmp_path / "photos" / "celebahq_0.jpg"
    photo.parent.mkdir()
    photo.write_bytes((PHOTOS / "celebahq_0.jpg").read_bytes())
    (photo.parent / "celebahq_0.npy").write_bytes((PHOTOS / "celebahq_0.npy").read_bytes())
    predict.main([
        "--images", str(photo.parent), "--output", str(tmp_path / "out"), "--generator_options", json.dumps(OPTIONS),
        "--latent_checkpoint", str(checkpoints["latent"]), "--aligned", "true", "--cameras", "npy", "--video_frames", "0",
        "--mesh_resolution", "24", "--num_workers", "0", "--device", "cpu", "--progress", "false",
    ])  # fmt: skip
    face = next((tmp_path / "out").glob("celebahq_0-*"))
    assert np.array_equal(np.load(face / "camera.npy"), np.load(photo.with_suffix(".npy")).astype(np.float32).reshape(25))
    assert json.loads((face / "meta.json").read_text())["camera"] == {"kind": "given", "labels": "npy", "confidence": 1.0}
    crop = np.asarray(Image.open(face / "crop.png"))
    expected = np.asarray(Image.open(photo).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(crop, expected)  # the photo as it is, at the generator's side
    assert not (face / "orbit.mp4").exists()


def test_a_camera_under_the_confidence_asked_is_skipped_with_its_reason(predicted, photos, checkpoints, tmp_path):
    # just above the astronaut's own confidence (1.0 with dlib alone, lower with the face mesh beside it)
    confidence = json.loads(next(predicted[0].glob("astronaut-*/meta.json")).read_text())["camera"]["confidence"]
    threshold = confidence + 1e-3
    with pytest.raises(SystemExit) as exit_info:  # no photo left: an error, with every reason listed
        _predict(photos, tmp_path / "out", checkpoints, "--min_camera_confidence", str(threshold), "--video_frames", "0")
    assert exit_info.value.code == 1
    errors = {Path(e["source"]).name: e["error"] for e in json.loads((tmp_path / "out" / "errors.json").read_text())["errors"]}
    assert f"is under --min_camera_confidence {threshold:g}" in errors["astronaut.png"] and "give its camera with --cameras" in errors["astronaut.png"]
    assert set(errors) == {"astronaut.png", *BAD} and not list((tmp_path / "out").glob("astronaut-*"))
