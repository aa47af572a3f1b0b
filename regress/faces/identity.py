"""Whether two face images show the same person: dlib's 128-d identity descriptors, and where dlib's model files are.

The model files come with `face-recognition-models` (found without importing it); the detector
and landmark predictor of inversion.align read theirs through `face_model_path` too.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np


@functools.cache
def face_model_path(name: str) -> Path:
    """A model file shipped by `face-recognition-models`, found without importing it (it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face model files are missing: pip install face-recognition-models dlib-bin")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall face-recognition-models")
    return path


@functools.cache
def _descriptor_model():
    import dlib

    return dlib.face_recognition_model_v1(str(face_model_path("dlib_face_recognition_resnet_model_v1.dat")))


def face_descriptor(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """dlib's 128-d identity descriptor (128,) of an RGB uint8 image (H, W, 3) at 68 landmarks (68, 2)."""
    import dlib

    points = [dlib.point(round(float(x)), round(float(y))) for x, y in landmarks]
    lo, hi = landmarks.min(0), landmarks.max(0)
    box = dlib.rectangle(*(round(float(v)) for v in (lo[0], lo[1], hi[0], hi[1])))
    shape = dlib.full_object_detection(box, points)
    return np.asarray(_descriptor_model().compute_face_descriptor(np.ascontiguousarray(image), shape), dtype=np.float64)


def identity_scores(a: np.ndarray, b: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """Cosine similarity and Euclidean distance (dlib: under 0.6 is the same person) of two faces' descriptors.

    Both images are read at the same landmarks (the real crop's): the inverted image is meant
    to be pixel-aligned with the real crop, so they pick the same face region in both.
    """
    return descriptor_scores(face_descriptor(a, landmarks), face_descriptor(b, landmarks))


def descriptor_scores(da: np.ndarray, db: np.ndarray) -> dict[str, float]:
    """`identity_similarity` (cosine) and `identity_distance` (Euclidean) of two dlib descriptors (128,)."""
    similarity = float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db) + 1e-12))
    return {"identity_similarity": similarity, "identity_distance": float(np.linalg.norm(da - db))}
