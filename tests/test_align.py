"""Alignment of real photos: detection, the FFHQ crop, camera estimation, and per-file errors on bad input."""

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

from regress.camera import make_cameras  # noqa: E402
from regress.generators import create_generator  # noqa: E402
from regress.inversion.align import (  # noqa: E402
    FaceAligner,
    FaceError,
    estimate_camera,
    ffhq_quad,
    generator_template,
    load_image,
    load_template,
    project_points,
    quad_coordinates,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def analytic_template() -> torch.Tensor:
    return generator_template(create_generator("analytic", image_resolution=64, render_resolution=32))


def _views(n: int, seed: int = 0) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-35, 35), rng.uniform(-20, 20)) for _ in range(n)]


def _observe(points: torch.Tensor, yaw_deg: float, pitch_deg: float, rng: np.random.Generator, noise_px: float) -> np.ndarray:
    """Landmarks of `points` seen from a known camera, in a 512 image's normalized coordinates, plus pixel noise."""
    camera = make_cameras(math.radians(yaw_deg), math.radians(pitch_deg)).double()
    uv = project_points(points[None], camera)[0].numpy()
    return uv + rng.normal(0, noise_px / 512, uv.shape)


def _to_crop(uv: np.ndarray) -> np.ndarray:
    """What the pipeline sees: the same landmarks in the FFHQ crop they define."""
    pixels = uv * 512 - 0.5
    return quad_coordinates(pixels, ffhq_quad(pixels))


def _errors(template: torch.Tensor, observed: torch.Tensor, crop: bool, fit_pivot: bool) -> np.ndarray:
    rng = np.random.default_rng(1)
    errors = []
    for yaw, pitch in _views(8):
        uv = _observe(observed, yaw, pitch, rng, noise_px=1.0)
        fit = estimate_camera(_to_crop(uv) if crop else uv, template, fit_pivot=fit_pivot)
        errors.append((math.degrees(fit.yaw) - yaw, math.degrees(fit.pitch) - pitch))
    return np.abs(np.array(errors))


def test_astronaut_gives_one_aligned_face_and_a_near_frontal_camera(astronaut):
    crops = FaceAligner(all_faces=True)(astronaut)
    assert len(crops) == 1
    crop = crops[0]
    assert crop.image.shape == (512, 512, 3) and crop.image.dtype == np.uint8
    eyes = crop.landmarks[36:42].mean(0), crop.landmarks[42:48].mean(0)
    assert abs(eyes[0][1] - eyes[1][1]) < 2.0  # roll removed
    assert 110 < eyes[1][0] - eyes[0][0] < 140  # FFHQ framing: the eye distance is about a quarter of the crop
    fit = estimate_camera(crop.landmarks_uv)
    assert abs(math.degrees(fit.yaw)) < 10 and abs(math.degrees(fit.pitch)) < 12
    assert 2.5 < fit.radius < 2.9 and fit.rms < 0.03
    assert fit.camera.shape == (25,) and fit.camera.dtype == torch.float32


def test_largest_face_by_default_every_face_by_option(astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    photo = np.full((512, 512 + 384, 3), 255, np.uint8)
    photo[:, :512], photo[64:448, 512:] = astronaut, small
    largest = FaceAligner()(photo)
    both = FaceAligner(all_faces=True)(photo)
    assert len(largest) == 1 and len(both) == 2
    assert largest[0].face.box[0] < 512 and both[1].face.box[0] > 512
    assert both[0].face.area > both[1].face.area


def test_default_template_is_calibrated_to_the_ffhq_crop():
    """Seen frontally from radius 2.7, the template's FFHQ square is the whole image and the fit is exact."""
    template = load_template()
    uv = project_points(template[None], make_cameras(0.0, 0.0).double())[0].numpy()
    quad = ffhq_quad(uv * 512 - 0.5)
    np.testing.assert_allclose(quad, [[-0.5, -0.5], [-0.5, 511.5], [511.5, 511.5], [511.5, -0.5]], atol=0.1)
    fit = estimate_camera(uv, template)
    assert abs(fit.yaw) < 1e-4 and abs(fit.pitch) < 1e-4 and abs(fit.radius - 2.7) < 1e-3 and fit.rms < 1e-6


def test_camera_of_known_views_is_recovered(analytic_template):
    """Landmarks seen at known yaw/pitch (|yaw| < 35, |pitch| < 20 degrees) with 1 px noise at 512.

    In the render's own frame the look-at camera is exact (noise-limited); in the FFHQ crop, whose
    roll removal and zoom a roll-free look-at camera only approximates, errors reach a few degrees.
    """
    frame = _errors(analytic_template, analytic_template, crop=False, fit_pivot=False)
    crop = _errors(analytic_template, analytic_template, crop=True, fit_pivot=True)
    mean_template = _errors(load_template(), load_template(), crop=True, fit_pivot=True)
    print(f"\ncamera errors (deg, mean/max of yaw, pitch): render frame {frame.mean(0)} / {frame.max(0)}; "
          f"FFHQ crop {crop.mean(0)} / {crop.max(0)}; mean-face template in crop {mean_template.mean(0)} / {mean_template.max(0)}")  # fmt: skip
    assert frame.max() < 0.5
    for errors in (crop, mean_template):
        assert errors.mean() < 2.0 and errors.max() < 4.5


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
