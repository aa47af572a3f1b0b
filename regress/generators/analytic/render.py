"""Rendering a signed distance field differentiably, from where `trace` found its surface.

For rays that come near the surface, finite differences give the sdf gradient (normals) and its
slope along the ray. Opacity is NeuS's logistic one between far outside and a point
`inside_offset` past the surface, the sdf there extrapolated from the slope (right for thin
parts) or, for grazing rays, probed further in (right for rays that run along the surface). The
depth gets a Newton step whose gradient is the implicit one, -(d sdf / d theta) / (d sdf / d t).
Partly covered rays composite a second surface behind the first. All of it is differentiable
w.r.t. the field's parameters. Edges narrower than a pixel give gradients that are point samples
of spikes; with `gradient_blur` and gradients on, the same drawing carries the gradients of one
whose edges, normals and layers are about a pixel wide (`blur_gradient`), so a camera can be fitted; that
includes the edge of a surface a ray passes close by in front of the one it hits (`Trace.pass_closest`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from regress.generators.analytic.trace import DistanceField, Trace, TraceSettings, sphere_trace

TETRAHEDRON = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


@dataclass
class Surface:
    """Differentiable results for the rays that come near the surface (`index` into all rays)."""

    index: torch.Tensor  # (K,)
    field: DistanceField  # the field restricted to those rays
    mask: torch.Tensor  # (K,) opacity
    depth: torch.Tensor  # (K,) surface depth (meaningful where mask > 0)
    points: torch.Tensor  # (K, 3) at the surface depth
    normals: torch.Tensor  # (K, 3) at the traced depth
    trace: Trace  # of every ray, no gradient
    edge: torch.Tensor | None = None  # (K,) opacity of pixel-wide edges, for gradients (TraceSettings.gradient_blur)
    front: "Surface | None" = None  # for gradients: surfaces some of the K rays (its `index`) pass close by on their way


def _tetrahedron(field: DistanceField, points: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The field at points (K, 3), as its mean over the tetrahedron `offsets` (4, 3) around them (f at the centre up
    to O(h^2)), and sum of k f(x + k) over its corners (K, 3): 4 h^2 times the field's gradient."""
    a, b, c, d = (field(points + k) for k in offsets)
    return (a + b + c + d) / 4, torch.stack([a - b - c + d, -a - b + c + d, -a + b - c + d], dim=-1)


def blur_gradient(value: torch.Tensor, blurred: torch.Tensor) -> torch.Tensor:
    """`value` as it is, with the gradient of `blurred` (its anti-aliased version): the drawing stays, gradients
    see edges wherever they lie in a pixel (a sharp edge narrower than a pixel only moves the pixels it crosses)."""
    return value.detach() + (blurred - blurred.detach())


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v * (v.square().sum(-1, keepdim=True) + 1e-20).rsqrt()


