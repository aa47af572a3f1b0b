"""The tri-plane field in one GPU kernel: 3 x 4 bilinear taps, mean, FC, softplus, FC, sigmoid (Triton).

The unfused field writes and rereads about 1 KB per point (plane samples, hidden layer) and its
gathers read each 128-byte line for 4 bytes; here each tap is one contiguous C-channel row of
channels-last half-precision planes and only sigma and the features leave the chip. Same math as
`sample_triplanes` + `OSGDecoder` (grid_sample bilinear, zeros padding, align_corners False).

The kernel is an opaque custom op, launched by Triton itself also under `torch.compile`: as a
`triton_op`, inductor launched it and it ran 1.8x slower there (0.292 against 0.161 ms/image,
`scripts/bench_field.py --compiled`).
"""

from __future__ import annotations

import torch

from regress.generators.eg3d.renderer import FEATURE_PAD, OSGDecoder

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the unfused field is used
    triton = None

BLOCK_POINTS = 64  # points per program; chosen with scripts/bench_field.py
NUM_WARPS = 4
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus: x itself above it


def supported(planes: torch.Tensor, decoder: OSGDecoder) -> bool:
    """Whether the fused kernel can run: on these planes (`kernel_runs`), with no gradient wanted through them (the
    kernel has no backward: projection and pivotal tuning, whose planes come from a latent or weights being optimized,
    take the differentiable path)."""
    wants_grad = torch.is_grad_enabled() and planes.requires_grad
    return kernel_runs(planes.dtype, planes.device, decoder) and not wants_grad


def kernel_runs(dtype: torch.dtype, device: torch.device, decoder: OSGDecoder) -> bool:
    """Whether the fused kernel takes planes of this dtype on this device: Triton present, float16 on a GPU, widths that
    tl.dot takes. It computes each point alone, in registers: a point's value does not depend on its batch."""
    channels, hidden = decoder.net[0].weight.shape[1], decoder.net[0].weight.shape[0]
    powers = all(k >= 16 and k & (k - 1) == 0 for k in (channels, hidden))
    return triton is not None and torch.device(device).type == "cuda" and dtype == torch.float16 and powers


