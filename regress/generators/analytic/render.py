"""Rendering a signed distance field: sphere tracing without gradient, then a differentiable last step.

The trace finds, per ray, the depth t_c where |sdf| is smallest (the surface, or the closest
approach of a ray that misses). Around t_c the sdf becomes a NeuS-style logistic opacity
(`mask`), the surface depth gets a Newton step whose gradient is the implicit one,
-(d sdf / d theta) / (d sdf / d t), and shading reads normals from finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Field = Callable[[torch.Tensor], torch.Tensor]  # world points (N, P, 3) -> sdf (N, P)
TETRAHEDRON = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class TraceSettings:
    """Sphere-tracing and soft-surface constants (world units)."""

    steps: int = 28
    relax: float = 0.95
    inside_offset: float = 0.015  # the opacity reads the sdf this far past the surface ...
    softness: float = 0.0025  # ... through sigmoid(-sdf / softness)
    hit_tolerance: float = 0.005  # |sdf| below this at t_c gives the depth its Newton gradient
    normal_step: float = 0.002


@torch.no_grad()
def sphere_trace(field: Field, origins: torch.Tensor, directions: torch.Tensor, t_near: float, t_far: float, settings: TraceSettings) -> torch.Tensor:
    """Depth (N, P) of smallest |sdf| seen along each ray within [t_near, t_far], fixed step count."""
    t = torch.full(origins.shape[:-1], t_near, dtype=origins.dtype, device=origins.device)
    best_t, best_f = t.clone(), torch.full_like(t, float("inf"))
    for _ in range(settings.steps):
        f = field(origins + t.unsqueeze(-1) * directions)
        better = f.abs() < best_f
        best_t = torch.where(better, t, best_t)
        best_f = torch.where(better, f.abs(), best_f)
        t = (t + settings.relax * f).clamp(t_near, t_far)
    return best_t


@dataclass
class Surface:
    """Differentiable per-ray results: opacity, surface depth, surface points and unit normals."""

    mask: torch.Tensor  # (N, P)
    depth: torch.Tensor  # (N, P), surface depth (meaningful where mask > 0)
    points: torch.Tensor  # (N, P, 3)
    normals: torch.Tensor  # (N, P, 3)


def render_surface(field: Field, origins: torch.Tensor, directions: torch.Tensor, t_near: float, t_far: float, settings: TraceSettings) -> Surface:
    """Trace, then evaluate the field with gradient at the found depths (see module docstring)."""
    t_c = sphere_trace(field, origins, directions, t_near, t_far, settings)
    t_in = t_c + settings.inside_offset
    f_c = field(origins + t_c.unsqueeze(-1) * directions)
    f_in = field(origins + t_in.unsqueeze(-1) * directions)
    mask = torch.sigmoid(-f_in / settings.softness)
    slope = ((f_in - f_c).detach() / settings.inside_offset).clamp(max=-0.1)
    hit = (f_c.detach().abs() < settings.hit_tolerance).to(f_c.dtype)
    depth = (t_c - hit * f_c / slope).clamp(t_near, t_far)
    points = origins + depth.unsqueeze(-1) * directions
    offsets = torch.tensor(TETRAHEDRON, dtype=points.dtype, device=points.device)
    gradient = sum(k * field(points + settings.normal_step * k).unsqueeze(-1) for k in offsets)
    normals = torch.nn.functional.normalize(gradient, dim=-1)
    return Surface(mask=mask, depth=depth, points=points, normals=normals)


def lambert(albedo: torch.Tensor, normals: torch.Tensor, light: torch.Tensor, ambient: torch.Tensor, diffuse: torch.Tensor) -> torch.Tensor:
    """Lambertian + ambient shading (N, P, 3) for unit light directions (N, 3) and strengths (N, 1)."""
    cosine = (normals * light[:, None, :]).sum(-1, keepdim=True).clamp_min(0)
    return (albedo * (ambient[:, :, None] + diffuse[:, :, None] * cosine)).clamp(0, 1)
