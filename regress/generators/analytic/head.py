"""The procedural head: a signed distance function and a surface colour, both from semantic parameters.

World frame of EG3D: y up, the face looks along +z, the head inside the unit box around the origin,
nose tip at z = `nose_z` (0.385..0.415). Mirrored parts are evaluated once on |x|.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch

from regress.generators.analytic.params import PARAMS, SHAPE_GROUPS

Params = dict[str, torch.Tensor]  # name -> a tensor that broadcasts against the points' leading shape
SHAPE_PARAMS = tuple(p.name for p in PARAMS if p.group in SHAPE_GROUPS)
EYEBALL_RADIUS = 0.026
EYEBALL_Z = 0.284
FACE_Z = 0.325  # depth of the eye-socket centres: the front of the face around the eyes


def _sum_of_squares(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (a * a).addcmul_(b, b).addcmul_(c, c)


def ellipsoid(x, y, z, cx, cy, cz, rx, ry, rz) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipsoid (Quilez's k0 (k0 - 1) / k1 bound)."""
    qx, qy, qz = (x - cx) / rx, (y - cy) / ry, (z - cz) / rz
    k0 = _sum_of_squares(qx, qy, qz).sqrt_()
    k1 = _sum_of_squares(qx / rx, qy / ry, qz / rz).clamp_min_(1e-12).sqrt_()
    return k0 * (k0 - 1) / k1


def sphere(x, y, z, cx, cy, cz, r) -> torch.Tensor:
    return _sum_of_squares(x - cx, y - cy, z - cz).sqrt_() - r


def round_cone(x, y, z, a: tuple, b: tuple, ra, rb) -> torch.Tensor:
    """Distance to a capsule from a to b whose radius goes linearly from ra to rb (a lower bound)."""
    bax, bay, baz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    h = ((pax * bax + pay * bay + paz * baz) / (bax * bax + bay * bay + baz * baz)).clamp_(0, 1)
    dist = _sum_of_squares(pax - bax * h, pay - bay * h, paz - baz * h).sqrt_()
    return dist - (ra + (rb - ra) * h)


