"""What the depth and latent regressors share: timm backbone, input size, optimizer, logging of losses and metrics.

Subclasses say how a batch becomes loss terms and a prediction (`losses`), which metric that
prediction updates (`update_metrics`) and what a preview shows (`preview_columns`).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics import Metric

from regress.models.backbones import Backbone
from regress.models.previews import log_preview, preview_grid
from regress.sample import Batch

PREVIEW_SAMPLES = 4
# Data facts linked in by `python -m regress.fit` that hold tensors (the latent space's mean): never hyperparameters (the
# mean is a buffer; a latent model records the space's generator spec itself). The CLI records a link's value for every
# model, also one whose class has no such parameter (DepthRegressor).
LINKED_OBJECTS = ["latent_space"]


class Regressor(L.LightningModule, abc.ABC):
    """A LightningModule around a timm backbone (`self.encoder`, the `encoder` option) that trains on Sample batches from any data module.

    `image_size` is the side of the images the model takes, recorded in checkpoints (the benchmark
    resizes photos to it); `python -m regress.fit` links it from the data module's `image_size`.
    """

    metrics: Metric
    fields: tuple[str, ...] = ("image",)  # the Sample fields every batch must hold for this model

    def __init__(
        self,
        encoder: str,
        encoder_weights: str | Path | None,
        image_size: int | None,
        lr: float,
        weight_decay: float,
        lr_schedule: Literal["cosine", "constant"],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=LINKED_OBJECTS)  # the subclass's arguments too
        self.encoder = Backbone(encoder, encoder_weights)
        if image_size is not None:
            self.encoder.check_image_size(image_size)
        self.lr, self.weight_decay, self.lr_schedule = lr, weight_decay, lr_schedule

    @abc.abstractmethod
    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss terms (the total under `loss`) and the prediction for a Sample batch."""

    @abc.abstractmethod
    def update_metrics(self, batch: Batch, pred: torch.Tensor) -> None:
        """Feed one validation batch and its prediction to `self.metrics`."""

    @abc.abstractmethod
    def preview_columns(self, batch: Batch, pred: torch.Tensor) -> list[torch.Tensor]:
        """uint8 image columns (N, 3, H, W) for the preview grid; empty for none."""

    def check_fields(self, batch: Batch) -> None:
        """A ValueError in one line when the data lacks a field this model trains on (a folder without depth)."""
        missing = [name for name in self.fields if name not in batch]
        if missing:
            raise ValueError(f"{type(self).__name__} trains on {', '.join(self.fields)}, and the data has no {', '.join(missing)}; "
                             "give data that holds them (for --data folder, the member's folder option, e.g. --data.depth NAME)")  # fmt: skip

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.check_fields(batch)
        parts, _ = self.losses(batch)
        n = batch["image"].shape[0]
        for name, value in parts.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=n)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        return parts["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.check_fields(batch)
        parts, pred = self.losses(batch)
        n = batch["image"].shape[0]
        for name, value in parts.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", sync_dist=True, batch_size=n)
        self.update_metrics(batch, pred)
        if batch_idx == 0 and self.trainer.is_global_zero and self.loggers:
            first = {k: v[:PREVIEW_SAMPLES] for k, v in batch.items()}
            columns = self.preview_columns(first, pred[:PREVIEW_SAMPLES])
            if columns:
                log_preview(self.loggers, "val/preview", preview_grid(columns), self.global_step)

    def validation_metrics(self) -> list[Metric]:
        """The metrics logged (under `val/`) and reset at the end of every validation epoch."""
        return [self.metrics]

    def on_validation_epoch_end(self) -> None:
        for metric in self.validation_metrics():
            for name, value in metric.compute().items():
                self.log(f"val/{name}", value, sync_dist=True)  # already reduced by torchmetrics; quiets the DDP warning
            metric.reset()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return optimizer
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