def fused_field(
    planes: torch.Tensor, points: torch.Tensor, decoder: OSGDecoder, box_warp: float, with_features: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sigma (N, P) float32 and features (N, C, P) in the planes' dtype (None without `with_features`).

    planes (N, 3, C, H, W), channels-last per plane; points (N, P, 3).
    """
    n, _, c, h, w = planes.shape
    first, last = decoder.net[0], decoder.net[2]
    dtype = planes.dtype
    rows = planes.reshape(n * 3, c, h, w).permute(0, 2, 3, 1).contiguous()  # a view for channels-last planes
    w1 = (first.weight * first.weight_gain).t().contiguous().to(dtype)
    b1 = (first.bias * first.bias_gain).float().contiguous()
    w2 = (last.weight * last.weight_gain).float()
    b2 = (last.bias * last.bias_gain).float().contiguous()
    sigma, features = triplane_field(
        rows, points.float().contiguous(), w1, b1, w2[1:].t().contiguous().to(dtype), w2[0].contiguous(), b2, 2 / box_warp, with_features
    )
    return sigma, features if with_features else None


if triton is not None:

    @triton.jit
    def _plane_taps(planes_ptr, image, u, v, valid, H, W, channels, C: tl.constexpr):
        """Sum over the 4 bilinear taps of one plane image at (u, v) in [-1, 1]: (BLOCK, C) float32."""
        ix = ((u + 1) * W - 1) * 0.5
        iy = ((v + 1) * H - 1) * 0.5
        x0 = tl.floor(ix)
        y0 = tl.floor(iy)
        fx = ix - x0
        fy = iy - y0
        x0 = x0.to(tl.int32)
        y0 = y0.to(tl.int32)
        total = tl.zeros([u.shape[0], C], dtype=tl.float32)
        for dy in tl.static_range(2):
            for dx in tl.static_range(2):
                xi = x0 + dx
                yi = y0 + dy
                inside = valid & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
                weight = (fx if dx == 1 else 1 - fx) * (fy if dy == 1 else 1 - fy)
                row = ((image * H + yi) * W + xi).to(tl.int64) * C
                taps = tl.load(planes_ptr + row[:, None] + channels[None, :], mask=inside[:, None], other=0.0)
                total += taps.to(tl.float32) * weight[:, None]
        return total

    @triton.jit
    def _triplane_field_kernel(
        planes_ptr, points_ptr, w1_ptr, b1_ptr, w2_ptr, w2_sigma_ptr, b2_ptr, sigma_ptr, features_ptr,
        P, H, W, scale, pad, threshold,
        C: tl.constexpr, HIDDEN: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr, WITH_FEATURES: tl.constexpr,
    ):  # fmt: skip
        block, n = tl.program_id(0), tl.program_id(1)
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        valid = offsets < P
        point = (n * P + offsets).to(tl.int64) * 3
        x = tl.load(points_ptr + point, mask=valid, other=0.0) * scale
        y = tl.load(points_ptr + point + 1, mask=valid, other=0.0) * scale
        z = tl.load(points_ptr + point + 2, mask=valid, other=0.0) * scale
        channels = tl.arange(0, C)
        # planes XY, XZ, ZX as (u, v) = (width, height) coordinates, as sample_triplanes
        mean = _plane_taps(planes_ptr, n * 3, x, y, valid, H, W, channels, C)
        mean += _plane_taps(planes_ptr, n * 3 + 1, x, z, valid, H, W, channels, C)
        mean += _plane_taps(planes_ptr, n * 3 + 2, z, x, valid, H, W, channels, C)
        mean = mean / 3
        hidden_index = tl.arange(0, HIDDEN)
        w1 = tl.load(w1_ptr + channels[:, None] * HIDDEN + hidden_index[None, :])
        hidden = tl.dot(mean.to(w1.dtype), w1) + tl.load(b1_ptr + hidden_index)[None, :]
        hidden = tl.where(hidden > threshold, hidden, tl.log(1 + tl.exp(hidden)))
        sigma = tl.sum(hidden * tl.load(w2_sigma_ptr + hidden_index)[None, :], axis=1) + tl.load(b2_ptr)
        tl.store(sigma_ptr + n * P + offsets, sigma, mask=valid)
        if WITH_FEATURES:
            # the second product with 64 output columns (zeros past C): Triton 3.6 on Hopper reads shared
            # memory out of bounds for a chained tl.dot with 32 output columns
            wide = tl.arange(0, WIDE)
            w2 = tl.load(w2_ptr + hidden_index[:, None] * C + wide[None, :], mask=wide[None, :] < C, other=0.0)
            bias = tl.load(b2_ptr + 1 + wide, mask=wide < C, other=0.0)
            features = tl.sigmoid(tl.dot(hidden.to(w2.dtype), w2) + bias[None, :]) * (1 + 2 * pad) - pad
            target = features_ptr + (n * C + wide[None, :]).to(tl.int64) * P + offsets[:, None]
            tl.store(target, features.to(features_ptr.dtype.element_ty), mask=valid[:, None] & (wide[None, :] < C))

    @torch.library.custom_op("regress::triplane_field", mutates_args=())
    def triplane_field(
        planes: torch.Tensor,
        points: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        w2_sigma: torch.Tensor,
        b2: torch.Tensor,
        scale: float,
        with_features: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """planes (3N, H, W, C), points (N, P, 3) float32, layers pre-scaled -> sigma (N, P) float32, features (N, C, P | 0)."""
        n, p, _ = points.shape
        _, h, w, c = planes.shape
        sigma = torch.empty((n, p), dtype=torch.float32, device=points.device)
        features = torch.empty((n, c, p if with_features else 0), dtype=planes.dtype, device=points.device)
        grid = (triton.cdiv(p, BLOCK_POINTS), n)
        _triplane_field_kernel[grid](
            planes, points, w1, b1, w2, w2_sigma, b2, sigma, features, p, h, w, scale, FEATURE_PAD, SOFTPLUS_THRESHOLD,
            C=c, HIDDEN=w1.shape[1], WIDE=max(c, 64), BLOCK=BLOCK_POINTS, WITH_FEATURES=with_features, num_warps=NUM_WARPS,
        )  # fmt: skip
        return sigma, features

    @triplane_field.register_fake
    def _triplane_field_shapes(planes, points, w1, b1, w2, w2_sigma, b2, scale, with_features):
        """Empty outputs of the right shapes, for tracing under `torch.compile`."""
        n, p, _ = points.shape
        c = planes.shape[-1]
        return points.new_empty((n, p), dtype=torch.float32), planes.new_empty((n, c, p if with_features else 0))
