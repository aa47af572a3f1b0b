"""Real photos -> pair records: the aligned real crop beside its inverted Sample and the inversion's quality.

A pairs set is a folder: `records/<key>/` holds one record's members in the Sample schema
(`image.png` is the inverted render; `depth.npy`, `mask.npy`, `w.npy`, `camera.npy`,
`camera_cond.npy`, optional `mesh.ply`, `meta.json`) plus `real.png` (the photo's crop at the
generator's resolution), `landmarks.npy` (its 68 landmarks, pixels) and `losses.json` (per step).
The camera is fitted to the crop's landmarks, or given (an EG3D `dataset.json`, or `NAME.npy`
beside each photo); `meta.json` holds the crop's transform, the detector and the camera's origin.
Records are written under a temporary name and renamed when complete, so a rerun skips them;
`errors.json` lists the photos that failed and why; `settings.json` guards a resumed run against
other settings; `manifest.json` describes the finished set. With
`shards`, the records are also packed into WebDataset shards with the same members.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from regress.camera import camera_to_pose, frontal_camera
from regress.generators.base import Generator
from regress.geometry import density_grid, grid_to_mesh, mesh_to_bytes
from regress.inversion.align import AlignedFace, FaceAligner, FaceError, load_image
from regress.inversion.camera_fit import CameraFitter, generator_template
from regress.inversion.perceptual import PerceptualDistance
from regress.inversion.project import ProjectionConfig, project
from regress.inversion.quality import identity_scores, psnr, ssim
from regress.sample import SCHEMA_VERSION, encode_image, encode_sample, image_to_float, image_to_uint8
from regress.shards import ShardWriter, write_json

PAIRS_FORMAT = "regress-pairs-v1"
RECORDS = "records"
MANIFEST = "manifest.json"
ERRORS = "errors.json"
SETTINGS = "settings.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
EXTRA_MEMBERS = ("real.png", "landmarks.npy", "losses.json")


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
        return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]
    if source.is_file():
        return [source]
    raise FileNotFoundError(f"{source} is not a folder, a .txt list of photos or an image file")


def record_key(path: Path, face_index: int = 0) -> str:
    """A stable, WebDataset-safe key (no dots) from the photo's name and full path, and the face's index."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:48]
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{stem}-{digest}" + (f"-face{face_index}" if face_index else "")


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
            self.root, entries = path.parent, json.loads(path.read_text()).get("labels")
            if not isinstance(entries, list):
                raise ValueError(f"{path} has no 'labels' list; an EG3D dataset.json holds {{\"labels\": [[name, [25 numbers]], ...]}}")
            self.labels = {str(name): label for name, label in entries}

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
        label = np.asarray(label, dtype=np.float32).reshape(-1)
        if label.shape != (25,) or not np.isfinite(label).all():
            raise FaceError(f"{photo}: its camera label is not 25 finite numbers (cam2world 4x4, then intrinsics 3x3)")
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
    """

    generator: Generator
    aligner: FaceAligner = field(default_factory=FaceAligner)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    perceptual: PerceptualDistance | None = None
    perceptual_name: str = "perceptual_distance"
    camera_template: str = "label"
    cameras: CameraLabels | None = None
    aligned: bool = False
    with_mesh: bool = False
    mesh_resolution: int = 128
    image_format: str = "png"
    progress: bool = False
    fitter: CameraFitter = field(default_factory=CameraFitter)

    def __post_init__(self) -> None:
        self.template = generator_template(self.generator, self.camera_template)
        if self.cameras is not None and self.aligner.all_faces:
            raise ValueError("given cameras are one per photo; drop aligner.all_faces or the cameras")

    def build(self, path: Path) -> list[tuple[str, dict[str, bytes]]]:
        """(key, members) for each face crop of a photo; FaceError when the photo cannot be paired."""
        image = load_image(path, self.aligner.max_pixels)
        crops = [self.aligner.uncropped(image, str(path))] if self.aligned else self.aligner(image, str(path))
        given = self.cameras(path) if self.cameras is not None else None
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
        result = project(g, image_to_float(real_t), camera, self.projection, self.perceptual, self.progress)
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
            members["mesh.ply"] = mesh_to_bytes(grid_to_mesh(grid, renderer.surface_level, renderer.box_size))
        members["real.png"] = encode_image(real, "png")
        members["landmarks.npy"] = _npy(landmarks)
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
            quality[self.perceptual_name] = float(distance[0])
        quality.update(identity_scores(real[0].permute(1, 2, 0).numpy(), inverted[0].permute(1, 2, 0).numpy(), landmarks))
        return quality


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_record(records: Path, key: str, members: dict[str, bytes]) -> Path:
    """Write one record's members to `records/key.partial/`, then rename it to `records/key/`."""
    final, partial = records / key, records / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in members.items():
        (partial / name).write_bytes(data)
    partial.replace(final)
    return final


