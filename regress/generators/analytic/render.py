"""Rendering a signed distance field: sphere tracing without gradient, then a differentiable last step.

The trace finds, per ray, the depth t_c where |sdf| is smallest (the surface, or the closest
approach of a ray that misses); rays that finish early leave the working set. For rays that
come near the surface, finite differences give the sdf gradient (normals) and its slope along
the ray; opacity is NeuS's logistic one between far outside and a point `inside_offset` past
t_c, with the sdf there extrapolated linearly (exact for thin parts too); the depth gets a Newton
step whose gradient is the implicit one, -(d sdf / d theta) / (d sdf / d t). All of it is
differentiable w.r.t. the field's parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from regress.camera import camera_rays

TETRAHEDRON = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


class Field(Protocol):
    """A signed distance field over M points: (M, 3) -> (M,), and its restriction to a subset."""

    def __call__(self, points: torch.Tensor) -> torch.Tensor: ...

    def take(self, index: torch.Tensor) -> "Field": ...


@dataclass(frozen=True)
class TraceSettings:
    """Sphere-tracing and soft-surface constants (world units)."""

    steps: int = 24
    cone_steps: int = 16
    cone_block: int = 4  # one cone per block x block pixels finds where their rays may start
    relax: float = 0.95
    max_overstep: float = 4.0
    min_step: float = 0.002  # grazing rays keep moving; overshoot is walked back by negative sdf
    converged: float = 1e-3  # the Newton step of `render_surface` refines the rest
    near_surface: float = 0.02  # rays whose closest |sdf| stays above this are background (mask < 4e-4)
    cone_stop: float = 0.003
    opaque: float = 0.998  # rays with less opacity than this see a second surface ...
    behind: float = 0.03  # ... traced from this far behind the first
    inside_offset: float = 0.02  # the opacity reads the (extrapolated) sdf this far past t_c ...
    softness: float = 0.0015  # ... through sigmoid(-sdf / softness)
    hit_tolerance: float = 0.005  # |sdf(t_c)| below this gives the depth its Newton step
    normal_step: float = 0.0015


def _compact(live: torch.Tensor) -> torch.Tensor | None:
    """Indices of the `live` rays, or None while too few have finished to be worth a copy.

    Finished rays that stay in the working set are frozen by `live`, so results never depend on
    when (and so on the batch in which) a ray is dropped.
    """
    if live.sum() >= 0.92 * len(live):
        return None
    return live.nonzero().squeeze(1)


@torch.no_grad()
def cone_trace(
    field: Field, origins: torch.Tensor, directions: torch.Tensor, spread: torch.Tensor,
    t_near: float, t_far: float, settings: TraceSettings,
) -> torch.Tensor:
    """Per cone (M,), a depth its rays may start tracing from; inf if no ray in it comes near the surface.

    A cone has its apex at the ray origin, its axis along the ray and radius t * spread at depth t;
    while sdf(p(t)) - t * spread = gap > 0 the cone is empty up to p(t), and the axis may advance by
    gap / (1 + spread). Cones stop `cone_stop` from the surface; cones that pass by start their rays
    where they first came within `near_surface`, so that the rays find their closest approach.
    """  # fmt: skip
    m = origins.shape[0]
    result = torch.full((m,), float("inf"), dtype=origins.dtype, device=origins.device)
    rays = torch.arange(m, device=origins.device)
    t = torch.full_like(result, t_near)
    band = torch.full_like(result, float("inf"))
    live = torch.ones_like(result, dtype=torch.bool)
    for _ in range(settings.cone_steps):
        gap = field(origins + t.unsqueeze(-1) * directions) - t * spread
        band = torch.where(live & band.isinf() & (gap < settings.near_surface), t, band)
        stopped = gap <= settings.cone_stop
        t = torch.where(live, (t + settings.relax * gap / (1 + spread)).clamp(max=t_far), t)
        done = live & (stopped | (t >= t_far))
        result[rays[done]] = torch.where(stopped, t, band)[done]
        live = live & ~done
        keep = _compact(live)
        if keep is not None:
            rays, t, band, live = rays[keep], t[keep], band[keep], live[keep]
            origins, directions, spread, field = origins[keep], directions[keep], spread[keep], field.take(keep)
        if len(rays) == 0:
            break
    result[rays[live]] = torch.minimum(band, t)[live]
    return result


@dataclass
class Trace:
    """Per ray (M,): the depth of the smallest |sdf| seen, that |sdf| (inf if never traced), and
    whether the ray left through t_far (so nothing lies behind its closest approach)."""

    depth: torch.Tensor
    closest: torch.Tensor
    exited: torch.Tensor


@torch.no_grad()
def sphere_trace(
    field: Field, origins: torch.Tensor, directions: torch.Tensor, start: torch.Tensor, t_far: float,
    settings: TraceSettings,
) -> Trace:
    """Sphere tracing from `start` (M,) to t_far with secant over-stepping, rays dropped as they finish.

    Each step is f times the secant estimate of 1 / |d sdf / d t| (clamped to [1, max_overstep]):
    sphere tracing's safe step near a face-on surface, and several times it on oblique ones.
    """
    result = Trace(start.clamp(max=t_far).clone(), torch.full_like(start, float("inf")), start >= t_far)
    rays = (start < t_far).nonzero().squeeze(1)
    t, origins, directions, field = result.depth[rays], origins[rays], directions[rays], field.take(rays)
    t_near, best_t, best_f = t.clone(), t.clone(), torch.full_like(t, float("inf"))
    previous_t, previous_f = t.clone(), torch.full_like(t, float("nan"))
    live = torch.ones_like(t, dtype=torch.bool)

    def finish(done: torch.Tensor) -> None:
        result.depth[rays[done]], result.closest[rays[done]] = best_t[done], best_f[done]
        result.exited[rays[done]] = t[done] >= t_far

    for _ in range(settings.steps):
        f = field(origins + t.unsqueeze(-1) * directions)
        size = f.abs()
        better = live & (size < best_f)
        best_t, best_f = torch.where(better, t, best_t), torch.where(better, size, best_f)
        slope = (f - previous_f) / (t - previous_t)
        over = torch.where(slope < -0.05, -1 / slope, 1.0).clamp(1.0, settings.max_overstep)
        step = settings.relax * over * f
        moved = torch.maximum(t + torch.where(f > 0, step.clamp_min(settings.min_step), step), t_near).clamp(max=t_far)
        previous_t, previous_f = t, f
        live = live & (size > settings.converged) & (moved != t)  # rays stuck inside at their start stop
        t = torch.where(live, moved, t)
        live = live & (t < t_far)
        keep = _compact(live)
        if keep is not None:
            finish((~live).nonzero().squeeze(1))
            rays, t, t_near, best_t, best_f, live = rays[keep], t[keep], t_near[keep], best_t[keep], best_f[keep], live[keep]
            previous_t, previous_f = previous_t[keep], previous_f[keep]
            origins, directions, field = origins[keep], directions[keep], field.take(keep)
        if len(rays) == 0:
            break
    finish(torch.arange(len(rays), device=rays.device))
    return result


def ray_starts(
    make_field, camera: torch.Tensor, resolution: int, t_near: float, t_far: float, settings: TraceSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays (N*R*R, 3) of cameras (N, 25) at R x R, row-major per sample, and where tracing each may start.

    With R a multiple of `cone_block`, one cone per pixel block skips the empty space in front of
    the surface and whole blocks of background; `make_field(samples)` builds the field for rays
    belonging to those samples.
    """
    n, block = camera.shape[0], settings.cone_block
    origins, directions = camera_rays(camera, resolution)
    if block <= 1 or resolution % block:
        start = torch.full((n * resolution * resolution,), t_near, dtype=origins.dtype, device=origins.device)
        return origins.reshape(-1, 3), directions.reshape(-1, 3), start
    coarse = resolution // block
    fine = directions.reshape(n, coarse, block, coarse, block, 3)
    axis = torch.nn.functional.normalize(fine.mean(dim=(2, 4), keepdim=True), dim=-1)
    cone_origins, cone_directions = origins[:, :: block * block], axis.reshape(n, -1, 3)
    cosine = (fine * axis).sum(-1).amin(dim=(1, 2, 3, 4)).clamp(max=1.0)
    spread = 1.05 * (1 - cosine.square()).sqrt() / cosine
    samples = torch.arange(n, device=origins.device).repeat_interleave(coarse * coarse)
    start = cone_trace(
        make_field(samples), cone_origins.reshape(-1, 3), cone_directions.reshape(-1, 3), spread[samples],
        t_near, t_far, settings,
    )  # fmt: skip
    start = start.reshape(n, coarse, 1, coarse, 1).expand(n, coarse, block, coarse, block).reshape(-1)
    return origins.reshape(-1, 3), directions.reshape(-1, 3), start


