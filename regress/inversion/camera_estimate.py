"""A face crop's camera from both landmark sources, and how far to trust it.

dlib's 68 landmarks give the better camera while the head faces the camera; its points collapse as
the head turns, while MediaPipe's face mesh keeps its points in place. The camera is dlib's fit up
to MESH_BLEND[0] degrees of yaw, the mesh's from MESH_BLEND[1], and turns from one to the other in
between (the range chosen by cross-validation: scripts/bench_cameras.py); where the two disagree,
dlib's share falls further (`dlib_share`). The confidence, in [0, 1],
multiplies three parts: how far the two sources disagree where the yaw gives dlib's fit a say, how far the head is
turned (both sources err more as it turns, and beyond the labelled photos' 65 degrees nothing was
measured), and how well dlib's landmarks fit the label template where dlib counts. Its constants are
round numbers set so that it falls as the cross-validated error grows (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from regress.faces.landmarks import LandmarkTemplate, mesh_template
from regress.inversion.align import AlignedFace
from regress.inversion.camera_fit import CameraFit, CameraFitter, axis_angle, axis_angles, blend_cameras, mesh_camera
from regress.inversion.mesh import face_mesh, mesh_available

MESH_BLEND = (15.0, 45.0)  # |yaw| (degrees) where the camera turns from dlib's fit to the mesh's
TRUSTED = 0.5  # a camera of lower confidence is listed as not to be trusted
DISAGREEMENT_SCALE = 10.0  # degrees of disagreement (where dlib counts) that take the confidence to exp(-1)
TURN_KNEE, TURN_SCALE = 30.0, 40.0  # |yaw| past which the confidence falls, and the degrees more that take it to exp(-1)
DLIB_TURN_KNEE, DLIB_TURN_SCALE = 20.0, 20.0  # the same for dlib alone (no mesh): its points collapse as the head turns
RMS_KNEE_PX, RMS_SCALE_PX = 8.0, 8.0  # landmark RMS (pixels of a 512 crop) past which dlib's fit is doubted


@dataclass(frozen=True)
class CameraEstimate:
    """A camera (25,) with its figures for a record's meta: the sources' cameras, mesh weight, confidence and its parts."""

    camera: torch.Tensor
    meta: dict

    @property
    def confidence(self) -> float:
        return self.meta["confidence"]

    @property
    def reason(self) -> str | None:
        """One line on why the camera is not to be trusted; None when it is."""
        return self.meta.get("untrusted")


def mesh_weight(yaw: float) -> float:
    """How much of the camera is the mesh's at this yaw (degrees): 0 below MESH_BLEND[0], 1 above MESH_BLEND[1]."""
    start, end = MESH_BLEND
    return float(np.clip((abs(yaw) - start) / (end - start), 0.0, 1.0))


def dlib_share(yaw: float, disagreement: float) -> float:
    """How much of the camera is dlib's fit: 1 - `mesh_weight(yaw)`, less where the two sources disagree (degrees).

    dlib's points slide on some faces well before they collapse (a man 7-10 degrees off at 20-40 degrees of
    yaw, where the mesh is 1-5 off and the two disagree by 7-11; on the single photos they never disagree by
    more than 5.2): a disagreement of DISAGREEMENT_SCALE takes dlib's share to exp(-1) of what the yaw gives it.
    """
    return (1 - mesh_weight(yaw)) * math.exp(-((disagreement / DISAGREEMENT_SCALE) ** 2))


def confidence_parts(yaw: float, disagreement: float | None, dlib_share: float, rms_px: float | None) -> dict[str, float]:
    """The confidence's three parts in [0, 1] (see the module docstring); `disagreement` None: dlib alone,
    `rms_px` None: a template the confidence was not measured for (its fit residual says nothing)."""
    alone = disagreement is None
    knee, scale = (DLIB_TURN_KNEE, DLIB_TURN_SCALE) if alone else (TURN_KNEE, TURN_SCALE)
    return {
        "sources": 1.0 if alone else math.exp(-((dlib_share * disagreement / DISAGREEMENT_SCALE) ** 2)),
        "turn": math.exp(-((max(0.0, abs(yaw) - knee) / scale) ** 2)),
        "landmark_fit": 1.0 if rms_px is None else math.exp(-((max(0.0, dlib_share * rms_px - RMS_KNEE_PX) / RMS_SCALE_PX) ** 2)),
    }


def untrusted_reason(confidence: float, parts: dict[str, float], meta: dict) -> str | None:
    """One line naming the weakest part when the confidence is under TRUSTED, else None."""
    if confidence >= TRUSTED:
        return None
    weakest = min(parts, key=parts.get)
    yaw = meta["axis_yaw_deg"]
    why = {
        "sources": f"dlib and the face mesh disagree by {meta.get('disagreement_deg', 0):.1f} deg",
        "turn": f"the head is turned {yaw:+.0f} deg" + ("" if "disagreement_deg" in meta else ", with dlib's landmarks alone (no face mesh)"),
        "landmark_fit": f"dlib's landmarks fit a face badly ({meta['landmark_rms_px']:.1f} px RMS at 512)",
    }[weakest]  # fmt: skip
    return f"camera confidence {confidence:.2f}: {why}"


def combine_cameras(fit: CameraFit, mesh_fit: CameraFit | None, label_frame: bool = True) -> CameraEstimate:
    """dlib's fit and the mesh's (when there is one) as one camera, blended by yaw, with its confidence in `meta`;
    `label_frame`: the fit used the label template, whose residuals the confidence knows."""
    meta = {"kind": "fitted", **fit.as_meta(), "landmark_rms_px": fit.rms * 512, "sources": "dlib"}
    camera, disagreement, share = fit.camera, None, 1.0
    if mesh_fit is not None:
        mesh_yaw, disagreement = axis_angles(mesh_fit.camera)[0], axis_angle(fit.camera, mesh_fit.camera)
        weight = 1 - dlib_share(mesh_yaw, disagreement)
        camera = blend_cameras(fit.camera, mesh_fit.camera, weight)
        share = 1 - mesh_weight(mesh_yaw)  # the confidence doubts a disagreement where the yaw alone would give dlib a say
        yaw, pitch = axis_angles(camera)
        meta.update(axis_yaw_deg=yaw, axis_pitch_deg=pitch, roll_deg=math.degrees(math.asin(float(camera[4]))), sources="dlib+mesh",
                    dlib_yaw_deg=fit.as_meta()["axis_yaw_deg"], mesh_yaw_deg=mesh_yaw, mesh_weight=weight,
                    disagreement_deg=disagreement, mesh_rms=mesh_fit.rms)  # fmt: skip
    parts = confidence_parts(meta["axis_yaw_deg"], disagreement, share, meta["landmark_rms_px"] if label_frame else None)
    confidence = float(np.prod(list(parts.values())))
    meta.update(confidence=confidence, confidence_parts=parts)
    reason = untrusted_reason(confidence, parts, meta)
    if reason is not None:
        meta["untrusted"] = reason
    return CameraEstimate(camera, meta)


def estimate_camera(aligned: AlignedFace, template: LandmarkTemplate, fitter: CameraFitter = CameraFitter(), mesh: bool = True) -> CameraEstimate:
    """The crop's camera: dlib's fit, blended with the face mesh's for a label-frame template when mediapipe is
    installed and `mesh` is on (see the module docstring), with its confidence in `meta`."""
    fit, label_frame = fitter(aligned.landmarks_uv, template), template.frame == "face_model"
    points = face_mesh(aligned.image) if mesh and label_frame and mesh_available() else None
    return combine_cameras(fit, None if points is None else mesh_camera(points, mesh_template()), label_frame)
