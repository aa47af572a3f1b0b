"""Calibrate the photo pipeline on EG3D-labelled crops: the EG3D crop's constants, the CNN box, both camera templates.

    python scripts/calibrate_photos.py --photos ../shared/fixtures/eg3d-photos \
        --template regress/faces/landmarks68_label.json --mesh_template regress/faces/landmarks_mesh_label.json

Every labelled photo is used, as it is (they are EG3D crops), each with its mirror image and the
mirrored label (so that the calibration, like faces, is mirror-symmetric): the shipped constants see
all of them, and scripts/bench_cameras.py scores the same recipe only on photos it left out
(regress/inversion/calibration.py holds the recipe). The 68-point label template and the crop's
correction are made from the single photos (dlib's points collapse on the multi-view person's turned
frames), the mesh template from all, the multi-view frames weighing one photo together. Writes the
templates, then prints the constants for crop.py (EG3D_CALIBRATION, found with the head poses the label
template gives) and align.py (CNN_BOX_SCALE, CNN_BOX_SHIFT).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from regress.inversion.align import cnn_boxes, detect_faces
from regress.inversion.calibration import MULTIVIEW, calibrate, fitted_angles, label_angles, load_labelled
from regress.inversion.mesh import mesh_available


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="EG3D crops, each beside its label NAME.npy; multiview/ for one person's frames")
    parser.add_argument("--template", type=Path, help="write the 68-point label-frame template here")
    parser.add_argument("--mesh_template", type=Path, help="write the face mesh's label-frame template here (needs mediapipe)")
    args = parser.parse_args()
    photos = load_labelled(args.photos, mesh=mesh_available())
    constants = calibrate(photos)
    template, singles = constants["template"], [p for p in photos if p.group != MULTIVIEW]
    names = sorted({p.name for p in singles if not p.name.endswith("(mirror)")})
    errors = fitted_angles(template, [p.uv for p in singles]) - label_angles([p.label for p in singles])
    print(f"label template from {', '.join(names)} and their mirror images; their yaw / pitch error mean "
          f"{errors.mean(0).round(2)}, rms {np.sqrt((errors**2).mean(0)).round(2)} (not cross-validated: see bench_cameras.py)")  # fmt: skip
    print(f"EG3D_CALIBRATION = {np.round(constants['calibration'], 6).tolist()}")
    scale, shift = cnn_box_constants({p.name: p.image for p in singles if not p.name.endswith("(mirror)")})
    print(f"CNN_BOX_SCALE = {scale:.4f}\nCNN_BOX_SHIFT = ({shift[0]:.4f}, {shift[1]:.4f})")
    if args.template:
        args.template.write_text(json.dumps({
            "name": "label",
            "frame": "face_model",
            "source": "the human mean face of landmarks68_template.json on EG3D's five standard points, refined against "
                      f"upstream labels by scripts/calibrate_photos.py on {', '.join(names)}",
            "calibration_photos": names,
            "points": np.round(template.points, 6).tolist(),
            "modes": np.round(template.modes, 6).tolist(),
            "mode_sd": np.round(template.mode_sd, 6).tolist(),
            "weights": np.round(template.weights, 4).tolist(),
            "yaw_correction": np.round(template.yaw_correction, 6).tolist(),
        }, indent=1))  # fmt: skip
        print(f"wrote {args.template}")
    if args.mesh_template:
        if constants["mesh_template"] is None:
            raise SystemExit("calibrate_photos: no face mesh (install mediapipe: see regress/inversion/mesh.py)")
        args.mesh_template.write_text(json.dumps({
            "name": "mesh_label",
            "frame": "face_model",
            "source": "MediaPipe's face mesh (mediapipe 0.10.14) seen through upstream labels, averaged by "
                      f"scripts/calibrate_photos.py over {len(photos) // 2} labelled photos and their mirror images",
            "points": np.round(constants["mesh_template"].points, 5).tolist(),
            "weights": [1] * len(constants["mesh_template"].points),
        }))  # fmt: skip
        print(f"wrote {args.mesh_template}")


if __name__ == "__main__":
    main()
