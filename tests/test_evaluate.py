"""`python -m regress.evaluate`: pairs from real photos end to end (bad files listed, resumable, shards), the
pairs data module under `regress.fit --data pairs`, and the benchmark's report on Lightning checkpoints."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from test_align import _huge_png  # noqa: E402

from regress import evaluate, fit  # noqa: E402
from regress.camera import make_cameras  # noqa: E402
from regress.datamodules.folder import FolderDataModule  # noqa: E402
from regress.datamodules.pairs import PairDataModule, PairDataset, collate_pairs, validation_keys  # noqa: E402
from regress.evaluation.benchmark import run_benchmark  # noqa: E402
from regress.evaluation.encoder import model_input  # noqa: E402
from regress.export import export  # noqa: E402
from regress.generators import GeneratorSpec  # noqa: E402
from regress.evaluation.report import plot_examples  # noqa: E402
from regress.faces.landmarks import generator_template  # noqa: E402
from regress.gallery.depth import colorize_depth  # noqa: E402
from regress.geometry.mesh_files import read_mesh  # noqa: E402
from regress.geometry.meshes import mesh_from_ply  # noqa: E402
from regress.inversion.align import FaceAligner, FaceError  # noqa: E402
from regress.inversion.front_end import PhotoFrontEnd  # noqa: E402
from regress.inversion.pairs import PairBuilder  # noqa: E402
from regress.inversion.photos import CameraLabels  # noqa: E402
from regress.inversion.project import ProjectionConfig  # noqa: E402
from regress.models import DepthRegressor, LatentRegressor  # noqa: E402
from regress.models.losses import scale_shift_aligned  # noqa: E402
from regress.models.metrics import DepthMetrics  # noqa: E402
from regress.sample import resize_images  # noqa: E402
from regress.store.pairs import RECORD_FILES, RECORDS, record_files, record_key  # noqa: E402

GENERATOR = '{"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16}'
GOOD = ("astronaut.png", "mirrored.jpg", "grey.png", "alpha.png")
BAD = {
    "no_face.png": "no face found",
    "tiny.png": "too small",
    "truncated.png": "truncated or corrupt",
    "not_an_image.png": "not an image file",
    "huge.png": "above the limit",
}


pytestmark = pytest.mark.single_thread  # tiny tensors: a second thread only adds synchronization


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four usable photos (colour, mirrored JPEG, grey, RGBA) and five that cannot be paired."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage_data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(folder / "mirrored.jpg", quality=92)
    Image.fromarray(astronaut).convert("L").save(folder / "grey.png")
    Image.fromarray(np.dstack([astronaut, np.full(astronaut.shape[:2], 200, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(folder / "no_face.png")
    Image.fromarray(astronaut).resize((40, 40)).save(folder / "tiny.png")
    (folder / "truncated.png").write_bytes((folder / "astronaut.png").read_bytes()[:30000])
    (folder / "not_an_image.png").write_text("not a picture\n")
    _huge_png(folder / "huge.png", 40000, 40000)
    return folder


def _pairs(photos: Path, output: Path, *extra: str) -> dict:
    return evaluate.main([
        "pairs", "--config", "pairs-analytic", "--images", str(photos), "--output", str(output),
        "--generator_options", GENERATOR, "--projection.steps", "8", "--projection.spread_samples", "200",
        "--progress", "false", "--device", "cpu", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def pair_set(photos, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("pairs") / "set"
    return output, _pairs(photos, output)


def test_pairs_from_photos_with_per_file_errors(pair_set, photos):
    output, summary = pair_set
    assert summary["built"] == len(GOOD) and summary["records"] == len(GOOD)
    errors = {Path(e["source"]).name: e["error"] for e in json.loads((output / "errors.json").read_text())["errors"]}
    assert set(errors) == set(BAD)
    for name, message in BAD.items():
        assert message in errors[name] and name in errors[name]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["records"] == len(GOOD) and manifest["errors"] == len(BAD) and manifest["latent_shape"] == [14, 32]


def test_astronaut_record_is_a_sample_beside_the_real_crop(pair_set, photos):
    output, _ = pair_set
    dataset = PairDataset(output)
    sample = dataset[dataset.keys.index(record_key(photos / "astronaut.png"))]
    assert sample["image"].shape == sample["inverted"].shape == sample["real"].shape == (3, 32, 32)
    assert torch.equal(sample["image"], sample["real"]) and sample["image"].dtype == torch.uint8
    assert sample["depth"].shape == sample["mask"].shape == (1, 16, 16) and sample["w"].shape == (14, 32)
    assert sample["camera"].shape == (25,) and sample["landmarks"].shape == (68, 2)
    meta = sample["meta"]
    assert abs(meta["yaw_deg"]) < 15 and abs(meta["pitch_deg"]) < 20 and 2.2 < meta["radius"] < 3.4
    crop = meta["crop"]
    assert crop["framing"] == "eg3d" and crop["detector"] == "hog" and np.asarray(crop["quad"]).shape == (4, 2)
    assert 0.3 < crop["scale"] < 1.0 and abs(crop["roll_deg"]) < 1e-6 and len(crop["centre"]) == 2
    source = meta["camera_source"]
    assert source["kind"] == "fitted" and source["template"] == "analytic_landmarks" and 0 < source["landmark_rms"] < 0.07
    quality = meta["quality"]
    assert 5 < quality["psnr"] < 60 and -1 <= quality["ssim"] <= 1 and 0 < quality["identity_similarity"] <= 1
    losses = json.loads((output / RECORDS / meta["key"] / "losses.json").read_text())["projection"]
    assert len(losses) == 8 and losses[-1]["loss"] < losses[0]["loss"]
    assert (sample["mask"] > 0.5).float().mean() > 0.1  # the inverted head covers the face


def test_pairs_resume_and_shards(pair_set, photos, tmp_path, capsys):
    output, _ = pair_set
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / RECORDS / "left-behind.partial").mkdir()  # a record a killed run never finished
    summary = _pairs(photos, copy, "--shards", "true")
    assert summary["built"] == 0 and summary["skipped"] == len(GOOD) and summary["records"] == len(GOOD)
    assert set(Path(s).name for s in summary["errors"]) == set(BAD)
    with pytest.raises(SystemExit):  # other settings must not be mixed into this set
        _pairs(photos, copy, "--projection.space", "w+")
    assert "(projection.space: 'w' -> 'w+'; see " in capsys.readouterr().err
    shards_only = tmp_path / "shards-only"
    shards_only.mkdir()
    for path in copy.glob("pairs-*.tar"):
        shutil.copy(path, shards_only)
    (shards_only / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match="manifest.json is damaged"):
        PairDataset(shards_only)
    shutil.copy(copy / "manifest.json", shards_only)
    from_folder, from_shards = PairDataset(copy), PairDataset(shards_only)
    assert from_folder.keys == from_shards.keys
    a, b = from_folder[0], from_shards[0]
    for name in ("image", "real", "inverted", "depth", "mask", "w", "camera", "landmarks"):
        assert torch.equal(a[name], b[name])


def _verify(root: Path, capsys) -> tuple[int, list[str]]:
    """`python -m regress.evaluate pairs --verify ROOT`: its exit status and its lines."""
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["pairs", "--verify", str(root)])
    return stop.value.code, capsys.readouterr().out.splitlines()


def test_the_manifest_lists_every_records_files_and_verify_finds_them_whole(pair_set, capsys):
    output, _ = pair_set
    listed = json.loads((output / "manifest.json").read_text())[RECORD_FILES]
    keys = sorted(p.name for p in (output / RECORDS).iterdir())
    assert sorted(listed) == keys and all(listed[k] == record_files(output, k) for k in keys)
    assert {"real.png", "depth.npy", "w.npy", "meta.json"} <= set(listed[keys[0]]) and len(listed[keys[0]]["w.npy"][1]) == 64
    status, lines = _verify(output, capsys)
    assert status == 0 and lines == [f"regress.evaluate pairs: verified {len(GOOD)} records of {output} against its manifest: "
                                     "every one whole, with its files' recorded sizes and SHA-256"]  # fmt: skip


def test_records_missing_or_damaged_are_found_before_the_first_sample_or_skipped_and_counted(pair_set, tmp_path, capsys):
    output, _ = pair_set
    damaged = tmp_path / "set"
    shutil.copytree(output, damaged)
    first, second, third, fourth = sorted(p.name for p in (damaged / RECORDS).iterdir())
    shutil.rmtree(damaged / RECORDS / first)
    (damaged / RECORDS / second / "real.png").unlink()
    with pytest.raises(ValueError, match=rf"^{damaged}: record {first} is missing \(2 of the 4 records its manifest lists are missing or damaged\)"):
        PairDataset(damaged)
    depth = damaged / RECORDS / third / "depth.npy"
    depth.write_bytes(depth.read_bytes()[:-4] + b"\0\0\0\1")  # same size, other bytes: found when the record is read
    kept = PairDataset(damaged, skip_corrupt=True)
    assert kept.keys == [fourth] and f"regress: skipping 3 of the 4 records of {damaged}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # `regress.fit --data pairs` on it: one line, status 1, before any training
        _fit(damaged, "depth", tmp_path / "run")
    assert stop.value.code == 1 and f"regress.fit: error: {damaged}: record {first} is missing (2 of the 4" in capsys.readouterr().err
    shutil.copytree(output / RECORDS / first, damaged / RECORDS / first)
    shutil.copy(output / RECORDS / second / "real.png", damaged / RECORDS / second)
    shutil.copytree(output / RECORDS / fourth, damaged / RECORDS / "unlisted")
    with pytest.raises(ValueError, match=rf"^{damaged}: record {third}: depth.npy does not match the SHA-256 its manifest lists"):
        PairDataset(damaged)[2]
    status, lines = _verify(damaged, capsys)
    assert status == 1 and lines == [
        f"regress.evaluate pairs: bad record: {damaged}: record {third}: depth.npy does not match the SHA-256 its manifest lists",
        f"regress.evaluate pairs: bad record: {damaged}: record unlisted is not listed in its manifest (added after it was written); "
        "rerun python -m regress.evaluate pairs",
        f"regress.evaluate pairs: verified 4 records of {damaged} against its manifest: 2 bad",
    ]


def test_a_set_made_before_records_were_listed_is_read_with_a_note(pair_set, tmp_path, capsys):
    output, _ = pair_set
    older = tmp_path / "older"
    shutil.copytree(output, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest[RECORD_FILES]
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert len(PairDataset(older)) == len(GOOD)
    assert capsys.readouterr().err == (f"regress: note: {older} lists no record files (made before they were listed), so missing or "
                                       "damaged records go unnoticed; rerun python -m regress.evaluate pairs on it to list them\n")  # fmt: skip


def test_a_link_loop_a_dangling_link_or_a_folder_in_a_list_is_a_listed_failure(photos, tmp_path):
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    (tmp_path / "folder.png").mkdir()
    listed = tmp_path / "list.txt"
    listed.write_text(f"{photos / 'astronaut.png'}\nloop.png\ndangling.png\nfolder.png\n")
    summary = _pairs(listed, tmp_path / "pairs")
    listed = json.loads((tmp_path / "pairs" / "errors.json").read_text())["errors"]
    errors = {Path(e["error"].split(": ")[0]).name: e["error"].split(": ", 1)[1] for e in listed}  # `PATH: why`
    assert summary["records"] == 1 and errors == {
        "loop.png": "a symbolic link that leads nowhere (a loop, or its target is gone); fix or remove the link",
        "dangling.png": "a symbolic link that leads nowhere (a loop, or its target is gone); fix or remove the link",
        "folder.png": "a folder, not an image; list the photos in it, or give the folder itself as --images",
    }


def test_record_with_mesh(photos):
    generator = GeneratorSpec("analytic", options=json.loads(GENERATOR)).create()
    builder = PairBuilder(generator, projection=ProjectionConfig(steps=2, spread_samples=50), with_mesh=True, mesh_resolution=32)
    [(key, members)] = builder.build(photos / "astronaut.png")
    assert key == record_key(photos / "astronaut.png")
    mesh = mesh_from_ply(members["mesh.ply"])
    assert len(mesh.faces) > 100 and np.abs(mesh.vertices).max() <= generator.box_size / 2 + 1e-4
    assert list(members)[-1] == "meta.json"
    glb = dataclasses.replace(builder, mesh_format="glb").build(photos / "astronaut.png")[0][1]["mesh.glb"]
    assert np.array_equal(read_mesh(glb, "glb").faces, mesh.faces)  # the same surface in the format asked
    coarse = dataclasses.replace(builder, mesh_coarse_stride=4).build(photos / "astronaut.png")[0][1]["mesh.ply"]
    assert coarse == members["mesh.ply"]  # coarse to fine: the same mesh


def test_aligned_photos_with_given_cameras_are_paired_as_they_are(tmp_path):
    """`--aligned --cameras`: the record holds the photo unmodified (bit-identical at the generator's size) and the label."""
    crop = FaceAligner()(skimage_data.astronaut())[0].image
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(crop).resize((128, 128), Image.Resampling.LANCZOS).save(photos / "face.png")
    Image.fromarray(crop[:, ::-1]).resize((128, 128), Image.Resampling.LANCZOS).save(photos / "mirrored.png")
    labels = {"face.png": make_cameras(0.2, -0.1)[0], "mirrored.png": make_cameras(-0.2, -0.1)[0]}
    (photos / "dataset.json").write_text(json.dumps({"labels": [[name, camera.tolist()] for name, camera in labels.items()]}))
    output = tmp_path / "pairs"
    evaluate.main([
        "pairs", "--config", "pairs-analytic", "--images", str(photos), "--output", str(output),
        "--generator_options", '{"image_resolution": 128, "render_resolution": 16, "depth_resolution": 16}',
        "--projection.steps", "2", "--projection.spread_samples", "50", "--aligned", "true",
        "--cameras", str(photos / "dataset.json"), "--progress", "false", "--device", "cpu",
    ])  # fmt: skip
    for name, camera in labels.items():
        record = output / RECORDS / record_key(photos / name)
        with Image.open(record / "real.png") as real, Image.open(photos / name) as photo:
            assert np.array_equal(np.asarray(real), np.asarray(photo.convert("RGB")))
        assert np.array_equal(np.load(record / "camera.npy"), camera.numpy())
        meta = json.loads((record / "meta.json").read_text())
        assert meta["camera_source"] == {"kind": "given", "labels": str(photos / "dataset.json"), "confidence": 1.0}
        assert meta["crop"]["framing"] == "given" and meta["crop"]["scale"] == 1.0


def test_given_cameras_from_npy_files_and_missing_ones_are_per_file_errors(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    face = Image.fromarray(skimage_data.astronaut()).crop((96, 0, 352, 256))
    face.save(photos / "with_label.png")
    face.save(photos / "without_label.png")
    np.save(photos / "with_label.npy", make_cameras(0.1, 0.0)[0].numpy())
    generator = GeneratorSpec("analytic", options={"image_resolution": 128, "render_resolution": 16, "depth_resolution": 16}).create()
    front_end = PhotoFrontEnd(generator_template(generator), generator.image_resolution, cameras=CameraLabels("npy"))
    builder = PairBuilder(generator, front_end, projection=ProjectionConfig(steps=1, spread_samples=50))
    [(_, members)] = builder.build(photos / "with_label.png")
    assert np.array_equal(np.load(io.BytesIO(members["camera.npy"])), make_cameras(0.1, 0.0)[0].numpy())
    with pytest.raises(FaceError, match="no camera label without_label.npy"):
        builder.build(photos / "without_label.png")


def test_camera_label_files_that_are_not_eg3d_labels_are_named_with_what_is_wrong(tmp_path):
    files = {
        "broken.json": ('{"labels": [["a.png", [1, 2', "are not valid JSON"),
        "list.json": ('[["a.png", []]]', "has no 'labels' list"),
        "entries.json": ('{"labels": [["a.png"]]}', "the entry ['a.png'] is not [name, [25 numbers]]"),
    }
    for name, (text, message) in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            CameraLabels(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)
    camera = make_cameras(0.1, 0.0)[0]
    pixels = camera.clone()
    pixels[[16, 18, 20, 21]] *= 512  # fx, cx, fy, cy in pixels of a 512² photo
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["good.png", camera.tolist()], ["pixels.png", pixels.tolist()],
                                                                  ["none.png", None]]}))  # fmt: skip
    labels = CameraLabels(tmp_path / "dataset.json")
    assert torch.equal(labels(tmp_path / "good.png"), camera)
    with pytest.raises(FaceError, match="not normalized by the image size"):
        labels(tmp_path / "pixels.png")
    with pytest.raises(FaceError, match="no camera label for it"):
        labels(tmp_path / "none.png")


