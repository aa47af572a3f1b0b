"""torchmetrics metrics for the regressors: depth errors on the face mask, latent errors.

Both accumulate sums over batches (and ranks, under DDP) and compute dataset-level values, so
the result does not depend on how the data was split into batches. States are replaced, not
updated in place, so a metric reset under inference mode (trainer.validate) still trains after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

MASK_THRESHOLD = 0.5  # a pixel is on the face when its renderer opacity exceeds this
DELTA = 1.25  # threshold accuracy: max(pred / true, true / pred) < DELTA


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
