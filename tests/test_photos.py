"""Real EG3D crops with their upstream labels (../shared/fixtures/eg3d-photos): detection, re-crop, cameras, mirroring.

The shipped constants were fitted on these photos, so the figures here guard against regressions; the
cross-validated figures are scripts/bench_cameras.py's (docs/benchmarks.md). The multi-view person is
scored with constants fitted on the single photos only: a face never calibrated on, across yaw.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

from regress.faces.landmarks import packaged_template  # noqa: E402
from regress.inversion.align import FaceAligner, crop_face, detect_faces, load_image  # noqa: E402
from regress.inversion.calibration import MULTIVIEW, calibrate, labelled_photos, load_labelled  # noqa: E402
from regress.inversion.camera_estimate import TRUSTED, combine_cameras, estimate_camera  # noqa: E402
from regress.inversion.camera_fit import CameraFitter, axis_angle, axis_angles, mesh_camera, mirror_camera  # noqa: E402
from regress.inversion.crop import recrop_error  # noqa: E402
from regress.inversion.mesh import face_mesh, mesh_available  # noqa: E402

PHOTOS = Path(os.environ.get("REGRESS_EG3D_PHOTOS", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "eg3d-photos"))
needs_mesh = pytest.mark.skipif(not mesh_available(), reason="mediapipe is not installed (see regress/inversion/mesh.py)")


def _labelled() -> list[Path]:
    return labelled_photos(PHOTOS) if PHOTOS.is_dir() else []


def _photo(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = next((p for p in _labelled() if p.stem == name), None)
    if path is None:
        pytest.skip(f"{name} not found in {PHOTOS} (set REGRESS_EG3D_PHOTOS)")
    return load_image(path), np.load(path.with_suffix(".npy")).astype(np.float64)


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Per photo (once per module: dlib is slow): detector, re-crop against the identity, the camera's axis error."""
    paths = _labelled()
    if not paths:
        pytest.skip(f"EG3D-labelled photos not found at {PHOTOS} (set REGRESS_EG3D_PHOTOS)")
    aligner, template = FaceAligner(), packaged_template("label")
    rows = {}
    for path in paths:
        image, label = load_image(path), np.load(path.with_suffix(".npy"))
        crop = aligner(image, str(path))[0]
        again = detect_faces(crop.image)[0]
        estimate = estimate_camera(crop, template)
        rows[path.stem] = {
            "detector": crop.face.detector,
            **recrop_error(crop.face.landmarks, again.landmarks, image.shape[0], crop.image.shape[0]),
            "axis_deg": axis_angle(estimate.camera, label),
            "confidence": estimate.confidence,
        }
    return rows


def test_every_aligned_face_is_detected(measured):
    assert len(measured) == len(_labelled()) >= 16
    assert {r["detector"] for r in measured.values()} <= {"hog", "hog_padded", "cnn"}


def test_recropping_an_eg3d_crop_gives_it_back(measured):
    shifts, scales = np.array([r["shift"] for r in measured.values()]), np.array([r["scale"] for r in measured.values()])
    print(f"\nre-crop ({len(shifts)}): centre shift mean {shifts.mean():.2f} px, worst {shifts.max():.2f}; "
          f"scale mean {scales.mean():.4f}, worst {scales[np.abs(scales - 1).argmax()]:.4f}")  # fmt: skip
    assert shifts.mean() <= 3.3 and shifts.max() <= 8.0
    assert abs(scales.mean() - 1) <= 0.01 and np.abs(scales - 1).max() <= 0.04
    assert max(abs(r["roll_deg"]) for r in measured.values()) < 1.5  # the crop keeps the head's roll


def test_cameras_agree_with_the_labels_and_are_trusted(measured):
    axis = np.array([r["axis_deg"] for r in measured.values()])
    print(f"\ncamera axis to label ({len(axis)}): mean {axis.mean():.2f} deg, worst {axis.max():.2f}")
    # issue 25 asks, cross-validated, mean 2.0 and worst 5 (bench_cameras: see docs/benchmarks.md); fitted on them, less
    assert axis.mean() <= 1.6 and axis.max() <= 3.5
    assert min(r["confidence"] for r in measured.values()) >= TRUSTED


def _rotated_label(label: np.ndarray, degrees: float) -> np.ndarray:
    """The label of the photo turned `degrees` counter-clockwise about its centre: the camera rolled about its axis."""
    angle = np.radians(degrees)
    roll = np.array([[np.cos(angle), np.sin(angle), 0.0], [-np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    turned = label.copy()
    cam2world = turned[:16].reshape(4, 4)  # a view: writes go into `turned`
    cam2world[:3, :3] = cam2world[:3, :3] @ roll.T
    return turned


def _rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two cameras' orientations, roll included."""
    relative = np.asarray(a, dtype=np.float64)[:16].reshape(4, 4)[:3, :3].T @ np.asarray(b, dtype=np.float64)[:16].reshape(4, 4)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))))


