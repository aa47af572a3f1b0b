"""Neural rendering of tri-planes: the field (plane sampling + OSG decoder), samplers and the ray marcher.

Split the nerfstudio way: `sample_triplanes` + `OSGDecoder` say what a point looks like,
`stratified_depths` / `importance_depths` say where to look along a ray, `march` turns
densities into weights, features, depth and opacity, and `ImportanceRenderer` chains them
(docs/eg3d.md §4 and §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from regress.generators.eg3d.layers import FullyConnected

FEATURE_PAD = 0.001  # features = sigmoid(o) * (1 + 2 * pad) - pad
TRANSMITTANCE_EPS = 1e-10
SMOOTHING_BIAS = 0.01
PDF_EPS = 1e-5

RadianceField = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points (N, P, 3) -> sigma (N, P), features (N, C, P)


def sample_triplanes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Mean of bilinear samples of planes XY, XZ and ZX at world points, one grid_sample for all three: (N, 3, C, H, W), (N, P, 3) -> (N, C, P).

    Channels-last planes make each corner's C channels one contiguous read.
    """
    n, num_planes, c, h, w = planes.shape
    assert num_planes == 3 and points.shape[0] == n and points.shape[-1] == 3, f"bad planes {tuple(planes.shape)} / points {tuple(points.shape)}"
    q = points * (2 / box_warp)
    # (u, v) per plane; u indexes the width, v the height. The third plane is ZX, as upstream.
    grid = torch.stack([q[..., [0, 1]], q[..., [0, 2]], q[..., [2, 0]]], dim=1)
    sampled = F.grid_sample(
        planes.reshape(n * 3, c, h, w), grid.reshape(n * 3, 1, -1, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return sampled.reshape(n, 3, c, -1).mean(dim=1)


class OSGDecoder(nn.Module):
    """Tri-plane features -> raw density and features: FC, softplus, FC; features squashed by a padded sigmoid.

    Works channels-first on (N, C, P), as the plane samples come, and in the features' dtype.
    """

    def __init__(self, in_features: int = 32, hidden: int = 64, out_features: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            FullyConnected(in_features, hidden, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnected(hidden, 1 + out_features, lr_multiplier=lr_multiplier),
        )

    def forward(self, features: torch.Tensor, with_features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, C, P) -> sigma (N, P) float32 and features (N, C_out, P) (None without `with_features`)."""
        first, last = self.net[0], self.net[2]
        hidden = F.softplus(_linear_channels_first(features, first.weight * first.weight_gain, first.bias * first.bias_gain))
        # all output rows even for sigma alone: the same product, so density equals the field's sigma exactly
        out = _linear_channels_first(hidden, last.weight * last.weight_gain, last.bias * last.bias_gain)
        sigma = out[:, 0].float()
        if not with_features:
            return sigma, None
        return sigma, torch.sigmoid(out[:, 1:]) * (1 + 2 * FEATURE_PAD) - FEATURE_PAD


def _linear_channels_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """W x + b over the channels of x (N, I, P) -> (N, O, P), in x's dtype."""
    weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    return torch.baddbmm(bias[:, None], weight.expand(len(x), -1, -1), x)


def stratified_depths(
    num_rays: tuple[int, int], samples_per_ray: int, ray_start: float, ray_end: float, jitter: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Depths (N, M, D) at linspace(ray_start, ray_end, D); `jitter` (N, M, D) in [0, 1) shifts each by up to one step."""
    depths = torch.linspace(ray_start, ray_end, samples_per_ray, device=device).expand(*num_rays, samples_per_ray)
    if jitter is not None:
        depths = depths + jitter * ((ray_end - ray_start) / (samples_per_ray - 1))
    return depths


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF samples (N, M, K) from coarse depths (N, M, D) and their march weights (N, M, D-1).

    The weights are smoothed (max-pool then average-pool, + 0.01); bins are the coarse midpoints and
    only the inner D-3 smoothed weights are used, as upstream. `u` (N, M, K) are the CDF levels.
    """
    n, m, d = depths.shape
    smoothed = F.max_pool1d(weights.reshape(n * m, 1, d - 1), 2, 1, padding=1)
    smoothed = F.avg_pool1d(smoothed, 2, 1).reshape(n, m, d - 1) + SMOOTHING_BIAS
    bins = (depths[..., :-1] + depths[..., 1:]) / 2
    pdf = smoothed[..., 1:-1] + PDF_EPS
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(dim=-1)], dim=-1)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    denominator = cdf_above - cdf_below
    denominator = torch.where(denominator < PDF_EPS, torch.ones_like(denominator), denominator)
    return bins_below + (u - cdf_below) / denominator * (bins_above - bins_below)


@dataclass
class RenderOutput:
    """Per-ray results: composited features (N, C, M) in [-1, 1], depth and opacity (N, M) float32."""

    features: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor


def march_weights(depths: torch.Tensor, sigma: torch.Tensor, density_bias: float = -1.0) -> torch.Tensor:
    """Alpha-compositing weights (N, M, S-1) of the midpoint intervals of sorted depths and raw sigma (N, M, S)."""
    deltas = depths[..., 1:] - depths[..., :-1]
    sigma_mid = (sigma[..., :-1] + sigma[..., 1:]) / 2
    alpha = 1 - torch.exp(-F.softplus(sigma_mid + density_bias) * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + TRANSMITTANCE_EPS], dim=-1), dim=-1)
    return alpha * transmittance[..., :-1]


