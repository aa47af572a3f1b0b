"""Real photos to face crops: loading, dlib detection (HOG, HOG on the padded photo, CNN) and 68 landmarks, the crop.

The crop frames faces the way the generator was trained on: EG3D's crop by default (roll kept),
or the original FFHQ alignment (see crop.py). Cameras are fitted to the crop's landmarks in
camera_fit.py.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from regress.faces.identity import face_model_path
from regress.faces.landmarks import LandmarkTemplate, packaged_template
from regress.inversion.camera_fit import CameraFitter, axis_angles
from regress.inversion.crop import EG3D_CALIBRATION, crop_quad, eg3d_quad, ffhq_quad, pad_reflect, quad_coordinates, quad_transform, square_quad

# each iBUG landmark's mirror partner (jaw, brows, nose, eyes, outer and inner lips)
MIRROR_68 = np.array(
    [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]  # fmt: skip
)
PAD_FRACTION = 0.3  # the padded detection stage adds this fraction of the longer side on every side
CNN_MAX_SIDE = 640  # the CNN detector runs on a copy at most this wide (it finds faces from about 80 px)
# dlib's CNN (MMOD) boxes are smaller and placed differently from the HOG boxes the 68-point predictor
# was trained on: a CNN box becomes a HOG-like box of side CNN_BOX_SCALE times its own, centred
# CNN_BOX_SHIFT (x, y) of its side away. Measured by scripts/calibrate_photos.py on photos where both find the face.
CNN_BOX_SCALE = 1.0750
CNN_BOX_SHIFT = (0.0628, 0.0485)


class FaceError(ValueError):
    """A photo that cannot become a pair: unreadable, too small, or without a usable face."""


@functools.cache
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(face_model_path("shape_predictor_68_face_landmarks.dat")))


@functools.cache
def _cnn_detector():
    import dlib

    return dlib.cnn_face_detection_model_v1(str(face_model_path("mmod_human_face_detector.dat")))


def load_image(path: str | Path, max_pixels: int = 64_000_000, min_side: int = 64) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from an image file; grey is expanded, alpha is composited on white.

    Raises FaceError (naming the file and the fix) for unreadable, truncated, tiny or huge files;
    the size is checked from the header, before anything is decoded.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FaceError(f"{path}: a symbolic link that leads nowhere (a loop, or its target is gone); fix or remove the link")
    if path.is_dir():
        raise FaceError(f"{path}: a folder, not an image; list the photos in it, or give the folder itself as --images")
    try:
        with Image.open(path) as pil:
            width, height = pil.size
            if width * height > max_pixels:
                raise FaceError(
                    f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} MP), above the limit of "
                    f"{max_pixels / 1e6:.0f} MP; downscale it or raise max_pixels"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                pil.load()
            pil = ImageOps.exif_transpose(pil)
            if pil.mode in ("I;16", "I;16B", "I", "F"):
                array = np.asarray(pil, dtype=np.float64)
                pil = Image.fromarray(np.uint8(np.clip(255 * array / max(array.max(), 1), 0, 255)))
            if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
                rgba = pil.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                pil = Image.alpha_composite(background, rgba)
            image = np.asarray(pil.convert("RGB"))
    except FaceError:
        raise
    except Image.DecompressionBombError as error:
        raise FaceError(f"{path}: image is above the limit of {max_pixels / 1e6:.0f} MP ({error}); downscale it") from error
    except FileNotFoundError as error:
        raise FaceError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise FaceError(f"{path}: not an image file that PIL can read; convert it to PNG or JPEG") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise FaceError(f"{path}: cannot decode the image ({error}); the file is truncated or corrupt, re-export it") from error
    if min(image.shape[:2]) < min_side:
        raise FaceError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]}, too small to find a face "
            f"(needs at least {min_side} px on the short side); use a larger photo"
        )
    return image


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Face:
    """One detected face: box (x0, y0, x1, y1), 68 iBUG landmarks (68, 2) in source pixels, and the detector that found it."""

    box: Box
    score: float
    landmarks: np.ndarray
    detector: str = "hog"

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class AlignedFace:
    """A face crop (S, S, 3), its landmarks in crop pixels (68, 2), the source quad (4, 2) and the framing's name."""

    image: np.ndarray
    landmarks: np.ndarray
    quad: np.ndarray
    face: Face
    framing: str = "eg3d"

    @property
    def landmarks_uv(self) -> np.ndarray:
        """Landmarks in normalized image coordinates (pixel centres at (i + 0.5) / S), the cameras' units."""
        return (self.landmarks + 0.5) / self.image.shape[0]

    def as_meta(self) -> dict:
        """The crop's transform (source quad, centre, side, scale, roll), framing and detector, for a record's meta."""
        return {"framing": self.framing, "detector": self.face.detector, **quad_transform(self.quad, self.image.shape[0])}


