"""StyleGAN2 building blocks of EG3D: equalized-lr FC, bias-act with clamp, FIR resampling, modulated convs.

Stored tensors are the raw parameters; gains are applied in `forward` (docs/eg3d.md
§1). Parameter and buffer names follow the upstream state dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)
DEMODULATION_EPS = 1e-8
NORMALIZATION_EPS = 1e-8
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def fir_filter(taps: tuple[float, ...] = FIR_TAPS) -> torch.Tensor:
    """The separable 2D resampling filter outer(taps, taps), normalized to sum 1."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def bias_act(
    x: torch.Tensor, bias: torch.Tensor | None, activation: str = "linear", gain: float = 1.0, clamp: float | None = None
) -> torch.Tensor:
    """`clamp(act(x + b) * gain, -clamp, clamp)` with b broadcast over channels (dim 1), in x's dtype."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}; expected 'linear' or 'lrelu'")
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = NORMALIZATION_EPS) -> torch.Tensor:
    """x / sqrt(mean(x², over features) + eps)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def upfirdn2d(
    x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0
) -> torch.Tensor:
    """Zero-stuff by `up`, pad (x0, x1, y0, y1; negative crops), convolve with `f * gain` (valid), keep every `down`-th."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, list(pad))
    # true convolution = correlation with the flipped filter
    weight = (f * gain).flip([0, 1]).to(x.dtype)
    if torch.compiler.is_compiling():
        # taps as shifted slices: the compiler fuses them with what follows, where a depthwise conv would
        # be a separate pass (and one that cuDNN runs through layout transposes on channels-last inputs)
        kh, kw = f.shape
        h, w = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
        x = sum(weight[i, j] * x[..., i : i + h, j : j + w] for i in range(kh) for j in range(kw))
    else:
        x = F.conv2d(x, weight[None, None].expand(c, 1, *f.shape), groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """FIR up-sampling by 2 of the skip images: r² -> (2r)²."""
    return upfirdn2d(x, f, up=2, pad=(2, 1, 2, 1), gain=4)


class FullyConnected(nn.Module):
    """Equalized-lr linear layer: act(x @ (W * m / sqrt(in)).T + b * m) * gain_act."""

    def __init__(
        self, in_features: int, out_features: int, activation: str = "linear", lr_multiplier: float = 1.0, bias_init: float = 0.0
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.weight.shape[1], f"expected {self.weight.shape[1]} features, got {tuple(x.shape)}"
        weight = self.weight * self.weight_gain
        bias = self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(bias, x, weight.t()) if x.ndim == 2 else x @ weight.t() + bias
        return bias_act(x @ weight.t(), bias, self.activation, gain=LRELU_GAIN)


class ModulatedConv(nn.Module):
    """Modulated 3x3 conv with demodulation, noise and lrelu (docs/eg3d.md §1); `up=2` doubles the resolution.

    Implemented by scaling activations: conv(x * s, W) * d equals conv(x, W * s * d) per sample.
    Styles and demodulation are computed in float32; the convolution runs in x's dtype.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        kernel_size: int = 3,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", fir_filter())
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        n, c, h, _ = x.shape
        assert c == self.weight.shape[1] and h * self.up == self.resolution, f"bad input {tuple(x.shape)} for {self.extra_repr()}"
        styles = self.affine(w)
        # d[n, o] = 1 / sqrt(sum_i s[n, i]² sum_ab W[o, i, a, b]² + eps)
        dcoefs = (styles.square() @ self.weight.square().sum(dim=(2, 3)).t() + DEMODULATION_EPS).rsqrt()
        weight = self.weight.to(x.dtype)
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up == 1:
            x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
        else:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = upfirdn2d(x, self.resample_filter, pad=(1, 1, 1, 1), gain=4)
        x = x * dcoefs.to(x.dtype)[:, :, None, None]
        if noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        elif noise_mode == "random":
            x = x + torch.randn(n, 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype) * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        return bias_act(x, self.bias, "lrelu", gain=LRELU_GAIN, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i} -> {o}, k={k}, up={self.up}, resolution={self.resolution}, clamp={self.conv_clamp}"


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, styles scaled by 1/sqrt(in); linear bias-act with clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, c, h, r = x.shape
        assert c == self.weight.shape[1], f"expected {self.weight.shape[1]} channels, got {tuple(x.shape)}"
        styles = self.affine(w) * self.weight_gain
        # conv1x1(x * s, W) as one product with the per-sample kernel W * s: no pass over x to scale it,
        # and no 3-channel convolution (which cuDNN runs through layout transposes on channels-last inputs)
        weight = (self.weight[None, :, :, 0, 0] * styles[:, None, :]).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            pixels = x.permute(0, 2, 3, 1).reshape(n, h * r, c)
            x = torch.bmm(pixels, weight.transpose(1, 2)).reshape(n, h, r, -1).permute(0, 3, 1, 2)
        else:
            x = torch.bmm(weight, x.reshape(n, c, h * r)).reshape(n, -1, h, r)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """StyleGAN2 "skip" block at `resolution`: [const | conv0 (up 2)], conv1, torgb; img = upsample(img) + torgb(x).

    `in_channels == 0` makes the 4x4 block that starts from the learned `const`. Features run in
    `dtype` (channels-last below float32, for the tensor cores); the skip image stays float32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        self.register_buffer("resample_filter", fir_filter())
        if in_channels != 0:
            self.conv0 = ModulatedConv(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = ModulatedConv(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_ws = 2 if in_channels == 0 else 3

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "const",
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert ws.shape[1] == self.num_ws, f"block {self.resolution} reads {self.num_ws} ws, got {tuple(ws.shape)}"
        memory_format = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).to(dtype=dtype, memory_format=memory_format)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x.to(dtype=dtype, memory_format=memory_format), ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, -1]).to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img