def march(
    depths: torch.Tensor,
    sigma: torch.Tensor,
    features: list[torch.Tensor],
    order: torch.Tensor,
    density_bias: float = -1.0,
    white_back: bool = False,
) -> RenderOutput:
    """Midpoint alpha compositing of samples sorted by depth: depths, raw sigma (N, M, S) in sorted order;
    features as unsorted parts (N, C, M, S_i) that concatenate to the samples that `order` (N, M, S) sorts.

    sum_k w_k (c_k + c_k+1) / 2 = sum_j c_j (w_j-1 + w_j) / 2, so each sample's feature weight is
    scattered back to its unsorted place and the features are never gathered.
    """
    weights = march_weights(depths, sigma, density_bias)
    opacity = weights.sum(dim=-1)
    depths_mid = (depths[..., :-1] + depths[..., 1:]) / 2
    depth = (weights * depths_mid).sum(dim=-1) / opacity
    # clamp per sample; with shared stratified depths this equals upstream's batch-wide clamp
    lo = depths.flatten(1).amin(dim=1).reshape(-1, 1)
    hi = depths.flatten(1).amax(dim=1).reshape(-1, 1)
    depth = torch.nan_to_num(depth, nan=float("inf")).clamp(lo, hi)
    sample_weights = (F.pad(weights, (1, 0)) + F.pad(weights, (0, 1))) / 2
    sample_weights = torch.empty_like(sample_weights).scatter_(-1, order, sample_weights)
    composite, start = 0, 0
    for part in features:
        size = part.shape[-1]
        composite = composite + (part * sample_weights[:, None, :, start : start + size]).sum(dim=-1)
        start += size
    if white_back:
        composite = composite + 1 - opacity[:, None]
    return RenderOutput(features=composite * 2 - 1, depth=depth, opacity=opacity)


class ImportanceRenderer:
    """Coarse stratified pass, importance pass on its weights, then one march over all samples sorted by depth."""

    def __init__(
        self,
        samples_per_ray: int,
        importance_samples_per_ray: int,
        ray_start: float,
        ray_end: float,
        density_bias: float = -1.0,
        white_back: bool = False,
    ):
        self.samples_per_ray, self.importance_samples_per_ray = samples_per_ray, importance_samples_per_ray
        self.ray_start, self.ray_end = ray_start, ray_end
        self.density_bias, self.white_back = density_bias, white_back

    @property
    def uniforms_per_ray(self) -> int:
        """How many U(0, 1) numbers a jittered render draws per ray (stratified, then importance)."""
        return self.samples_per_ray + self.importance_samples_per_ray

    def __call__(
        self, field: RadianceField, origins: torch.Tensor, directions: torch.Tensor, uniforms: torch.Tensor | None = None
    ) -> RenderOutput:
        """Render rays (N, M, 3); `uniforms` (N, M, uniforms_per_ray) jitters the samples, None is deterministic."""
        n, m, _ = origins.shape
        d, k = self.samples_per_ray, self.importance_samples_per_ray
        assert uniforms is None or uniforms.shape == (n, m, d + k), f"expected uniforms (N, M, {d + k})"
        jitter = None if uniforms is None else uniforms[..., :d]
        coarse = stratified_depths((n, m), d, self.ray_start, self.ray_end, jitter, origins.device)
        sigma_coarse, features_coarse = self._evaluate(field, origins, directions, coarse)
        with torch.no_grad():
            weights = march_weights(coarse, sigma_coarse, self.density_bias)
            u = torch.linspace(0, 1, k, device=origins.device).expand(n, m, k) if uniforms is None else uniforms[..., d:]
            fine = importance_depths(coarse, weights, u)
        sigma_fine, features_fine = self._evaluate(field, origins, directions, fine)
        depths, order = torch.sort(torch.cat([coarse, fine], dim=-1), dim=-1)
        sigma = torch.cat([sigma_coarse, sigma_fine], dim=-1).gather(-1, order)
        return march(depths, sigma, [features_coarse, features_fine], order, self.density_bias, self.white_back)

    @staticmethod
    def _evaluate(
        field: RadianceField, origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma (N, M, S) and features (N, C, M, S) at origins + depths * directions."""
        n, m, s = depths.shape
        points = origins[..., None, :] + depths[..., None] * directions[..., None, :]
        sigma, features = field(points.reshape(n, m * s, 3))
        return sigma.reshape(n, m, s), features.reshape(n, -1, m, s)
