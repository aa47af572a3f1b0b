"""Cameras from landmarks: a perspective fit of a 3D template to 68 landmarks, as an EG3D label or in a generator's
frame; the same fit of the face mesh's template to MediaPipe's mesh (its points keep their place at large yaw),
started from the 3D similarity of the two.

A template in the face-model frame (the frame of the five standard points, see
eg3d-photo-preprocessing.md section 4) gives EG3D labels: its points go to EG3D's world by
`0.27 X + (0, 0.006, 0.161)`, the fitted camera keeps its rotation and is moved along its own
direction to radius 2.7, and the intrinsics are the labels' (fx = fy = 4.2647, centre 0.5). A
template in world units (a generator's own landmarks) gives the fitted camera itself. The templates
live in regress/faces/landmarks.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation, Slerp

from regress.camera import DEFAULT_FOV_DEG, fov_to_focal
from regress.faces.landmarks import LABEL_OFFSET, LandmarkTemplate, project_points

LABEL_RADIUS = 2.7  # labels always sit at this distance from the world origin
LABEL_FOCAL = 4.2647  # 2985.29 / 700: normalized focal of the labels
MIRROR_ENTRIES = ((0, 1), (0, 2), (1, 0), (2, 0), (0, 3))  # cam2world entries a horizontal flip negates
OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0])  # a camera looking down -z with y up, as cam2world axes


def camera_vector(cam2world: np.ndarray, focal: float) -> np.ndarray:
    """A 25-number camera from cam2world (4, 4) and a normalized focal (principal point at the centre)."""
    k = np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])
    return np.concatenate([cam2world.reshape(16), k.reshape(9)])


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

    def __call__(self, landmarks_uv: np.ndarray, template: LandmarkTemplate, focal: float | None = None, start: CameraFit | None = None) -> CameraFit:
        """The camera (label for face-model templates, else the fit itself) whose projection matches the landmarks;
        the fit starts from `start`'s rotation and position when given, else from a frontal camera."""
        target = np.asarray(landmarks_uv, dtype=np.float64).reshape(len(template.points), 2)
        label = template.frame == "face_model"
        focal = (LABEL_FOCAL if label else fov_to_focal(DEFAULT_FOV_DEG)) if focal is None else focal
        sqrt_weights, k = np.sqrt(template.weights)[:, None], len(template.modes)

        def residuals(params: np.ndarray) -> np.ndarray:
            camera = camera_vector(_cam2world(params), focal)
            uv = project_points(template.world_points(params[6:] if k else None), camera)
            prior = self.landmark_noise * params[6:] / np.maximum(template.mode_sd, 1e-12)
            return np.concatenate([((uv - target) * sqrt_weights).ravel(), prior])

        pose = _frontal_pose(template.world_points(), target, focal) if start is None else _pose(start)
        result = least_squares(residuals, np.concatenate([pose, np.zeros(k)]), loss="soft_l1", f_scale=self.robust_scale, x_scale="jac")
        cam2world = _cam2world(result.x)
        distance = float(np.linalg.norm(cam2world[:3, 3]))
        if label:
            cam2world[:3, 3] *= LABEL_RADIUS / distance
            yaw, _ = axis_angles(cam2world)
            cam2world = orbit_yaw(cam2world, -template.yaw_error(yaw))
        rms = float(np.sqrt(((result.fun[: target.size].reshape(-1, 2) / sqrt_weights) ** 2).sum(1).mean()))
        return CameraFit(
            camera=torch.from_numpy(camera_vector(cam2world, focal)).float(),
            distance=distance,
            shape=tuple(float(v) for v in result.x[6:]),
            rms=rms,
            template=template.name,
        )


