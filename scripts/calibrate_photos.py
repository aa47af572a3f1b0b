"""Calibrate the photo pipeline on EG3D-labelled crops: the EG3D crop's constants, the CNN box, the label template.

    python scripts/calibrate_photos.py --photos ../shared/fixtures/eg3d-photos --template regress/faces/landmarks68_label.json

Only the photos not named by `--holdout` are used, as they are (they are EG3D crops), each with its
mirror image and the mirrored label (so that the calibration, like faces, is mirror-symmetric). Writes the
camera fit's template in the face-model frame, then prints the constants for crop.py
(EG3D_CALIBRATION, found with the head poses that template gives) and align.py (CNN_BOX_SCALE,
CNN_BOX_SHIFT). The template:
1. the human mean face (landmarks68_template.json) moved onto the five standard points by a
   similarity transform (the frame the labels are expressed in);
2. refined by bundle adjustment against the labels: the 68 points and each photo's camera
   position are free, each camera's rotation is its label's, a ridge holds the points to step 1;
3. two deformation modes (principal components of how each face's landmarks differ from the
   refined template under its label), fitted per face with a Gaussian prior;
4. per-landmark weights 1 / sd of each landmark's error in the fits (noisy landmarks count less);
5. turned by the small rotation that removes the fit's mean yaw and pitch error on these photos;
6. a yaw correction, ridge regression of the remaining yaw error on (y, K tanh(y / K)) of the fitted yaw y.
Ridges and the correction's form were chosen by leave-one-out on the calibration photos (and mirrors).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from bench_cameras import labelled_photos  # scripts/ is on sys.path when this runs as a script
from regress.faces.landmarks import LABEL_OFFSET, LABEL_SCALE, TEMPLATES, YAW_KNEE, LandmarkTemplate, load_template, project_points
from regress.inversion.align import cnn_boxes, detect_faces, load_image, mirror_landmarks
from regress.inversion.camera_fit import LABEL_FOCAL, CameraFitter, axis_angles, mirror_camera
from regress.inversion.crop import EG3D_SIDE, STANDARD_POINTS, eg3d_frame, five_points

HOLDOUT = ("celebahq_7", "celebahq_8", "celebahq_9", "celebahq_t79", "celebahq_t83")  # kept out: a third of each source
RIDGE = 10.0  # weight of the pull towards the mean face in the bundle adjustment (world units against normalized pixels)
MODES = 2
YAW_RIDGE = 10.0  # ridge of the yaw correction's regression (degrees squared)


def similarity_3d(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares 3D similarity `target ~ k R source + t` (Umeyama): k, R (3, 3), t (3,)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    u, singular, vt = np.linalg.svd((target - mu_t).T @ (source - mu_s))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    k = (singular * np.diag(sign)).sum() / ((source - mu_s) ** 2).sum()
    return k, rotation, mu_t - k * rotation @ mu_s


def crop_calibration(landmarks: list[np.ndarray], poses: list[tuple[float, float]], side: int) -> np.ndarray:
    """EG3D_CALIBRATION (3, 3): least squares of the log side factor and centre offset (units of s) that turn dlib's
    EG3D crop of each photo into the identity, on (1, yaw, pitch)."""
    features, corrections = [], []
    for points, pose in zip(landmarks, poses):
        s, centre = eg3d_frame(points, side)
        features.append([1.0, *pose])
        corrections.append([np.log(side / (EG3D_SIDE * s)), *((side / 2 - centre) / s)])
    return np.linalg.lstsq(np.array(features), np.array(corrections), rcond=None)[0]


def cnn_box_constants(photos: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """HOG box side over CNN box side, and the HOG box centre's offset from the CNN's in CNN sides (means)."""
    scales, shifts = [], []
    for image in photos.values():
        hog, cnn = detect_faces(image, stages=("hog",)), cnn_boxes(image, 0.0)
        if not hog or not cnn:
            continue
        a, b = np.asarray(hog[0].box), np.asarray(cnn[0][0])
        side_a, side_b = (a[2] - a[0] + a[3] - a[1]) / 2, (b[2] - b[0] + b[3] - b[1]) / 2
        scales.append(side_a / side_b)
        shifts.append(((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2) / side_b)
    return float(np.mean(scales)), np.mean(shifts, axis=0)


def bundle_adjust(prior: np.ndarray, uvs: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
    """World landmarks (68, 3) that best project onto every photo's landmarks with its label's rotation, near `prior`."""
    n = len(uvs)

    def residuals(params: np.ndarray) -> np.ndarray:
        points, positions = params[:204].reshape(68, 3), params[204:].reshape(n, 3)
        parts = []
        for uv, label, position in zip(uvs, labels, positions):
            camera = label.copy()
            camera[[3, 7, 11]] = position
            parts.append((project_points(points, camera) - uv).ravel())
        return np.concatenate(parts + [np.sqrt(RIDGE) * (points - prior).ravel()])

    start = np.concatenate([prior.ravel(), np.concatenate([label[[3, 7, 11]] for label in labels])])
    return least_squares(residuals, start, x_scale="jac").x[:204].reshape(68, 3)


def deformation_modes(points: np.ndarray, uvs: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-face world displacements of the landmarks across the view, under each label: mean (68, 3), modes, spreads."""
    displacements = []
    for uv, label in zip(uvs, labels):
        def residuals(position: np.ndarray, label: np.ndarray = label, uv: np.ndarray = uv) -> np.ndarray:
            camera = label.copy()
            camera[[3, 7, 11]] = position
            return (project_points(points, camera) - uv).ravel()

        camera = label.copy()
        camera[[3, 7, 11]] = least_squares(residuals, label[[3, 7, 11]]).x
        rotation = camera[:16].reshape(4, 4)[:3, :3]
        depth = ((points - camera[[3, 7, 11]]) @ rotation)[:, 2:]
        offset = (uv - project_points(points, camera)) / LABEL_FOCAL * depth  # camera-plane displacement at each point's depth
        displacements.append(np.concatenate([offset, np.zeros((68, 1))], axis=1) @ rotation.T)
    flat = np.stack(displacements).reshape(len(uvs), -1)
    mean = flat.mean(0)
    _, singular, vt = np.linalg.svd(flat - mean, full_matrices=False)
    return mean.reshape(68, 3), vt[:MODES].reshape(MODES, 68, 3), singular[:MODES] / np.sqrt(len(uvs) - 1)


