"""Face landmarks in 3D: 68-point templates (EG3D's label frame, a mean face, a generator's own), the face mesh's, and their projection.

A template in the face-model frame (the frame of the five standard points, see
eg3d-photo-preprocessing.md section 4) reaches EG3D's world by `0.27 X + (0, 0.006, 0.161)`; one
in world units (a generator's own landmarks) is already there. The camera fit (inversion.camera_fit)
and the identity metrics (models.metrics) both read templates here.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from regress.generators.base import Generator

LABEL_SCALE = 0.27  # face-model units to EG3D world units
LABEL_OFFSET = (0.0, 0.006, 0.161)  # the face-model origin in EG3D's world
TEMPLATES = {
    "label": Path(__file__).with_name("landmarks68_label.json"),
    "mean_face": Path(__file__).with_name("landmarks68_template.json"),
}
MESH_TEMPLATE = Path(__file__).with_name("landmarks_mesh_label.json")  # MediaPipe's 468 face-mesh points in the label frame
JAW = slice(0, 17)  # the face contour: silhouette points that slide over the head as it turns
CONTOUR_WEIGHT = 0.5  # the jaw contour's weight in templates without measured weights
YAW_KNEE = 15.0  # degrees: where the yaw correction's saturating term bends


@dataclass(frozen=True)
class LandmarkTemplate:
    """3D landmarks (P, 3) (68 iBUG points, or the face mesh's 468), their frame (`face_model` or `world`), per-face deformation modes (K, 68, 3).

    `mode_sd` (K,) is each mode's spread over the faces it was measured on: the fit's prior.
    `weights` (P,) weigh each landmark's squared error in the fit (default for 68 points: the jaw contour at
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
    """A landmark template from JSON: `points` (68 x 3, or P x 3 with `weights`), optional `frame`, `modes` and `mode_sd`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark template {path} does not exist; use 'label', 'generator', 'mean_face' or a JSON file with 68 points")
    data = json.loads(path.read_text())
    points = np.asarray(data["points"], dtype=np.float64)
    if points.shape != (68, 3) and not (points.ndim == 2 and points.shape[1] == 3 and "weights" in data):
        raise ValueError(f"{path}: a landmark template needs 68 points of 3 coordinates (or any number with weights), got {points.shape}")
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


@functools.cache
def mesh_template() -> LandmarkTemplate:
    """The face mesh's 468 points in EG3D's label frame (scripts/calibrate_photos.py), loaded once."""
    return load_template(MESH_TEMPLATE)


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


def project_points(points: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """World points (P, 3) through a 25-number camera -> normalized image coordinates (P, 2) (pixel centres at (i + 0.5) / S)."""
    camera = np.asarray(camera, dtype=np.float64)
    cam2world, k = camera[:16].reshape(4, 4), camera[16:].reshape(3, 3)
    local = (np.asarray(points, dtype=np.float64) - cam2world[:3, 3]) @ cam2world[:3, :3]
    return local[:, :2] / np.maximum(local[:, 2:], 1e-6) @ k[:2, :2].T + k[:2, 2]
