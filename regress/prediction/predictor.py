"""Face crops -> what a person opens: the depth regressor's depth and its mesh in the photo's colours, the latent
regressor's w (optionally refined by projection), the generator's render and depth at the photo's camera, its own
surface in its own colours, and an orbit video; batched on the device, timed per stage.

A LightningModule so that `Trainer.predict` runs it on any device and any number of GPUs (each rank its share of the
photos); a prediction writer (`regress.prediction.writer`) stores what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterator

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from regress.camera import orbit_cameras
from regress.evaluation.encoder import model_input
from regress.generators import Generator
from regress.geometry.grids import density_grid
from regress.geometry.meshes import depth_to_mesh, generator_meshes
from regress.inversion.front_end import FaceCrop
from regress.inversion.project import REFINE, ProjectionConfig, project
from regress.models import DepthRegressor, LatentRegressor
from regress.gallery.depth import depth_range
from regress.prediction.photos import PhotoItem
from regress.prediction.views import view_frames
from regress.sample import MASK_THRESHOLD, image_to_float, image_to_uint8


@dataclass(frozen=True)
class PredictionChoices:
    """What to make of each face.

    Args:
        refine: projection steps from the latent regressor's w (0: its w as it is).
        projection: the refinement's options (its `steps` are replaced by `refine`).
        mesh_resolution: density grid points per axis of the generator's mesh.
        mesh_keep_largest: keep only the largest connected piece of the generator's mesh.
        mesh_coarse_stride: None: the density at every grid point; k: coarse to fine from every k-th point
            (`geometry.grids.refine_grids`), the same mesh from a small share of the points.
        mrc: keep the density grid itself too (for `.mrc` files).
        video_frames: frames of the orbit video (0: no video); video_fps its frame rate.
        orbit_yaw_deg, orbit_pitch_deg: the orbit's swing either side of frontal.
    """

    refine: int = 0
    projection: ProjectionConfig = REFINE
    mesh_resolution: int = 128
    mesh_keep_largest: bool = True
    mesh_coarse_stride: int | None = None
    mrc: bool = False
    video_frames: int = 48
    video_fps: int = 24
    orbit_yaw_deg: float = 35.0
    orbit_pitch_deg: float = 15.0


@dataclass
class FacePrediction:
    """One face's outputs on the CPU; a field is None when the model that makes it was not given."""

    item: PhotoItem
    face: FaceCrop
    depth: np.ndarray | None = None  # (R, R) float32, world units along each pixel ray
    depth_mask: np.ndarray | None = None  # (R, R): the generator's opacity at the depth's side (None: no latent model)
    depth_mesh: trimesh.Trimesh | None = None
    w: np.ndarray | None = None  # (num_ws, w_dim)
    render: np.ndarray | None = None  # (S, S, 3) uint8
    render_depth: np.ndarray | None = None
    render_mask: np.ndarray | None = None
    mesh: trimesh.Trimesh | None = None
    grid: np.ndarray | None = None  # the density grid [x, y, z] of the mesh, with `mrc`
    video: np.ndarray | None = None  # (F, S, 2S, 3) uint8: render | depth
    refine_losses: list[dict] = field(default_factory=list)  # per step, means over the face's batch
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, this face's share of its batch

    @property
    def key(self) -> str:
        return self.item.key(self.face)