@dataclass
class Surface:
    """Differentiable results for the rays that come near the surface (`index` into all rays)."""

    index: torch.Tensor  # (K,)
    field: Field  # the field restricted to those rays
    mask: torch.Tensor  # (K,) opacity
    depth: torch.Tensor  # (K,) surface depth (meaningful where mask > 0)
    points: torch.Tensor  # (K, 3) at the surface depth
    normals: torch.Tensor  # (K, 3) at the traced depth
    trace: Trace  # of every ray, no gradient


def render_surface(
    field: Field, origins: torch.Tensor, directions: torch.Tensor, start: torch.Tensor, t_near: float, t_far: float,
    settings: TraceSettings,
) -> Surface:
    """Trace the rays (M, 3) from `start` (M,), then evaluate the field with gradient near the surface."""
    trace = sphere_trace(field, origins, directions, start, t_far, settings)
    index = (trace.closest < settings.near_surface).nonzero().squeeze(1)
    field = field.take(index)
    origins, directions, t_c = origins[index], directions[index], trace.depth[index]
    traced = origins + t_c.unsqueeze(-1) * directions
    offsets = torch.tensor(TETRAHEDRON, dtype=traced.dtype, device=traced.device)
    around = [field(traced + settings.normal_step * k) for k in offsets]
    f_c = sum(around) / 4  # the tetrahedron's mean is f at its centre up to O(normal_step^2)
    gradient = sum(k * f.unsqueeze(-1) for k, f in zip(offsets, around))
    normals = torch.nn.functional.normalize(gradient, dim=-1)
    along = (gradient * directions).sum(-1) / (4 * settings.normal_step)  # d sdf / d t
    inside = f_c + settings.inside_offset * along
    opaque_level = -settings.softness * math.log(settings.opaque / (1 - settings.opaque))
    oblique = (inside.detach() > opaque_level).nonzero().squeeze(1)
    if len(oblique):  # grazing rays may run along the surface: probe the sdf itself further in
        probes = t_c[oblique, None] + settings.inside_offset * torch.tensor([1.5, 3.0], dtype=t_c.dtype, device=t_c.device)
        points = origins[oblique, None] + probes.unsqueeze(-1) * directions[oblique, None]
        probed = field.take(oblique.repeat_interleave(2))(points.reshape(-1, 3)).reshape(-1, 2).amin(dim=1)
        inside = inside.index_copy(0, oblique, torch.minimum(inside[oblique], probed))
    mask = torch.sigmoid(-inside / settings.softness)
    hit = (f_c.detach().abs() < settings.hit_tolerance).to(f_c.dtype)
    depth = (t_c - hit * f_c / along.detach().clamp(max=-0.1)).clamp(t_near, t_far)
    points = origins + depth.unsqueeze(-1) * directions
    return Surface(index, field, mask, depth, points, normals, trace)