def render_surface(
    field: DistanceField, origins: torch.Tensor, directions: torch.Tensor, start: torch.Tensor, t_near: float, t_far: float,
    settings: TraceSettings,
) -> Surface:
    """Trace the rays (M, 3) from `start` (M,), then evaluate the field with gradient near the surface (module doc)."""
    trace = sphere_trace(field, origins, directions, start, t_far, settings)
    index = (trace.closest < settings.near_surface).nonzero().squeeze(1)
    field = field.take(index)
    origins, directions, t_c = origins[index], directions[index], trace.depth[index]
    traced = origins + t_c.unsqueeze(-1) * directions
    offsets = torch.tensor(TETRAHEDRON, dtype=traced.dtype, device=traced.device)
    f_c, gradient = _tetrahedron(field, traced, settings.normal_step * offsets)
    normals = _unit(gradient)
    along = (gradient * directions).sum(-1) / (4 * settings.normal_step)  # d sdf / d t
    inside = f_c + settings.inside_offset * along
    opaque_level = -settings.softness * math.log(settings.opaque / (1 - settings.opaque))
    oblique = (inside.detach() > opaque_level).nonzero().squeeze(1)
    if len(oblique):  # grazing rays may run along the surface: probe the sdf itself further in
        scale = torch.tensor([1.5, 3.0], dtype=t_c.dtype, device=t_c.device)
        probes = t_c[oblique, None] + settings.inside_offset * scale
        points = origins[oblique, None] + probes.unsqueeze(-1) * directions[oblique, None]
        probed = field.take(oblique.repeat_interleave(2))(points.reshape(-1, 3)).reshape(-1, 2).amin(dim=1)
        inside = inside.index_copy(0, oblique, torch.minimum(inside[oblique], probed))
    mask = torch.sigmoid(-inside / settings.softness)
    hit = (f_c.detach().abs() < settings.hit_tolerance).to(f_c.dtype)
    depth = (t_c - hit * f_c / along.detach().clamp(max=-0.1)).clamp(t_near, t_far)
    points = origins + depth.unsqueeze(-1) * directions
    edge = front = None
    if settings.gradient_blur > 0 and torch.is_grad_enabled():  # for gradients only (their values are not drawn):
        # how deep a ray runs inside (< 0) or how close it passes (> 0), read from the surface point, which (unlike
        # t_c) stays on the surface as the ray moves: a pixel-wide edge's opacity
        along_ray = torch.tensor([0.0, 1.5, 3.0], dtype=t_c.dtype, device=t_c.device) * settings.inside_offset
        probes = points[:, None] + along_ray[:, None] * directions[:, None]
        probed = field.take(torch.arange(len(index), device=index.device).repeat_interleave(3))(probes.reshape(-1, 3))
        edge = torch.sigmoid(-probed.reshape(-1, 3).amin(dim=1) / settings.gradient_blur)
        # normals averaged over a pixel's footprint around the surface point
        footprint = settings.gradient_blur * offsets
        normals = blur_gradient(normals, _unit(_tetrahedron(field, points, footprint)[1]))
        front = _passed_by(field, origins, directions, t_c, trace.pass_depth[index], trace.pass_closest[index], footprint, settings, trace)
    return Surface(index, field, mask, depth, points, normals, trace, edge, front)


PASS_WIDTHS = 4  # a surface passed closer than this many `gradient_blur` widths shows a pixel-wide edge to gradients


def _passed_by(
    field: DistanceField, origins: torch.Tensor, directions: torch.Tensor, t_c: torch.Tensor, pass_depth: torch.Tensor,
    pass_closest: torch.Tensor, footprint: torch.Tensor, settings: TraceSettings, trace: Trace,
) -> Surface | None:
    """The surfaces that rays (K,) with a surface at t_c pass close by in front of it (`Trace.pass_depth`), as a pixel-wide
    edge for gradients (`edge`: opacity of the sdf there, `points`: the nearest surface point): the gradient of an
    occlusion edge inside the silhouette (the nose's tip over the lip), which the ray that misses records only behind.
    `footprint`: the tetrahedron's offsets a pixel wide (TETRAHEDRON times `gradient_blur`)."""
    passing = ((pass_closest < PASS_WIDTHS * settings.gradient_blur) & (pass_depth + settings.behind < t_c)).nonzero().squeeze(1)
    if not len(passing):
        return None
    field, depth = field.take(passing), pass_depth[passing]
    near = origins[passing] + depth.unsqueeze(-1) * directions[passing]
    value, gradient = _tetrahedron(field, near, footprint)
    normals = _unit(gradient)
    edge = torch.sigmoid(-value / settings.gradient_blur)
    return Surface(passing, field, edge, depth, near - value.unsqueeze(-1) * normals, normals, trace, edge)


Shader = Callable[[Surface], torch.Tensor]  # a surface's K rays -> colours (K, 3)


@dataclass
class Layers:
    """Composited results for M rays: colour (M, 3), opacity-weighted depth sum (M,), accumulated opacity (M,)."""

    colour: torch.Tensor
    depth_sum: torch.Tensor
    alpha: torch.Tensor

    def expected_depth(self, t_far: float, eps: float = 1e-6) -> torch.Tensor:
        """EG3D's depth: sum of weights * depths / sum of weights, t_far where nothing is hit."""
        return (self.depth_sum + eps * t_far) / (self.alpha + eps)


