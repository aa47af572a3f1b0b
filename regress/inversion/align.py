"""Real photos to generator inputs: dlib face detection and 68 landmarks, the FFHQ crop, the EG3D camera.

The crop is FFHQ's eye/mouth quad (so crops frame faces the way the generator was trained on);
the camera is the look-at camera (yaw, pitch, radius) whose projection of a 3D landmark template
in the generator's world frame best matches the crop's landmarks (least squares over 68 points).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import gaussian_filter

from regress.camera import DEFAULT_FOV_DEG, DEFAULT_PIVOT, DEFAULT_RADIUS, fov_to_focal, look_at_cam2world

TEMPLATE_PATH = Path(__file__).with_name("landmarks68_template.json")
JAW = slice(0, 17)  # the face contour: silhouette points that slide over the head as it turns


class FaceError(ValueError):
    """A photo that cannot become a pair: unreadable, too small, or without a usable face."""


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
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(face_model_path("shape_predictor_68_face_landmarks.dat")))


def load_image(path: str | Path, max_pixels: int = 64_000_000, min_side: int = 64) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from an image file; grey is expanded, alpha is composited on white.

    Raises FaceError (naming the file and the fix) for unreadable, truncated, tiny or huge files;
    the size is checked from the header, before anything is decoded.
    """
    path = Path(path)
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


@dataclass(frozen=True)
class Face:
    """One detected face: box (x0, y0, x1, y1) and 68 iBUG landmarks (68, 2), in source pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class AlignedFace:
    """An FFHQ-aligned crop (S, S, 3), its landmarks in crop pixels (68, 2), and the source quad (4, 2)."""

    image: np.ndarray
    landmarks: np.ndarray
    quad: np.ndarray
    face: Face

    @property
    def landmarks_uv(self) -> np.ndarray:
        """Landmarks in normalized image coordinates (pixel centres at (i + 0.5) / S), the cameras' units."""
        return (self.landmarks + 0.5) / self.image.shape[0]


def detect_faces(
    image: np.ndarray, upsample: int = 1, min_score: float = 0.3, detect_max_side: int = 1024
) -> list[Face]:
    """Faces with 68 landmarks, largest first; detection runs on a copy at most `detect_max_side` wide."""
    detector, predictor = _dlib_models()
    import dlib

    scale = min(1.0, detect_max_side / max(image.shape[:2]))
    small = image
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    rects, scores, _ = detector.run(np.ascontiguousarray(small), upsample, 0.0)
    faces = []
    for rect, score in zip(rects, scores):
        if score < min_score:
            continue
        box = tuple(v / scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
        full = dlib.rectangle(*(round(v) for v in box))
        shape = predictor(image, full)
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        faces.append(Face(box=box, score=float(score), landmarks=landmarks))
    return sorted(faces, key=lambda f: f.area, reverse=True)


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres of 68 landmarks, in their pixels."""
    return float(np.hypot(*(landmarks[42:48].mean(0) - landmarks[36:42].mean(0))))


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ's crop square from 68 landmarks (4, 2): top-left, bottom-left, bottom-right, top-right.

    Its axis follows the eyes (roll removed); its half-size is the larger of twice the eye
    distance and 1.8 times the eye-to-mouth distance; its centre sits a tenth of the way from the
    eye midpoint to the mouth.
    """
    eye_left, eye_right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    eye_mid, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    eye_to_mouth = (landmarks[48] + landmarks[54]) / 2 - eye_mid
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = np.array([-x[1], x[0]])
    centre = eye_mid + 0.1 * eye_to_mouth
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])