@needs_mesh
@pytest.mark.parametrize("name", ["celebahq_2", "celebahq_t40", "tpnet_example"])
def test_mirrored_and_rotated_photos_get_the_mirrored_and_rotated_camera(name):
    """A labelled crop mirrored, or turned 12 degrees either way, gets the label mirrored or rolled, within the single
    photos' limit (5 degrees, roll included), and stays as trusted."""
    image, label = _photo(name)
    aligner, template = FaceAligner(), packaged_template("label")
    variants = {"mirror": (np.ascontiguousarray(image[:, ::-1]), mirror_camera(label))}
    for degrees in (12.0, -12.0):
        turned = np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BICUBIC))
        variants[f"turned {degrees:+.0f}"] = (turned, _rotated_label(label, degrees))
    original = estimate_camera(aligner(image)[0], template)
    for variant, (shown, expected) in variants.items():
        estimate = estimate_camera(aligner(shown)[0], template)
        error = _rotation_angle(estimate.camera, expected)
        print(f"\n{name} {variant}: {error:.2f} deg from the transformed label (the photo: {_rotation_angle(original.camera, label):.2f})")
        assert error < 5.0 and axis_angle(estimate.camera, expected) < 5.0
        assert estimate.confidence >= TRUSTED
    assert _rotation_angle(estimate_camera(aligner(variants["mirror"][0])[0], template).camera, mirror_camera(original.camera)) < 1.5


@pytest.fixture(scope="module")
def singles_only() -> dict:
    """Every constant fitted on the single photos only (and mirrors): the multi-view person is never seen."""
    if not (PHOTOS / MULTIVIEW).is_dir():
        pytest.skip(f"{PHOTOS / MULTIVIEW} not found (set REGRESS_EG3D_PHOTOS)")
    return calibrate(load_labelled(PHOTOS, mesh=True, multiview=False))


@needs_mesh
@pytest.mark.slow
def test_a_person_never_calibrated_on_across_yaw(singles_only):
    """Frames of one man from yaw +63 to -59, and mirror images of those where dlib's points slide (20-35 degrees):
    within 5 degrees up to |yaw| 45 and within 10 beyond (or not trusted), as issue 25 asks."""
    frames = [(index, False) for index in (0, 50, 100, 120, 130, 140, 145, 150, 165, 185, 205, 220)] + [(140, True), (145, True)]
    fitter, rows = CameraFitter(), []
    for index, mirrored in frames:
        path = PHOTOS / MULTIVIEW / f"fbarthel_frame{index:03d}.png"
        image, label = load_image(path), np.load(path.with_suffix(".npy")).astype(np.float64)
        if mirrored:
            image, label = np.ascontiguousarray(image[:, ::-1]), mirror_camera(label)
        crop = crop_face(image, detect_faces(image)[0], template=singles_only["template"], calibration=singles_only["calibration"])
        fit = fitter(crop.landmarks_uv, singles_only["template"])
        estimate = combine_cameras(fit, mesh_camera(face_mesh(crop.image), singles_only["mesh_template"]))
        rows.append((axis_angles(label)[0], axis_angle(estimate.camera, label), axis_angle(fit.camera, label), estimate.confidence))
        print(f"\n{path.stem}{' (mirror)' if mirrored else ''}: label yaw {rows[-1][0]:+.1f}, axis {rows[-1][1]:.2f} deg "
              f"(dlib alone {rows[-1][2]:.2f}), confidence {rows[-1][3]:.2f}")  # fmt: skip
    yaws = [yaw for yaw, *_ in rows]
    assert max(yaws) > 60 and min(yaws) < -55 and sum(20 < abs(yaw) < 35 for yaw in yaws) >= 6  # both signs, the sliding band
    for yaw, axis, dlib_alone, confidence in rows:
        assert axis <= 5.0 if abs(yaw) <= 45 else (axis <= 10.0 or confidence < TRUSTED)
    assert max(d for yaw, _, d, _ in rows if 20 < abs(yaw) < 35) > 6.5  # where dlib alone is off, the blend is not
    assert np.mean([axis for yaw, axis, *_ in rows if abs(yaw) > 45]) < np.mean([d for yaw, _, d, _ in rows if abs(yaw) > 45]) / 3
