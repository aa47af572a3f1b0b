"""Real photos against EG3D's own preprocessing: detection, re-crop of EG3D crops, camera axes against the labels.

    python scripts/bench_cameras.py --photos ../shared/fixtures/eg3d-photos --json cameras.json
    python scripts/bench_cameras.py --photos ../shared/fixtures/eg3d-photos --crop ffhq --template mean_face

`--photos` holds photos already cropped the EG3D way, each beside its upstream label `NAME.npy`
(25 numbers). Per photo: which detector found the face; the re-crop against the identity (the
similarity transform from the photo's landmarks to those found again on our crop: the crop's
side over the photo's, its centre's shift in photo pixels, its roll); the angle between our
camera's optical axis and the label's, and the yaw / pitch of both axes. Prints a Markdown table;
photos kept out of calibration (not among the label template's `calibration_photos`, or those
named by `--holdout`) are marked and summed up on their own line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from regress.faces.landmarks import LandmarkTemplate, calibration_photos, generator_template
from regress.inversion.align import FaceAligner, FaceError, detect_faces, load_image
from regress.inversion.camera_fit import CameraFitter, axis_angle, axis_angles
from regress.inversion.crop import recrop_error
from regress.inversion.photos import IMAGE_SUFFIXES


def labelled_photos(folder: Path) -> list[Path]:
    """The photos of a folder that have a label `NAME.npy` beside them, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".npy").is_file())


def measure(path: Path, aligner: FaceAligner, template: LandmarkTemplate) -> dict:
    """One photo's figures (see the module docstring); `detected: False` when no face is found."""
    image = load_image(path)
    label = np.load(path.with_suffix(".npy")).astype(np.float64)
    row = {"photo": path.stem, "detected": False}
    try:
        crop = aligner(image, str(path))[0]
    except FaceError as error:
        return {**row, "error": str(error)}
    again = detect_faces(crop.image)
    row.update(detected=True, detector=crop.face.detector)
    if again:
        row.update(recrop_error(crop.face.landmarks, again[0].landmarks, image.shape[0], crop.image.shape[0]))
    fit = CameraFitter()(crop.landmarks_uv, template)
    camera = fit.camera.double().numpy()
    row["landmark_rms_px"] = fit.rms * crop.image.shape[0]
    yaw, pitch = axis_angles(camera)
    label_yaw, label_pitch = axis_angles(label)
    row.update(axis_deg=axis_angle(camera, label), yaw_deg=yaw, pitch_deg=pitch, label_yaw_deg=label_yaw, label_pitch_deg=label_pitch)
    return row


def summary(rows: list[dict], name: str) -> dict:
    """Totals of a group of photos: detections, mean / worst re-crop and axis figures, yaw / pitch bias."""
    found = [r for r in rows if r["detected"]]
    cropped = [r for r in found if "scale" in r]
    total = {"photo": name, "photos": len(rows), "detected": len(found)}
    if cropped:
        scales = np.array([r["scale"] for r in cropped])
        total.update(scale_mean=float(scales.mean()), scale_worst=float(scales[np.abs(scales - 1).argmax()]),
                     shift_mean=float(np.mean([r["shift"] for r in cropped])), shift_worst=max(r["shift"] for r in cropped),
                     shift_y_mean=float(np.mean([r["shift_y"] for r in cropped])))  # fmt: skip
    if found:
        total.update(axis_mean=float(np.mean([r["axis_deg"] for r in found])), axis_worst=max(r["axis_deg"] for r in found),
                     yaw_bias=float(np.mean([r["yaw_deg"] - r["label_yaw_deg"] for r in found])),
                     pitch_bias=float(np.mean([r["pitch_deg"] - r["label_pitch_deg"] for r in found])))  # fmt: skip
    return total


def table(rows: list[dict], totals: list[dict], holdout: set[str]) -> str:
    """Markdown: a line per photo, then the totals (mean, and worst in brackets)."""
    lines = [
        "| photo | detector | crop scale | centre shift px (x, y) | roll ° | axis ° | yaw ° ours / label | pitch ° ours / label |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = r["photo"] + (" (held out)" if r["photo"] in holdout else "")
        if not r["detected"]:
            lines.append(f"| {name} | none | | | | | | |")
            continue
        crop = (f"{r['scale']:.3f} | {r['shift']:.1f} ({r['shift_x']:+.1f}, {r['shift_y']:+.1f}) | {r['roll_deg']:+.1f}"
                if "scale" in r else "not found again | | ")  # fmt: skip
        lines.append(f"| {name} | {r['detector']} | {crop} | {r['axis_deg']:.2f} | "
                     f"{r['yaw_deg']:+.1f} / {r['label_yaw_deg']:+.1f} | {r['pitch_deg']:+.1f} / {r['label_pitch_deg']:+.1f} |")  # fmt: skip
    for t in totals:
        if "axis_mean" not in t:
            lines.append(f"| **{t['photo']}** | {t['detected']}/{t['photos']} | | | | | | |")
            continue
        lines.append(
            f"| **{t['photo']}** | {t['detected']}/{t['photos']} | {t['scale_mean']:.3f} ({t['scale_worst']:.3f}) | "
            f"{t['shift_mean']:.1f} ({t['shift_worst']:.1f}), mean y {t['shift_y_mean']:+.1f} | | "
            f"{t['axis_mean']:.2f} ({t['axis_worst']:.2f}) | bias {t['yaw_bias']:+.2f} | bias {t['pitch_bias']:+.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="EG3D crops, each beside its label NAME.npy")
    parser.add_argument("--json", type=Path, help="also write the rows and totals here")
    parser.add_argument("--holdout", help="comma-separated photo names kept out of calibration (default: those the template was not fitted on)")
    parser.add_argument("--crop", choices=("eg3d", "ffhq"), default="eg3d", help="the framing")
    parser.add_argument("--template", default="label", help="camera template: label, mean_face or a JSON file")
    args = parser.parse_args()
    photos = labelled_photos(args.photos)
    calibrated = set(calibration_photos())
    holdout = set(args.holdout.split(",")) if args.holdout else {p.stem for p in photos if p.stem not in calibrated}
    template = generator_template(None, args.template)
    rows = [measure(path, FaceAligner(crop=args.crop), template) for path in photos]
    totals = [summary(rows, "all")]
    if holdout:
        totals.append(summary([r for r in rows if r["photo"] not in holdout], "calibration"))
        totals.append(summary([r for r in rows if r["photo"] in holdout], "held out"))
    print(table(rows, totals, holdout))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "totals": totals}, indent=1))


if __name__ == "__main__":
    main()
