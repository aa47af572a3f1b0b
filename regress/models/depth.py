"""DepthRegressor: one face image -> its depth map (expected ray depth, world units) at 128 x 128.

Trained on relative depth (the origin's 8-bit PNGs: `depth_units: relative`, linked from the data), its loss and its
metrics see each prediction after the scale and shift that best align it to the target (`losses.scale_shift_aligned`).

A timm feature pyramid feeds a small top-down decoder (FPN-style lateral convs, upsample and add)
that predicts at a quarter of the input size, refines once at half, and resamples to the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regress.models.base import Regressor
from regress.models.losses import DepthLoss, scale_shift_aligned
from regress.models.metrics import DepthMetrics
from regress.models.previews import depth_columns
from regress.sample import Batch

FINEST_REDUCTION = 4  # the decoder starts from the stride-4 level; stride-2 features are skipped


class ConvBlock(nn.Sequential):
    """3x3 conv, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class PyramidDecoder(nn.Module):
    """Features (finest first) -> one channel at `resolution`: lateral 1x1, upsample-and-add, two refinements."""

    def __init__(self, channels: list[int], width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = ConvBlock(width, width)
        self.refine = ConvBlock(width, width // 2)
        self.out = nn.Conv2d(width // 2, 1, 3, padding=1)

    def forward(self, features: list[torch.Tensor], resolution: int) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for feature, lateral in zip(reversed(features[:-1]), reversed(self.lateral[:-1])):
            x = F.interpolate(x, size=feature.shape[-2:], mode="bilinear", align_corners=False) + lateral(feature)
        x = self.fuse(x)
        x = self.refine(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return F.interpolate(self.out(x), size=(resolution, resolution), mode="bilinear", align_corners=False)


class DepthRegressor(Regressor):
    """Image -> depth map; trained with masked L1 (+ optional scale-invariant and gradient terms).

    Args:
        encoder: the timm backbone's model name; encoder_weights: a local weights file (None: random init).
        image_size: side of the input images (None: any size the backbone takes; the CLI links the data's).
        depth_resolution: side of the predicted depth map.
        decoder_width: channels of the decoder.
        depth_offset, depth_scale: depth = depth_offset + depth_scale * decoder output, so the
            untrained model starts near the face's distance from the camera.
        l1_weight, scale_invariant_weight, gradient_weight: loss term weights.
        depth_units: the targets' units: `world` (the renderer's depth) or `relative` (known up to each image's scale
            and shift: loss and metrics align first); the CLI links the data's, and checkpoints keep it.
        lr, weight_decay, lr_schedule: AdamW, and cosine decay over the run or a constant rate.
    """

    fields = ("image", "depth", "mask")

    def __init__(
        self,
        encoder: str = "resnet18",
        encoder_weights: str | Path | None = None,
        image_size: int | None = None,
        depth_resolution: int = 128,
        decoder_width: int = 64,
        depth_offset: float = 2.5,
        depth_scale: float = 0.1,
        l1_weight: float = 1.0,
        scale_invariant_weight: float = 0.0,
        gradient_weight: float = 0.0,
        depth_units: Literal["world", "relative"] = "world",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__(encoder, encoder_weights, image_size, lr, weight_decay, lr_schedule)
        self.levels = [k for k, r in enumerate(self.encoder.reductions) if r >= FINEST_REDUCTION]
        self.decoder = PyramidDecoder([self.encoder.channels[k] for k in self.levels], decoder_width)
        self.loss = DepthLoss(l1_weight, scale_invariant_weight, gradient_weight, aligned=depth_units == "relative")
        self.metrics = DepthMetrics()

    def forward(self, image: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> depth (N, 1, R, R), R = `depth_resolution` unless given."""
        features = self.encoder(image)
        raw = self.decoder([features[k] for k in self.levels], resolution or self.hparams.depth_resolution)
        return self.hparams.depth_offset + self.hparams.depth_scale * raw

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pred = self(batch["image"], batch["depth"].shape[-1])
        return self.loss(pred, batch["depth"], batch["mask"]), pred

    def scored(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The prediction as metrics score it: aligned to the target per image for relative depth, else as it is."""
        return scale_shift_aligned(pred, target, mask) if self.hparams.depth_units == "relative" else pred

    def update_metrics(self, batch: Batch, pred: torch.Tensor) -> None:
        self.metrics.update(self.scored(pred, batch["depth"], batch["mask"]), batch["depth"], batch["mask"])

    def preview_columns(self, batch: Batch, pred: torch.Tensor) -> list[torch.Tensor]:
        shown = self.scored(pred.detach(), batch["depth"], batch["mask"])  # relative depth: on the target's scale
        return [batch["image"].cpu(), *depth_columns([batch["depth"], shown], [batch["mask"], batch["mask"]])]
