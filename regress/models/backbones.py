"""timm backbones by name: feature pyramids for uint8 images, with weights only from a local file.

Nothing here downloads: `weights=None` starts from random initialization, a path loads that file
through timm's own loader (which adapts classifier and feature-extractor keys).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class Backbone(nn.Module):
    """A timm backbone as a feature pyramid: uint8 images (N, 3, H, W) -> features, finest first.

    Images are normalized with the backbone's own mean/std, so local pretrained weights see the
    statistics they were trained with. `out_indices` picks pyramid levels (timm's numbering).
    The regressors' `encoder` / `encoder_weights` options name it and `self.encoder` holds it (names kept: checkpoints'
    state-dict keys and hyperparameters use them), so there, and in the messages below, "encoder" means this backbone;
    elsewhere (regress.evaluation.encoder) an encoder is the GAN-inversion encoder, image -> w.
    """

    def __init__(self, name: str = "resnet18", weights: str | Path | None = None, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        options: dict = {"features_only": True, "pretrained": weights is not None}
        if weights is not None:
            weights = Path(weights)
            if not weights.is_file():
                raise FileNotFoundError(f"encoder weights {weights} do not exist; give a local .pth/.safetensors file or none")
            options["pretrained_cfg_overlay"] = {"file": str(weights), "source": ""}
        if out_indices is not None:
            options["out_indices"] = out_indices
        if not timm.is_model(name):
            raise ValueError(f"unknown encoder {name!r}; pick a timm model name such as resnet18 (see timm.list_models())")
        try:
            self.body = timm.create_model(name, **options)
        except RuntimeError as error:
            raise ValueError(f"encoder {name!r} cannot be built as a feature pyramid: {error}") from error
        self.name = name
        self.channels: list[int] = self.body.feature_info.channels()
        self.reductions: list[int] = self.body.feature_info.reduction()
        config = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(config.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def stride(self) -> int:
        """Total stride of the coarsest level: image sides must be multiples of it."""
        return max(self.reductions)

    def check_image_size(self, size: int) -> None:
        """Raise a ValueError saying which sizes work when `size` does not fit the pyramid."""
        if size < self.stride or size % self.stride:
            lower, upper = max(size // self.stride, 1) * self.stride, (size // self.stride + 1) * self.stride
            raise ValueError(
                f"image size {size} does not fit encoder {self.name}: it must be a multiple of its total stride "
                f"{self.stride} (for example {lower} or {upper}); set data.image_size to one"
            )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"encoder input must be images (N, 3, H, W), got {tuple(image.shape)}")
        self.check_image_size(image.shape[-1])
        self.check_image_size(image.shape[-2])
        return self.body((image.float() - self.mean) / self.std)
