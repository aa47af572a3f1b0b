"""Regressor checkpoints for evaluation, and a LatentRegressor as an inversion encoder: crops -> w, the start
of projection and pivotal tuning.

A regressor sees images resized to its own input size (`model_input`); a latent regressor's latents
must have the generator's shape, which is checked when the checkpoint is read, so a wrong file fails
before any photo.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

import torch

from regress.generators.base import Generator
from regress.generators.spec import describe_record
from regress.models import LatentRegressor
from regress.models.base import Regressor
from regress.models.checkpoint_io import checkpoint_class, read_checkpoint
from regress.sample import resize_images

Encoder = Callable[[torch.Tensor], torch.Tensor]  # uint8 crops (N, 3, H, W) -> w (N, num_ws, w_dim)
R = TypeVar("R", bound=Regressor)
MEAN_LATENT_TOLERANCE = 0.01  # relative: float16 and float32 renders of one checkpoint agree far closer than this


def load_regressor(cls: type[R], path: str | Path, device: torch.device, kind: str, fit_options: str = "") -> R:
    """The `cls` regressor in a checkpoint, on `device`, in eval mode.

    A missing, unreadable or foreign file, or another regressor's checkpoint, is a one-line error
    that names the file and what to give instead, before any weight is built.
    """
    make = f"give a .ckpt written by python -m regress.fit{fit_options}"
    found = checkpoint_class(read_checkpoint(path, f"{kind} checkpoint", make))
    if found and found != cls.__name__:
        raise ValueError(f"{kind} checkpoint {path} holds a {found}, not a {cls.__name__}; {make}")
    return cls.load_from_checkpoint(path, map_location=device).eval()


def model_input(model: Regressor, image: torch.Tensor) -> torch.Tensor:
    """uint8 images resized to the side the model was trained on (any side when it recorded none)."""
    return resize_images(image, model.hparams.get("image_size") or image.shape[-1])


def load_latent_regressor(path: str | Path, generator: Generator) -> LatentRegressor:
    """The LatentRegressor in a checkpoint, on the generator's device; a ValueError when its latents are not the generator's.

    Latents of the same shape can still belong to another generator (other weights, another seed): the
    mean latent the regressor was trained around tells them apart.
    """
    model = load_regressor(LatentRegressor, path, generator.device, "latent", " --model latent")
    shape, fix = tuple(model.hparams.latent_shape), "give a LatentRegressor trained on this generator"
    if shape != tuple(generator.latent_shape):
        raise ValueError(f"{path} predicts latents of shape {shape} but the {generator.name} generator's are {tuple(generator.latent_shape)}; {fix}")
    check_recorded_generator(model, path, generator)
    mean = generator.mean_latent().to(model.mean_latent)
    offset = float((model.mean_latent - mean).norm() / mean.norm().clamp_min(1e-12))
    if offset > MEAN_LATENT_TOLERANCE:
        raise ValueError(f"{path} was trained on another generator's latents: its mean latent is {offset:.0%} away from "
                         f"this {generator.name} generator's (other weights or options); {fix}")  # fmt: skip
    return model


def check_recorded_generator(model: LatentRegressor, path: str | Path, generator: Generator) -> None:
    """Say on stderr when the generator a latent checkpoint names is not the one given (other weights, same latent shape),
    or when the checkpoint names none (written before checkpoints recorded it)."""
    recorded, checksum = model.hparams.get("generator_record"), generator.identity()["checksum"]
    if recorded is None:
        print(f"regress: note: {path} does not name the generator it was trained against (written before checkpoints "
              f"recorded it): its generator is unknown; only its latent shape and mean latent are checked", file=sys.stderr)  # fmt: skip
    elif recorded["checksum"] != checksum:
        print(f"regress: warning: {path} was trained against {describe_record(recorded)}, but renders with {generator.name} {checksum}",
              file=sys.stderr)  # fmt: skip


def latent_encoder(model: LatentRegressor) -> Encoder:
    """uint8 crops of any size -> the regressor's w, without gradients."""

    def encode(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(model_input(model, image.to(model.device)))

    return encode