def _pad_reflect(image: np.ndarray, pad: tuple[int, int, int, int], blur: float) -> np.ndarray:
    """Reflect-pad (left, top, right, bottom), fading the padding to a blur and then to the median colour."""
    left, top, right, bottom = pad
    padded = np.pad(image.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = padded.shape[:2]
    x, y = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    # 1 at the outer border, 0 at the original frame, negative inside it
    outside = np.maximum(
        1 - np.minimum(x / max(left, 1), (w - 1 - x) / max(right, 1)),
        1 - np.minimum(y / max(top, 1), (h - 1 - y) / max(bottom, 1)),
    )[..., None]
    padded += (gaussian_filter(padded, [blur, blur, 0]) - padded) * np.clip(3 * outside + 1, 0, 1)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(outside, 0, 1)
    return np.uint8(np.clip(np.rint(padded), 0, 255))


def crop_ffhq(image: np.ndarray, face: Face, output_size: int = 512, supersample: int = 2) -> AlignedFace:
    """The FFHQ-aligned crop of one face: shrink, reflect-pad where the square leaves the photo, warp."""
    quad = ffhq_quad(face.landmarks)
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    corners = quad + 0.5  # landmark pixel indices to continuous coordinates
    pil = Image.fromarray(image)
    shrink = int(qsize / output_size * 0.5)
    if shrink > 1:
        pil = pil.reduce(shrink)
        corners, qsize = corners / shrink, qsize / shrink
    border = max(round(qsize * 0.1), 3)
    lo, hi = np.floor(corners.min(0)).astype(int), np.ceil(corners.max(0)).astype(int)
    box = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, pil.width), min(hi[1] + border, pil.height))
    pil = pil.crop(box)
    corners = corners - box[:2]
    pad = (
        max(-lo[0] + box[0] + border, 0),
        max(-lo[1] + box[1] + border, 0),
        max(hi[0] - box[0] - pil.width + border, 0),
        max(hi[1] - box[1] - pil.height + border, 0),
    )
    if max(pad) > border - 4:
        pad = tuple(max(p, round(qsize * 0.3)) for p in pad)
        pil = Image.fromarray(_pad_reflect(np.asarray(pil), pad, blur=qsize * 0.02))
        corners = corners + pad[:2]
    size = output_size * supersample
    warped = pil.transform((size, size), Image.Transform.QUAD, corners.flatten().tolist(), Image.Resampling.BILINEAR)
    crop = np.asarray(warped.resize((output_size, output_size), Image.Resampling.LANCZOS))
    uv = quad_coordinates(face.landmarks, quad)
    return AlignedFace(image=crop, landmarks=uv * output_size - 0.5, quad=quad, face=face)


def quad_coordinates(points: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Source pixel positions (P, 2) to normalized coordinates in the crop of `quad` (pixel centres at (i + 0.5) / S)."""
    axis_x, axis_y = quad[3] - quad[0], quad[1] - quad[0]
    offset = points - quad[0]  # both in pixel-index coordinates
    return np.stack([offset @ axis_x / (axis_x @ axis_x), offset @ axis_y / (axis_y @ axis_y)], axis=1)


@dataclass(frozen=True)
class FaceAligner:
    """Photo -> FFHQ-aligned face crops; the options of detection and cropping in one place.

    Args:
        output_size: side of the FFHQ crop in pixels.
        upsample: dlib detector upsampling (1 finds faces down to about 40 px; raise for smaller).
        min_score: detections scoring below this are ignored.
        detect_max_side: detection runs on a copy at most this wide (landmarks on the full photo).
        min_eye_distance: faces whose eyes are closer (pixels) are too small to pair.
        max_pixels: larger photos are refused before decoding.
        all_faces: a crop per face, largest first; else the largest face only.
    """

    output_size: int = 512
    upsample: int = 1
    min_score: float = 0.3
    detect_max_side: int = 1024
    min_eye_distance: float = 16.0
    max_pixels: int = 64_000_000
    all_faces: bool = False

    def __call__(self, image: np.ndarray, source: str = "<image>") -> list[AlignedFace]:
        """Aligned crops of the largest face (or of every face with `all_faces`); FaceError when none fits."""
        faces = detect_faces(image, self.upsample, self.min_score, self.detect_max_side)
        if not faces:
            raise FaceError(
                f"{source}: no face found (dlib HOG detector, upsample {self.upsample}, min score {self.min_score}); "
                "use a photo with a visible, roughly frontal face or raise upsample for small faces"
            )
        crops = []
        for face in faces if self.all_faces else faces[:1]:
            if eye_distance(face.landmarks) < self.min_eye_distance:
                continue
            crops.append(crop_ffhq(image, face, self.output_size))
        if not crops:
            raise FaceError(
                f"{source}: the face is too small (eyes under {self.min_eye_distance:.0f} px apart); use a larger photo"
            )
        return crops

    def align_file(self, path: str | Path) -> list[AlignedFace]:
        return self(load_image(path, self.max_pixels), str(path))


def load_template(path: str | Path = TEMPLATE_PATH) -> torch.Tensor:
    """The 68-landmark template (68, 3) in EG3D world units, float64; see the file's `source`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark template {path} does not exist; use 'generator', 'mean_face' or a JSON file with 68 points")
    points = torch.tensor(json.loads(path.read_text())["points"], dtype=torch.float64)
    if points.shape != (68, 3):
        raise ValueError(f"{path}: a landmark template needs 68 points of 3 coordinates, got {tuple(points.shape)}")
    return points


def generator_template(generator: torch.nn.Module, spec: str = "generator") -> torch.Tensor:
    """The camera fit's template (68, 3): `generator` (its own `landmarks_3d` at the mean latent when it has
    them, else the mean face), `mean_face` (the packaged human mean face), or a JSON file like it."""
    if spec == "mean_face":
        return load_template()
    if spec != "generator":
        return load_template(spec)
    if hasattr(generator, "landmarks_3d"):
        with torch.no_grad():
            w = generator.mean_latent()[None].to(generator.device)
            return generator.landmarks_3d(w)[0].detach().cpu().double()
    return load_template()


def project_points(points: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """World points (N, P, 3) through 25-number cameras (N, 25) -> normalized image coordinates (N, P, 2)."""
    n = camera.shape[0]
    cam2world = camera[:, :16].reshape(n, 4, 4)
    k = camera[:, 16:].reshape(n, 3, 3)
    local = (points - cam2world[:, None, :3, 3]) @ cam2world[:, :3, :3]
    plane = local[..., :2] / local[..., 2:].clamp_min(1e-6)
    return plane @ k[:, :2, :2].transpose(1, 2) + k[:, None, :2, 2]


def _camera_vector(cam2world: torch.Tensor, fov_deg: float) -> torch.Tensor:
    focal = fov_to_focal(fov_deg)
    k = cam2world.new_tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])
    return torch.cat([cam2world.reshape(-1, 16), k.reshape(1, 9).expand(len(cam2world), 9)], dim=1)


