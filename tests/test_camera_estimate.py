"""The camera from two landmark sources: the face mesh's 3D similarity, the blend by yaw, the confidence and its reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regress.camera import adjust_cameras, make_cameras
from regress.faces.landmarks import LABEL_OFFSET, mesh_template
from regress.inversion.camera_estimate import DISAGREEMENT_SCALE, MESH_BLEND, TRUSTED, combine_cameras, confidence_parts, dlib_share, mesh_weight
from regress.inversion.camera_fit import LABEL_FOCAL, LABEL_RADIUS, CameraFit, axis_angle, axis_angles, blend_cameras, mesh_camera


def _label(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """An EG3D-like label: look-at camera at radius 2.7 with the labels' focal."""
    camera = make_cameras(math.radians(yaw_deg), math.radians(pitch_deg), pivot=LABEL_OFFSET)[0].double()
    camera[16] = camera[20] = LABEL_FOCAL
    return camera


def _mesh_seen_by(camera: torch.Tensor, points: np.ndarray) -> np.ndarray:
    """The mesh (P, 3) a camera sees, as MediaPipe gives it: x, y where each point projects, z its depth relative to
    the face's, in focal / distance units."""
    cam2world = camera[:16].reshape(4, 4).numpy()
    local = (points - cam2world[:3, 3]) @ cam2world[:3, :3]
    depth = (np.asarray(LABEL_OFFSET) - cam2world[:3, 3]) @ cam2world[:3, 2]
    projected = LABEL_FOCAL * local[:, :2] / local[:, 2:] + 0.5
    return np.column_stack([projected, (local[:, 2] - depth) * LABEL_FOCAL / depth])


@pytest.mark.parametrize("yaw, pitch", [(0.0, 0.0), (35.0, -10.0), (-62.0, 8.0)])
def test_mesh_camera_recovers_the_camera_that_saw_the_mesh(yaw, pitch):
    template = mesh_template()
    label = _label(yaw, pitch)
    rng = np.random.default_rng(0)
    mesh = _mesh_seen_by(label, template.world_points()) + rng.normal(0, 0.002, (len(template.points), 3))
    fit = mesh_camera(mesh, template)
    assert axis_angle(fit.camera, label) < 0.5
    assert np.linalg.norm(fit.camera[[3, 7, 11]].numpy()) == pytest.approx(LABEL_RADIUS, abs=1e-5)
    assert fit.distance == pytest.approx(float(np.linalg.norm(label[[3, 7, 11]].numpy())), rel=0.02)
    assert fit.rms < 0.004


def test_blend_cameras_turns_from_one_to_the_other():
    a, b = _label(10.0, 0.0), _label(40.0, -6.0)
    assert axis_angle(blend_cameras(a, b, 0.0), a) < 1e-3 and axis_angle(blend_cameras(a, b, 1.0), b) < 1e-3
    half = blend_cameras(a, b, 0.5)
    assert axis_angle(half, a) == pytest.approx(axis_angle(a, b) / 2, abs=0.05)
    assert np.linalg.norm(half[[3, 7, 11]].numpy()) == pytest.approx(LABEL_RADIUS, abs=1e-4)


def test_the_mesh_takes_over_as_the_head_turns():
    start, end = MESH_BLEND
    assert mesh_weight(0.0) == mesh_weight(start) == 0.0 and mesh_weight(end) == mesh_weight(-70.0) == 1.0
    assert mesh_weight(-(start + end) / 2) == pytest.approx(0.5)


def test_where_the_sources_disagree_near_frontal_the_mesh_takes_over():
    """dlib's points slide on some faces before the head is turned far (docs/benchmarks.md): a disagreement takes
    dlib's share down, by exp(-1) at DISAGREEMENT_SCALE, while the confidence falls as before."""
    assert dlib_share(20.0, 0.0) == pytest.approx(1 - mesh_weight(20.0))
    assert dlib_share(20.0, DISAGREEMENT_SCALE) == pytest.approx((1 - mesh_weight(20.0)) / math.e)
    assert dlib_share(60.0, 0.0) == 0.0
    dlib, mesh = _label(26.0, -4.0), _label(18.0, 3.0)  # 10.6 degrees apart at a yaw where dlib alone would weigh 90 %
    estimate = combine_cameras(_fit(dlib), _fit(mesh))
    share = 1 - estimate.meta["mesh_weight"]
    assert share == pytest.approx(dlib_share(axis_angles(mesh)[0], axis_angle(dlib, mesh))) and share < 0.35
    assert axis_angle(estimate.camera, mesh) < axis_angle(estimate.camera, dlib)
    assert estimate.confidence < combine_cameras(_fit(dlib), _fit(_label(25.0, -3.5))).confidence


