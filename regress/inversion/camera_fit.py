"""Cameras from 68 landmarks: a perspective fit of a 3D landmark template, as an EG3D label or in a generator's frame.

A template in the face-model frame (the frame of the five standard points, see
eg3d-photo-preprocessing.md section 4) gives EG3D labels: its points go to EG3D's world by
`0.27 X + (0, 0.006, 0.161)`, the fitted camera keeps its rotation and is moved along its own
direction to radius 2.7, and the intrinsics are the labels' (fx = fy = 4.2647, centre 0.5). A
template in world units (a generator's own landmarks) gives the fitted camera itself.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from regress.camera import DEFAULT_FOV_DEG, fov_to_focal
from regress.generators.base import Generator

LABEL_SCALE = 0.27  # face-model units to EG3D world units
LABEL_OFFSET = (0.0, 0.006, 0.161)  # the face-model origin in EG3D's world
LABEL_RADIUS = 2.7  # labels always sit at this distance from the world origin
LABEL_FOCAL = 4.2647  # 2985.29 / 700: normalized focal of the labels
MIRROR_ENTRIES = ((0, 1), (0, 2), (1, 0), (2, 0), (0, 3))  # cam2world entries a horizontal flip negates
TEMPLATES = {
    "label": Path(__file__).with_name("landmarks68_label.json"),
    "mean_face": Path(__file__).with_name("landmarks68_template.json"),
}
JAW = slice(0, 17)  # the face contour: silhouette points that slide over the head as it turns
CONTOUR_WEIGHT = 0.5  # the jaw contour's weight in templates without measured weights
OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0])  # a camera looking down -z with y up, as cam2world axes
YAW_KNEE = 15.0  # degrees: where the yaw correction's saturating term bends


@dataclass(frozen=True)
class LandmarkTemplate:
    """68 3D landmarks (68, 3), their frame (`face_model` or `world`), per-face deformation modes (K, 68, 3).

    `mode_sd` (K,) is each mode's spread over the faces it was measured on: the fit's prior.
    `weights` (68,) weigh each landmark's squared error in the fit (default: the jaw contour at
    CONTOUR_WEIGHT, since its points slide over the head as it turns, the others at 1).
    """

    points: np.ndarray
    frame: str = "world"
    modes: np.ndarray = field(default_factory=lambda: np.zeros((0, 68, 3)))
    mode_sd: np.ndarray = field(default_factory=lambda: np.zeros(0))
    name: str = "template"
    weights: np.ndarray = field(default_factory=lambda: np.where(np.arange(68) < JAW.stop, CONTOUR_WEIGHT, 1.0))
    yaw_correction: tuple[float, float] = (0.0, 0.0)

    def yaw_error(self, yaw: float) -> float:
        """The expected error (degrees) of a fitted axis yaw: what the fit takes off label cameras."""
        a, b = self.yaw_correction
        return a * yaw + b * YAW_KNEE * math.tanh(yaw / YAW_KNEE)

    def world_points(self, coefficients: np.ndarray | None = None) -> np.ndarray:
        """The landmarks (68, 3) in world units, deformed by mode coefficients (K,) when given."""
        points = self.points if coefficients is None else self.points + np.tensordot(coefficients, self.modes, 1)
        if self.frame == "face_model":
            return LABEL_SCALE * points + np.asarray(LABEL_OFFSET)
        return points


def load_template(path: str | Path = TEMPLATES["mean_face"]) -> LandmarkTemplate:
    """A landmark template from JSON: `points` (68 x 3), optional `frame`, `modes` and `mode_sd`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark template {path} does not exist; use 'label', 'generator', 'mean_face' or a JSON file with 68 points")
    data = json.loads(path.read_text())
    points = np.asarray(data["points"], dtype=np.float64)
    if points.shape != (68, 3):
        raise ValueError(f"{path}: a landmark template needs 68 points of 3 coordinates, got {points.shape}")
    if data.get("frame", "world") not in ("world", "face_model"):
        raise ValueError(f"{path}: frame must be 'world' or 'face_model', got {data['frame']!r}")
    template = LandmarkTemplate(points, data.get("frame", "world"), name=data.get("name", path.stem))
    if "modes" in data:
        modes = np.asarray(data["modes"], dtype=np.float64).reshape(-1, 68, 3)
        template = replace(template, modes=modes, mode_sd=np.asarray(data["mode_sd"], dtype=np.float64))
    if "weights" in data:
        template = replace(template, weights=np.asarray(data["weights"], dtype=np.float64))
    if "yaw_correction" in data:
        template = replace(template, yaw_correction=tuple(data["yaw_correction"]))
    return template


