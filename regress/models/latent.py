"""LatentRegressor: one face image -> the generator latent w (num_ws, w_dim) that reproduces it.

The head predicts an offset from the generator's mean latent (zero at initialization, so an
untrained model answers with the mean face). The latent shape, mean latent and generator spec come from
the data's `LatentSpace` when the model is built (`python -m regress.fit` links it); the checkpoint stores
the shape and mean, and names the generator (`hparams.generator_record`: its spec and checksum).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from regress.faces.perceptual import PerceptualDistance
from regress.generators import Generator, GeneratorSpec, LatentSpace
from regress.generators.spec import describe_record
from regress.models.base import Regressor
from regress.models.losses import cycle_loss, latent_loss
from regress.models.metrics import ImageMetrics, LatentMetrics
from regress.models.previews import depth_columns
from regress.sample import Batch, image_to_uint8


class LatentHead(nn.Module):
    """Every pyramid level, reduced to `reduce` channels and pooled to a grid x grid map -> MLP -> offsets.

    The coarse grid keeps where things are (background, hair, face), which a global pool would
    mix; the last layer starts at zero, so the first prediction is the mean latent.
    """

    def __init__(self, channels: list[int], latent_shape: tuple[int, int], hidden: int = 512, grid: int = 4, reduce: int = 32) -> None:
        super().__init__()
        self.latent_shape, self.grid = tuple(latent_shape), grid
        self.reduce = nn.ModuleList(nn.Conv2d(c, reduce, 1) for c in channels)
        self.mlp = nn.Sequential(
            nn.Linear(len(channels) * reduce * grid * grid, hidden),
            nn.SiLU(),
            nn.Linear(hidden, self.latent_shape[0] * self.latent_shape[1]),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = [F.adaptive_avg_pool2d(reduce(f), self.grid).flatten(1) for reduce, f in zip(self.reduce, features)]
        return self.mlp(torch.cat(pooled, dim=1)).view(-1, *self.latent_shape)


def latent_shape_of(latent_shape: Sequence[int] | None, latent_space: LatentSpace | None) -> tuple[int, int]:
    """The shape the head predicts: as given, else the latent space's; the two must agree when both are there."""
    if latent_shape is None and latent_space is None:
        raise ValueError("LatentRegressor needs latent_shape, or the latent_space of its data (latent_space=data.latent_space; python -m regress.fit links it)")
    if latent_space is not None and latent_shape is not None and tuple(latent_shape) != tuple(latent_space.shape):
        raise ValueError(f"the data's latents have shape {tuple(latent_space.shape)} but latent_shape is {tuple(latent_shape)}")
    return tuple(latent_shape if latent_shape is not None else latent_space.shape)