class PhotoPredictor(L.LightningModule):
    """Both regressors (either may be None) and the generator that renders the latent regressor's w."""

    def __init__(self, generator: Generator, depth_model: DepthRegressor | None, latent_model: LatentRegressor | None,
                 choices: PredictionChoices = PredictionChoices()) -> None:  # fmt: skip
        super().__init__()
        if depth_model is None and latent_model is None:
            raise ValueError("give a depth_checkpoint, a latent_checkpoint or both: there is nothing to predict with")
        self.depth_model, self.latent_model, self.choices = depth_model, latent_model, choices
        self._generator = (generator,)  # not a submodule: the process's one instance, shared, never saved

    @property
    def generator(self) -> Generator:
        return self._generator[0]

    def transfer_batch_to_device(self, batch: list[PhotoItem], device: torch.device, dataloader_idx: int) -> list[PhotoItem]:
        """Items stay on the host: `predict_step` stacks their crops and cameras on the device itself."""
        return batch

    def predict_step(self, batch: list[PhotoItem], batch_idx: int) -> list[FacePrediction | PhotoItem]:
        """The batch's faces predicted together; failed photos pass through as they came."""
        faces = [(item, face) for item in batch if item.error is None for face in item.faces]
        if not faces:
            return [item for item in batch if item.error is not None]
        out = [FacePrediction(item, face) for item, face in faces]
        clock: dict[str, float] = {}
        crops = torch.from_numpy(np.stack([face.image for _, face in faces])).permute(0, 3, 1, 2).to(self.device)
        cameras = torch.stack([face.camera for _, face in faces]).to(self.device)
        with torch.no_grad():
            if self.depth_model is not None:
                with self._stage(clock, "depth regressor"):
                    depth = self.depth_model(model_input(self.depth_model, crops)).float()
            if self.latent_model is not None:
                self._latent_outputs(out, crops, cameras, clock)
            if self.depth_model is not None:
                with self._stage(clock, "depth mesh"):
                    self._depth_meshes(out, depth, crops, cameras)
        for prediction in out:
            prediction.seconds = {stage: seconds / len(out) for stage, seconds in clock.items()}
        return [*out, *(item for item in batch if item.error is not None)]

    def _latent_outputs(self, out: list[FacePrediction], crops: torch.Tensor, cameras: torch.Tensor, clock: dict[str, float]) -> None:
        g, c = self.generator, self.choices
        with self._stage(clock, "latent regressor"):
            w = self.latent_model(model_input(self.latent_model, crops)).float()
        if c.refine > 0:
            with self._stage(clock, "refine"), torch.enable_grad():
                target = image_to_float(crops)  # the front end crops at the generator's side
                result = project(g, target, cameras, dataclasses.replace(c.projection, steps=c.refine, pti_steps=0), init=w)
                w = result.w
            for prediction in out:
                prediction.refine_losses = result.losses
        with self._stage(clock, "render"):
            rendered = g.synthesis(w, cameras)
        with self._stage(clock, "generator mesh"):
            grids = density_grid(g, w, c.mesh_resolution, coarse_stride=c.mesh_coarse_stride, stand_ins="trilinear" if c.mrc else "sides")
            meshes = generator_meshes(g, w, grids, c.mesh_keep_largest)
            kept = grids.cpu().numpy() if c.mrc else None
            del grids
        video = None
        if c.video_frames > 0:
            with self._stage(clock, "video"):
                video = self._orbits(w, rendered["depth"], rendered["mask"])
        images, depths, masks = image_to_uint8(rendered["image"]).permute(0, 2, 3, 1).cpu().numpy(), rendered["depth"].float().cpu(), rendered["mask"].float().cpu()
        for i, prediction in enumerate(out):
            prediction.w, prediction.mesh = w[i].cpu().numpy(), meshes[i]
            prediction.render, prediction.render_depth, prediction.render_mask = images[i], depths[i, 0].numpy(), masks[i, 0].numpy()
            prediction.grid = None if kept is None else kept[i]
            prediction.video = None if video is None else video[i]

    def _orbits(self, w: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """Each latent's orbit (N, F, S, 2S, 3) uint8: the render beside its depth, on the depth scale of its render at the photo's camera."""
        c = self.choices
        cameras = orbit_cameras(c.video_frames, c.orbit_yaw_deg, c.orbit_pitch_deg).to(self.device)
        chunk = max(8, len(w))  # as many frames a call as the batch has faces, at least 8
        return np.stack([view_frames(self.generator, w[i : i + 1].expand(len(cameras), -1, -1), cameras, *depth_range([depth[i]], [mask[i]]), chunk)
                         for i in range(len(w))])  # fmt: skip

    def _depth_meshes(self, out: list[FacePrediction], depth: torch.Tensor, crops: torch.Tensor, cameras: torch.Tensor) -> None:
        """The depth regressor's depth as meshes coloured by the crop; faces kept where the generator's render of the same
        face is opaque when a latent model gave one, else everywhere."""
        side = depth.shape[-1]
        colours = F.interpolate(crops.float(), size=side, mode="area").round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        depth_cpu, cameras_cpu = depth.cpu(), cameras.cpu()
        for i, prediction in enumerate(out):
            if prediction.render_mask is not None:
                prediction.depth_mask = F.interpolate(torch.from_numpy(prediction.render_mask)[None, None], size=side, mode="area")[0, 0].numpy()
            prediction.depth = depth_cpu[i, 0].numpy()
            prediction.depth_mesh = depth_to_mesh(depth_cpu[i, 0], cameras_cpu[i], prediction.depth_mask, MASK_THRESHOLD, colours[i])

    @contextlib.contextmanager
    def _stage(self, clock: dict[str, float], name: str) -> Iterator[None]:
        """Seconds of one stage, the device's queue included (synchronized at its end)."""
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