def test_a_photo_listed_twice_is_paired_once_and_a_set_that_pairs_nothing_is_an_error(photos, tmp_path, capsys):
    listed = tmp_path / "photos.txt"
    listed.write_text(f"{photos / 'astronaut.png'}\n{photos / 'astronaut.png'}\n{photos / 'no_face.png'}\n")
    summary = _pairs(listed, tmp_path / "twice")
    assert summary["built"] == 1 and summary["records"] == 1 and list(summary["errors"]) == [str((photos / "no_face.png").resolve())]
    assert not list((tmp_path / "twice" / RECORDS).glob("*.partial"))
    listed.write_text(f"{photos / 'no_face.png'}\n")
    with pytest.raises(SystemExit) as stop:
        _pairs(listed, tmp_path / "none")
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"regress.evaluate: error: no photo could be paired, 1 failed: see {tmp_path / 'none' / 'errors.json'}"
    )
    listed.write_text("# nothing yet\n")
    with pytest.raises(SystemExit):
        _pairs(listed, tmp_path / "empty")
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"regress.evaluate: error: {listed} lists no photos (one path a line, relative to its folder)"


def test_a_camera_below_the_minimum_confidence_is_skipped_and_listed_not_inverted(photos, tmp_path):
    """A head turned 63 degrees (a labelled multi-view frame) has a camera of lower confidence than a frontal one:
    `--min_camera_confidence` skips it with the reason in errors.json; the confidence is in every record's meta."""
    turned = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "eg3d-photos" / "multiview" / "fbarthel_frame000.png"
    if not turned.is_file():
        pytest.skip(f"{turned} not found")
    listed = tmp_path / "photos.txt"
    listed.write_text(f"{photos / 'astronaut.png'}\n{turned}\n")
    summary = _pairs(listed, tmp_path / "pairs", "--camera_template", "label", "--min_camera_confidence", "0.75")
    assert summary["records"] == 1 and list(summary["errors"]) == [str(turned.resolve())]
    error = summary["errors"][str(turned.resolve())]
    assert error.startswith(f"{turned}: camera confidence 0.") and "under --min_camera_confidence 0.75" in error
    (record,) = (tmp_path / "pairs" / RECORDS).iterdir()
    source = json.loads((record / "meta.json").read_text())["camera_source"]
    assert source["kind"] == "fitted" and source["template"] == "label" and 0.75 <= source["confidence"] <= 1
    assert set(source["confidence_parts"]) == {"sources", "turn", "landmark_fit"} and "untrusted" not in source
    assert json.loads((tmp_path / "pairs" / "settings.json").read_text())["settings"]["min_camera_confidence"] == 0.75


