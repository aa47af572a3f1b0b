"""The one way depth is shown and stored for people: a shared scale, one colormap, a colour bar in world units, and
16-bit PNG files that keep world units.

Depth maps shown side by side share one scale (`depth_range` over all of them), so the same colour is the same
distance in every panel of a row. Colours run along matplotlib's perceptually uniform viridis, near yellow and far
dark blue; pixels off the mask are one flat colour (`BACKGROUND`), which viridis never takes.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from regress.sample import MASK_THRESHOLD
from regress.store.files import write_atomic

COLORMAP = "viridis_r"  # reversed: near is the bright end
BACKGROUND = (255, 255, 255)
DEPTH_LABEL = "depth along the ray (world units)"
PERCENTILES = (2.0, 98.0)
PNG_LEVELS = 65535  # 16-bit codes: 0 is "no depth", 1..65535 run from near to far
PNG_NEAR, PNG_FAR = "regress:depth_near", "regress:depth_far"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def as_map(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """A depth map or mask (H, W), float32 on the CPU, from an array or tensor with leading axes of size 1."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    values = np.asarray(values, dtype=np.float32)
    if values.ndim < 2 or any(n != 1 for n in values.shape[:-2]):
        raise ValueError(f"a depth map must be (H, W) (leading axes of size 1 allowed), got shape {values.shape}")
    return values.reshape(values.shape[-2:])


def face_pixels(depth: np.ndarray, mask: np.ndarray | torch.Tensor | None) -> np.ndarray:
    """Where a depth map has a depth: the mask above MASK_THRESHOLD (everywhere without a mask), and finite."""
    inside = np.isfinite(depth)
    return inside if mask is None else inside & (as_map(mask) > MASK_THRESHOLD)


def depth_range(
    depths: Sequence[np.ndarray | torch.Tensor], masks: Sequence[np.ndarray | torch.Tensor | None] | None = None
) -> tuple[float, float]:
    """One (near, far) for several depth maps shown together: the 2nd and 98th percentiles of all their masked values,
    so a few stray pixels do not stretch the scale. Maps without face pixels count with all theirs."""
    masks = [None] * len(depths) if masks is None else masks
    if len(masks) != len(depths):
        raise ValueError(f"{len(depths)} depth maps but {len(masks)} masks")
    values = []
    for depth, mask in zip(depths, masks):
        depth = as_map(depth)
        inside = face_pixels(depth, mask)
        values.append(depth[inside] if inside.any() else depth[np.isfinite(depth)])
    values = np.concatenate(values) if values else np.zeros(0, np.float32)
    if values.size == 0:
        return 0.0, 1.0
    near, far = np.percentile(values, PERCENTILES)
    return float(near), float(max(far, near + 1e-3))


@lru_cache(maxsize=1)
def colormap_table() -> np.ndarray:
    """COLORMAP as 256 uint8 RGB rows, from near (row 0) to far (row 255)."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def colorize_depth(
    depth: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None, near: float, far: float
) -> np.ndarray:
    """Depth (H, W) in world units as uint8 RGB (H, W, 3) on the scale near..far (clamped), BACKGROUND off the mask."""
    depth = as_map(depth)
    position = np.clip((np.nan_to_num(depth, nan=far) - near) / max(far - near, 1e-12), 0.0, 1.0)
    rgb = colormap_table()[np.round(position * 255).astype(np.int64)]
    rgb[~face_pixels(depth, mask)] = BACKGROUND
    return rgb


def add_colorbar(figure, axes, near: float, far: float, label: str = DEPTH_LABEL):
    """A colour bar for `colorize_depth(..., near, far)` drawn in matplotlib `axes`, ticked in world units."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(near, far), cmap=colormaps[COLORMAP])
    bar = figure.colorbar(mappable, cax=axes)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    bar.ax.invert_yaxis()  # near at the top, as a face's nose is nearer than its ears
    return bar


