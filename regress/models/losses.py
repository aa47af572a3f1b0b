"""Training losses: masked depth errors, latent errors per ws row, and the image-space cycle term.

Masks are the renderer's soft foreground weights (N, 1, R, R) in [0, 1]; masked means divide by
the mask's total weight, so background pixels count for nothing.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regress.generators import Generator
from regress.sample import image_to_float

EPS = 1e-6
MIN_DEPTH = 1e-3  # log-depth terms clamp predictions here


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` weighted by `mask` (same shape or broadcastable)."""
    mask = mask.expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(EPS)


def scale_shift_aligned(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Predictions (N, 1, R, R) mapped per image by the scale s and shift t that minimise the mask-weighted squared
    error sum m (s p + t - y)^2 to the target (MiDaS's alignment): what is left is the error of the depth's shape.

    The normal equations of the 2x2 least-squares problem, solved in closed form (differentiable, so a loss on the
    aligned prediction is invariant to each image's scale and shift); an image whose prediction is flat on the mask
    gets s = 0 and t its masked target mean."""
    p, y, m = pred.flatten(1).double(), target.flatten(1).double(), mask.expand_as(pred).flatten(1).double()
    n = m.sum(1)
    sp, sy, spp, spy = (m * p).sum(1), (m * y).sum(1), (m * p * p).sum(1), (m * p * y).sum(1)
    det = n * spp - sp * sp
    flat = det <= 1e-12 * n * spp  # no spread left above float64 cancellation: a flat prediction
    scale = torch.where(flat, torch.zeros_like(det), (n * spy - sp * sy) / torch.where(flat, torch.ones_like(det), det))
    shift = (sy - scale * sp) / n.clamp_min(EPS)
    return (scale[:, None, None, None] * pred.double() + shift[:, None, None, None]).to(pred.dtype)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute depth error on the mask (world units)."""
    return masked_mean((pred - target).abs(), mask)


def scale_invariant_log(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, variance_focus: float = 0.85) -> torch.Tensor:
    """Eigen et al.'s scale-invariant log error, per image then averaged.

    With d = log pred - log target: mean(d^2) - variance_focus * mean(d)^2 on the mask; at
    variance_focus = 1 a global scale of the prediction costs nothing.
    """
    d = pred.clamp_min(MIN_DEPTH).log() - target.clamp_min(MIN_DEPTH).log()
    weight = mask.flatten(1)
    count = weight.sum(1).clamp_min(EPS)
    d = d.flatten(1)
    mean_sq = (weight * d.square()).sum(1) / count
    mean = (weight * d).sum(1) / count
    return (mean_sq - variance_focus * mean.square()).mean()


def gradient_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 between the finite differences of prediction and target, where both pixels are on the mask."""
    diff = pred - target
    dx = (diff[..., :, 1:] - diff[..., :, :-1]).abs()
    dy = (diff[..., 1:, :] - diff[..., :-1, :]).abs()
    mask_x = mask[..., :, 1:] * mask[..., :, :-1]
    mask_y = mask[..., 1:, :] * mask[..., :-1, :]
    return masked_mean(dx, mask_x) + masked_mean(dy, mask_y)


class DepthLoss(nn.Module):
    """Weighted sum of masked L1, scale-invariant log and gradient terms; a weight of 0 skips a term.

    With `aligned` (relative depth targets) every term sees the prediction after `scale_shift_aligned`: the loss is
    invariant to each image's scale and shift, as MiDaS's scale-and-shift-invariant training is."""

    def __init__(self, l1: float = 1.0, scale_invariant: float = 0.0, gradient: float = 0.0, variance_focus: float = 0.85,
                 aligned: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.weights = {"l1": l1, "scale_invariant": scale_invariant, "gradient": gradient}
        self.variance_focus, self.aligned = variance_focus, aligned

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each active term and their weighted sum under `loss`."""
        if pred.shape != target.shape or mask.shape != target.shape:
            raise ValueError(f"depth shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}")
        if self.aligned:
            pred = scale_shift_aligned(pred, target, mask)
        terms = {
            "l1": lambda: masked_l1(pred, target, mask),
            "scale_invariant": lambda: scale_invariant_log(pred, target, mask, self.variance_focus),
            "gradient": lambda: gradient_l1(pred, target, mask),
        }
        parts = {name: terms[name]() for name, weight in self.weights.items() if weight}
        parts["loss"] = sum(self.weights[name] * value for name, value in parts.items())
        return parts


def latent_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: Literal["l1", "mse"] = "l1",
    ws_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 or MSE between latents (N, num_ws, w_dim), rows weighted by `ws_weights` (normalized to mean 1)."""
    if pred.shape != target.shape:
        raise ValueError(f"latent shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}")
    error = (pred - target).abs() if kind == "l1" else (pred - target).square()
    per_row = error.mean(dim=(0, 2))
    if ws_weights is None:
        return per_row.mean()
    weights = torch.as_tensor(ws_weights, dtype=per_row.dtype, device=per_row.device)
    if weights.shape != per_row.shape:
        raise ValueError(f"ws_weights needs {per_row.numel()} entries (one per ws row), got {weights.numel()}")
    return (weights * per_row).sum() / weights.sum().clamp_min(EPS)


def cycle_loss(generator: Generator, w: torch.Tensor, camera: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """L1 in [-1, 1] between uint8 input images and the frozen generator's render of w at their cameras."""
    render = generator.synthesis(w, camera)["image"]
    if render.shape[-2:] != image.shape[-2:]:
        render = F.interpolate(render, size=image.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    return (render - image_to_float(image)).abs().mean()