def _fit(pairs: Path, model: str, root: Path, *extra: str) -> Path:
    fit.main([
        "--data", "pairs", "--data.root", str(pairs), "--data.batch_size", "2", "--data.image_size", "64",
        "--data.val_fraction", "0.5", "--model", model, "--model.encoder", "test_resnet", *extra,
        "--trainer.max_steps", "2", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(root), "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    return next(root.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def latent_checkpoint(pair_set, tmp_path_factory) -> Path:
    """A LatentRegressor fitted two steps on the pair set."""
    return _fit(pair_set[0], "latent", tmp_path_factory.mktemp("latent"), "--model.hidden", "16")


def test_pair_data_module_gives_sample_batches(pair_set):
    output, _ = pair_set
    data = PairDataModule(output, batch_size=3, image_size=64, val_fraction=0.5)
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) == len(GOOD) and len(data.val_set) >= 1
    assert data.train_set.dataset is data.val_set.dataset is data.all_set  # the set is read once, then split
    assert set(data.train_set.indices).isdisjoint(data.val_set.indices)
    assert validation_keys(["a", "b", "c", "d"], 0.0) == [] and len(validation_keys(["a", "b"], 1e-6)) == 1
    assert len(validation_keys(["a", "b", "c", "d"], 0.99)) == 3  # one record is always left to train on
    held = validation_keys(["a", "b", "c", "d"], 0.5)
    assert held and all(k in validation_keys([k, "x", "y"], 0.5) for k in held)
    batch = data.on_after_batch_transfer(next(iter(data.test_dataloader())), 0)
    assert batch["image"].shape == (3, 3, 64, 64) and batch["real"].shape == (3, 3, 32, 32)
    assert batch["w"].shape == (3, 14, 32) and len(batch["meta"]) == 3
    assert data.latent_space.shape == (14, 32) and data.latent_space.mean.shape == (14, 32) and data.latent_space.generator is None


def test_a_latent_regressor_trained_on_pairs_names_the_generator_that_inverted_them(pair_set, latent_checkpoint):
    identity = json.loads((pair_set[0] / "manifest.json").read_text())["generator"]
    record = torch.load(latent_checkpoint, weights_only=True)["hyper_parameters"]["generator_record"]
    assert record == {"name": "analytic", "checkpoint": None, "options": json.loads(GENERATOR), "checksum": identity["checksum"]}


def test_a_pairs_set_exports_to_the_folder_layout_with_its_real_photos(pair_set, tmp_path):
    output, _ = pair_set
    summary = export(str(output), str(tmp_path / "folder"), progress=False)
    keys = sorted(p.name for p in (output / RECORDS).iterdir())
    assert summary["written"] == len(keys) == len(GOOD)
    folder = tmp_path / "folder"
    for key in keys:
        assert (folder / "images" / f"{key}.png").read_bytes() == (output / RECORDS / key / "real.png").read_bytes()
        assert (folder / "latent" / f"{key}.npy").read_bytes() == (output / RECORDS / key / "w.npy").read_bytes()
    data = FolderDataModule(str(folder), depth="depth", num_workers=0, image_size=None, val_fraction=0.0)
    pairs = PairDataModule(output)
    assert data.keys == keys and data.depth_units == "world"
    assert data.latent_space.shape == pairs.latent_space.shape and torch.equal(data.latent_space.mean, pairs.latent_space.mean)
    assert data.latent_space.made_by == pairs.latent_space.made_by is not None  # the generator that inverted them, kept


def test_benchmark_reports_on_lightning_checkpoints(pair_set, latent_checkpoint, tmp_path):
    output, _ = pair_set
    depth = _fit(output, "depth", tmp_path / "depth", "--model.decoder_width", "8")
    faceless = tmp_path / "set"  # one inversion whose mask holds no face pixel: no depth score, not a perfect one
    shutil.copytree(output, faceless)
    empty = sorted((faceless / RECORDS).iterdir())[0]
    np.save(empty / "mask.npy", np.zeros_like(np.load(empty / "mask.npy")))
    manifest = json.loads((faceless / "manifest.json").read_text())
    manifest[RECORD_FILES][empty.name] = record_files(faceless, empty.name)  # as if inverted so: listed with its bytes
    (faceless / "manifest.json").write_text(json.dumps(manifest))
    report_dir = tmp_path / "report"
    report = evaluate.main([
        "benchmark", "--config", "benchmark", "--pairs", str(faceless), "--output", str(report_dir),
        "--depth_checkpoint", str(depth), "--latent_checkpoint", str(latent_checkpoint), "--progress", "false", "--device", "cpu",
    ])  # fmt: skip
    for name in ("report.json", "report.md", "plots/histograms.png", "plots/examples.png"):
        assert (report_dir / name).is_file() and (report_dir / name).stat().st_size > 100
    saved = json.loads((report_dir / "report.json").read_text())
    assert saved["pairs"] == len(GOOD) and len(saved["per_pair"]) == len(GOOD)
    assert saved["depth"]["units"] == "world"  # the depth the regressor was trained on: scored as it is
    for key in ("depth_absrel", "depth_rmse", "depth_delta1", "depth_absrel_median_scaled"):
        assert math.isfinite(saved["depth"][key]) and saved["depth"][key] >= 0
    assert 0 <= saved["depth"]["depth_delta1"] <= 1
    assert saved["depth"]["depth_absrel_median_scaled"] <= saved["depth"]["depth_absrel"] + 0.05
    assert saved["depth"]["pairs_without_face_pixels"] == 1
    unscored = [r for r in saved["per_pair"] if r["depth_absrel"] is None]
    assert [r["key"] for r in unscored] == [empty.name] and unscored[0]["depth_rmse_median_scaled"] is None
    assert all(r["depth_absrel"] > 0 for r in saved["per_pair"] if r["key"] != empty.name)
    for key in ("latent_l1", "rerender_psnr", "rerender_ssim", "rerender_identity_similarity"):
        assert math.isfinite(saved["latent"][key])
    timing = saved["timing"]
    assert timing["inversion_seconds_per_image"] > timing["latent_seconds_per_image"] > 0
    markdown = (report_dir / "report.md").read_text()
    assert "| units | world |" in markdown and "| depth_absrel |" in markdown and "| rerender_psnr |" in markdown and record_key(Path("x")).split("-")[0] == "x"
    assert report["outputs"]["examples"].endswith("examples.png")
    with Image.open(report_dir / "plots" / "examples.png") as grid:
        assert grid.width > grid.height  # five columns of examples and a colour bar, four rows
    page = (report_dir / "index.html").read_text()
    assert report["outputs"]["page"] == str(report_dir / "index.html")
    shown = re.findall(r'<img src="([^"]+)" alt="([^"]+)">', page)
    assert [alt for _, alt in shown] == ["real", "inverted", "depth", "predicted latent render"] * min(4, len(GOOD))
    assert all((report_dir / src).is_file() for src, _ in shown)
    assert all(f"<h2>{r['key']}</h2>" in page for r in saved["per_pair"][:4]) and "depth · depth_absrel" in page
    assert "encoder" not in saved and "## encoder" not in markdown  # encoder_seeds: 0 in the config


def test_a_relative_depth_regressor_is_scored_after_its_own_alignment(pair_set):
    output, _ = pair_set
    torch.manual_seed(0)
    model = DepthRegressor(encoder="test_resnet", decoder_width=8, depth_units="relative").eval()
    dataset = PairDataset(output)
    report, _ = run_benchmark(dataset, model, None, None, torch.device("cpu"), progress=False)
    assert report["depth"]["units"] == "relative (scored after per-image scale-and-shift alignment)"
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        pred = model(model_input(model, batch["image"]), batch["depth"].shape[-1])
    aligned, raw = DepthMetrics(), DepthMetrics()
    aligned.update(scale_shift_aligned(pred, batch["depth"], batch["mask"]), batch["depth"], batch["mask"])
    raw.update(pred, batch["depth"], batch["mask"])
    assert report["depth"]["depth_absrel"] == pytest.approx(aligned.compute()["depth_absrel"].item(), rel=1e-5)
    assert report["depth"]["depth_absrel"] < raw.compute()["depth_absrel"].item()  # an untrained model, forgiven its scale and shift


def test_example_pairs_colour_each_rows_depths_on_one_scale(tmp_path):
    ramp = torch.linspace(2.0, 2.5, 32 * 32).view(1, 1, 32, 32)
    inverted = torch.cat([ramp, ramp + 10.0])  # the second pair lies much further away
    mask = torch.ones_like(inverted)
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    tensors = {"real": images, "inverted": images, "inverted depth": torch.cat([inverted, mask], 1),
               "predicted depth": torch.cat([inverted + 0.3, mask], 1)}  # fmt: skip
    with Image.open(plot_examples(tensors, tmp_path / "examples.png")) as figure:
        pixels = np.asarray(figure.convert("RGB")).astype(int)
    nearest, farthest = (colorize_depth(np.full((1, 1), end), None, 0.0, 1.0)[0, 0] for end in (0.0, 1.0))
    half = len(pixels) // 2
    for rows in (pixels[:half], pixels[half:]):  # each pair's row runs through the whole colour scale
        assert (np.abs(rows - nearest).max(-1) <= 2).sum() > 50 and (np.abs(rows - farthest).max(-1) <= 2).sum() > 50


def test_benchmark_adds_the_encoder_table_on_held_out_seeds(pair_set, latent_checkpoint, tmp_path):
    output, _ = pair_set
    evaluate.main([
        "benchmark", "--config", "benchmark", "--pairs", str(output), "--output", str(tmp_path), "--latent_checkpoint", str(latent_checkpoint),
        "--encoder_seeds", "2", "--encoder_k", "[2]", "--encoder_steps", "4", "--progress", "false", "--device", "cpu",
    ])  # fmt: skip
    encoder = json.loads((tmp_path / "report.json").read_text())["encoder"]
    assert encoder["seeds"] == [10_000, 10_001] and encoder["k"] == [2] and encoder["refine"]["noise"] == 0.0
    methods = ["mean latent", "regressor", "regressor + 2 projection steps", "projection, 2 steps", "projection, 4 steps"]
    assert [r["method"] for r in encoder["rows"]] == methods and all(math.isfinite(r["image_psnr"]) for r in encoder["rows"])
    assert encoder["summary"]["steps"] == 4 and encoder["summary"]["reference_psnr"] == encoder["rows"][-1]["image_psnr"]
    markdown = (tmp_path / "report.md").read_text()
    assert "## encoder" in markdown and "| regressor + 2 projection steps | 2 |" in markdown and "4-step projection's PSNR" in markdown


def test_pairs_start_projection_from_a_latent_regressor(pair_set, photos, latent_checkpoint, tmp_path, capsys):
    latent = latent_checkpoint
    started = tmp_path / "started"
    _pairs(photos / "astronaut.png", started, "--init_checkpoint", str(latent), "--projection.steps", "0", "--projection.space", "w+")
    record = started / RECORDS / record_key(photos / "astronaut.png")
    with Image.open(record / "real.png") as real:
        crop = torch.from_numpy(np.asarray(real).transpose(2, 0, 1).copy())[None]
    model = LatentRegressor.load_from_checkpoint(latent).eval()
    with torch.no_grad():
        predicted = model(resize_images(crop, 64))[0]  # the regressor's input size
    w = torch.from_numpy(np.load(record / "w.npy"))
    assert torch.allclose(w, predicted, atol=1e-5) and not torch.allclose(w, model.mean_latent, atol=1e-5)  # 0 steps: its prediction
    assert json.loads((record / "meta.json").read_text())["inversion"]["start"] == "encoder"
    with pytest.raises(SystemExit):  # a regressor of another generator's latents
        _pairs(photos / "astronaut.png", tmp_path / "other", "--init_checkpoint", str(latent),
               "--generator_options", '{"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16, "w_dim": 8}')  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == f"regress.evaluate: error: {latent} predicts latents of shape (14, 32) but the analytic generator's are (14, 8); give a LatentRegressor trained on this generator"


def test_benchmark_needs_a_checkpoint(pair_set, tmp_path, capsys):
    output, _ = pair_set
    with pytest.raises(SystemExit):
        evaluate.main(["benchmark", "--pairs", str(output), "--output", str(tmp_path), "--depth_checkpoint", str(tmp_path / "none.ckpt")])
    with pytest.raises(SystemExit):
        evaluate.main(["benchmark", "--pairs", str(output), "--output", str(tmp_path), "--depth_checkpoint", str(tmp_path / "none.ckpt"),
                       "--encoder_seeds", "2"])  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "regress.evaluate: error: encoder_seeds scores a latent regressor as an encoder: give its latent_checkpoint, or set encoder_seeds: 0"
    )