def _shrunk(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy at most `max_side` wide (box-filtered) and its scale; the image itself when small enough."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale == 1.0:
        return image, scale
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX)), scale


def _in_image_pixels(detections, scale: float, min_score: float) -> list[tuple[Box, float]]:
    """(dlib rectangle, score) pairs found on an image shrunk by `scale` -> (box in the original's pixels, score), those of at least `min_score`."""
    return [(tuple(v / scale for v in (r.left(), r.top(), r.right(), r.bottom())), float(s)) for r, s in detections if s >= min_score]


def _hog_boxes(image: np.ndarray, upsample: int, min_score: float, max_side: int) -> list[tuple[Box, float]]:
    """dlib's HOG detections (box in `image` pixels, score) above `min_score`."""
    small, scale = _shrunk(image, max_side)
    rects, scores, _ = _dlib_models()[0].run(np.ascontiguousarray(small), upsample, 0.0)
    return _in_image_pixels(zip(rects, scores), scale, min_score)


def cnn_boxes(image: np.ndarray, min_score: float, max_side: int = CNN_MAX_SIDE) -> list[tuple[Box, float]]:
    """dlib's CNN detections (box in `image` pixels, confidence) above `min_score`, as the CNN gives them."""
    small, scale = _shrunk(image, max_side)
    return _in_image_pixels(((d.rect, d.confidence) for d in _cnn_detector()(np.ascontiguousarray(small), 0)), scale, min_score)


def hog_like_box(box: Box) -> Box:
    """A CNN box moved and scaled to where dlib's HOG detector puts the same face (see CNN_BOX_SCALE)."""
    side = (box[2] - box[0] + box[3] - box[1]) / 2
    centre = np.array([box[0] + box[2], box[1] + box[3]]) / 2 + np.asarray(CNN_BOX_SHIFT) * side
    half = CNN_BOX_SCALE * side / 2
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def _predict(image: np.ndarray, box: Box) -> np.ndarray:
    import dlib

    shape = _dlib_models()[1](np.ascontiguousarray(image), dlib.rectangle(*(round(v) for v in box)))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def landmarks_in(image: np.ndarray, box: Box) -> np.ndarray:
    """dlib's 68 landmarks (68, 2) of the face in `box` (HOG-like, image pixels), mirror-averaged.

    dlib's predictor is not mirror-symmetric: the mean of its landmarks on the photo and the
    mirrored landmarks of the mirrored photo removes its left-right bias and some of its noise.
    """
    last = image.shape[1] - 1
    mirrored = mirror_landmarks(_predict(image[:, ::-1], (last - box[2], box[1], last - box[0], box[3])), image.shape[1])
    return (_predict(image, box) + mirrored) / 2


def mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """68 landmarks (68, 2) of a photo `width` pixels wide as they sit on the horizontally mirrored photo."""
    mirrored = landmarks[MIRROR_68].copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    return mirrored


def detect_faces(
    image: np.ndarray,
    upsample: int = 1,
    min_score: float = 0.3,
    detect_max_side: int = 1024,
    stages: tuple[str, ...] = ("hog", "hog_padded", "cnn"),
) -> list[Face]:
    """Faces with 68 landmarks, largest first, from the first stage that finds any.

    `hog`: dlib's HOG detector on the photo (on a copy at most `detect_max_side` wide);
    `hog_padded`: the same on the photo reflect-padded on every side, for faces that fill the
    frame; `cnn`: dlib's CNN detector on the padded photo, slower, for faces HOG misses.
    """
    pad = round(PAD_FRACTION * max(image.shape[:2]))
    padded = None
    for stage in stages:
        if stage == "hog":
            found = [(box, score, image, 0) for box, score in _hog_boxes(image, upsample, min_score, detect_max_side)]
        else:
            if padded is None:
                padded = pad_reflect(image, (pad, pad, pad, pad), blur=0.02 * max(image.shape[:2]))
            if stage == "hog_padded":
                boxes = _hog_boxes(padded, upsample, min_score, detect_max_side)
            else:
                boxes = [(hog_like_box(box), score) for box, score in cnn_boxes(padded, min_score)]
            found = [(box, score, padded, pad) for box, score in boxes if _centre_inside(box, pad, image.shape)]
        faces = [
            Face(box=tuple(v - offset for v in box), score=score, landmarks=landmarks_in(source, box) - offset, detector=stage)
            for box, score, source, offset in found
        ]
        if faces:
            return sorted(faces, key=lambda f: f.area, reverse=True)
    return []