@dataclass(frozen=True)
class CameraFit:
    """A fitted look-at camera: the 25-number vector, its pose, and the landmark residual (RMS, normalized)."""

    camera: torch.Tensor
    yaw: float
    pitch: float
    radius: float
    pivot: tuple[float, float, float]
    rms: float

    def as_meta(self) -> dict:
        return {
            "yaw_deg": math.degrees(self.yaw),
            "pitch_deg": math.degrees(self.pitch),
            "radius": self.radius,
            "pivot": list(self.pivot),
            "landmark_rms": self.rms,
        }


def estimate_camera(
    landmarks_uv: np.ndarray | torch.Tensor,
    template: torch.Tensor | None = None,
    fov_deg: float = DEFAULT_FOV_DEG,
    fit_pivot: bool = True,
    contour_weight: float = 0.5,
    steps: int = 50,
) -> CameraFit:
    """Yaw, pitch, radius (and with `fit_pivot` the pivot's x, y) minimizing the template's reprojection error.

    Levenberg-Marquardt on normalized image coordinates; the jaw contour is down-weighted since
    its points slide over the head as it turns. Roll is not modelled: FFHQ crops remove it. The
    pivot absorbs where the crop centres the face relative to the generator's head, which would
    otherwise bias pitch and yaw.
    """
    target = torch.as_tensor(np.asarray(landmarks_uv), dtype=torch.float64).reshape(1, 68, 2)
    template = (load_template() if template is None else template).double().reshape(1, 68, 3)
    weights = torch.ones(68, 1, dtype=torch.float64)
    weights[JAW] = contour_weight
    base_pivot = torch.tensor(DEFAULT_PIVOT, dtype=torch.float64)

    def cameras_of(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched parameters (B, 3 or 5) -> cameras (B, 25) and pivots (B, 3)."""
        pivot = base_pivot.expand(len(params), 3).clone()
        if fit_pivot:
            pivot[:, :2] += params[:, 3:5]
        cam2world = look_at_cam2world(params[:, 0], params[:, 1], params[:, 2].exp(), pivot)
        return _camera_vector(cam2world, fov_deg), pivot

    def residuals(params: torch.Tensor) -> torch.Tensor:
        uv = project_points(template.expand(len(params), 68, 3), cameras_of(params)[0])
        return ((uv - target) * weights.sqrt()).reshape(len(params), -1)

    params = torch.zeros(5 if fit_pivot else 3, dtype=torch.float64)
    params[2] = math.log(DEFAULT_RADIUS)
    eye = torch.eye(len(params), dtype=torch.float64) * 1e-6
    damping = 1e-3
    cost = residuals(params[None])[0].square().sum()
    for _ in range(steps):
        # central differences, all in one batched evaluation
        probes = residuals(torch.cat([params[None], params + eye, params - eye]))
        r = probes[0]
        jac = ((probes[1 : 1 + len(params)] - probes[1 + len(params) :]) / 2e-6).T
        normal = jac.T @ jac
        step = torch.linalg.solve(normal + damping * torch.diag(normal.diagonal() + 1e-12), -jac.T @ r)
        candidate = params + step
        new_cost = residuals(candidate[None])[0].square().sum()
        if new_cost < cost:
            converged = cost - new_cost < 1e-10 * cost
            params, cost, damping = candidate, new_cost, max(damping / 3, 1e-9)
            if converged:
                break
        else:
            damping *= 4
            if damping > 1e8:
                break
    camera, pivot = cameras_of(params[None])
    rms = float((project_points(template, camera) - target).square().sum(-1).mean().sqrt())
    return CameraFit(
        camera=camera[0].float(),
        yaw=float(params[0]),
        pitch=float(params[1]),
        radius=float(params[2].exp()),
        pivot=tuple(float(v) for v in pivot[0]),
        rms=rms,
    )
