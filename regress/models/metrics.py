"""torchmetrics metrics for the regressors: depth errors on the face mask, latent errors, re-render quality.

Both accumulate sums over batches (and ranks, under DDP) and compute dataset-level values, so
the result does not depend on how the data was split into batches. States are replaced, not
updated in place, so a metric reset under inference mode (trainer.validate) still trains after.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from regress.camera import make_cameras
from regress.faces.identity import identity_scores
from regress.faces.landmarks import generator_template, project_points
from regress.faces.perceptual import PerceptualDistance
from regress.faces.quality import psnr, ssim
from regress.generators import Generator
from regress.sample import MASK_THRESHOLD, image_to_uint8

Render = dict[str, torch.Tensor]  # a generator's synthesis output: image, depth, mask

DELTA = 1.25  # threshold accuracy: max(pred / true, true / pred) < DELTA
NOVEL_VIEWS_DEG = ((30.0, 0.0), (-30.0, 0.0), (0.0, 15.0), (0.0, -15.0))  # (yaw, pitch) of the image metrics' novel views


class DepthMetrics(Metric):
    """Abs-rel, RMSE and delta < 1.25 over all face pixels (mask > 0.5) seen, keyed without prefix.

    With no face pixel seen every value is NaN: an empty mask scores nothing, not a perfect 0.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("abs_rel", "squared", "delta1", "pixels"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        on = mask > MASK_THRESHOLD
        pred, target = pred[on].double(), target[on].double().clamp_min(1e-6)
        ratio = torch.maximum(pred / target, target / pred.clamp_min(1e-6))
        self.abs_rel = self.abs_rel + ((pred - target).abs() / target).sum()
        self.squared = self.squared + (pred - target).square().sum()
        self.delta1 = self.delta1 + (ratio < DELTA).sum()
        self.pixels = self.pixels + on.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        pixels = self.pixels
        return {
            "depth_absrel": (self.abs_rel / pixels).float(),
            "depth_rmse": (self.squared / pixels).sqrt().float(),
            "depth_delta1": (self.delta1 / pixels).float(),
        }


class LatentMetrics(Metric):
    """Mean L1 of w, and mean cosine similarity of predicted and true offsets from the mean latent.

    The cosine uses offsets because raw latents all share the mean latent's direction; the offset
    is what a regressor has to find.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("l1", "cosine", "samples"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, mean_latent: torch.Tensor) -> None:
        self.l1 = self.l1 + (pred - target).abs().flatten(1).mean(1).double().sum()
        cosine = F.cosine_similarity((pred - mean_latent).flatten(1), (target - mean_latent).flatten(1), dim=1, eps=1e-8)
        self.cosine = self.cosine + cosine.double().sum()
        self.samples = self.samples + pred.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        samples = self.samples.clamp_min(1)
        return {"latent_l1": (self.l1 / samples).float(), "latent_cosine": (self.cosine / samples).float()}


def render_pair(generator: Generator, pred: torch.Tensor, true: torch.Tensor, camera: torch.Tensor) -> tuple[Render, Render]:
    """Renders of predicted and true latents (N, num_ws, w_dim) at cameras (N, 25), without jitter, in one call."""
    with torch.no_grad():
        out = generator.synthesis(torch.cat([pred, true]).float(), torch.cat([camera, camera]).float())
    n = pred.shape[0]
    return {k: v[:n] for k, v in out.items()}, {k: v[n:] for k, v in out.items()}


def novel_cameras(n: int) -> list[torch.Tensor]:
    """Cameras (n, 25) of each novel view of `NOVEL_VIEWS_DEG`, around the frontal camera."""
    return [make_cameras(math.radians(yaw), math.radians(pitch)).expand(n, -1) for yaw, pitch in NOVEL_VIEWS_DEG]


class ImageMetrics(Metric):
    """How well the generator's re-renders of predicted latents match its renders of the true ones (no jitter).

    PSNR and SSIM at the input's camera (`image_*`) and at the novel views (`novel_*`), and the mean
    absolute depth error of the input-view re-render on the true render's face mask (`render_depth_l1`,
    NaN when no true render has a face pixel); means over the samples (and views) seen. With a
    `perceptual` distance also its score (`image_lpips`, ...: the distance's name); with `identity`
    dlib's identity similarity (`image_identity`, `novel_identity`: the cosine of the 128-d
    descriptors, read at the true head's landmarks; on the CPU, some 10 ms per image pair).
    """

    full_state_update = False

    def __init__(self, perceptual: PerceptualDistance | None = None, identity: bool = False) -> None:
        super().__init__()
        self.scores = ("psnr", "ssim") + ((perceptual.name,) if perceptual is not None else ()) + (("identity",) if identity else ())
        for score in self.scores:
            self.add_state(f"image_{score}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"novel_{score}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("samples", "novel_images", "depth_error", "pixels"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self._perceptual = (perceptual,) if perceptual is not None else ()  # not a submodule: its weights stay out of checkpoints

    def update(self, generator: Generator, pred: torch.Tensor, true: torch.Tensor, camera: torch.Tensor) -> None:
        """Render predicted and true latents (N, num_ws, w_dim) at the inputs' cameras (N, 25) and at the novel views."""
        mine, truth = render_pair(generator, pred, true, camera)
        on = truth["mask"] > MASK_THRESHOLD
        points = landmark_points(generator, true) if "identity" in self.scores else None  # once: every view projects them
        self._add("image", points, camera, mine, truth)
        self.samples = self.samples + pred.shape[0]
        self.depth_error = self.depth_error + (mine["depth"][on].double() - truth["depth"][on].double()).abs().sum()
        self.pixels = self.pixels + on.sum()
        for view in novel_cameras(pred.shape[0]):
            view = view.to(camera)
            self._add("novel", points, view, *render_pair(generator, pred, true, view))
            self.novel_images = self.novel_images + pred.shape[0]

    def _add(self, where: str, points: np.ndarray | None, camera: torch.Tensor, mine: Render, truth: Render) -> None:
        """Add each score's sum over the pairs of re-render and true render to the `where` (image, novel) states;
        `points`: the true heads' 3D landmarks, for identity."""
        for score in self.scores:
            if score == "psnr":
                values = psnr(mine["image"], truth["image"])
            elif score == "ssim":
                values = ssim(mine["image"], truth["image"])
            elif score == "identity":
                values = identity_similarity(mine["image"], truth["image"], pixel_landmarks(points, camera, truth["image"].shape[-1]))
            else:
                perceptual = self._perceptual[0].to(mine["image"].device)
                with torch.no_grad(), torch.autocast(mine["image"].device.type, enabled=False):
                    values = perceptual(mine["image"].float(), truth["image"].float())
            setattr(self, f"{where}_{score}", getattr(self, f"{where}_{score}") + values.double().sum().to(self.samples.device))

    def compute(self) -> dict[str, torch.Tensor]:
        samples, novel = self.samples.clamp_min(1), self.novel_images.clamp_min(1)
        scores = {}
        for score in self.scores:
            scores[f"image_{score}"] = (getattr(self, f"image_{score}") / samples).float()
            scores[f"novel_{score}"] = (getattr(self, f"novel_{score}") / novel).float()
        depth = self.depth_error / self.pixels if self.pixels > 0 else torch.full_like(self.pixels, math.nan)
        return {**scores, "render_depth_l1": depth.float()}


def landmark_points(generator: Generator, true: torch.Tensor) -> np.ndarray:
    """World positions (N, 68, 3) of the 68 landmarks of the heads of `true` (N, num_ws, w_dim).

    The generator's own 3D landmarks where it has them (they follow each head), else EG3D's label
    template (one mean face for all).
    """
    with torch.no_grad():
        marks = generator.landmarks_3d(true.float())
    if marks is None:
        return np.broadcast_to(generator_template(generator, "label").world_points(), (true.shape[0], 68, 3))
    return marks.detach().cpu().double().numpy()


def pixel_landmarks(points: np.ndarray, camera: torch.Tensor, size: int) -> np.ndarray:
    """Pixel positions (N, 68, 2) of landmarks (N, 68, 3) seen from `camera` (N, 25) in size² images."""
    cameras = camera.detach().cpu().double().numpy()
    return np.stack([project_points(p, c) for p, c in zip(points, cameras)]) * size - 0.5  # pixel centres at (i + 0.5) / size


def identity_similarity(a: torch.Tensor, b: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """dlib identity similarity (N,) of generator images (N, 3, H, W) in [-1, 1], both read at `landmarks` (N, 68, 2)."""
    a, b = (image_to_uint8(x.float()).permute(0, 2, 3, 1).cpu().numpy() for x in (a, b))
    return torch.tensor([identity_scores(x, y, marks)["identity_similarity"] for x, y, marks in zip(a, b, landmarks)])