@functools.cache
def packaged_template(name: str) -> LandmarkTemplate:
    """One of the templates shipped beside this module (`label`, `mean_face`), loaded once."""
    return load_template(TEMPLATES[name])


def calibration_photos() -> list[str]:
    """Names of the labelled photos the label template (and the EG3D crop's calibration) was fitted on."""
    return json.loads(TEMPLATES["label"].read_text())["calibration_photos"]


def generator_template(generator: Generator, spec: str = "label") -> LandmarkTemplate:
    """The camera fit's template: `label` (EG3D's label frame), `mean_face` (a human mean face in EG3D world
    units), `generator` (the generator's own `landmarks_3d` at the mean latent, else `label`) or a JSON file."""
    if spec == "generator":
        with torch.no_grad():
            marks = generator.landmarks_3d(generator.mean_latent()[None].to(generator.device))
        if marks is not None:
            return LandmarkTemplate(marks[0].detach().cpu().double().numpy(), "world", name=f"{generator.identity()['generator']}_landmarks")
    spec = "label" if spec == "generator" else spec
    return packaged_template(spec) if spec in TEMPLATES else load_template(spec)


def camera_vector(cam2world: np.ndarray, focal: float) -> np.ndarray:
    """A 25-number camera from cam2world (4, 4) and a normalized focal (principal point at the centre)."""
    k = np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])
    return np.concatenate([cam2world.reshape(16), k.reshape(9)])


