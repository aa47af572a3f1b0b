"""torchmetrics metrics for the regressors: depth errors on the face mask, latent errors, re-render quality.

Both accumulate sums over batches (and ranks, under DDP) and compute dataset-level values, so
the result does not depend on how the data was split into batches. States are replaced, not
updated in place, so a metric reset under inference mode (trainer.validate) still trains after.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from regress.camera import make_cameras
from regress.generators import Generator
from regress.inversion.quality import psnr, ssim

Render = dict[str, torch.Tensor]  # a generator's synthesis output: image, depth, mask

MASK_THRESHOLD = 0.5  # a pixel is on the face when its renderer opacity exceeds this
DELTA = 1.25  # threshold accuracy: max(pred / true, true / pred) < DELTA
NOVEL_VIEWS_DEG = ((30.0, 0.0), (-30.0, 0.0), (0.0, 15.0), (0.0, -15.0))  # (yaw, pitch) of the image metrics' novel views


class DepthMetrics(Metric):
    """Abs-rel, RMSE and delta < 1.25 over all face pixels (mask > 0.5) seen, keyed without prefix."""

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
        pixels = self.pixels.clamp_min(1)
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
    NaN when no true render has a face pixel); means over the samples (and views) seen.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("psnr", "ssim", "samples", "novel_psnr", "novel_ssim", "novel_images", "depth_error", "pixels"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generator: Generator, pred: torch.Tensor, true: torch.Tensor, camera: torch.Tensor) -> None:
        """Render predicted and true latents (N, num_ws, w_dim) at the inputs' cameras (N, 25) and at the novel views."""
        mine, truth = render_pair(generator, pred, true, camera)
        on = truth["mask"] > MASK_THRESHOLD
        self.psnr = self.psnr + psnr(mine["image"], truth["image"]).double().sum()
        self.ssim = self.ssim + ssim(mine["image"], truth["image"]).double().sum()
        self.samples = self.samples + pred.shape[0]
        self.depth_error = self.depth_error + (mine["depth"][on].double() - truth["depth"][on].double()).abs().sum()
        self.pixels = self.pixels + on.sum()
        for view in novel_cameras(pred.shape[0]):
            mine, truth = render_pair(generator, pred, true, view.to(camera))
            self.novel_psnr = self.novel_psnr + psnr(mine["image"], truth["image"]).double().sum()
            self.novel_ssim = self.novel_ssim + ssim(mine["image"], truth["image"]).double().sum()
            self.novel_images = self.novel_images + pred.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        samples, novel = self.samples.clamp_min(1), self.novel_images.clamp_min(1)
        return {
            "image_psnr": (self.psnr / samples).float(),
            "image_ssim": (self.ssim / samples).float(),
            "novel_psnr": (self.novel_psnr / novel).float(),
            "novel_ssim": (self.novel_ssim / novel).float(),
            "render_depth_l1": (self.depth_error / self.pixels if self.pixels > 0 else torch.full_like(self.pixels, math.nan)).float(),
        }
