"""Alignment of real photos: detection (HOG, padded, CNN), the EG3D and FFHQ crops, camera fits, per-file errors."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from regress.camera import camera_rays, make_cameras  # noqa: E402
from regress.faces.landmarks import generator_template, packaged_template, project_points  # noqa: E402
from regress.generators import GeneratorSpec  # noqa: E402
from regress.inversion.align import MIRROR_68, FaceAligner, FaceError, detect_faces, load_image  # noqa: E402
from regress.inversion.camera_fit import LABEL_FOCAL, LABEL_RADIUS, CameraFitter, axis_angle, axis_angles, mirror_camera  # noqa: E402
from regress.inversion.crop import eg3d_quad, ffhq_quad, quad_coordinates  # noqa: E402
from tests.eg3d_tiny import TINY_EG3D  # noqa: E402


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def astronaut_face(astronaut):
    return detect_faces(astronaut)[0]


@pytest.fixture(scope="module")
def analytic_template():
    return generator_template(GeneratorSpec("analytic", options={"image_resolution": 64, "render_resolution": 32}).create(), "generator")


def _views(n: int, seed: int = 0) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-35, 35), rng.uniform(-20, 20)) for _ in range(n)]


def _eye_roll(landmarks: np.ndarray) -> float:
    """The eye line's angle (degrees) in image coordinates."""
    d = landmarks[42:48].mean(0) - landmarks[36:42].mean(0)
    return math.degrees(math.atan2(d[1], d[0]))


def test_astronaut_gives_one_eg3d_crop_and_a_near_frontal_label(astronaut):
    crops = FaceAligner(all_faces=True)(astronaut)
    assert len(crops) == 1
    crop = crops[0]
    assert crop.image.shape == (512, 512, 3) and crop.image.dtype == np.uint8
    assert crop.framing == "eg3d" and crop.face.detector == "hog"
    eyes = crop.landmarks[42:48].mean(0) - crop.landmarks[36:42].mean(0)
    assert 120 < np.hypot(*eyes) < 150  # EG3D framing: the eye distance is about a quarter of the crop
    meta = crop.as_meta()
    assert meta["framing"] == "eg3d" and np.asarray(meta["quad"]).shape == (4, 2) and meta["scale"] > 0
    fit = CameraFitter()(crop.landmarks_uv, packaged_template("label"))
    yaw, pitch = axis_angles(fit.camera)
    assert abs(yaw) < 10 and abs(pitch) < 12 and fit.rms * 512 < 10  # pixels at 512: a broad smile is no template
    camera = fit.camera.double().numpy()
    assert fit.camera.shape == (25,) and fit.camera.dtype == torch.float32
    assert np.linalg.norm(camera[[3, 7, 11]]) == pytest.approx(LABEL_RADIUS, abs=1e-5)  # labels sit at radius 2.7
    assert camera[16] == camera[20] == pytest.approx(LABEL_FOCAL) and camera[18] == camera[21] == 0.5


def test_eg3d_crop_keeps_the_roll_ffhq_removes_it(astronaut):
    turned = np.asarray(Image.fromarray(astronaut).rotate(12, resample=Image.Resampling.BICUBIC))
    source_roll = _eye_roll(detect_faces(turned)[0].landmarks)
    eg3d, ffhq = FaceAligner()(turned)[0], FaceAligner(crop="ffhq")(turned)[0]
    assert abs(source_roll) > 8
    assert _eye_roll(eg3d.landmarks) == pytest.approx(source_roll, abs=0.5) and abs(eg3d.as_meta()["roll_deg"]) < 1e-9
    assert abs(_eye_roll(ffhq.landmarks)) < 1.5 and ffhq.framing == "ffhq"


