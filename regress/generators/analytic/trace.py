"""Finding surfaces along rays, without gradient: cone tracing per pixel block, then sphere tracing.

Cones skip the empty space in front of the head (and whole blocks of background) for the rays
inside them; sphere tracing with secant over-stepping then finds, per ray, the depth where |sdf|
is smallest: the surface, or the closest approach of a ray that misses. Rays that finish leave
the working set; results never depend on the batch a ray is traced in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from regress.camera import camera_rays


class DistanceField(Protocol):
    """A signed distance field over M points: (M, 3) -> (M,), and its restriction to a subset."""

    def __call__(self, points: torch.Tensor) -> torch.Tensor: ...

    def take(self, index: torch.Tensor) -> "DistanceField": ...


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
    gradient_blur: float = 0.0  # gradients see edges, normals and textures this wide (render.py); 0: as drawn


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
    field: DistanceField, origins: torch.Tensor, directions: torch.Tensor, spread: torch.Tensor,
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
    whether the ray left through t_far (so nothing lies behind its closest approach); and where it passed closest by a
    surface on its way (a positive local minimum of the sdf it sampled, before a nearer one: e.g. under the nose's tip,
    on its way to the lip), and that sdf (inf if none)."""

    depth: torch.Tensor
    closest: torch.Tensor
    exited: torch.Tensor
    pass_depth: torch.Tensor
    pass_closest: torch.Tensor


@torch.no_grad()
def sphere_trace(
    field: DistanceField, origins: torch.Tensor, directions: torch.Tensor, start: torch.Tensor, t_far: float,
    settings: TraceSettings,
) -> Trace:
    """Sphere tracing from `start` (M,) to t_far with secant over-stepping, rays dropped as they finish.

    Each step is f times the secant estimate of 1 / |d sdf / d t| (clamped to [1, max_overstep]):
    sphere tracing's safe step near a face-on surface, and several times it on oblique ones.
    """
    begin, inf = start.clamp(max=t_far), torch.full_like(start, float("inf"))
    result = Trace(begin.clone(), inf.clone(), start >= t_far, begin.clone(), inf.clone())
    rays = (start < t_far).nonzero().squeeze(1)
    t, origins, directions, field = result.depth[rays], origins[rays], directions[rays], field.take(rays)
    t_near, best_t, best_f = t.clone(), t.clone(), torch.full_like(t, float("inf"))
    pass_t, pass_f = t.clone(), torch.full_like(t, float("inf"))
    previous_t, previous_f = t.clone(), torch.full_like(t, float("nan"))
    live = torch.ones_like(t, dtype=torch.bool)

    def finish(done: torch.Tensor) -> None:
        result.depth[rays[done]], result.closest[rays[done]] = best_t[done], best_f[done]
        result.exited[rays[done]] = t[done] >= t_far
        result.pass_depth[rays[done]], result.pass_closest[rays[done]] = pass_t[done], pass_f[done]

    for _ in range(settings.steps):
        f = field(origins + t.unsqueeze(-1) * directions)
        size = f.abs()
        better = live & (size < best_f)
        best_t, best_f = torch.where(better, t, best_t), torch.where(better, size, best_f)
        passed = live & (previous_f > 0) & (f > previous_f) & (previous_f < pass_f)  # the sdf rose again: a pass
        pass_t, pass_f = torch.where(passed, previous_t, pass_t), torch.where(passed, previous_f, pass_f)
        slope = (f - previous_f) / (t - previous_t)
        over = torch.where(slope < -0.05, -1 / slope, 1.0).clamp(1.0, settings.max_overstep)
        step = settings.relax * over * f
        moved = t + torch.where(f > 0, step.clamp_min(settings.min_step), step)
        moved = torch.maximum(moved, t_near).clamp(max=t_far)
        previous_t, previous_f = t, f
        live = live & (size > settings.converged) & (moved != t)  # rays stuck inside at their start stop
        t = torch.where(live, moved, t)
        live = live & (t < t_far)
        keep = _compact(live)
        if keep is not None:
            finish((~live).nonzero().squeeze(1))
            rays, t, t_near, live = rays[keep], t[keep], t_near[keep], live[keep]
            best_t, best_f, pass_t, pass_f = best_t[keep], best_f[keep], pass_t[keep], pass_f[keep]
            previous_t, previous_f = previous_t[keep], previous_f[keep]
            origins, directions, field = origins[keep], directions[keep], field.take(keep)
        if len(rays) == 0:
            break
    finish(torch.arange(len(rays), device=rays.device))
    return result


def ray_starts(
    make_field: Callable[[torch.Tensor], DistanceField], camera: torch.Tensor, resolution: int,
    t_near: float, t_far: float, settings: TraceSettings, shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays (N*R*R, 3) of cameras (N, 25) at R x R, row-major per sample, and where tracing each may start.

    With R a multiple of `cone_block`, one cone per pixel block skips the empty space in front of
    the surface and whole blocks of background; `make_field(samples)` builds the field for rays
    belonging to those samples. `shift` (N,) moves each camera's depth window [t_near, t_far] by
    that much: its rays' origins move along them by it, so depths along them read `shift` less.
    """
    n, block = camera.shape[0], settings.cone_block
    origins, directions = camera_rays(camera, resolution)
    shift = torch.zeros(n, dtype=origins.dtype, device=origins.device) if shift is None else shift.to(origins)
    if block <= 1 or resolution % block:
        start = torch.full((n * resolution * resolution,), t_near, dtype=origins.dtype, device=origins.device)
        origins = origins + shift[:, None, None] * directions
        return origins.reshape(-1, 3), directions.reshape(-1, 3), start
    coarse = resolution // block
    fine = directions.reshape(n, coarse, block, coarse, block, 3)
    axis = torch.nn.functional.normalize(fine.mean(dim=(2, 4), keepdim=True), dim=-1)
    cone_directions = axis.reshape(n, -1, 3)
    cone_origins = origins[:, :: block * block] + shift[:, None, None] * cone_directions
    cosine = (fine * axis).sum(-1).amin(dim=(1, 2, 3, 4)).clamp(max=1.0)
    # a cone whose apex moved forward by shift > 0 must widen to hold the rays' cone at every depth past t_near
    spread = 1.05 * (1 - cosine.square()).sqrt() / cosine * (1 + shift.clamp(min=0) / t_near)
    origins = origins + shift[:, None, None] * directions
    samples = torch.arange(n, device=origins.device).repeat_interleave(coarse * coarse)
    start = cone_trace(
        make_field(samples), cone_origins.reshape(-1, 3), cone_directions.reshape(-1, 3), spread[samples],
        t_near, t_far, settings,
    )  # fmt: skip
    start = start.reshape(n, coarse, 1, coarse, 1).expand(n, coarse, block, coarse, block).reshape(-1)
    return origins.reshape(-1, 3), directions.reshape(-1, 3), start


