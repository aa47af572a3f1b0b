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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from regress.camera import camera_to_pose, frontal_camera
from regress.generators.base import Generator
from regress.geometry.grids import density_grid
from regress.geometry.mesh_files import grid_files, stand_ins_for
from regress.faces.identity import identity_scores
from regress.faces.landmarks import generator_template
from regress.faces.perceptual import PerceptualDistance
from regress.faces.quality import psnr, ssim
from regress.inversion.align import FaceError
from regress.inversion.camera_fit import axis_angle
from regress.inversion.front_end import FaceCrop, PhotoFrontEnd
from regress.inversion.photos import failure_reason
from regress.inversion.project import ProjectionConfig, project
from regress.sample import SCHEMA_VERSION, encode_image, encode_sample, image_to_float, image_to_uint8, npy_bytes
from regress.store.files import resolved
from regress.store.pairs import (
    prepare_pairs_folder,
    read_errors,
    record_key,
    record_keys,
    write_errors,
    write_pair_record,
    write_pair_shards,
    write_pairs_manifest,
)

@dataclass
class PairBuilder:
    """Turns one photo into pair records with a generator; the choices of every stage in one place.

    `front_end`: detection, crop and camera (built for the generator when not given);
    `encoder`: uint8 crops -> w (an inversion encoder); projection and pivotal tuning start from
    its prediction instead of the mean latent. `untrusted` collects, by photo, why a camera was not to be
    trusted (the front end's one line) for the faces paired; the front end skips those under its
    `min_camera_confidence`, with the reason.
    """

    generator: Generator
    front_end: PhotoFrontEnd | None = None
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    perceptual: PerceptualDistance | None = None
    with_mesh: bool = False
    mesh_resolution: int = 128
    mesh_format: str = "ply"
    image_format: str = "png"
    progress: bool = False
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None
    mesh_coarse_stride: int | None = None
    untrusted: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.front_end is None:
            self.front_end = PhotoFrontEnd(generator_template(self.generator), self.generator.image_resolution)

    def build(self, path: Path) -> list[tuple[str, dict[str, bytes]]]:
        """(key, members) for each face crop of a photo; FaceError when the photo cannot be paired (the front end's
        `min_camera_confidence` included)."""
        faces = self.front_end(path)
        for face in faces:
            if "untrusted" in face.camera_meta:
                self.untrusted[str(resolved(path))] = f"{path}: {face.camera_meta['untrusted']}"
        return [(record_key(path, face.index), self._record(face)) for face in faces]

    def _record(self, face: FaceCrop) -> dict[str, bytes]:
        """Camera (given or fitted), inversion and quality of one face crop, as record members (meta.json last)."""
        g = self.generator
        real, landmarks, camera_cpu = face.image, face.landmarks, face.camera
        real_t = torch.from_numpy(real.transpose(2, 0, 1).copy())[None]
        camera = camera_cpu[None].to(g.device)
        start = time.perf_counter()
        init = self.encoder(real_t.to(g.device)) if self.encoder is not None else None
        result = project(g, image_to_float(real_t), camera, self.projection, self.perceptual, self.progress, init)
        renderer, camera = result.generator or g, result.camera
        camera_cpu = camera[0].cpu()
        with torch.no_grad():
            out = renderer.synthesis(result.w, camera)
        seconds = time.perf_counter() - start
        inverted = image_to_uint8(out["image"]).cpu()
        meta = {
            "source": str(face.path),
            "face_index": face.index,
            "face_box": [float(v) for v in face.aligned.face.box],
            "crop": face.aligned.as_meta(),
            **self._pose_meta(camera_cpu, face.camera_meta),
            "quality": self._quality(real_t, inverted, landmarks),
            "inversion": {
                "space": self.projection.space,
                "steps": self.projection.steps,
                "start": "encoder" if self.encoder is not None else "mean_latent",
                "pti_steps": self.projection.pti_steps,
                "seconds": seconds,
                "final_loss": result.losses[-1]["loss"] if result.losses else None,
                "tuned_generator": result.generator is not None,
                **({"camera_correction_deg": axis_angle(face.camera, camera_cpu)} if self.projection.optimize_camera else {}),
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
            grids = density_grid(renderer, result.w, self.mesh_resolution, coarse_stride=self.mesh_coarse_stride, stand_ins=stand_ins_for(self.mesh_format))
            members[f"mesh.{self.mesh_format}"] = bytes(grid_files(grids, renderer.surface_level, renderer.box_size, True, self.mesh_format)[0])
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
    fingerprint = {"generator": g.identity(), "projection": builder.projection.record(), "settings": settings or {}}
    prepare_pairs_folder(output, json.loads(json.dumps(fingerprint)), resume)
    errors = read_errors(output) if resume else {}
    done = set(record_keys(output))
    built, skipped, start = 0, 0, time.perf_counter()
    bar = tqdm(images, desc="pairs", unit="photo", disable=not progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name[:32])
        source = str(resolved(path))  # errors are keyed like records: one photo, however its path is spelled
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
        except Exception as error:  # noqa: BLE001 - one photo's failure must not stop the set; it is listed
            errors[source] = failure_reason(path, error)
            tqdm.write(f"regress.evaluate pairs: {'skipped' if isinstance(error, FaceError) else 'failed on'} {errors[source]}")
        write_errors(output, errors)
    bar.close()
    keys = record_keys(output)
    manifest = {
        "generator": g.identity(),
        **g.data_facts(),
        "projection": builder.projection.record(),
        "settings": settings or {},
        "records": len(keys),
        "errors": len(errors),
        "untrusted_cameras": builder.untrusted,
        "schema_version": SCHEMA_VERSION,
    }
    if shards:
        manifest["shards"] = write_pair_shards(output, samples_per_shard)
    write_pairs_manifest(output, manifest)
    for line in builder.untrusted.values():
        tqdm.write(f"regress.evaluate pairs: camera not to be trusted: {line}")
    return {"output": str(output), "built": built, "skipped": skipped, "records": len(keys), "errors": errors,
            "untrusted_cameras": builder.untrusted, "seconds": time.perf_counter() - start}  # fmt: skip