def smooth_min(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Quadratic smooth union of two distances with blend radius k: min(a, b) - max(k - |a - b|, 0)^2 / 4k."""
    h = (k - (a - b).abs_()).clamp_min_(0)
    return torch.minimum(a, b).addcmul_(h, h, value=-0.25 / k)


def smooth_max(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth intersection: max(a, b) + max(k - |a - b|, 0)^2 / 4k."""
    h = (k - (a - b).abs_()).clamp_min_(0)
    return torch.maximum(a, b).addcmul_(h, h, value=0.25 / k)


def hair_region(x, y, z, p: Params) -> torch.Tensor:
    """> 0 where the scalp carries hair: above the hairline at the forehead, lower towards the back."""
    return y - p["hairline"] + 1.1 * (0.29 - z) - 0.8 * x * x


def sdf(points: torch.Tensor, p: Params) -> torch.Tensor:
    """Signed distance (...) of world points (..., 3) to the heads of parameters p (negative inside)."""
    x, y, z = points.movedim(-1, 0).contiguous()
    ax = x.abs()
    rx, ry, rz = p["skull_rx"], p["skull_ry"], p["skull_rz"]
    d = ellipsoid(x, y, z, 0.0, 0.07, 0.1, rx, ry, rz)
    d = smooth_min(d, ellipsoid(x, y, z, 0.0, -0.06, 0.12, p["jaw_w"], p["face_len"], 0.2), 0.06)
    d = smooth_min(d, ellipsoid(x, y, z, 0.0, -0.085, 0.23, 0.07, 0.085, 0.105), 0.04)  # the muzzle under the nose
    chin_y, chin_z = p["chin_y"], p["chin_z"]
    d = smooth_min(d, ellipsoid(x, y, z, 0.0, chin_y + 0.04, chin_z - 0.04, 0.045, 0.04, 0.04), 0.04)
    cheek = p["cheek_r"]
    d = smooth_min(d, ellipsoid(ax, y, z, 0.085, -0.02, 0.255, cheek, 0.85 * cheek, 0.9 * cheek), 0.04)
    eye_x, eye_y = p["eye_x"], p["eye_y"]
    brow_a, brow_b = (0.0, eye_y + 0.035, 0.325), (0.095, eye_y + 0.035, 0.29)
    d = smooth_min(d, round_cone(ax, y, z, brow_a, brow_b, p["brow"], 0.6 * p["brow"]), 0.02)
    socket = p["socket_r"]
    d = smooth_max(d, -ellipsoid(ax, y, z, eye_x, eye_y, FACE_Z, socket, 0.45 * socket, 0.9 * socket), 0.006)
    d = torch.minimum(d, sphere(ax, y, z, eye_x, eye_y, EYEBALL_Z, EYEBALL_RADIUS))
    nose_w, nose_y, nose_z = p["nose_w"], p["nose_y"], p["nose_z"]
    bridge, tip = (0.0, eye_y - 0.005, 0.33), (0.0, nose_y, nose_z - nose_w)
    d = smooth_min(d, round_cone(x, y, z, bridge, tip, 0.012, nose_w), 0.02)
    d = smooth_min(d, sphere(ax, y, z, 0.9 * nose_w + 0.004, nose_y - 0.008, nose_z - 0.05, 0.55 * nose_w), 0.012)
    lip, mouth_y = p["lip"], p["mouth_y"]
    d = smooth_min(d, ellipsoid(x, y, z, 0.0, mouth_y, 0.325, p["mouth_w"], 1.8 * lip, 1.4 * lip), 0.015)
    ear = p["ear_size"]
    d = smooth_min(d, ellipsoid(ax, y, z, rx - 0.01, 0.0, 0.08, 0.015, ear, 0.55 * ear), 0.012)
    neck = p["neck_r"]
    d = smooth_min(d, round_cone(x, y, z, (0.0, -0.1, 0.07), (0.0, -0.65, 0.04), neck, 1.1 * neck), 0.05)
    volume = p["hair_volume"]
    hair = ellipsoid(x, y, z, 0.0, 0.07 + 0.5 * volume, 0.1 - 0.5 * volume, rx + volume, ry + volume, rz + 0.7 * volume)
    hair = smooth_max(hair, -hair_region(x, y, z, p), 0.02)
    return smooth_min(d, hair, 0.01)


def gather_params(per_sample: Params, names: Sequence[str], samples: torch.Tensor) -> Params:
    """The named per-sample parameters (name -> (N,)) taken at each point's sample (M,): name -> (M,)."""
    table = torch.stack([per_sample[name] for name in names]).index_select(1, samples)
    return dict(zip(names, table.unbind(0)))


def gathered_sdf(points: torch.Tensor, per_sample: Params, samples: torch.Tensor) -> torch.Tensor:
    """`sdf` of points (M, 3), each on the head of its sample (samples (M,) index the per-sample parameters)."""
    return sdf(points, gather_params(per_sample, SHAPE_PARAMS, samples))


@functools.cache
def compiled_sdf() -> Callable:
    """`gathered_sdf` under torch.compile with dynamic shapes: one fused kernel instead of some 150
    full-size elementwise passes (the eager field is memory-bound on a GPU); compiled at first use."""
    return torch.compile(gathered_sdf, dynamic=True)


class HeadField:
    """The head sdf along flattened rays: per-sample parameters (name -> (N,)) gathered per point.

    Eager, the shape parameters are gathered per point at the first evaluation, so restricting a
    field (`take`) before using it costs one small index and no parameter copies. `compiled` gathers
    them inside `compiled_sdf`, fused with the distance (equal to eager up to float rounding).
    """

    def __init__(self, params: Params, samples: torch.Tensor, compiled: bool = False) -> None:
        self.per_sample, self.samples, self.compiled = params, samples, compiled
        self._params: Params | None = None

    def gather(self, names: Sequence[str]) -> Params:
        """The named per-sample parameters, one value per point (name -> (M,))."""
        return gather_params(self.per_sample, names, self.samples)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            return compiled_sdf()(points, self.per_sample, self.samples)
        if self._params is None:
            self._params = self.gather(SHAPE_PARAMS)
        return sdf(points, self._params)

    def take(self, index: torch.Tensor) -> "HeadField":
        """The field for a subset of the points (index into this field's points)."""
        return HeadField(self.per_sample, self.samples[index], self.compiled)


def mix(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t


def colour(c: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(c, dtype=like.dtype, device=like.device)


def palette(p: Params) -> dict[str, torch.Tensor]:
    """Per-head colours (..., 3) for skin, hair, brows, iris and lips."""
    like = p["skin_tone"]
    t = lambda name: p[name].unsqueeze(-1)  # noqa: E731 - a trailing colour axis for blends
    skin = mix(colour((0.95, 0.78, 0.66), like), colour((0.36, 0.22, 0.15), like), t("skin_tone"))
    skin = skin + colour((0.06, -0.02, -0.02), like) * t("skin_red")
    hair = mix(colour((0.82, 0.66, 0.42), like), colour((0.06, 0.05, 0.045), like), t("hair_tone"))
    hair = hair + colour((0.22, 0.05, -0.02), like) * t("hair_red") * (1 - 0.6 * t("hair_tone"))
    iris = mix(colour((0.36, 0.2, 0.1), like), colour((0.25, 0.45, 0.68), like), t("iris_blue"))
    iris = mix(iris, colour((0.3, 0.48, 0.26), like), 0.6 * t("iris_green"))
    lips = mix(skin * colour((0.85, 0.6, 0.6), like), colour((0.72, 0.24, 0.3), like), 0.6 * t("lip_red"))
    brows = mix(skin, 0.8 * hair, 0.45 + 0.55 * t("brow_dark"))
    return {k: v.clamp(0, 1) for k, v in dict(skin=skin, hair=hair, iris=iris, lips=lips, brows=brows).items()}


def albedo(points: torch.Tensor, p: Params, blur: float = 0.0) -> torch.Tensor:
    """Surface colour (..., 3) in 0..1 at world points (..., 3) on the heads of parameters p.

    `blur` (world units) widens the pattern's sharp edges (pupils, eyelids, brows) to at least about
    that: a pixel's footprint, for gradients that see an edge wherever it lies in the pixel.
    """
    step = lambda x, width: torch.sigmoid(x / math.hypot(width, blur))  # noqa: E731 - a logistic edge of that width
    x, y, z = points.unbind(-1)
    ax = x.abs()
    colours = palette(p)
    eye_x, eye_y = p["eye_x"], p["eye_y"]
    out = colours["skin"].expand(*x.shape, 3)
    lip_shape = (x / p["mouth_w"]) ** 2 + ((y - p["mouth_y"]) / (1.7 * p["lip"])) ** 2
    lips = torch.sigmoid((1 - lip_shape) / 0.15) * step(z - 0.27, 0.01)
    out = mix(out, colours["lips"], lips.unsqueeze(-1))
    slit = step(0.0025 - (y - p["mouth_y"]).abs(), 0.0008) * torch.sigmoid((0.92 - lip_shape) / 0.1)
    out = mix(out, 0.35 * colours["lips"], (slit * lips).unsqueeze(-1))
    brow_a, brow_b = (0.02, eye_y + 0.04, 0.34), (0.1, eye_y + 0.035, 0.3)
    brow_line = round_cone(ax, y, z, brow_a, brow_b, 0.0, 0.0)
    brows = step(0.011 - brow_line, 0.002)
    out = mix(out, colours["brows"], brows.unsqueeze(-1))
    hair = step(hair_region(x, y, z, p), 0.006)
    out = mix(out, colours["hair"], hair.unsqueeze(-1))
    on_eye = step(0.0015 - sphere(ax, y, z, eye_x, eye_y, EYEBALL_Z, EYEBALL_RADIUS), 0.0008)
    radial = ((ax - eye_x) ** 2 + (y - eye_y) ** 2).sqrt()
    iris = step(0.011 - radial, 0.001)
    pupil = step(0.0045 - radial, 0.0008)
    eye = mix(colour((0.92, 0.9, 0.86), x), colours["iris"], iris.unsqueeze(-1))
    eye = mix(eye, colour((0.03, 0.03, 0.03), x), pupil.unsqueeze(-1))
    return mix(out, eye, on_eye.unsqueeze(-1))