def depth_figure_png(
    panels: Sequence[tuple[str, np.ndarray | torch.Tensor, np.ndarray | torch.Tensor | None]], panel_inches: float = 2.2
) -> bytes:
    """PNG bytes of depth maps side by side, each (caption, depth, mask), on one scale with a colour bar."""
    plt = pyplot()
    near, far = depth_range([depth for _, depth, _ in panels], [mask for _, _, mask in panels])
    figure, axes = plt.subplots(
        1, len(panels) + 1, figsize=(panel_inches * len(panels) + 0.9, panel_inches + 0.3),
        gridspec_kw={"width_ratios": [1.0] * len(panels) + [0.06]},
    )  # fmt: skip
    for ax, (caption, depth, mask) in zip(axes, panels):
        ax.imshow(colorize_depth(depth, mask, near, far))
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    add_colorbar(figure, axes[-1], near, far)
    return figure_png(figure)


def figure_png(figure, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (then closed), for `write_atomic`."""
    plt = pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def write_depth_png(
    path: str | Path, depth: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None
) -> tuple[float, float]:
    """Write `depth_png_bytes` to `path` (atomically); returns its (near, far)."""
    data, near, far = depth_png_bytes(depth, mask)
    write_atomic(Path(path), data)
    return near, far


def depth_png_bytes(depth: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None) -> tuple[bytes, float, float]:
    """Depth (H, W) as a 16-bit grayscale PNG that keeps world units, and its (near, far).

    Code 0 is "no depth" (off the mask or not finite); codes 1..65535 run linearly from near to far, the exact
    minimum and maximum of the masked depth, which the PNG's text chunk records (`regress:depth_near`,
    `regress:depth_far`), so `read_depth_png` gives world units back to within (far - near) / 65534.
    """
    depth = as_map(depth)
    inside = face_pixels(depth, mask)
    near, far = (float(depth[inside].min()), float(depth[inside].max())) if inside.any() else (0.0, 0.0)
    codes = np.zeros(depth.shape, np.uint16)
    step = (far - near) / (PNG_LEVELS - 1) or 1.0
    codes[inside] = 1 + np.round((depth[inside] - near) / step).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_NEAR, repr(near))
    info.add_text(PNG_FAR, repr(far))
    buffer = io.BytesIO()
    Image.fromarray(codes).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue(), near, far


def read_depth_png(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Depth (H, W) float32 in world units and its mask (H, W) bool from a `write_depth_png` file (NaN off the mask)."""
    with Image.open(path) as image:
        text = getattr(image, "text", {})
        if PNG_NEAR not in text or PNG_FAR not in text:
            raise ValueError(f"{path} is not a depth PNG written by regress (no {PNG_NEAR}/{PNG_FAR} text): cannot recover world units")
        codes = np.asarray(image, dtype=np.int64)
    near, far = float(text[PNG_NEAR]), float(text[PNG_FAR])
    mask = codes > 0
    depth = np.where(mask, near + (codes - 1) * ((far - near) / (PNG_LEVELS - 1)), np.nan).astype(np.float32)
    return depth, mask


RELATIVE_LEVELS = 255  # the origin's 8-bit depth PNGs
RELATIVE_NEAR, RELATIVE_FAR = 1.0, 2.0  # relative depth read from them: 1 at an image's nearest pixel, 2 at its farthest


def relative_depth_png_bytes(depth: np.ndarray | torch.Tensor) -> bytes:
    """Depth (H, W) as the origin's 8-bit depth PNG: negated and min-max normalised per image to [-1, 1] (near is +1,
    bright), then to 0..255. Relative depth: the scale and the shift are gone."""
    depth = as_map(depth).astype(np.float64)
    near, far = float(depth.min()), float(depth.max())
    value = 1.0 - 2.0 * (depth - near) / ((far - near) or 1.0)  # -depth min-max normalised to [-1, 1]
    codes = np.round((value + 1.0) * (RELATIVE_LEVELS / 2.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(codes).save(buffer, format="PNG")
    return buffer.getvalue()


def relative_depth(codes: np.ndarray) -> np.ndarray:
    """The relative depth (H, W) float32 of an origin depth PNG's 8-bit codes: RELATIVE_NEAR at code 255 (the nearest)
    to RELATIVE_FAR at code 0, linear between; positive and growing with distance, as world depth is."""
    return (RELATIVE_FAR - (RELATIVE_FAR - RELATIVE_NEAR) * codes.astype(np.float32) / RELATIVE_LEVELS).astype(np.float32)