def test_largest_face_by_default_every_face_by_option(astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    photo = np.full((512, 512 + 384, 3), 255, np.uint8)
    photo[:, :512], photo[64:448, 512:] = astronaut, small
    largest = FaceAligner()(photo)
    both = FaceAligner(all_faces=True)(photo)
    assert len(largest) == 1 and len(both) == 2
    assert largest[0].face.box[0] < 512 and both[1].face.box[0] > 512
    assert both[0].face.area > both[1].face.area


def test_a_face_that_fills_the_frame_is_found_on_the_padded_photo(astronaut, astronaut_face):
    """A tight crop of the astronaut (inside the landmarks' box) is no face to HOG; padded, it is."""
    points = astronaut_face.landmarks
    lo, hi = points.min(0), points.max(0)
    inset = 0.05 * (hi[0] - lo[0])
    tight = astronaut[int(lo[1] + inset) : int(hi[1] - inset), int(lo[0] + inset) : int(hi[0] - inset)]
    tight = np.asarray(Image.fromarray(tight).resize((256, 256), Image.Resampling.LANCZOS))
    assert detect_faces(tight, stages=("hog",)) == []
    faces = detect_faces(tight)
    assert len(faces) == 1 and faces[0].detector == "hog_padded"
    scale = 256 / (hi - lo - 2 * inset)
    expected = (points[36:48] - lo - inset) * scale  # the eyes, moved into the tight crop
    assert np.abs(faces[0].landmarks[36:48] - expected).mean() < 6


def test_cnn_boxes_meet_the_landmark_predictor_where_hog_boxes_do(astronaut, astronaut_face):
    """The CNN fallback's box, mapped to a HOG-like one, gives the same landmarks (within a few pixels)."""
    cnn = detect_faces(astronaut, stages=("cnn",))
    assert len(cnn) == 1 and cnn[0].detector == "cnn"
    error = np.linalg.norm(cnn[0].landmarks - astronaut_face.landmarks, axis=1)
    assert error[17:].mean() < 2.0 and error.max() < 8  # inner face (brows, eyes, nose, mouth) and worst point


def test_mean_face_template_is_calibrated_to_the_ffhq_crop():
    """Seen frontally from radius 2.7, the mean face's FFHQ square is the whole image, and the fit is exact."""
    template = packaged_template("mean_face")
    frontal = make_cameras(0.0, 0.0).double().numpy()[0]
    uv = project_points(template.points, frontal)
    quad = ffhq_quad(uv * 512 - 0.5)
    np.testing.assert_allclose(quad, [[-0.5, -0.5], [-0.5, 511.5], [511.5, 511.5], [511.5, -0.5]], atol=0.1)
    fit = CameraFitter()(uv, template, focal=float(frontal[16]))
    np.testing.assert_allclose(fit.camera.numpy(), frontal, atol=1e-5)
    assert fit.distance == pytest.approx(2.7, abs=1e-6) and fit.rms < 1e-6


def test_label_template_deforms_alike_on_both_sides():
    """The label template's shape modes are mirror-symmetric: an asymmetric mode would move the landmarks as a turn
    of the head does and trade against yaw in the fit (docs/benchmarks.md, issue 25)."""
    template = packaged_template("label")
    assert len(template.modes) == 2 and np.all(template.mode_sd > 0)
    mirrored = template.modes[:, MIRROR_68] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(mirrored, template.modes, atol=0.01 * np.abs(template.modes).max())  # the template turned by its calibration, rounded


def _axis_errors(template, framing: str | None) -> np.ndarray:
    """Axis errors (degrees) of fits to the template's landmarks seen from known views, 1 px noise at 512, in a framing."""
    rng = np.random.default_rng(1)
    errors = []
    for yaw, pitch in _views(8):
        truth = make_cameras(math.radians(yaw), math.radians(pitch)).double().numpy()[0]
        pixels = project_points(template.points, truth) * 512 - 0.5 + rng.normal(0, 1.0, (68, 2))
        quad = {"eg3d": lambda: eg3d_quad(pixels, 512), "ffhq": lambda: ffhq_quad(pixels), None: lambda: None}[framing]()
        uv = (pixels + 0.5) / 512 if quad is None else quad_coordinates(pixels, quad)
        errors.append(axis_angle(CameraFitter()(uv, template, focal=float(truth[16])).camera, truth))
    return np.array(errors)


def test_generator_template_is_the_generators_own_landmarks_or_else_the_label_template(analytic_template):
    assert analytic_template.name == "analytic_landmarks" and analytic_template.frame == "world"
    assert np.abs(analytic_template.points - packaged_template("label").points).max() > 0.01
    fallback = generator_template(GeneratorSpec("eg3d", options=TINY_EG3D).create(), "generator")  # no 3D landmarks
    np.testing.assert_array_equal(fallback.points, packaged_template("label").points)


def test_camera_of_known_views_is_recovered(analytic_template):
    """Landmarks seen at known yaw/pitch (|yaw| < 35, |pitch| < 20 degrees) with 1 px noise at 512.

    In the render's own frame the fit is exact up to the noise; a crop shifts the principal point
    (a turn of the axis by shift / focal) and zooms (the camera's distance): both stay small.
    """
    errors = {framing: _axis_errors(analytic_template, framing) for framing in (None, "eg3d", "ffhq")}
    print("\ncamera axis errors (deg, mean / max): " + "; ".join(f"{k or 'render frame'} {v.mean():.2f} / {v.max():.2f}" for k, v in errors.items()))
    assert errors[None].max() < 0.5
    for framing in ("eg3d", "ffhq"):
        assert errors[framing].mean() < 1.5 and errors[framing].max() < 3.0


def test_fitted_cameras_mean_to_the_renderer_what_they_mean_to_the_fit(astronaut_face):
    """A fitted camera (with roll) read by the renderer's ray generator: points along a pixel's ray project back onto it."""
    uv = (astronaut_face.landmarks + 0.5) / 512
    camera = CameraFitter()(uv, packaged_template("label")).camera.double()[None]
    origins, directions = camera_rays(camera, 8)
    points = (origins + 2.5 * directions)[0].numpy()
    pixel = (np.arange(8) + 0.5) / 8
    expected = np.stack(np.meshgrid(pixel, pixel, indexing="xy"), -1).reshape(-1, 2)
    np.testing.assert_allclose(project_points(points, camera[0].numpy()), expected, atol=1e-6)  # float32 cameras


def test_mirror_rule_and_a_mirrored_photo_gives_the_mirrored_camera(astronaut):
    """Mirroring negates cam2world (0,1), (0,2), (1,0), (2,0), (0,3); fitting the mirrored photo gives (nearly) that."""
    label = torch.arange(25, dtype=torch.float32)
    mirrored = mirror_camera(label)
    assert [i for i in range(25) if mirrored[i] != label[i]] == [1, 2, 3, 4, 8]
    assert torch.equal(mirrored[[1, 2, 3, 4, 8]], -label[[1, 2, 3, 4, 8]]) and torch.equal(mirror_camera(mirrored), label)
    template, fitter = packaged_template("label"), CameraFitter()
    turned = np.asarray(Image.fromarray(astronaut).rotate(8, resample=Image.Resampling.BICUBIC))  # some roll, so all entries matter
    fit = fitter(FaceAligner()(turned)[0].landmarks_uv, template).camera
    fit_mirrored = fitter(FaceAligner()(np.ascontiguousarray(turned[:, ::-1]))[0].landmarks_uv, template).camera
    assert abs(float(fit[1])) > 0.05  # a rolled camera: the mirror changes the cam2world entries it negates
    assert axis_angle(fit_mirrored, mirror_camera(fit)) < 1.0
    np.testing.assert_allclose(fit_mirrored[:16].numpy(), mirror_camera(fit)[:16].numpy(), atol=0.03)


def test_grey_transparent_and_large_photos_still_align(astronaut, tmp_path):
    """Grey is expanded to RGB, alpha composited on white, a 2560 px photo detected on a smaller copy."""
    large = tmp_path / "large.jpg"
    Image.fromarray(astronaut).resize((2560, 2560), Image.Resampling.BICUBIC).save(large, quality=90)
    small_crop = FaceAligner()(astronaut)[0]
    large_crop = FaceAligner().align_file(large)[0]
    np.testing.assert_allclose(large_crop.landmarks[36:48], small_crop.landmarks[36:48], atol=6.0)
    grey = tmp_path / "grey.png"
    Image.fromarray(astronaut).convert("L").save(grey)
    rgba = tmp_path / "alpha.png"
    alpha = np.full(astronaut.shape[:2], 255, np.uint8)
    alpha[:, :64] = 0  # a transparent strip, composited on white
    Image.fromarray(np.dstack([astronaut, alpha])).save(rgba)
    for path in (grey, rgba):
        image = load_image(path)
        assert image.shape == astronaut.shape and image.dtype == np.uint8
        assert len(FaceAligner()(image)) == 1
    assert (load_image(rgba)[:, :64] == 255).all()


def _huge_png(path: Path, width: int, height: int) -> None:
    """A small PNG whose header claims a huge size (nothing is decoded before the size check)."""
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["truncated", "not_an_image", "tiny", "huge", "missing", "no_face"])
def test_bad_files_raise_clear_errors(kind, astronaut, tmp_path):
    path = tmp_path / f"{kind}.png"
    expected = {
        "truncated": "truncated or corrupt",
        "not_an_image": "not an image file",
        "tiny": "too small",
        "huge": "above the limit",
        "missing": "file not found",
        "no_face": "no face found",
    }[kind]
    if kind == "truncated":
        Image.fromarray(astronaut).save(path)
        path.write_bytes(path.read_bytes()[:20000])
    elif kind == "not_an_image":
        path.write_bytes(b"this is a text file, not a picture\n" * 10)
    elif kind == "tiny":
        Image.fromarray(astronaut).resize((24, 24)).save(path)
    elif kind == "huge":
        _huge_png(path, 30000, 30000)
    elif kind == "no_face":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
    with pytest.raises(FaceError, match=expected) as error:
        FaceAligner().align_file(path)
    assert str(path) in str(error.value)
