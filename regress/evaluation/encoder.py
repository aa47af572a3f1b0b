"""A LatentRegressor checkpoint as an inversion encoder: crops -> w, the start of projection and pivotal tuning.

The regressor sees the crop resized to its own input size; its latents must have the generator's
shape, which is checked when the checkpoint is read, so a wrong file fails before any photo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from regress.datamodules.online import resize_images
from regress.generators.base import Generator
from regress.models import LatentRegressor

Encoder = Callable[[torch.Tensor], torch.Tensor]  # uint8 crops (N, 3, H, W) -> w (N, num_ws, w_dim)


def load_latent_regressor(path: str | Path, generator: Generator) -> LatentRegressor:
    """The LatentRegressor in a checkpoint, on the generator's device; a ValueError when its latents are not the generator's."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"latent checkpoint {path} does not exist; give a .ckpt written by python -m regress.fit --model latent")
    model = LatentRegressor.load_from_checkpoint(path, map_location=generator.device).eval()
    shape = tuple(model.hparams.latent_shape)
    if shape != tuple(generator.latent_shape):
        raise ValueError(
            f"{path} predicts latents of shape {shape} but the {generator.name} generator's are {tuple(generator.latent_shape)}; "
            "give a LatentRegressor trained on this generator"
        )
    return model


def latent_encoder(model: LatentRegressor) -> Encoder:
    """uint8 crops of any size -> the regressor's w, without gradients."""
    size = model.hparams.get("image_size")

    def encode(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(resize_images(image.to(model.device), size or image.shape[-1]))

    return encode
