"""Calibration on EG3D-labelled crops: the EG3D crop's correction, the label-frame 68-point template, the mesh template.

Every function takes the photos it may learn from (landmarks or meshes with their labels) and nothing else, so
that scripts/bench_cameras.py can leave each photo out of the calibration that scores it; `load_labelled` reads
a folder of labelled photos (and its multiview/ person) with their mirror images, `calibrate` makes every constant. The 68-point template:
1. the human mean face (landmarks68_template.json) moved onto the five standard points by a
   similarity transform (the frame the labels are expressed in);
2. refined by bundle adjustment against the labels: the 68 points and each photo's camera
   position are free, each camera's rotation is its label's, a ridge holds the points to step 1;
3. two deformation modes (principal components of how each face's landmarks differ from the
   refined template under its label, each difference made mirror-symmetric: a left-right asymmetry
   of the face moves its landmarks as a turn of the head does, so a mode that holds one trades
   against yaw in the fit), fitted per face with a Gaussian prior;
4. per-landmark weights 1 / sd of each landmark's error in the fits (noisy landmarks count less);
5. turned by the small rotation that removes the fit's mean yaw and pitch error on these photos;
6. a yaw correction, ridge regression of the remaining yaw error on (y, K tanh(y / K)) of the fitted yaw y.
The mesh template: each photo's mesh seen through its label (each point at the face's distance plus its
relative depth), back in the face-model frame, averaged with the photos' weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from regress.faces.landmarks import LABEL_OFFSET, LABEL_SCALE, TEMPLATES, YAW_KNEE, LandmarkTemplate, load_template, project_points
from regress.inversion.align import MIRROR_68, detect_faces, load_image, mirror_landmarks
from regress.inversion.camera_fit import LABEL_FOCAL, CameraFitter, axis_angles, mirror_camera, similarity_3d
from regress.inversion.crop import EG3D_SIDE, STANDARD_POINTS, eg3d_frame, five_points
from regress.inversion.mesh import face_mesh
from regress.inversion.photos import IMAGE_SUFFIXES

RIDGE = 10.0  # weight of the pull towards the mean face in the bundle adjustment (world units against normalized pixels)
MODES = 2
YAW_RIDGE = 10.0  # ridge of the yaw correction's regression (degrees squared)
MIRROR_X = np.array([-1.0, 1.0, 1.0])  # a mirror image negates x, in the world as in the face-model frame
MULTIVIEW = "multiview"  # the folder (and the group) of one person's frames: one photo on one side of every split


def crop_calibration(landmarks: list[np.ndarray], poses: list[tuple[float, float]], side: int) -> np.ndarray:
    """EG3D_CALIBRATION (3, 3): least squares of the log side factor and centre offset (units of s) that turn dlib's
    EG3D crop of each photo into the identity, on (1, yaw, pitch)."""
    features, corrections = [], []
    for points, pose in zip(landmarks, poses):
        s, centre = eg3d_frame(points, side)
        features.append([1.0, *pose])
        corrections.append([np.log(side / (EG3D_SIDE * s)), *((side / 2 - centre) / s)])
    return np.linalg.lstsq(np.array(features), np.array(corrections), rcond=None)[0]


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
    """Per-face world displacements of the landmarks across the view, under each label, each averaged with its mirror
    image (see the module docstring, step 3): mean (68, 3), modes, spreads."""
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
    shifts = np.stack(displacements)
    flat = ((shifts + shifts[:, MIRROR_68] * MIRROR_X) / 2).reshape(len(uvs), -1)
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


def mesh_label_template(meshes: list[np.ndarray], labels: list[np.ndarray], weights: list[float]) -> LandmarkTemplate:
    """The face mesh's template in the face-model frame: each mesh (468, 3) seen through its label, averaged by weight.

    A mesh is a weak-perspective view (see camera_fit.mesh_similarity_camera): its points lie at the distance of the
    face-model origin along the label's axis, offset by their relative depth, in units of that distance over the focal.
    """
    points = []
    for mesh, label in zip(meshes, labels):
        cam2world = np.asarray(label, dtype=np.float64)[:16].reshape(4, 4)
        rotation, position = cam2world[:3, :3], cam2world[:3, 3]
        distance = (np.asarray(LABEL_OFFSET) - position) @ rotation[:, 2]
        local = np.column_stack([(mesh[:, :2] - 0.5) * distance / LABEL_FOCAL, distance * (1 + mesh[:, 2] / LABEL_FOCAL)])
        points.append(local @ rotation.T + position)
    world = np.average(np.stack(points), axis=0, weights=np.asarray(weights, dtype=np.float64))
    return LandmarkTemplate((world - np.asarray(LABEL_OFFSET)) / LABEL_SCALE, "face_model", name="mesh_label", weights=np.ones(len(world)))


def labelled_photos(folder: Path) -> list[Path]:
    """The photos of a folder that have a label `NAME.npy` beside them, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".npy").is_file())


@dataclass
class Labelled:
    """One labelled photo (or its mirror image) as calibration sees it: the photo is its own crop."""

    name: str
    group: str  # the photo's name, or MULTIVIEW for the frames of the one multi-view person
    image: np.ndarray
    label: np.ndarray
    landmarks: np.ndarray  # dlib's 68 in photo pixels
    mesh: np.ndarray | None  # the face mesh on the photo

    @property
    def uv(self) -> np.ndarray:
        return (self.landmarks + 0.5) / self.image.shape[0]


def load_labelled(folder: Path, mesh: bool, multiview: bool = True) -> list[Labelled]:
    """Every labelled photo of `folder` (and, with `multiview`, of its multiview/ folder), each followed by its mirror
    image; `mesh`: with their face meshes."""
    paths = [(p, p.stem) for p in labelled_photos(folder)]
    if multiview and (folder / MULTIVIEW).is_dir():
        paths += [(p, MULTIVIEW) for p in labelled_photos(folder / MULTIVIEW)]
    photos = []
    for path, group in paths:
        image, label = load_image(path), np.load(path.with_suffix(".npy")).astype(np.float64)
        landmarks = detect_faces(image)[0].landmarks
        for mirrored in (False, True):
            shown = np.ascontiguousarray(image[:, ::-1]) if mirrored else image
            photos.append(Labelled(
                name=path.stem + (" (mirror)" if mirrored else ""),
                group=group,
                image=shown,
                label=mirror_camera(label) if mirrored else label,
                landmarks=mirror_landmarks(landmarks, image.shape[1]) if mirrored else landmarks,
                mesh=face_mesh(shown) if mesh else None,
            ))  # fmt: skip
    return photos


def calibrate(photos: list[Labelled]) -> dict:
    """Every constant the front end learns, from these photos only: crop correction, label template, mesh template."""
    singles = [p for p in photos if p.group != MULTIVIEW]
    template, _ = label_template([p.uv for p in singles], [p.label for p in singles])
    originals = [p for p in singles if not p.name.endswith("(mirror)")]  # upstream's five points are not mirror-symmetric
    poses = fitted_angles(template, [p.uv for p in originals])
    calibration = crop_calibration([p.landmarks for p in originals], list(poses), originals[0].image.shape[0])
    with_mesh = [p for p in photos if p.mesh is not None]
    frames = sum(p.group == MULTIVIEW for p in with_mesh)
    weights = [2 / frames if p.group == MULTIVIEW else 1.0 for p in with_mesh]  # the person and its mirror: two photos
    mesh_template = mesh_label_template([p.mesh for p in with_mesh], [p.label for p in with_mesh], weights) if with_mesh else None
    return {"template": template, "calibration": calibration, "mesh_template": mesh_template}