Shader = Callable[[Surface], torch.Tensor]  # a surface's K rays -> colours (K, 3)


@dataclass
class Layers:
    """Composited results for M rays: colour (M, 3), expected depth (M,), accumulated opacity (M,)."""

    colour: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor


def render_layers(
    field: Field, origins: torch.Tensor, directions: torch.Tensor, start: torch.Tensor, background: torch.Tensor,
    t_near: float, t_far: float, settings: TraceSettings, shade: Shader, layers: int = 2,
) -> Layers:
    """Front-to-back compositing of up to `layers` surfaces per ray over `background` (M, 3) at t_far.

    A ray that only partly covers its first surface (a silhouette, or the edge of the nose in front
    of the cheek) is traced again from `behind` past it, so what shows through is the surface
    behind it, not the background.
    """  # fmt: skip
    surface = render_surface(field, origins, directions, start, t_near, t_far, settings)
    index, mask = surface.index, surface.mask
    behind_colour, behind_depth = background[index], torch.full_like(mask, t_far)
    behind_alpha = torch.zeros_like(mask)
    partial = ((mask.detach() < settings.opaque) & ~surface.trace.exited[index]).nonzero().squeeze(1)
    if layers > 1 and len(partial):
        rays = index[partial]
        deeper = render_layers(
            field.take(rays), origins[rays], directions[rays], surface.trace.depth[rays] + settings.behind,
            background[rays], t_near, t_far, settings, shade, layers - 1,
        )  # fmt: skip
        behind_colour = behind_colour.index_copy(0, partial, deeper.colour)
        behind_depth = behind_depth.index_copy(0, partial, deeper.depth)
        behind_alpha = behind_alpha.index_copy(0, partial, deeper.alpha)
    cover = mask.unsqueeze(-1)
    colour = cover * shade(surface) + (1 - cover) * behind_colour
    depth = mask * surface.depth + (1 - mask) * behind_depth
    alpha = mask + (1 - mask) * behind_alpha
    far = torch.full_like(start, t_far)
    return Layers(
        colour=background.index_copy(0, index, colour),
        depth=far.index_copy(0, index, depth),
        alpha=torch.zeros_like(far).index_copy(0, index, alpha),
    )


def lambert(
    albedo: torch.Tensor, normals: torch.Tensor, light: torch.Tensor, ambient: torch.Tensor, diffuse: torch.Tensor
) -> torch.Tensor:
    """Lambertian + ambient shading (K, 3) for unit light directions (K, 3) and strengths (K,)."""
    cosine = (normals * light).sum(-1, keepdim=True).clamp_min(0)
    return (albedo * (ambient.unsqueeze(-1) + diffuse.unsqueeze(-1) * cosine)).clamp(0, 1)
