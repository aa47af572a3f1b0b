"""Face framings from 68 landmarks: EG3D's crop (roll kept) and the original FFHQ crop (roll removed), and the warp.

A framing is a square in the photo given by its four corners (a quad: top-left, bottom-left,
bottom-right, top-right, in pixel-index coordinates where pixel centres sit on integers); the
crop is that square resampled to `output_size`, padded by reflection where it leaves the photo.
The EG3D crop follows eg3d-photo-preprocessing.md section 3, calibrated for dlib's landmarks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

# The five standard points of the face-model frame (y up, z towards the camera): eye on the
# image's left, eye on the image's right, nose tip, mouth corner image left, image right.
STANDARD_POINTS = np.array(
    [
        [-0.31149, 0.29036, 0.13378],
        [0.30980, 0.28972, 0.13180],
        [0.00325, -0.04618, 0.55244],
        [-0.25217, -0.38134, 0.22406],
        [0.24847, -0.38128, 0.22236],
    ]
)
EG3D_SIDE = 700 / 300  # crop side in units of the affine fit's scale s

# dlib's five points are not upstream's detector's: from them the crop comes out small and low, by an
# amount that depends on the head's pose. The crop's log side, and its centre's x and y (in units of s),
# get corrections linear in (1, yaw, pitch) of the head's label-frame camera axis (degrees): rows of
# EG3D_CALIBRATION. Measured by scripts/calibrate_photos.py on the 16 single photos of
# ../shared/fixtures/eg3d-photos (EG3D crops: the right crop is the identity) by least squares,
# without their mirror images (upstream's five-point detector is not mirror-symmetric);
# scripts/bench_cameras.py scores the recipe on photos it left out.
EG3D_CALIBRATION = np.array(
    [
        [0.008209, -0.001245, -0.048832],  # at a frontal pose
        [0.000773, -0.000324, 0.000531],  # per degree of yaw
        [-0.002414, 0.000342, -0.001936],  # per degree of pitch
    ]
)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The five points of the standard 3D points (5, 2) from 68 iBUG landmarks: eye centres, nose tip, mouth corners."""
    return np.stack(
        [landmarks[[36, 39]].mean(0), landmarks[[42, 45]].mean(0), landmarks[30], landmarks[48], landmarks[54]]
    )


def eg3d_frame(landmarks: np.ndarray, height: int) -> tuple[float, np.ndarray]:
    """The affine projection of the standard points onto five landmarks: its scale s and the image of the origin.

    Least squares `u = r1 . X + a`, `v = r2 . X + b` in y-up continuous pixels; returns
    `s = (|r1| + |r2|) / 2` and the origin's image (x, y) in y-down continuous pixels (pixel i spans [i, i+1]).
    """
    points = five_points(landmarks) + 0.5
    design = np.concatenate([STANDARD_POINTS, np.ones((5, 1))], axis=1)
    targets = np.stack([points[:, 0], height - points[:, 1]], axis=1)
    r1, r2 = np.linalg.lstsq(design, targets, rcond=None)[0].T  # (x, y, z, offset) for u and for v
    scale = (np.linalg.norm(r1[:3]) + np.linalg.norm(r2[:3])) / 2
    return float(scale), np.array([r1[3], height - r2[3]])


def square_quad(centre: np.ndarray, side: float) -> np.ndarray:
    """The axis-aligned square of `side` around `centre` (continuous pixels) as a quad in pixel-index coordinates."""
    half = side / 2
    corners = np.array([[-half, -half], [-half, half], [half, half], [half, -half]])
    return centre + corners - 0.5


def eg3d_quad(
    landmarks: np.ndarray, height: int, pose: tuple[float, float] | None = (0.0, 0.0), calibration: np.ndarray = EG3D_CALIBRATION
) -> np.ndarray:
    """EG3D's crop square (4, 2) from 68 landmarks: side 7/3 s around the face-model origin, roll kept.

    `pose` (yaw, pitch of the head's label-frame camera axis, degrees) sets the `calibration` that
    removes dlib's offset from upstream's five points (see EG3D_CALIBRATION); None: uncalibrated.
    """
    scale, centre = eg3d_frame(landmarks, height)
    side = EG3D_SIDE * scale
    if pose is not None:
        log_side, *shift = np.array([1.0, *pose]) @ calibration
        side *= np.exp(log_side)
        centre = centre + scale * np.asarray(shift)
    return square_quad(centre, side)


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


def quad_transform(quad: np.ndarray, output_size: int) -> dict:
    """A crop's transform as meta: the source quad, its centre (continuous pixels), side and roll (degrees)."""
    axis_x = quad[3] - quad[0]
    side = float(np.hypot(*axis_x))
    return {
        "quad": quad.tolist(),
        "centre": (quad.mean(0) + 0.5).tolist(),
        "side": side,
        "scale": side / output_size,
        "roll_deg": float(np.degrees(np.arctan2(axis_x[1], axis_x[0]))),
    }


def quad_coordinates(points: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Source pixel positions (P, 2) to normalized coordinates in the crop of `quad` (pixel centres at (i + 0.5) / S)."""
    axis_x, axis_y = quad[3] - quad[0], quad[1] - quad[0]
    offset = points - quad[0]  # both in pixel-index coordinates
    return np.stack([offset @ axis_x / (axis_x @ axis_x), offset @ axis_y / (axis_y @ axis_y)], axis=1)


def pad_reflect(image: np.ndarray, pad: tuple[int, int, int, int], blur: float) -> np.ndarray:
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


def crop_quad(image: np.ndarray, quad: np.ndarray, output_size: int = 512, supersample: int = 2) -> np.ndarray:
    """The square `quad` of an RGB photo resampled to (output_size, output_size, 3): shrink, reflect-pad, warp."""
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    corners = quad + 0.5  # pixel indices to continuous coordinates
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
        pil = Image.fromarray(pad_reflect(np.asarray(pil), pad, blur=qsize * 0.02))
        corners = corners + pad[:2]
    size = output_size * supersample
    warped = pil.transform((size, size), Image.Transform.QUAD, corners.flatten().tolist(), Image.Resampling.BILINEAR)
    return np.asarray(warped.resize((output_size, output_size), Image.Resampling.LANCZOS))


def similarity_2d(source: np.ndarray, target: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares 2D similarity `target ~ k R(angle) source + t` (Umeyama) of point sets (P, 2): k, angle, t."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    dot, cross = (s * t).sum(), (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()
    angle = float(np.arctan2(cross, dot))
    k = float(np.hypot(dot, cross) / (s**2).sum())
    return k, angle, mu_t - k * _rotation(angle) @ mu_s


def recrop_error(photo_landmarks: np.ndarray, crop_landmarks: np.ndarray, photo_side: int, crop_side: int) -> dict:
    """How far a crop of a square photo is from the identity, seen from landmarks found on both.

    `scale`: the crop's side over the photo's; `shift`, `shift_x`, `shift_y`: where the crop's
    centre lies in the photo relative to its centre (photo pixels); `roll_deg`: the crop's turn.
    """
    k, angle, t = similarity_2d(photo_landmarks, crop_landmarks)
    centre = np.full(2, (crop_side - 1) / 2)
    shift = _rotation(angle).T @ (centre - t) / k - (photo_side - 1) / 2
    return {"scale": crop_side / k / photo_side, "shift": float(np.hypot(*shift)), "shift_x": float(shift[0]),
            "shift_y": float(shift[1]), "roll_deg": float(np.degrees(angle))}  # fmt: skip


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