def similarity_3d(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares 3D similarity `target ~ k R source + t` (Umeyama) of point sets (P, 3): k, R (3, 3), t (3,)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    u, singular, vt = np.linalg.svd((target - mu_t).T @ (source - mu_s))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    k = (singular * np.diag(sign)).sum() / ((source - mu_s) ** 2).sum()
    return k, rotation, mu_t - k * rotation @ mu_s


def mesh_camera(mesh: np.ndarray, template: LandmarkTemplate, focal: float = LABEL_FOCAL) -> CameraFit:
    """The label camera of a face mesh (468, 3): the perspective fit of the template to the mesh's image points,
    started from the mesh's 3D similarity (`mesh_similarity_camera`).

    MediaPipe's x, y are where it sees each point; its z is a network's guess of depth, biased on some
    faces (a man's pitch 5 degrees off near frontal, docs/benchmarks.md), so it only starts the fit.
    """
    return CameraFitter()(np.asarray(mesh, dtype=np.float64)[:, :2], template, focal, start=mesh_similarity_camera(mesh, template, focal))


def mesh_similarity_camera(mesh: np.ndarray, template: LandmarkTemplate, focal: float = LABEL_FOCAL) -> CameraFit:
    """The label camera of a face mesh (468, 3) from its depth too: the rotation of the 3D similarity that carries
    the template onto it.

    The mesh is read as a weak-perspective view (x, y about the image centre, z in the same units), so
    the similarity's scale k is `focal` over the face's distance; the camera is placed at that distance
    from where the face-model origin is seen, then moved along its direction to the labels' radius.
    """
    observed = np.asarray(mesh, dtype=np.float64)[:, :3] - np.array([0.5, 0.5, 0.0])
    world = template.world_points()
    k, rotation, shift = similarity_3d(world, observed)  # camera coordinates (OpenCV axes) = rotation @ world, scaled
    origin = np.asarray(LABEL_OFFSET)
    seen = k * rotation @ origin + shift
    depth = focal / k
    cam2world = np.eye(4)
    cam2world[:3, :3] = rotation.T
    cam2world[:3, 3] = origin - rotation.T @ np.array([seen[0] * depth / focal, seen[1] * depth / focal, depth])
    distance = float(np.linalg.norm(cam2world[:3, 3]))
    cam2world[:3, 3] *= LABEL_RADIUS / distance
    residual = observed - (k * world @ rotation.T + shift)
    return CameraFit(
        camera=torch.from_numpy(camera_vector(cam2world, focal)).float(),
        distance=distance,
        shape=(),
        rms=float(np.sqrt((residual[:, :2] ** 2).sum(1).mean())),
        template=template.name,
    )


def blend_cameras(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """The camera `weight` of the way from `a` to `b` (25,): rotations interpolated on the sphere, positions on
    `a`'s radius, `a`'s intrinsics."""
    cam_a, cam_b = (np.asarray(c, dtype=np.float64)[:16].reshape(4, 4) for c in (a, b))
    rotations = Rotation.from_matrix(np.stack([cam_a[:3, :3], cam_b[:3, :3]]))
    blended = np.eye(4)
    blended[:3, :3] = Slerp([0.0, 1.0], rotations)([weight]).as_matrix()[0]
    position = (1 - weight) * cam_a[:3, 3] + weight * cam_b[:3, 3]
    blended[:3, 3] = position * np.linalg.norm(cam_a[:3, 3]) / np.linalg.norm(position)
    return torch.cat([torch.from_numpy(blended.reshape(16)).float(), torch.as_tensor(a[16:]).float()])


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


def _frontal_pose(points: np.ndarray, target: np.ndarray, focal: float) -> np.ndarray:
    """A frontal camera (rotation vector, position) that sees the template as large as the landmarks: the fit's start."""
    spread_3d = np.sqrt(((points[:, :2] - points[:, :2].mean(0)) ** 2).sum(1).mean())
    spread_2d = np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean())
    centre = points.mean(0)
    return np.concatenate([np.zeros(3), centre + np.array([0.0, 0.0, focal * spread_3d / spread_2d])])


def _pose(fit: CameraFit) -> np.ndarray:
    """The rotation vector and position (6,) of a fitted camera, at its fitted distance: the parameters of `_cam2world`."""
    cam2world = fit.camera.double().numpy()[:16].reshape(4, 4)
    rotvec = Rotation.from_matrix(cam2world[:3, :3] @ OPENCV_FROM_OPENGL).as_rotvec()
    position = cam2world[:3, 3] * fit.distance / np.linalg.norm(cam2world[:3, 3])
    return np.concatenate([rotvec, position])