def _fit(camera: torch.Tensor, rms_px: float = 5.0) -> CameraFit:
    return CameraFit(camera=camera.float(), distance=2.7, shape=(), rms=rms_px / 512, template="label")


def test_confidence_is_high_where_the_sources_agree_and_falls_with_disagreement_and_turn():
    frontal = combine_cameras(_fit(_label(2.0, -5.0)), _fit(_label(3.0, -4.0)))
    assert frontal.meta["sources"] == "dlib+mesh" and frontal.meta["mesh_weight"] < 0.05  # 1.4 degrees apart: dlib's
    assert frontal.confidence > 0.95 and frontal.reason is None
    dlib, mesh = _label(2.0, -5.0), _label(14.0, 8.0)
    disagreeing = combine_cameras(_fit(dlib), _fit(mesh))
    assert disagreeing.confidence < TRUSTED
    assert disagreeing.reason == f"camera confidence {disagreeing.confidence:.2f}: dlib and the face mesh disagree by {axis_angle(dlib, mesh):.1f} deg"
    # at a large turn the camera is the mesh's: dlib's collapsed points neither move it nor lower the confidence much
    profile = combine_cameras(_fit(_label(35.0, 0.0), rms_px=16.0), _fit(_label(60.0, 2.0)))
    assert profile.meta["mesh_weight"] == 1.0 and axis_angle(profile.camera, _label(60.0, 2.0)) < 1e-3
    assert TRUSTED < profile.confidence < frontal.confidence
    beyond = combine_cameras(_fit(_label(40.0, 0.0)), _fit(_label(85.0, 0.0)))
    assert beyond.confidence < TRUSTED and beyond.reason.endswith(f"the head is turned {axis_angles(_label(85.0, 0.0))[0]:+.0f} deg")


def test_dlib_alone_loses_confidence_sooner_and_says_so():
    parts = confidence_parts(45.0, None, 1.0, 5.0)
    assert parts["sources"] == 1.0 and parts["turn"] < confidence_parts(45.0, 0.0, 0.0, 5.0)["turn"]
    alone = combine_cameras(_fit(_label(45.0, 0.0)), None)
    assert alone.meta["sources"] == "dlib" and alone.confidence < TRUSTED and "no face mesh" in alone.reason
    assert combine_cameras(_fit(_label(5.0, 0.0)), None).confidence > 0.95
    # a template the confidence was not measured for: its residual (the analytic head is no human face) is not held against it
    assert combine_cameras(_fit(_label(5.0, 0.0), rms_px=30.0), None, label_frame=False).confidence > 0.95


def test_adjusted_cameras_orbit_roll_and_move_as_asked():
    camera = _label(10.0, -5.0)[None].float()
    assert torch.allclose(adjust_cameras(camera, torch.zeros(1, 4)), camera)
    turned = adjust_cameras(camera, torch.tensor([[math.radians(4.0), 0.0, 0.0, 0.0]]))
    assert axis_angles(turned[0])[0] - axis_angles(camera[0])[0] == pytest.approx(4.0, abs=0.05)
    assert axis_angles(turned[0])[1] == pytest.approx(axis_angles(camera[0])[1], abs=0.05)
    pitched = adjust_cameras(camera, torch.tensor([[0.0, math.radians(3.0), 0.0, 0.0]]))
    assert axis_angle(pitched[0], camera[0]) == pytest.approx(3.0, abs=0.05)
    rolled = adjust_cameras(camera, torch.tensor([[0.0, 0.0, math.radians(5.0), 0.0]]))
    assert axis_angle(rolled[0], camera[0]) < 1e-3 and torch.allclose(rolled[0, [3, 7, 11]], camera[0, [3, 7, 11]])
    farther = adjust_cameras(camera, torch.tensor([[0.0, 0.0, 0.0, math.log(1.1)]]))
    assert torch.allclose(farther[0, [3, 7, 11]], 1.1 * camera[0, [3, 7, 11]], atol=1e-6) and torch.equal(farther[0, 16:], camera[0, 16:])
