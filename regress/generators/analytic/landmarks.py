"""The 68 iBUG / dlib facial landmarks on the analytic head, in world coordinates.

Each landmark gets (x, y) from the head's parameters (jaw line, brows, nose, eyes, mouth, in
iBUG order: point 0 on the subject's right, which is world -x and the image's left in a frontal
view) and its z by tracing along -z onto the surface.
"""

from __future__ import annotations

import math

import torch

from regress.generators.analytic.head import HeadField, Params
from regress.generators.analytic.render import render_surface
from regress.generators.analytic.trace import TraceSettings

EYE_HALF_WIDTH = 0.021
EYE_HALF_HEIGHT = 0.008
TRACE_FROM_Z = 0.7
NEWTON_STEPS = 3


def _jaw(p: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """17 points on a half ellipse from the right temple-ear line, round the chin, to the left."""
    top = p["eye_y"] - 0.035
    height = top - p["chin_y"] - 0.006
    width = 0.92 * p["jaw_w"] * (1 - ((top + 0.06) / p["face_len"]) ** 2).clamp_min(0.2).sqrt()
    angles = [math.pi * (k / 16 - 0.5) for k in range(17)]
    return [(width * math.sin(a), top - height * math.cos(a)) for a in angles]


def _brows(p: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    base = p["eye_y"] + 0.036
    right = [(-0.1 + 0.0175 * k, base + 0.004 * math.sin(math.pi * (k + 0.5) / 5)) for k in range(5)]
    return right + [(-x, y) for x, y in reversed(right)]


def _nose(p: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    top, tip, width = p["eye_y"] - 0.005, p["nose_y"] + 0.004, p["nose_w"]
    bridge = [(torch.zeros_like(top), top + (tip - top) * k / 3) for k in range(4)]
    base = p["nose_y"] - 0.018
    nostrils = [(width * s, base + 0.004 * abs(s)) for s in (-1.3, -0.65, 0.0, 0.65, 1.3)]
    return bridge + nostrils


def _eyes(p: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right eye 36-41 from its outer corner, left eye 42-47 from its inner corner, clockwise in the image."""
    w, h = EYE_HALF_WIDTH, EYE_HALF_HEIGHT
    outline = [(-w, 0.0), (-w / 3, h), (w / 3, h), (w, 0.0), (w / 3, -h), (-w / 3, -h)]
    return [(side * p["eye_x"] + dx, p["eye_y"] + dy) for side in (-1, 1) for dx, dy in outline]


def _mouth(p: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Outer lip 48-59 from the right corner, over the upper lip; inner lip 60-67."""
    w, y, up, down = p["mouth_w"], p["mouth_y"], 1.5 * p["lip"], 1.7 * p["lip"]
    outer_x = (-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6)
    outer_y = (0.0, 0.8, 1.0, 0.85, 1.0, 0.8, 0.0, -0.8, -0.95, -1.0, -0.95, -0.8)
    outer = [(w * sx, y + (up if sy > 0 else down) * sy) for sx, sy in zip(outer_x, outer_y)]
    inner_x = (-0.8, -0.3, 0.0, 0.3, 0.8, 0.3, 0.0, -0.3)
    inner_y = (0.0, 0.15, 0.15, 0.15, 0.0, -0.15, -0.15, -0.15)
    inner = [(w * sx, y + up * sy) for sx, sy in zip(inner_x, inner_y)]
    return outer + inner


def landmarks_3d(p: Params, settings: TraceSettings = TraceSettings(steps=64)) -> torch.Tensor:
    """World positions (N, 68, 3) of the iBUG landmarks on heads of parameters p (name -> (N,)), differentiable."""
    xy = _jaw(p) + _brows(p) + _nose(p) + _eyes(p) + _mouth(p)
    like = p["eye_y"]
    x = torch.stack([torch.as_tensor(px, dtype=like.dtype, device=like.device).expand_as(like) for px, _ in xy], dim=1)
    y = torch.stack([torch.as_tensor(py, dtype=like.dtype, device=like.device).expand_as(like) for _, py in xy], dim=1)
    origins = torch.stack([x, y, torch.full_like(x, TRACE_FROM_Z)], dim=-1).reshape(-1, 3)
    directions = torch.zeros_like(origins)
    directions[:, 2] = -1.0
    samples = torch.arange(len(like), device=like.device).repeat_interleave(len(xy))
    start = torch.zeros(len(origins), dtype=origins.dtype, device=origins.device)
    field = HeadField(p, samples)
    surface = render_surface(field, origins, directions, start, 0.0, 2 * TRACE_FROM_Z, settings)
    depth = surface.trace.depth.index_copy(0, surface.index, surface.depth)
    value = field(origins + depth.unsqueeze(-1) * directions)
    for _ in range(NEWTON_STEPS):  # safeguarded Newton steps put landmarks on the surface, not just near it
        ahead, behind = (field(origins + (depth + h).detach().unsqueeze(-1) * directions) for h in (1e-3, -1e-3))
        slope = ((ahead - behind) / 2e-3).clamp(max=-0.1)
        stepped = depth - (value / slope).clamp(-0.01, 0.01)
        stepped_value = field(origins + stepped.unsqueeze(-1) * directions)
        better = stepped_value.detach().abs() < value.detach().abs()
        depth, value = torch.where(better, stepped, depth), torch.where(better, stepped_value, value)
    return (origins + depth.unsqueeze(-1) * directions).reshape(len(like), len(xy), 3)