def _composite(
    cover: torch.Tensor, colour: torch.Tensor, depth: torch.Tensor, behind: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A surface of opacity `cover` (K,), colour (K, 3) and depth (K,) over what lies `behind` it (its colour, depth sum
    and opacity): the colour, depth sum and opacity of both."""
    behind_colour, behind_depth, behind_alpha = behind
    return (
        cover.unsqueeze(-1) * colour + (1 - cover.unsqueeze(-1)) * behind_colour,
        cover * depth + (1 - cover) * behind_depth,
        cover + (1 - cover) * behind_alpha,
    )


def render_layers(
    field: DistanceField, origins: torch.Tensor, directions: torch.Tensor, start: torch.Tensor, background: torch.Tensor,
    t_near: float, t_far: float, settings: TraceSettings, shade: Shader, layers: int = 2,
) -> Layers:
    """Front-to-back compositing of up to `layers` surfaces per ray over `background` (M, 3) at t_far.

    A ray that only partly covers its first surface (a silhouette, or the edge of the nose in front
    of the cheek) is traced again from `behind` past it, so what shows through is the surface
    behind it, not the background.
    """  # fmt: skip
    surface = render_surface(field, origins, directions, start, t_near, t_far, settings)
    index, mask, edge = surface.index, surface.mask, surface.edge
    behind_colour, behind_depth, behind_alpha = background[index], torch.zeros_like(mask), torch.zeros_like(mask)
    seen = ~surface.trace.exited[index]
    drawn = (mask.detach() < settings.opaque) & seen  # what the image shows behind the first surface
    needed = drawn if edge is None else drawn | (edge.detach() < settings.opaque) & seen  # and gradients
    partial = needed.nonzero().squeeze(1)
    if layers > 1 and len(partial):
        rays = index[partial]
        deeper = render_layers(
            field.take(rays), origins[rays], directions[rays], surface.trace.depth[rays] + settings.behind,
            background[rays], t_near, t_far, settings, shade, layers - 1,
        )  # fmt: skip
        behind_colour = behind_colour.index_copy(0, partial, deeper.colour)
        behind_depth = behind_depth.index_copy(0, partial, deeper.depth_sum)
        behind_alpha = behind_alpha.index_copy(0, partial, deeper.alpha)
    shaded, behind = shade(surface), (behind_colour, behind_depth, behind_alpha)
    if edge is None:
        colour, depth, alpha = _composite(mask, shaded, surface.depth, behind)
    else:  # the image as drawn (nothing behind opaque rays), with the gradients of pixel-wide edges over what lies behind
        shown = (
            torch.where(drawn[:, None], behind_colour, background[index]),
            torch.where(drawn, behind_depth, 0.0),
            torch.where(drawn, behind_alpha, 0.0),
        )
        drawn_layers, soft_layers = _composite(mask, shaded, surface.depth, shown), _composite(edge, shaded, surface.depth, behind)
        colour, depth, alpha = (blur_gradient(value, wide) for value, wide in zip(drawn_layers, soft_layers))
        if (front := surface.front) is not None:  # the edges rays pass close by in front, for gradients too
            i = front.index
            wide = _composite(front.edge, shade(front), front.depth, (colour[i], depth[i], alpha[i]))
            colour, depth, alpha = (value.index_copy(0, i, blur_gradient(value[i], w)) for value, w in zip((colour, depth, alpha), wide))
    nothing = torch.zeros_like(start)
    return Layers(
        colour=background.index_copy(0, index, colour),
        depth_sum=nothing.index_copy(0, index, depth),
        alpha=nothing.index_copy(0, index, alpha),
    )


def lambert(
    albedo: torch.Tensor, normals: torch.Tensor, light: torch.Tensor, ambient: torch.Tensor, diffuse: torch.Tensor
) -> torch.Tensor:
    """Lambertian + ambient shading (K, 3) for unit light directions (K, 3) and strengths (K,)."""
    cosine = (normals * light).sum(-1, keepdim=True).clamp_min(0)
    return (albedo * (ambient.unsqueeze(-1) + diffuse.unsqueeze(-1) * cosine)).clamp(0, 1)
