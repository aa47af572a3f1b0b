"""Novel views as video frames: each frame a latent seen by a camera, its render beside its depth on one fixed scale."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from regress.generators import Generator
from regress.gallery.depth import colorize_depth
from regress.sample import image_to_uint8


@torch.no_grad()
def view_frames(generator: Generator, w: torch.Tensor, cameras: torch.Tensor, near: float, far: float, chunk: int = 8) -> np.ndarray:
    """Frames (F, S, 2S, 3) uint8 of latents w (F, num_ws, w_dim) from cameras (F, 25): render | depth (gallery.depth's
    colours on the one scale [near, far] in world units, so depth can be compared across frames)."""
    frames = []
    for w_part, camera_part in zip(w.split(chunk), cameras.split(chunk)):
        out = generator.synthesis(w_part, camera_part.to(w.device))
        side = out["image"].shape[-1]
        depth, mask = out["depth"].float().cpu(), out["mask"].float().cpu()
        colour = torch.from_numpy(np.stack([colorize_depth(d, m, near, far) for d, m in zip(depth, mask)])).permute(0, 3, 1, 2)
        colour = F.interpolate(colour.float(), size=side, mode="bilinear", align_corners=False).round().to(torch.uint8)
        frames.append(torch.cat([image_to_uint8(out["image"]).cpu(), colour], dim=3).permute(0, 2, 3, 1))
    return torch.cat(frames).numpy()