def fitted_angles(template: LandmarkTemplate, uvs: list[np.ndarray]) -> np.ndarray:
    """(yaw, pitch) of the axis the camera fit finds for each photo's landmarks (N, 2), degrees."""
    fitter = CameraFitter()
    return np.array([axis_angles(fitter(uv, template).camera) for uv in uvs])


def label_angles(labels: list[np.ndarray]) -> np.ndarray:
    """(yaw, pitch) of each label camera's axis (N, 2), degrees."""
    return np.array([axis_angles(label) for label in labels])


def axis_errors(template: LandmarkTemplate, uvs: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
    """(yaw, pitch) of the fitted axis minus the label's (N, 2), degrees."""
    return fitted_angles(template, uvs) - label_angles(labels)


def landmark_weights(template: LandmarkTemplate, uvs: list[np.ndarray]) -> np.ndarray:
    """1 / (each landmark's error spread in the fits), normalized to mean 1 over the 68 landmarks."""
    fitter = CameraFitter()
    errors = []
    for uv in uvs:
        fit = fitter(uv, template)
        camera = fit.camera.double().numpy()
        camera[[3, 7, 11]] *= fit.distance / np.linalg.norm(camera[[3, 7, 11]])  # the fitted position, before the label's radius
        errors.append(project_points(template.world_points(np.array(fit.shape)), camera) - uv)
    spread = np.sqrt((np.stack(errors) ** 2).sum(-1).mean(0))
    return (1 / spread) / (1 / spread).mean()


def unbiased(template: LandmarkTemplate, uvs: list[np.ndarray], labels: list[np.ndarray]) -> tuple[LandmarkTemplate, np.ndarray]:
    """The template turned about the face-model origin (about y, then x) so that the mean yaw and pitch errors vanish."""

    def turned(angles: np.ndarray) -> LandmarkTemplate:
        rotation = Rotation.from_euler("yx", angles).as_matrix()
        return replace(template, points=template.points @ rotation.T, modes=template.modes @ rotation.T)

    angles = least_squares(lambda a: axis_errors(turned(a), uvs, labels).mean(0), np.zeros(2), diff_step=1e-2).x
    return turned(angles), angles


def yaw_correction(template: LandmarkTemplate, uvs: list[np.ndarray], labels: list[np.ndarray]) -> tuple[float, float]:
    """Ridge regression of the fits' yaw error on (y, K tanh(y / K)) of the fitted yaw y: the template's `yaw_correction`."""
    yaws = fitted_angles(template, uvs)[:, 0]
    errors = yaws - label_angles(labels)[:, 0]
    basis = np.stack([yaws, YAW_KNEE * np.tanh(yaws / YAW_KNEE)], axis=1)
    return tuple(np.linalg.solve(basis.T @ basis + YAW_RIDGE * np.eye(2), basis.T @ errors).tolist())


def label_template(uvs: list[np.ndarray], labels: list[np.ndarray]) -> tuple[LandmarkTemplate, dict]:
    """The face-model-frame template of the module docstring, and how it was made."""
    mean_face = load_template(TEMPLATES["mean_face"]).points
    k, rotation, shift = similarity_3d(five_points(mean_face), STANDARD_POINTS)
    model = k * mean_face @ rotation.T + shift
    offset = np.asarray(LABEL_OFFSET)
    world = bundle_adjust(LABEL_SCALE * model + offset, uvs, labels)
    mean, modes, spread = deformation_modes(world, uvs, labels)
    template = LandmarkTemplate((world + mean - offset) / LABEL_SCALE, "face_model", modes / LABEL_SCALE, spread, "label")
    template = replace(template, weights=landmark_weights(template, uvs))
    template, angles = unbiased(template, uvs, labels)
    template = replace(template, yaw_correction=yaw_correction(template, uvs, labels))
    made = {"similarity_scale": k, "ridge": RIDGE, "modes": MODES, "turn_yaw_pitch_deg": np.degrees(angles).tolist(), "yaw_ridge": YAW_RIDGE}
    return template, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="EG3D crops, each beside its label NAME.npy")
    parser.add_argument("--template", type=Path, help="write the label-frame template here")
    parser.add_argument("--holdout", default=",".join(HOLDOUT), help="comma-separated photo names kept out of calibration")
    args = parser.parse_args()
    holdout = set(args.holdout.split(","))
    paths = [p for p in labelled_photos(args.photos) if p.stem not in holdout]
    photos = {p.stem: load_image(p) for p in paths}
    side = next(iter(photos.values())).shape[0]
    landmarks = [detect_faces(image)[0].landmarks for image in photos.values()]
    labels = [np.load(p.with_suffix(".npy")).astype(np.float64) for p in paths]
    landmarks, labels = landmarks + [mirror_landmarks(points, side) for points in landmarks], labels + [mirror_camera(label) for label in labels]
    uvs = [(points + 0.5) / side for points in landmarks]
    print(f"calibration photos: {', '.join(sorted(photos))}, and their mirror images")
    template, made = label_template(uvs, labels)
    fitted = fitted_angles(template, uvs)
    errors = fitted - label_angles(labels)
    print(f"template: {made}; calibration photos' yaw / pitch error mean {errors.mean(0).round(2)}, rms {np.sqrt((errors**2).mean(0)).round(2)}")
    originals = slice(len(photos))  # the crop is calibrated on the photos only: upstream's detector is not mirror-symmetric
    print(f"EG3D_CALIBRATION = {np.round(crop_calibration(landmarks[originals], list(fitted[originals]), side), 6).tolist()}")
    scale, shift = cnn_box_constants(photos)
    print(f"CNN_BOX_SCALE = {scale:.4f}\nCNN_BOX_SHIFT = ({shift[0]:.4f}, {shift[1]:.4f})")
    if args.template:
        args.template.write_text(json.dumps({
            "name": "label",
            "frame": "face_model",
            "source": "the human mean face of landmarks68_template.json on EG3D's five standard points, refined against "
                      f"upstream labels by scripts/calibrate_photos.py on {', '.join(sorted(photos))}",
            "calibration_photos": sorted(photos),
            "calibration": made,
            "points": np.round(template.points, 6).tolist(),
            "modes": np.round(template.modes, 6).tolist(),
            "mode_sd": np.round(template.mode_sd, 6).tolist(),
            "weights": np.round(template.weights, 4).tolist(),
            "yaw_correction": np.round(template.yaw_correction, 6).tolist(),
        }, indent=1))  # fmt: skip
        print(f"wrote {args.template}")


if __name__ == "__main__":
    main()
