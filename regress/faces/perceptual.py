"""An LPIPS-style perceptual distance on VGG16 features, from weight files the user gives (never downloaded).

`vgg_weights` is a torchvision VGG16 state dict (`vgg16-397923af.pth`, or its `features.*`
part); `lpips_weights`, optional, is the LPIPS v0.1 linear-layer file for VGG (`vgg.pth` of the
`lpips` package). Without it every channel weighs the same.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features
CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's input scaling for images in [-1, 1]
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _load(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; give a local path (weights are never downloaded)")
    return torch.load(path, map_location="cpu", weights_only=True)


class PerceptualDistance(nn.Module):
    """LPIPS-style distance (N,) of images (N, 3, H, W) in [-1, 1]: unit-normalized VGG16 features, weighted squares."""

    def __init__(self, vgg_weights: str | Path, lpips_weights: str | Path | None = None) -> None:
        super().__init__()
        state = _load(Path(vgg_weights), "VGG16 weights")
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        features = make_layers(cfgs["D"])[: TAPS[-1] + 1]  # VGG16's convolutional part, no classifier
        missing = features.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise ValueError(f"{vgg_weights} is not a torchvision VGG16 state dict: it lacks {missing[:4]}")
        self.features = features.eval().requires_grad_(False)
        self.name = "lpips" if lpips_weights is not None else "perceptual_distance"  # what its scores are called
        if lpips_weights is None:
            linear = [torch.full((c,), 1.0 / c) for c in CHANNELS]
        else:
            lin = _load(Path(lpips_weights), "LPIPS linear weights")
            linear = [lin[f"lin{k}.model.1.weight"].reshape(-1) for k in range(len(TAPS))]
        for k, weight in enumerate(linear):
            self.register_buffer(f"linear{k}", weight.float())
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        x = (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(F.normalize(x, dim=1, eps=1e-10))
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = a.new_zeros(a.shape[0])
        for k, (fa, fb) in enumerate(zip(self._taps(a), self._taps(b))):
            weight = getattr(self, f"linear{k}").view(1, -1, 1, 1)
            distance = distance + ((fa - fb).square() * weight).sum(1).flatten(1).mean(1)
        return distance
