"""Cameras and crops of real photos against EG3D's own preprocessing, cross-validated.

    python scripts/bench_cameras.py --photos ../shared/fixtures/eg3d-photos --json cameras.json

`--photos` holds photos already cropped the EG3D way, each beside its upstream label `NAME.npy`
(25 numbers); its `multiview/` folder holds frames of one person, who counts as one photo. Every
figure is cross-validated: each fold leaves out one photo (or the multi-view person) with its mirror
image, calibrates on the rest and their mirrors (regress/inversion/calibration.py: the crop's
correction and the 68-point label template on the single photos, the mesh template on all, the
multi-view frames weighing one photo together), and scores the left-out photo and its mirror
through the whole front end: detection, the EG3D crop, both landmark sources, the camera and its
confidence. Per photo: the re-crop against the identity (our crop's side over the photo's, its
centre's shift in photo pixels), the angle between our camera's optical axis and the label's, yaw
and pitch of both, the confidence. Prints Markdown tables: the single photos, then the multi-view
frames, with totals (mean, worst, yaw and pitch bias) for the photos, their mirrors and both, then
the Spearman correlation of the confidence with the axis error over all of them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from regress.inversion.align import crop_face, detect_faces
from regress.inversion.calibration import MULTIVIEW, Labelled, calibrate, load_labelled
from regress.inversion.camera_estimate import TRUSTED, combine_cameras
from regress.inversion.camera_fit import CameraFitter, axis_angle, axis_angles, mesh_camera
from regress.inversion.crop import recrop_error
from regress.inversion.mesh import face_mesh, mesh_available


def measure(photo: Labelled, constants: dict, mesh: bool) -> dict:
    """The left-out photo through the front end with the fold's constants (see the module docstring)."""
    row = {"photo": photo.name, "group": photo.group}
    faces = detect_faces(photo.image)
    if not faces:
        return {**row, "detected": False}
    crop = crop_face(photo.image, faces[0], template=constants["template"], calibration=constants["calibration"])
    again = detect_faces(crop.image)
    if again:
        row.update(recrop_error(faces[0].landmarks, again[0].landmarks, photo.image.shape[0], crop.image.shape[0]))
    fit = CameraFitter()(crop.landmarks_uv, constants["template"])
    points = face_mesh(crop.image) if mesh else None
    mesh_fit = None if points is None else mesh_camera(points, constants["mesh_template"])
    estimate = combine_cameras(fit, mesh_fit)
    camera = estimate.camera.double().numpy()
    (yaw, pitch), (label_yaw, label_pitch) = axis_angles(camera), axis_angles(photo.label)
    row.update(detected=True, detector=faces[0].detector, axis_deg=axis_angle(camera, photo.label), yaw_deg=yaw, pitch_deg=pitch,
               label_yaw_deg=label_yaw, label_pitch_deg=label_pitch, dlib_axis_deg=axis_angle(fit.camera, photo.label),
               confidence=estimate.confidence, untrusted=estimate.reason, mesh_weight=estimate.meta.get("mesh_weight"),
               disagreement_deg=estimate.meta.get("disagreement_deg"), label=photo.label.tolist(),
               cameras={"dlib": fit.camera.tolist(), "mesh": None if mesh_fit is None else mesh_fit.camera.tolist(), "ours": camera.tolist()},
               dlib_rms_px=fit.rms * 512, mesh_rms=None if mesh_fit is None else mesh_fit.rms)  # fmt: skip
    return row


def summary(rows: list[dict], name: str) -> dict:
    """Totals of a group: detections, re-crop scale and shift, axis mean / worst, yaw / pitch bias, photos not trusted."""
    found = [r for r in rows if r["detected"]]
    total = {"photo": name, "photos": len(rows), "detected": len(found), "untrusted": sum(r["confidence"] < TRUSTED for r in found)}
    cropped = [r for r in found if "scale" in r]
    if cropped:
        scales = np.array([r["scale"] for r in cropped])
        total.update(scale_mean=float(scales.mean()), scale_worst=float(scales[np.abs(scales - 1).argmax()]),
                     shift_mean=float(np.mean([r["shift"] for r in cropped])), shift_worst=max(r["shift"] for r in cropped))  # fmt: skip
    if found:
        total.update(axis_mean=float(np.mean([r["axis_deg"] for r in found])), axis_worst=max(r["axis_deg"] for r in found),
                     yaw_bias=float(np.mean([r["yaw_deg"] - r["label_yaw_deg"] for r in found])),
                     pitch_bias=float(np.mean([r["pitch_deg"] - r["label_pitch_deg"] for r in found])),
                     dlib_axis_mean=float(np.mean([r["dlib_axis_deg"] for r in found])))  # fmt: skip
    return total