def test_unusable_regressor_checkpoints_are_one_line_errors(pair_set, photos, latent_checkpoint, tmp_path, capsys):
    output, _ = pair_set
    text, truncated = tmp_path / "notes.ckpt", tmp_path / "truncated.ckpt"
    text.write_text("not a checkpoint\n")
    truncated.write_bytes(latent_checkpoint.read_bytes()[:5000])
    expected = {
        text: f"depth checkpoint {text} cannot be read as a PyTorch checkpoint",
        truncated: f"depth checkpoint {truncated} cannot be read as a PyTorch checkpoint",
        latent_checkpoint: f"depth checkpoint {latent_checkpoint} holds a LatentRegressor, not a DepthRegressor",
        tmp_path: f"depth checkpoint {tmp_path} is a folder",
    }
    for path, start in expected.items():
        with pytest.raises(SystemExit) as stop:
            evaluate.main(["benchmark", "--pairs", str(output), "--output", str(tmp_path / "r"), "--depth_checkpoint", str(path), "--device", "cpu"])
        assert stop.value.code == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith(f"regress.evaluate: error: {start}") and "Traceback" not in "\n".join(error)
    with pytest.raises(SystemExit):  # latents of the same shape from a generator with other weights (another seed)
        _pairs(photos / "astronaut.png", tmp_path / "other", "--init_checkpoint", str(latent_checkpoint),
               "--generator_options", '{"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16, "seed": 7}')  # fmt: skip
    assert f"{latent_checkpoint} was trained on another generator's latents" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists() and not (tmp_path / "other").exists()