def project_points(points: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """World points (P, 3) through a 25-number camera -> normalized image coordinates (P, 2) (pixel centres at (i + 0.5) / S)."""
    camera = np.asarray(camera, dtype=np.float64)
    cam2world, k = camera[:16].reshape(4, 4), camera[16:].reshape(3, 3)
    local = (np.asarray(points, dtype=np.float64) - cam2world[:3, 3]) @ cam2world[:3, :3]
    return local[:, :2] / np.maximum(local[:, 2:], 1e-6) @ k[:2, :2].T + k[:2, 2]


def mirror_camera(camera: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The label of the horizontally mirrored photo: entries (0,1), (0,2), (1,0), (2,0), (0,3) of cam2world negated."""
    mirrored = camera.clone() if isinstance(camera, torch.Tensor) else np.array(camera, copy=True)
    for row, column in MIRROR_ENTRIES:
        mirrored[..., 4 * row + column] = -mirrored[..., 4 * row + column]
    return mirrored


def optical_axis(camera: np.ndarray | torch.Tensor) -> np.ndarray:
    """The unit optical axis (3,) of a camera: its 25 numbers or its 4x4 cam2world (OpenCV axes, +z forward)."""
    forward = np.asarray(camera, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)[:3, 2]
    return forward / np.linalg.norm(forward)


def axis_angles(camera: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Yaw and pitch (degrees) of a camera's optical axis: yaw > 0 looks from +x, pitch > 0 from below (EG3D's signs)."""
    forward = optical_axis(camera)
    return math.degrees(math.atan2(-forward[0], -forward[2])), math.degrees(math.asin(forward[1]))


def axis_angle(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Angle (degrees) between the optical axes of two cameras."""
    return math.degrees(math.acos(min(1.0, max(-1.0, float(optical_axis(a) @ optical_axis(b))))))


@dataclass(frozen=True)
class CameraFit:
    """A fitted camera: the 25-number vector, the fit's distance before any rescaling, its shape coefficients and residual."""

    camera: torch.Tensor
    distance: float
    shape: tuple[float, ...]
    rms: float
    template: str

    def as_meta(self) -> dict:
        yaw, pitch = axis_angles(self.camera)
        return {
            "template": self.template,
            "axis_yaw_deg": yaw,
            "axis_pitch_deg": pitch,
            "roll_deg": math.degrees(math.asin(float(self.camera[4]))),  # how far the camera's x axis rises
            "fitted_distance": self.distance,
            "shape": list(self.shape),
            "landmark_rms": self.rms,
        }


@dataclass(frozen=True)
class CameraFitter:
    """Perspective fit of a landmark template to 68 landmarks: rotation (roll included), position, per-face shape.

    Trust-region least squares (scipy) on the template's weighted landmark errors, with a soft-L1
    loss that only tempers gross outliers and a Gaussian prior on the template's deformation modes.

    Args:
        robust_scale: residual (normalized image units) where the loss turns from quadratic to linear.
        landmark_noise: the landmarks' expected error (normalized), which scales the shape prior.
    """

    robust_scale: float = 0.05
    landmark_noise: float = 0.003

    def __call__(self, landmarks_uv: np.ndarray, template: LandmarkTemplate, focal: float | None = None) -> CameraFit:
        """The camera (label for face-model templates, else the fit itself) whose projection matches the landmarks."""
        target = np.asarray(landmarks_uv, dtype=np.float64).reshape(68, 2)
        label = template.frame == "face_model"
        focal = (LABEL_FOCAL if label else fov_to_focal(DEFAULT_FOV_DEG)) if focal is None else focal
        sqrt_weights, k = np.sqrt(template.weights)[:, None], len(template.modes)

        def residuals(params: np.ndarray) -> np.ndarray:
            camera = camera_vector(_cam2world(params), focal)
            uv = project_points(template.world_points(params[6:] if k else None), camera)
            prior = self.landmark_noise * params[6:] / np.maximum(template.mode_sd, 1e-12)
            return np.concatenate([((uv - target) * sqrt_weights).ravel(), prior])

        start = np.concatenate([np.zeros(3), _frontal_position(template.world_points(), target, focal), np.zeros(k)])
        result = least_squares(residuals, start, loss="soft_l1", f_scale=self.robust_scale, x_scale="jac")
        cam2world = _cam2world(result.x)
        distance = float(np.linalg.norm(cam2world[:3, 3]))
        if label:
            cam2world[:3, 3] *= LABEL_RADIUS / distance
            yaw, _ = axis_angles(cam2world)
            cam2world = orbit_yaw(cam2world, -template.yaw_error(yaw))
        rms = float(np.sqrt(((result.fun[: 2 * 68].reshape(68, 2) / sqrt_weights) ** 2).sum(1).mean()))
        return CameraFit(
            camera=torch.from_numpy(camera_vector(cam2world, focal)).float(),
            distance=distance,
            shape=tuple(float(v) for v in result.x[6:]),
            rms=rms,
            template=template.name,
        )


def orbit_yaw(cam2world: np.ndarray, degrees: float) -> np.ndarray:
    """cam2world (4, 4) turned about the world's y axis through the origin: its axis yaw grows by `degrees`."""
    turned = cam2world.copy()
    rotation = Rotation.from_euler("y", math.radians(degrees)).as_matrix()
    turned[:3, :3], turned[:3, 3] = rotation @ cam2world[:3, :3], rotation @ cam2world[:3, 3]
    return turned


def _cam2world(params: np.ndarray) -> np.ndarray:
    """cam2world (4, 4) of a rotation vector (applied to the frontal camera) and a position."""
    cam2world = np.eye(4)
    cam2world[:3, :3] = Rotation.from_rotvec(params[:3]).as_matrix() @ OPENCV_FROM_OPENGL
    cam2world[:3, 3] = params[3:6]
    return cam2world


def _frontal_position(points: np.ndarray, target: np.ndarray, focal: float) -> np.ndarray:
    """A frontal camera position that sees the template as large as the landmarks: the fit's start."""
    spread_3d = np.sqrt(((points[:, :2] - points[:, :2].mean(0)) ** 2).sum(1).mean())
    spread_2d = np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean())
    centre = points.mean(0)
    return centre + np.array([0.0, 0.0, focal * spread_3d / spread_2d])
