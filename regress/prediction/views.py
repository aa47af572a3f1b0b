"""Novel views as video frames: each frame a latent seen by a camera, its render beside its depth on one fixed scale."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from regress.generators import Generator
from regress.models.previews import colormap_depth
from regress.sample import image_to_uint8


@torch.no_grad()
def view_frames(generator: Generator, w: torch.Tensor, cameras: torch.Tensor, near: float, far: float, chunk: int = 8) -> np.ndarray:
    """Frames (F, S, 2S, 3) uint8 of latents w (F, num_ws, w_dim) from cameras (F, 25): render | depth (Turbo, near red,
    far blue, on the one scale [near, far] in world units, so depth can be compared across frames)."""
    frames = []
    for w_part, camera_part in zip(w.split(chunk), cameras.split(chunk)):
        out = generator.synthesis(w_part, camera_part.to(w.device))
        side = out["image"].shape[-1]
        bound = torch.tensor(near, device=w.device), torch.tensor(far, device=w.device)
        colour = colormap_depth(out["depth"].float(), out["mask"].float(), *bound)
        colour = F.interpolate(colour.float(), size=side, mode="bilinear", align_corners=False).round().to(torch.uint8)
        frames.append(torch.cat([image_to_uint8(out["image"]), colour], dim=3).permute(0, 2, 3, 1).cpu())
    return torch.cat(frames).numpy()