def _centre_inside(box: Box, pad: int, shape: tuple[int, ...]) -> bool:
    """Whether a box found on the padded photo is centred on the photo itself (not on its reflection)."""
    x, y = (box[0] + box[2]) / 2 - pad, (box[1] + box[3]) / 2 - pad
    return 0 <= x < shape[1] and 0 <= y < shape[0]


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres of 68 landmarks, in their pixels."""
    return float(np.hypot(*(landmarks[42:48].mean(0) - landmarks[36:42].mean(0))))


def crop_face(
    image: np.ndarray,
    face: Face,
    framing: Literal["eg3d", "ffhq"] = "eg3d",
    output_size: int = 512,
    template: LandmarkTemplate | None = None,
    calibration: np.ndarray = EG3D_CALIBRATION,
) -> AlignedFace:
    """The crop of one face in a framing: EG3D's (roll kept, `calibration` for dlib at the head's pose, the pose
    fitted with `template`, the label template by default) or FFHQ's (roll removed)."""
    if framing == "ffhq":
        quad = ffhq_quad(face.landmarks)
    else:  # the calibration depends on the head's pose: fit it in the crop calibrated for a frontal pose first
        frontal = eg3d_quad(face.landmarks, image.shape[0], calibration=calibration)
        fit = CameraFitter()(quad_coordinates(face.landmarks, frontal), template or packaged_template("label"))
        quad = eg3d_quad(face.landmarks, image.shape[0], axis_angles(fit.camera), calibration)
    crop = crop_quad(image, quad, output_size)
    uv = quad_coordinates(face.landmarks, quad)
    return AlignedFace(image=crop, landmarks=uv * output_size - 0.5, quad=quad, face=face, framing=framing)


@dataclass(frozen=True)
class FaceAligner:
    """Photo -> face crops; the options of detection and cropping in one place.

    Args:
        output_size: side of the crop in pixels.
        crop: `eg3d` (EG3D's crop, roll kept: what EG3D was trained on) or `ffhq` (the original FFHQ alignment).
        upsample: dlib HOG detector upsampling (1 finds faces down to about 40 px; raise for smaller).
        min_score: detections scoring below this are ignored.
        detect_max_side: HOG detection runs on a copy at most this wide (landmarks on the full photo).
        cnn: fall back on dlib's CNN detector when HOG finds nothing (slower; finds turned and bearded faces).
        min_eye_distance: faces whose eyes are closer (pixels) are too small to pair.
        max_pixels: larger photos are refused before decoding.
        all_faces: a crop per face, largest first; else the largest face only.
    """

    output_size: int = 512
    crop: Literal["eg3d", "ffhq"] = "eg3d"
    upsample: int = 1
    min_score: float = 0.3
    detect_max_side: int = 1024
    cnn: bool = True
    min_eye_distance: float = 16.0
    max_pixels: int = 64_000_000
    all_faces: bool = False

    def faces(self, image: np.ndarray, source: str = "<image>") -> list[Face]:
        """Detected faces large enough to pair, largest first (only the largest unless `all_faces`); FaceError when none."""
        stages = ("hog", "hog_padded", "cnn") if self.cnn else ("hog", "hog_padded")
        faces = detect_faces(image, self.upsample, self.min_score, self.detect_max_side, stages)
        if not faces:
            raise FaceError(
                f"{source}: no face found (dlib {', '.join(stages)}; upsample {self.upsample}, min score {self.min_score}); "
                "use a photo with a visible face or raise upsample for small faces"
            )
        usable = [f for f in (faces if self.all_faces else faces[:1]) if eye_distance(f.landmarks) >= self.min_eye_distance]
        if not usable:
            raise FaceError(f"{source}: the face is too small (eyes under {self.min_eye_distance:.0f} px apart); use a larger photo")
        return usable

    def __call__(self, image: np.ndarray, source: str = "<image>") -> list[AlignedFace]:
        """Crops of the largest face (or of every face with `all_faces`); FaceError when none fits."""
        return [crop_face(image, face, self.crop, self.output_size) for face in self.faces(image, source)]

    def uncropped(self, image: np.ndarray, source: str = "<image>") -> AlignedFace:
        """A photo that is already a crop, kept as it is: only its largest face's landmarks are found."""
        if image.shape[0] != image.shape[1]:
            raise FaceError(f"{source}: an aligned photo must be square, got {image.shape[1]}x{image.shape[0]}; crop it or drop --aligned")
        face = self.faces(image, source)[0]
        quad = square_quad(np.array(image.shape[1::-1]) / 2, image.shape[0])
        return AlignedFace(image=image, landmarks=face.landmarks, quad=quad, face=face, framing="given")

    def align_file(self, path: str | Path) -> list[AlignedFace]:
        return self(load_image(path, self.max_pixels), str(path))
