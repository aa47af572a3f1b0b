"""Semantic head parameters and how a latent w (num_ws, w_dim) sets them.

Rows of w are split into four groups, like the layers of a StyleGAN W+ code: skull, face,
colour and scene. Each parameter is a sigmoid of a fixed unit projection of its group's mean row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUPS = ("skull", "face", "colour", "scene")
SHAPE_GROUPS = ("skull", "face")  # the groups the geometry reads; colour and scene rows leave depth alone


@dataclass(frozen=True)
class Param:
    """One semantic parameter: its row group and its range (world units, colours in 0..1)."""

    name: str
    group: str
    low: float
    high: float


PARAMS: tuple[Param, ...] = (
    Param("skull_rx", "skull", 0.175, 0.205),
    Param("skull_ry", "skull", 0.21, 0.245),
    Param("skull_rz", "skull", 0.21, 0.245),
    Param("jaw_w", "skull", 0.12, 0.15),
    Param("face_len", "skull", 0.13, 0.165),
    Param("chin_y", "skull", -0.225, -0.19),
    Param("chin_z", "skull", 0.25, 0.3),
    Param("ear_size", "skull", 0.04, 0.06),
    Param("neck_r", "skull", 0.095, 0.12),
    Param("hair_volume", "skull", 0.0, 0.03),
    Param("hairline", "skull", 0.1, 0.17),
    Param("nose_z", "face", 0.385, 0.415),
    Param("nose_y", "face", -0.065, -0.035),
    Param("nose_w", "face", 0.015, 0.025),
    Param("eye_x", "face", 0.06, 0.074),
    Param("eye_y", "face", 0.025, 0.05),
    Param("socket_r", "face", 0.03, 0.038),
    Param("brow", "face", 0.012, 0.024),
    Param("cheek_r", "face", 0.05, 0.068),
    Param("mouth_y", "face", -0.135, -0.11),
    Param("mouth_w", "face", 0.036, 0.054),
    Param("lip", "face", 0.008, 0.015),
    Param("skin_tone", "colour", 0.0, 1.0),
    Param("skin_red", "colour", 0.0, 1.0),
    Param("hair_tone", "colour", 0.0, 1.0),
    Param("hair_red", "colour", 0.0, 1.0),
    Param("iris_blue", "colour", 0.0, 1.0),
    Param("iris_green", "colour", 0.0, 1.0),
    Param("lip_red", "colour", 0.0, 1.0),
    Param("brow_dark", "colour", 0.0, 1.0),
    Param("light_azimuth", "scene", -0.9, 0.9),
    Param("light_elevation", "scene", -0.1, 0.8),
    Param("ambient", "scene", 0.25, 0.5),
    Param("diffuse", "scene", 0.5, 0.85),
    Param("bg_r", "scene", 0.1, 0.9),
    Param("bg_g", "scene", 0.1, 0.9),
    Param("bg_b", "scene", 0.1, 0.9),
    Param("bg_gradient", "scene", -0.3, 0.3),
)


def group_rows(num_ws: int) -> dict[str, range]:
    """The rows of w each group reads: four consecutive, near-equal blocks of the num_ws rows."""
    if num_ws < len(GROUPS):
        raise ValueError(f"the analytic generator needs num_ws >= {len(GROUPS)}, got {num_ws}")
    bounds = [k * num_ws // len(GROUPS) for k in range(len(GROUPS) + 1)]
    return {g: range(bounds[k], bounds[k + 1]) for k, g in enumerate(GROUPS)}


def readout_matrices(w_dim: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fixed random unit-column projections (w_dim, params in group), one per group."""
    matrices = {}
    for group in GROUPS:
        count = sum(p.group == group for p in PARAMS)
        matrix = torch.randn(w_dim, count, generator=generator, dtype=torch.float64)
        matrices[group] = (matrix / matrix.norm(dim=0, keepdim=True)).float()
    return matrices


def read_params(
    w: torch.Tensor, w_avg: torch.Tensor, readout: dict[str, torch.Tensor], gain: float
) -> dict[str, torch.Tensor]:
    """Semantic parameters (name -> (N,)) of latents w (N, num_ws, w_dim); w_avg gives mid-range values."""
    rows = group_rows(w.shape[1])
    params: dict[str, torch.Tensor] = {}
    for group in GROUPS:
        index = list(rows[group])
        centred = w[:, index].mean(dim=1) - w_avg
        unit = torch.sigmoid(gain * centred @ readout[group])
        members = [p for p in PARAMS if p.group == group]
        for k, p in enumerate(members):
            params[p.name] = p.low + (p.high - p.low) * unit[:, k]
    return params
