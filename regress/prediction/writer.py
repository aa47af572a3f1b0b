"""Predictions -> one folder per face (`OUTPUT/NAME/`), written whole or not at all; failed photos listed with why.

A face's folder holds the files people open (PNG, NPY, meshes in the asked formats, MP4) and `meta.json` with the
sources, checksums, camera and the seconds of every stage. A photo is done when its first face's folder exists, so a
rerun skips it; a photo that failed is listed in `failed/` (one file a photo, safe with several ranks) until it succeeds,
and `errors.json` gathers them at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from regress.geometry.mesh_files import SURFACE_FORMATS, mesh_files
from regress.gallery import GalleryItem, write_gallery
from regress.gallery.depth import depth_figure_png, depth_png_bytes
from regress.prediction.predictor import FacePrediction
from regress.prediction.photos import PhotoItem
from regress.sample import encode_image, npy_bytes
from regress.store.files import file_sha256, resolved, write_folder, write_json
from regress.store.pairs import record_key, write_errors
from regress.store.shard_set import setting_differences
from regress.store.video import video_bytes

FAILED = "failed"
SETTINGS = "settings.json"


def photo_done(output: Path, photo: Path) -> bool:
    """Whether a photo's first face is written (its folder is whole: folders are renamed into place)."""
    return (output / record_key(photo) / "meta.json").is_file()


def prepare_output(output: Path, settings: dict[str, Any], resume: bool) -> None:
    """Check a resumed output was made with the same settings, or remove the faces it holds (only ours); record the settings."""
    path = Path(output) / SETTINGS
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            differ = ", ".join(setting_differences(saved, settings))
            raise ValueError(f"{output} holds predictions made with other settings ({differ}); choose another --output or pass --resume false to redo them")
    if not resume:
        for meta in Path(output).glob("*/meta.json"):
            shutil.rmtree(meta.parent)
        shutil.rmtree(Path(output) / FAILED, ignore_errors=True)
    (Path(output) / FAILED).mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


class PredictionWriter(BasePredictionWriter):
    """Writes each batch's faces as they come (`Trainer.predict` keeps nothing in memory); `facts` go into every meta.json."""

    def __init__(self, output: Path, mesh_formats: tuple[str, ...], facts: dict[str, Any], video_fps: int = 24) -> None:
        super().__init__(write_interval="batch")
        self.output, self.mesh_formats, self.facts, self.video_fps = Path(output), mesh_formats, facts, video_fps
        self.written: list[str] = []

    def write_on_batch_end(self, trainer, pl_module, prediction: list, batch_indices, batch, batch_idx: int, dataloader_idx: int) -> None:
        for result in sorted(prediction, key=lambda r: -r.face.index if isinstance(r, FacePrediction) else 0):  # face 0 last: it marks the photo done
            if isinstance(result, PhotoItem):
                write_json(self.output / FAILED / f"{record_key(result.path)}.json", {"source": str(resolved(result.path)), "error": result.error})
                print(f"regress.predict: skipped {result.error}", flush=True)
                continue
            start = time.perf_counter()
            members = self.members(result)
            seconds = {**result.seconds, "front end": result.item.seconds / max(1, len(result.item.faces)), "write": time.perf_counter() - start}
            members["meta.json"] = (json.dumps(self.meta(result, seconds), sort_keys=True, indent=1) + "\n").encode()
            write_folder(self.output / result.key, members)
            (self.output / FAILED / f"{record_key(result.item.path)}.json").unlink(missing_ok=True)
            self.written.append(result.key)

    def members(self, p: FacePrediction) -> dict[str, bytes]:
        """A face's files by name."""
        face = p.face
        files = {
            "crop.png": encode_image(face.image, "png"),
            "camera.npy": npy_bytes(face.camera.numpy()),
            "camera.json": json.dumps({"camera": face.camera.tolist(), **face.camera_meta}, indent=1).encode(),
        }
        panels = []  # the depths side by side on one scale, with a colour bar in world units
        if p.depth is not None:
            files["depth.npy"], files["depth.png"] = npy_bytes(p.depth), depth_png_bytes(p.depth, p.depth_mask)[0]
            files.update(mesh_files("depth_mesh", p.depth_mesh, self.mesh_formats))
            panels.append(("depth regressor", p.depth, p.depth_mask))
        if p.w is not None:
            files["w.npy"] = npy_bytes(p.w)
            files["render.png"] = encode_image(p.render, "png")
            files["render_depth.npy"], files["render_depth.png"] = npy_bytes(p.render_depth), depth_png_bytes(p.render_depth, p.render_mask)[0]
            panels.append(("generator at the photo's camera", p.render_depth, p.render_mask))
            files.update(mesh_files("mesh", p.mesh, self.mesh_formats, p.grid, self.facts["generator"]["box_size"]))
            if p.video is not None:
                files["orbit.mp4"] = video_bytes(p.video, self.video_fps)
        files["depth_color.png"] = depth_figure_png(panels)
        return files

    def meta(self, p: FacePrediction, seconds: dict[str, float]) -> dict[str, Any]:
        face = p.face
        return {
            **self.facts,
            "source": str(resolved(p.item.path)),
            "source_sha256": file_sha256(p.item.path),
            "face_index": face.index,
            "crop": face.aligned.as_meta(),
            "camera": face.camera_meta,
            "refine_final_loss_batch": p.refine_losses[-1]["loss"] if p.refine_losses else None,  # projection losses are batch means
            "mesh_faces": len(p.mesh.faces) if p.mesh is not None else None,
            "depth_mesh_faces": len(p.depth_mesh.faces) if p.depth_mesh is not None else None,
            "seconds": seconds,
        }


def gather_errors(output: Path) -> dict[str, str]:
    """The failed photos (source -> why) listed in `failed/`, written to errors.json; empty when none failed."""
    folder = Path(output) / FAILED
    entries = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    errors = {e["source"]: e["error"] for e in entries}
    write_errors(output, errors)
    return errors


def write_predict_page(output: Path, errors: dict[str, str]) -> Path:
    """`output/index.html`: every face written there (crop, render, depths on one scale, orbit, 3D view of its mesh,
    camera and timings) and every photo that failed, with why."""
    items = []
    for meta_path in sorted(Path(output).glob("*/meta.json")):
        face, meta = meta_path.parent, json.loads(meta_path.read_text())
        shown = [(caption, f"{face.name}/{name}") for caption, name in (("crop", "crop.png"), ("render", "render.png"), ("depth", "depth_color.png"))
                 if (face / name).is_file()]  # fmt: skip
        mesh = next((f"{face.name}/{name}.{f}" for name in ("mesh", "depth_mesh") for f in SURFACE_FORMATS if (face / f"{name}.{f}").is_file()), None)
        camera = meta["camera"]
        scores = {"source": Path(meta["source"]).name, "camera": camera.get("kind", ""),
                  **{k: camera[k] for k in ("confidence", "untrusted", "axis_yaw_deg", "axis_pitch_deg", "landmark_rms") if k in camera},
                  **{f"{stage} (s)": seconds for stage, seconds in meta["seconds"].items()}}  # fmt: skip
        video = f"{face.name}/orbit.mp4" if (face / "orbit.mp4").is_file() else None
        items.append(GalleryItem(face.name, shown, video, mesh, scores))
    items += [GalleryItem(Path(source).name, note=error) for source, error in sorted(errors.items())]
    return write_gallery(Path(output), "regress.predict", items, {"faces": len(items) - len(errors), "failed photos": len(errors)})
