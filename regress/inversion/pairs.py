"""Real photos -> pair records: the aligned real crop beside its inverted Sample and the inversion's quality.

The camera is fitted to the crop's landmarks, or given (an EG3D `dataset.json`, or `NAME.npy`
beside each photo); `meta.json` holds the crop's transform, the detector and the camera's origin.
The records go into a pairs folder (`regress.store.pairs`): resumable, failures listed per photo,
with `shards`, also packed into WebDataset shards with the same members.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from regress.camera import camera_to_pose, frontal_camera
from regress.generators.base import Generator
from regress.geometry.grids import density_grid
from regress.geometry.meshes import grids_to_ply
from regress.faces.identity import identity_scores
from regress.faces.landmarks import generator_template
from regress.faces.perceptual import PerceptualDistance
from regress.faces.quality import psnr, ssim
from regress.inversion.align import AlignedFace, FaceAligner, FaceError, load_image
from regress.inversion.camera_fit import CameraFitter
from regress.inversion.project import ProjectionConfig, project
from regress.sample import SCHEMA_VERSION, encode_image, encode_sample, image_to_float, image_to_uint8, npy_bytes
from regress.store.pairs import (
    prepare_pairs_folder,
    read_pair_errors,
    record_key,
    record_keys,
    write_pair_errors,
    write_pair_record,
    write_pair_shards,
    write_pairs_manifest,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(source: str | Path | list) -> list[Path]:
    """Photos to pair: a folder (its image files, recursively, sorted), a text file of paths, one image, or a list."""
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise FileNotFoundError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if source.suffix.lower() == ".txt":
        lines = [line.strip() for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not lines:
            raise ValueError(f"{source} lists no photos (one path a line, relative to its folder)")
        return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]
    if source.is_file():
        return [source]
    raise FileNotFoundError(f"{source} is not a folder, a .txt list of photos or an image file")


class CameraLabels:
    """Given EG3D camera labels by photo: an EG3D `dataset.json` ({"labels": [[name, [25 numbers]], ...]}, names
    relative to its folder or bare file names), or `npy` for a `NAME.npy` beside each photo."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.labels: dict[str, list] = {}
        if self.source != "npy":
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"camera labels {path} do not exist; give an EG3D dataset.json or 'npy' (NAME.npy beside each photo)")
            form = 'an EG3D dataset.json holds {"labels": [[name, [25 numbers]], ...]}'
            try:
                content = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"camera labels {path} are not valid JSON ({error}); {form}") from error
            entries = content.get("labels") if isinstance(content, dict) else None
            if not isinstance(entries, list):
                raise ValueError(f"{path} has no 'labels' list; {form}")
            bad = next((e for e in entries if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str))), None)
            if bad is not None:
                raise ValueError(f"{path}: the entry {str(bad)[:60]} is not [name, [25 numbers]]; {form}")
            self.root, self.labels = path.parent, {name: label for name, label in entries}

    def __call__(self, photo: Path) -> torch.Tensor:
        """The photo's label (25,) float32; FaceError when it has none or it is not 25 finite numbers."""
        if self.source == "npy":
            path = photo.with_suffix(".npy")
            if not path.is_file():
                raise FaceError(f"{photo}: no camera label {path.name} beside it")
            label = np.load(path, allow_pickle=False)
        else:
            label = self.labels.get(self._name(photo))
            if label is None:
                raise FaceError(f"{photo}: no camera label for it in {self.source}")
        try:
            label = np.asarray(label, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            label = np.zeros(0, np.float32)
        if label.shape != (25,) or not np.isfinite(label).all():
            raise FaceError(f"{photo}: its camera label is not 25 finite numbers (cam2world 4x4, then intrinsics 3x3)")
        fx, cx, cy = label[16], label[18], label[21]
        if not (0 < cx < 1 and 0 < cy < 1 and 0 < fx < 100):
            raise FaceError(f"{photo}: its camera label's intrinsics (fx {fx:g}, cx {cx:g}, cy {cy:g}) are not normalized by the "
                            "image size as EG3D's are (fx about 4.26, cx = cy = 0.5); divide the pixel values by the side")  # fmt: skip
        return torch.from_numpy(label)

    def _name(self, photo: Path) -> str:
        """The photo's name in dataset.json: its path relative to the file's folder when inside it, else its file name."""
        try:
            relative = photo.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return photo.name
        return relative if relative in self.labels else photo.name


@dataclass
class PairBuilder:
    """Turns one photo into pair records with a generator; the choices of every stage in one place.

    `aligned`: the photos are already crops of the generator's framing (EG3D crops): they are
    used as they are, only their landmarks are found. `cameras`: given labels replace the fit.
    `encoder`: uint8 crops -> w (an inversion encoder); projection and pivotal tuning start from
    its prediction instead of the mean latent.
    """

    generator: Generator
    aligner: FaceAligner = field(default_factory=FaceAligner)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    perceptual: PerceptualDistance | None = None
    camera_template: str = "label"
    cameras: CameraLabels | None = None
    aligned: bool = False
    with_mesh: bool = False
    mesh_resolution: int = 128
    image_format: str = "png"
    progress: bool = False
    fitter: CameraFitter = field(default_factory=CameraFitter)
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.template = generator_template(self.generator, self.camera_template)
        if self.cameras is not None and self.aligner.all_faces:
            raise ValueError("given cameras are one per photo; drop aligner.all_faces or the cameras")

    def build(self, path: Path) -> list[tuple[str, dict[str, bytes]]]:
        """(key, members) for each face crop of a photo; FaceError when the photo cannot be paired."""
        given = self.cameras(path) if self.cameras is not None else None  # a missing label fails before detection
        image = load_image(path, self.aligner.max_pixels)
        crops = [self.aligner.uncropped(image, str(path))] if self.aligned else self.aligner(image, str(path))
        return [(record_key(path, index), self._record(path, index, crop, given)) for index, crop in enumerate(crops)]

    def _record(self, path: Path, index: int, crop: AlignedFace, given: torch.Tensor | None) -> dict[str, bytes]:
        """Camera (given or fitted), inversion and quality of one face crop, as record members (meta.json last)."""
        g = self.generator
        size = g.image_resolution
        if given is None:
            fit = self.fitter(crop.landmarks_uv, self.template)
            camera_cpu, camera_meta = fit.camera, {"kind": "fitted", **fit.as_meta()}
        else:
            camera_cpu, camera_meta = given, {"kind": "given", "labels": self.cameras.source}
        real = crop.image
        if real.shape[0] != size:
            real = np.asarray(Image.fromarray(real).resize((size, size), Image.Resampling.LANCZOS))
        landmarks = ((crop.landmarks + 0.5) * size / crop.image.shape[0] - 0.5).astype(np.float32)
        real_t = torch.from_numpy(real.transpose(2, 0, 1).copy())[None]
        camera = camera_cpu[None].to(g.device)
        start = time.perf_counter()
        init = self.encoder(real_t.to(g.device)) if self.encoder is not None else None
        result = project(g, image_to_float(real_t), camera, self.projection, self.perceptual, self.progress, init)
        renderer = result.generator or g
        with torch.no_grad():
            out = renderer.synthesis(result.w, camera)
        seconds = time.perf_counter() - start
        inverted = image_to_uint8(out["image"]).cpu()
        meta = {
            "source": str(path),
            "face_index": index,
            "face_box": [float(v) for v in crop.face.box],
            "crop": crop.as_meta(),
            **self._pose_meta(camera_cpu, camera_meta),
            "quality": self._quality(real_t, inverted, landmarks),
            "inversion": {
                "space": self.projection.space,
                "steps": self.projection.steps,
                "start": "encoder" if self.encoder is not None else "mean_latent",
                "pti_steps": self.projection.pti_steps,
                "seconds": seconds,
                "final_loss": result.losses[-1]["loss"] if result.losses else None,
                "tuned_generator": result.generator is not None,
            },
        }
        batch = {
            "image": inverted,
            "depth": out["depth"].float().cpu(),
            "mask": out["mask"].float().cpu(),
            "w": result.w.float().cpu(),
            "camera": camera_cpu[None],
            "camera_cond": frontal_camera(1),
            "meta": [meta],
        }
        members = encode_sample(batch, 0, self.image_format)
        meta_json = members.pop("meta.json")
        if self.with_mesh:
            grid = density_grid(renderer, result.w, self.mesh_resolution)[0]
            members["mesh.ply"] = bytes(grids_to_ply(grid[None], renderer.surface_level, renderer.box_size)[0])
        members["real.png"] = encode_image(real, "png")
        members["landmarks.npy"] = npy_bytes(landmarks)
        members["losses.json"] = json.dumps({"projection": result.losses, "pivotal_tuning": result.pti_losses}).encode()
        members["meta.json"] = meta_json
        return members

    def _pose_meta(self, camera: torch.Tensor, camera_meta: dict) -> dict:
        """The Sample meta of an inverted face: generator, pose of its camera and where the camera came from, schema version."""
        identity, pose = self.generator.identity(), camera_to_pose(camera[None])
        return {
            "generator": identity["generator"],
            "generator_checksum": identity["checksum"],
            "view_category": "inverted",
            "yaw_deg": math.degrees(float(pose.yaw[0])),
            "pitch_deg": math.degrees(float(pose.pitch[0])),
            "fov_deg": float(pose.fov_deg[0]),
            "radius": float(pose.radius[0]),
            "camera_source": camera_meta,
            "schema_version": SCHEMA_VERSION,
        }

    def _quality(self, real: torch.Tensor, inverted: torch.Tensor, landmarks: np.ndarray) -> dict[str, float]:
        """PSNR, SSIM, the perceptual distance when its weights are given, and identity scores of uint8 images (1, 3, H, W)."""
        quality = {"psnr": float(psnr(inverted, real)[0]), "ssim": float(ssim(inverted, real)[0])}
        if self.perceptual is not None:
            with torch.no_grad():
                device = self.generator.device
                distance = self.perceptual(image_to_float(inverted).to(device), image_to_float(real).to(device))
            quality[self.perceptual.name] = float(distance[0])
        quality.update(identity_scores(real[0].permute(1, 2, 0).numpy(), inverted[0].permute(1, 2, 0).numpy(), landmarks))
        return quality


def build_pairs(
    images: list[Path],
    output: Path,
    builder: PairBuilder,
    resume: bool = True,
    shards: bool = False,
    samples_per_shard: int = 1000,
    settings: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pair every photo (skipping done ones with `resume`), list failures per file, write the manifest; a summary."""
    output, g = Path(output), builder.generator
    fingerprint = {"generator": g.identity(), "projection": asdict(builder.projection), "settings": settings or {}}
    prepare_pairs_folder(output, json.loads(json.dumps(fingerprint)), resume)
    errors = read_pair_errors(output) if resume else {}
    done = set(record_keys(output))
    built, skipped, start = 0, 0, time.perf_counter()
    bar = tqdm(images, desc="pairs", unit="photo", disable=not progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name[:32])
        source = str(path.resolve())  # errors are keyed like records: one photo, however its path is spelled
        errors.pop(str(path), None)  # sets written before errors were keyed so
        if record_key(path) in done:
            errors.pop(source, None)
            skipped += 1
            continue
        try:
            for key, members in reversed(builder.build(path)):  # face 0 last: its key marks the photo done
                write_pair_record(output, key, members)
                built += 1
            errors.pop(source, None)
            done.add(record_key(path))  # a photo listed twice is paired once
        except FaceError as error:
            errors[source] = str(error)
            tqdm.write(f"regress.evaluate pairs: skipped {error}")
        except Exception as error:  # noqa: BLE001 - one photo's failure must not stop the set; it is listed
            errors[source] = f"{path}: {type(error).__name__}: {error}"
            tqdm.write(f"regress.evaluate pairs: failed on {path}: {type(error).__name__}: {error}")
        write_pair_errors(output, errors)
    bar.close()
    keys = record_keys(output)
    manifest = {
        "generator": g.identity(),
        **g.data_facts(),
        "projection": asdict(builder.projection),
        "settings": settings or {},
        "records": len(keys),
        "errors": len(errors),
        "schema_version": SCHEMA_VERSION,
    }
    if shards:
        manifest["shards"] = write_pair_shards(output, samples_per_shard)
    write_pairs_manifest(output, manifest)
    return {"output": str(output), "built": built, "skipped": skipped, "records": len(keys), "errors": errors, "seconds": time.perf_counter() - start}