def read_record(folder: Path) -> dict[str, bytes]:
    """A record folder's members (name -> bytes), meta.json last as in shards."""
    members = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "meta.json"}
    members["meta.json"] = (folder / "meta.json").read_bytes()
    return members


def record_keys(root: str | Path) -> list[str]:
    """Keys of the complete records of a pairs folder, sorted (unfinished `.partial` ones are not records)."""
    records = Path(root) / RECORDS
    if not records.is_dir():
        raise FileNotFoundError(f"{root} has no {RECORDS}/ folder: build it with python -m regress.evaluate pairs")
    return sorted(p.name for p in records.iterdir() if p.is_dir() and not p.name.endswith(".partial"))


def iter_records(root: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) of every complete record of a pairs folder, in key order."""
    for key in record_keys(root):
        yield key, read_record(Path(root) / RECORDS / key)


def _prepare_output(output: Path, fingerprint: dict, resume: bool) -> None:
    """Check a resumed folder was made with the same settings, or clear our files from it; record the settings."""
    path = output / SETTINGS
    if resume and path.is_file() and json.loads(path.read_text()) != fingerprint:
        raise ValueError(
            f"{output} holds pairs made with other settings (see {path}); choose another output or pass --resume false to rebuild"
        )
    if not resume:
        shutil.rmtree(output / RECORDS, ignore_errors=True)
        for stale in [output / ERRORS, output / MANIFEST, *output.glob("pairs-*.tar*")]:
            stale.unlink(missing_ok=True)
    (output / RECORDS).mkdir(parents=True, exist_ok=True)
    write_json(path, fingerprint)


def read_manifest(root: str | Path) -> dict[str, Any]:
    """A pairs folder's manifest; a clear error when the set was never finished."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: run (or rerun) python -m regress.evaluate pairs to finish the set")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != PAIRS_FORMAT:
        raise ValueError(f"{path} is not a pairs manifest (format {manifest.get('format')!r}, expected {PAIRS_FORMAT!r})")
    return manifest


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
    _prepare_output(output, json.loads(json.dumps(fingerprint)), resume)
    records = output / RECORDS
    errors: dict[str, str] = {}
    errors_path = output / ERRORS
    if resume and errors_path.is_file():
        errors = {e["source"]: e["error"] for e in json.loads(errors_path.read_text())["errors"]}
    done = set(record_keys(output))
    built, skipped, start = 0, 0, time.perf_counter()
    bar = tqdm(images, desc="pairs", unit="photo", disable=not progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name[:32])
        if record_key(path) in done:
            skipped += 1
            continue
        try:
            for key, members in reversed(builder.build(path)):  # face 0 last: its key marks the photo done
                write_record(records, key, members)
                built += 1
            errors.pop(str(path), None)
        except FaceError as error:
            errors[str(path)] = str(error)
            tqdm.write(f"regress.evaluate pairs: skipped {error}")
        except Exception as error:  # noqa: BLE001 - one photo's failure must not stop the set; it is listed
            errors[str(path)] = f"{path}: {type(error).__name__}: {error}"
            tqdm.write(f"regress.evaluate pairs: failed on {path}: {type(error).__name__}: {error}")
        write_json(errors_path, {"errors": [{"source": s, "error": e} for s, e in sorted(errors.items())]})
    bar.close()
    keys = record_keys(output)
    manifest = {
        "format": PAIRS_FORMAT,
        "generator": g.identity(),
        "latent_shape": list(g.latent_shape),
        "mean_latent": g.mean_latent().float().cpu().tolist(),
        "image_resolution": g.image_resolution,
        "depth_resolution": g.depth_resolution,
        "projection": asdict(builder.projection),
        "settings": settings or {},
        "records": len(keys),
        "errors": len(errors),
        "schema_version": SCHEMA_VERSION,
    }
    if shards:
        manifest["shards"] = write_shards(output, samples_per_shard)
    write_json(output / MANIFEST, manifest)
    return {"output": str(output), "built": built, "skipped": skipped, "records": len(keys), "errors": errors, "seconds": time.perf_counter() - start}


def write_shards(output: Path, samples_per_shard: int = 1000) -> list[dict[str, Any]]:
    """Pack the records of a pairs folder into `pairs-000000.tar ...` (same members); their records for the manifest."""
    items = list(iter_records(output))
    shards = []
    for index, start in enumerate(range(0, len(items), samples_per_shard)):
        with ShardWriter(output / f"pairs-{index:06d}.tar") as writer:
            for key, members in items[start : start + samples_per_shard]:
                writer.add(key, members)
            shards.append(writer.commit({"index": index}))
    return shards