def table(rows: list[dict], totals: list[dict]) -> str:
    """Markdown: a line per photo, then the totals (mean, and worst in brackets)."""
    lines = [
        "| photo | crop scale | centre shift px | axis ° (dlib alone) | yaw ° ours / label | pitch ° ours / label | mesh weight | confidence |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if not r["detected"]:
            lines.append(f"| {r['photo']} | no face | | | | | | |")
            continue
        crop = f"{r['scale']:.3f} | {r['shift']:.1f}" if "scale" in r else "not found again | "
        weight = "" if r["mesh_weight"] is None else f"{r['mesh_weight']:.2f}"
        lines.append(f"| {r['photo']} | {crop} | {r['axis_deg']:.2f} ({r['dlib_axis_deg']:.2f}) | {r['yaw_deg']:+.1f} / {r['label_yaw_deg']:+.1f} | "
                     f"{r['pitch_deg']:+.1f} / {r['label_pitch_deg']:+.1f} | {weight} | {r['confidence']:.2f} |")  # fmt: skip
    for t in totals:
        if "axis_mean" not in t:
            lines.append(f"| **{t['photo']}** ({t['detected']}/{t['photos']} found) | | | | | | | |")
            continue
        crop = f"{t['scale_mean']:.3f} ({t['scale_worst']:.3f}) | {t['shift_mean']:.1f} ({t['shift_worst']:.1f})" if "scale_mean" in t else " | "
        lines.append(f"| **{t['photo']}** ({t['detected']}/{t['photos']}) | {crop} | {t['axis_mean']:.2f} ({t['axis_worst']:.2f}); "
                     f"dlib alone {t['dlib_axis_mean']:.2f} | bias {t['yaw_bias']:+.2f} | bias {t['pitch_bias']:+.2f} | | "
                     f"{t['untrusted']} under {TRUSTED} |")  # fmt: skip
    return "\n".join(lines)


def yaw_bands(rows: list[dict], name: str) -> list[dict]:
    """Totals of the multi-view frames by |label yaw|: up to 45 degrees and beyond."""
    return [summary([r for r in rows if r["detected"] and test(abs(r["label_yaw_deg"]))], f"{name}, |yaw| {band}")
            for band, test in (("<= 45", lambda y: y <= 45), ("> 45", lambda y: y > 45))]  # fmt: skip


def confidence_spearman(rows: list[dict]) -> float:
    """Spearman's rank correlation of the confidence with the axis error over the found faces: an honest confidence
    falls as the error grows (negative)."""
    found = [r for r in rows if r["detected"]]
    return float(spearmanr([r["confidence"] for r in found], [r["axis_deg"] for r in found])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="EG3D crops, each beside its label NAME.npy; multiview/ for one person's frames")
    parser.add_argument("--json", type=Path, help="also write the rows and totals here")
    parser.add_argument("--no_mesh", action="store_true", help="dlib's landmarks alone (as without mediapipe)")
    args = parser.parse_args()
    mesh = mesh_available() and not args.no_mesh
    start = time.perf_counter()
    photos = load_labelled(args.photos, mesh)
    rows = []
    for group in dict.fromkeys(p.group for p in photos):
        constants = calibrate([p for p in photos if p.group != group])
        rows += [measure(p, constants, mesh) for p in photos if p.group == group]
    singles, frames = [r for r in rows if r["group"] != MULTIVIEW], [r for r in rows if r["group"] == MULTIVIEW]
    totals = {}
    for name, part in (("single photos", singles), ("multi-view frames", frames)):
        if not part:
            continue
        photos_only, mirrors = [r for r in part if "(mirror)" not in r["photo"]], [r for r in part if "(mirror)" in r["photo"]]
        totals[name] = [summary(photos_only, "photos"), summary(mirrors, "mirrors"), summary(part, "both")]
        if name == "multi-view frames":
            totals[name] += yaw_bands(part, "both")
        print(f"\n{name}, cross-validated ({'dlib + face mesh' if mesh else 'dlib alone'}):\n")
        print(table(part, totals[name]))
    print(f"\nconfidence against axis error, all photos and frames: Spearman {confidence_spearman(rows):+.2f}")
    print(f"\n{len(rows)} photos and mirrors in {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "totals": totals}, indent=1))


if __name__ == "__main__":
    main()