class LatentRegressor(Regressor):
    """Image -> w; trained with L1/MSE on w (rows optionally weighted) and an optional image cycle term.

    Args:
        encoder: the timm backbone's model name; encoder_weights: a local weights file (None: random init).
        image_size: side of the input images (None: any size the backbone takes; the CLI links the data's).
        latent_shape: (num_ws, w_dim) (None: the latent space's).
        hidden: width of the head's hidden layer.
        loss: "l1" or "mse" on w; ws_weights: one weight per ws row (None: equal).
        cycle_weight: weight of the L1 between the input image and the frozen generator's render of
            the predicted w at the sample's camera (0: off; needs a latent space with a generator).
        lr, weight_decay, lr_schedule: AdamW, and cosine decay over the run or a constant rate.
        image_metrics_samples: the first this many validation samples are also scored in image space
            (`val/image_psnr`, `val/novel_psnr`, ...: renders of the predicted against the true w);
            0: off. Only with a generator.
        vgg_weights, lpips_weights: local VGG16 and LPIPS files (as for `regress.evaluate pairs`); with
            them the image-space scores include LPIPS (`val/image_lpips`, `val/novel_lpips`). They load
            when a Trainer sets the model up, not when a checkpoint is loaded for inference.
        identity_metric: also dlib's identity similarity of the re-renders (`val/image_identity`,
            `val/novel_identity`; its weights ship with face-recognition-models; CPU time per image).
        latent_space: the data's w shape, mean and generator spec (`data.latent_space`; the CLI links it).
            The model renders with the spec's instance, shared with the data module.
        generator_record: the generator these latents belong to, as plain data (`GeneratorSpec.record()`: name, checkpoint,
            options, checksum); set from `latent_space` (its spec, or the manifest of stored data), and kept in the
            checkpoint, whose loading gives it back (None: a checkpoint from before they named it). A resumed run
            whose data names another generator says so.
    """

    fields = ("image", "w")

    def __init__(
        self,
        encoder: str = "resnet18",
        encoder_weights: str | Path | None = None,
        image_size: int | None = None,
        latent_shape: tuple[int, int] | None = None,
        hidden: int = 512,
        loss: Literal["l1", "mse"] = "l1",
        ws_weights: Sequence[float] | None = None,
        cycle_weight: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        image_metrics_samples: int = 8,
        vgg_weights: str | Path | None = None,
        lpips_weights: str | Path | None = None,
        identity_metric: bool = False,
        latent_space: LatentSpace | None = None,
        generator_record: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(encoder, encoder_weights, image_size, lr, weight_decay, lr_schedule)
        shape = latent_shape_of(latent_shape, latent_space)
        self.hparams.latent_shape = shape
        self.head = LatentHead(self.encoder.channels, shape, hidden)
        self.register_buffer("mean_latent", latent_space.mean.clone() if latent_space is not None else torch.zeros(shape))
        self.generator_spec: GeneratorSpec | None = latent_space.generator if latent_space is not None else None
        record = latent_space.generator_record() if latent_space is not None else None
        if record is not None:
            if generator_record is not None and generator_record.get("checksum") != record["checksum"]:  # a resumed run
                print(f"regress: warning: this LatentRegressor was trained against {describe_record(generator_record)}; "
                      f"its data's latents are {describe_record(record)}'s", file=sys.stderr)  # fmt: skip
            self.hparams["generator_record"] = record
        self.metrics = LatentMetrics()
        if lpips_weights is not None and vgg_weights is None:
            raise ValueError("lpips_weights needs vgg_weights too (the VGG16 backbone they sit on)")
        self.image_metrics = ImageMetrics(identity=identity_metric)

    def setup(self, stage: str) -> None:
        if self.hparams.cycle_weight and self.generator_spec is None:
            raise ValueError("cycle_weight > 0 renders predictions, but the model has no generator: train on data that renders (synth-online), or set cycle_weight 0")
        if self.hparams.vgg_weights is not None:
            perceptual = PerceptualDistance(self.hparams.vgg_weights, self.hparams.lpips_weights)
            self.image_metrics = ImageMetrics(perceptual, self.hparams.identity_metric)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> w (N, num_ws, w_dim)."""
        return self.mean_latent + self.head(self.encoder(image))

    def _generator_on(self, device: torch.device) -> Generator:
        """The spec's instance on `device`: the one the data module renders with, frozen, never a submodule."""
        return self.generator_spec.build(device)

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pred = self(batch["image"])
        parts = {"latent": latent_loss(pred, batch["w"], self.hparams.loss, self.hparams.ws_weights)}
        loss = parts["latent"]
        if self.hparams.cycle_weight:
            parts["cycle"] = cycle_loss(self._generator_on(pred.device), pred, batch["camera"], batch["image"])
            loss = loss + self.hparams.cycle_weight * parts["cycle"]
        parts["loss"] = loss
        return parts, pred

    def update_metrics(self, batch: Batch, pred: torch.Tensor) -> None:
        self.metrics.update(pred, batch["w"], self.mean_latent)
        wanted = self.hparams.image_metrics_samples - int(self.image_metrics.samples)
        if self.generator_spec is not None and wanted > 0:
            self.image_metrics.update(self._generator_on(pred.device), pred[:wanted], batch["w"][:wanted], batch["camera"][:wanted])

    def validation_metrics(self) -> list[Metric]:
        """Latent errors, and the image-space scores when there is a generator to render with."""
        return [self.metrics, self.image_metrics] if self.generator_spec is not None and self.hparams.image_metrics_samples else [self.metrics]

    def preview_columns(self, batch: Batch, pred: torch.Tensor) -> list[torch.Tensor]:
        """Input, the render of the predicted w at the sample's camera, true depth, the render's depth."""
        if self.generator_spec is None:
            return []
        with torch.no_grad():
            render = self._generator_on(pred.device).synthesis(pred, batch["camera"])
        depths = depth_columns([batch["depth"], render["depth"]], [batch["mask"], render["mask"]])
        return [batch["image"].cpu(), image_to_uint8(render["image"]).cpu(), *depths]
