"""Photo -> face crops with their cameras: the front end that `evaluate pairs` and `predict` share.

Each face of a photo is cropped (EG3D's crop by default, or taken as it is with `aligned`), resized
to the generator's side, and given a camera: fitted to its landmarks (dlib's, with MediaPipe's face
mesh where installed: camera_estimate.py), with a confidence, or read from given labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regress.faces.landmarks import LandmarkTemplate
from regress.inversion.align import AlignedFace, FaceAligner, FaceError, load_image
from regress.inversion.camera_estimate import estimate_camera
from regress.inversion.camera_fit import CameraFitter
from regress.inversion.photos import CameraLabels


@dataclass(frozen=True)
class FaceCrop:
    """One face of a photo at the generator's side: the crop (S, S, 3) uint8, landmarks (68, 2) in its pixels,
    the camera (25,) float32 and where the camera came from (`camera_meta`: kind fitted | given, the fit's figures,
    `confidence` in [0, 1] with its parts, and `untrusted`: one line on why, when the camera is not to be trusted)."""

    path: Path
    index: int
    aligned: AlignedFace
    image: np.ndarray
    landmarks: np.ndarray
    camera: torch.Tensor
    camera_meta: dict


@dataclass
class PhotoFrontEnd:
    """Detection, crop and camera of every photo, with the choices of each stage in one place.

    `aligned`: the photos are already crops of the generator's framing (their landmarks are still found);
    `cameras`: given labels replace the fit; `mesh`: MediaPipe's face mesh joins dlib's landmarks for
    label-frame templates when mediapipe is installed.
    """

    template: LandmarkTemplate
    side: int
    aligner: FaceAligner = field(default_factory=FaceAligner)
    fitter: CameraFitter = field(default_factory=CameraFitter)
    cameras: CameraLabels | None = None
    aligned: bool = False
    mesh: bool = True
    min_camera_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.cameras is not None and self.aligner.all_faces:
            raise ValueError("given cameras are one per photo; drop aligner.all_faces or the cameras")

    def __call__(self, path: Path) -> list[FaceCrop]:
        """The photo's faces (the largest only unless `aligner.all_faces`) whose camera is at least
        `min_camera_confidence` confident; FaceError when none can be used, saying why."""
        given = self.cameras(path) if self.cameras is not None else None  # a missing label fails before detection
        image = load_image(path, self.aligner.max_pixels)
        crops = [self.aligner.uncropped(image, str(path))] if self.aligned else self.aligner(image, str(path))
        faces = [self._face(path, index, crop, given) for index, crop in enumerate(crops)]
        kept = [face for face in faces if face.camera_meta.get("confidence", 1.0) >= self.min_camera_confidence]
        if not kept:
            best = max(faces, key=lambda face: face.camera_meta["confidence"])
            raise FaceError(f"{path}: camera confidence {best.camera_meta['confidence']:.2f} is under --min_camera_confidence "
                            f"{self.min_camera_confidence:g} ({best.camera_meta.get('untrusted', 'see camera_source in a record')}); "
                            "skipped, give its camera with --cameras")  # fmt: skip
        return kept

    def _face(self, path: Path, index: int, crop: AlignedFace, given: torch.Tensor | None) -> FaceCrop:
        if given is None:
            estimate = estimate_camera(crop, self.template, self.fitter, self.mesh)
            camera, camera_meta = estimate.camera, estimate.meta
        else:
            camera, camera_meta = given, {"kind": "given", "labels": self.cameras.source, "confidence": 1.0}
        image = crop.image
        if image.shape[0] != self.side:
            image = np.asarray(Image.fromarray(image).resize((self.side, self.side), Image.Resampling.LANCZOS))
        landmarks = ((crop.landmarks + 0.5) * self.side / crop.image.shape[0] - 0.5).astype(np.float32)
        return FaceCrop(path, index, crop, image, landmarks, camera, camera_meta)
