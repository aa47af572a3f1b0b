"""EG3D camera conventions: 25-number cameras, look-at poses, rays, and view-category mixtures.

A camera is a float32 vector of 25 numbers: cam2world (4x4, row-major, OpenCV axes: x right,
y down, z forward) followed by the intrinsics K (3x3, row-major) normalized by image size.
World y is up and the face looks along +z. See docs/eg3d.md §5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml

from regress import configs

DEFAULT_FOV_DEG = 18.837
DEFAULT_RADIUS = 2.7
DEFAULT_PIVOT = (0.0, 0.0, 0.2)
VIEW_STREAM = 1  # rng stream index for view draws; z uses stream 0 (see generators.base)
VIEWS = "views"  # the shipped mixtures: regress/configs/views/NAME.yaml


def fov_to_focal(fov_deg: float) -> float:
    """Normalized focal length for a field of view, with upstream's own constants (3.14159, 1.414)."""
    return 1.0 / (math.tan(fov_deg * 3.14159 / 360.0) * 1.414)


def intrinsics(fov_deg: float = DEFAULT_FOV_DEG) -> torch.Tensor:
    """Normalized 3x3 intrinsics for a field of view: focal from the FOV, principal point 0.5."""
    f = fov_to_focal(fov_deg)
    return torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float32)


def look_at_cam2world(
    yaw: torch.Tensor, pitch: torch.Tensor, radius: torch.Tensor, pivot: torch.Tensor
) -> torch.Tensor:
    """cam2world (N, 4, 4) for yaw/pitch offsets (radians) from the frontal view.

    The camera sits on a sphere of `radius` around the world origin and looks at `pivot`;
    yaw > 0 moves it towards +x, pitch > 0 moves it below the face (upstream's convention).
    """
    h = math.pi / 2 + yaw.double()
    v = (math.pi / 2 + pitch.double()).clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * v / math.pi)
    radius = radius.double()
    origin = torch.stack(
        [
            radius * torch.sin(phi) * torch.cos(math.pi - h),
            radius * torch.cos(phi),
            radius * torch.sin(phi) * torch.sin(math.pi - h),
        ],
        dim=-1,
    )
    forward = torch.nn.functional.normalize(pivot.double() - origin, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = -torch.nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    up_cam = torch.nn.functional.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    cam2world = torch.eye(4, dtype=torch.float64).repeat(len(origin), 1, 1)
    cam2world[:, :3, 0], cam2world[:, :3, 1], cam2world[:, :3, 2] = right, up_cam, forward
    cam2world[:, :3, 3] = origin
    return cam2world


def make_cameras(
    yaw: torch.Tensor | Sequence[float] | float,
    pitch: torch.Tensor | Sequence[float] | float,
    radius: torch.Tensor | Sequence[float] | float = DEFAULT_RADIUS,
    pivot: torch.Tensor | Sequence[float] = DEFAULT_PIVOT,
    fov_deg: torch.Tensor | Sequence[float] | float = DEFAULT_FOV_DEG,
) -> torch.Tensor:
    """25-number cameras (N, 25) for look-at poses; scalars broadcast over the batch."""
    yaw, pitch, radius, fov = (torch.as_tensor(x, dtype=torch.float64).reshape(-1) for x in (yaw, pitch, radius, fov_deg))
    n = max(len(yaw), len(pitch), len(radius), len(fov))
    yaw, pitch, radius, fov = (x.expand(n) if len(x) == 1 else x for x in (yaw, pitch, radius, fov))
    pivot = torch.as_tensor(pivot, dtype=torch.float64).reshape(-1, 3).expand(n, 3)
    cam2world = look_at_cam2world(yaw, pitch, radius, pivot)
    focal = 1.0 / (torch.tan(fov * 3.14159 / 360.0) * 1.414)
    k = torch.zeros(n, 3, 3, dtype=torch.float64)
    k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = focal, focal, 0.5, 0.5, 1.0
    return torch.cat([cam2world.reshape(n, 16), k.reshape(n, 9)], dim=1).float()


def orbit_cameras(frames: int, yaw_deg: float = 35.0, pitch_deg: float = 15.0, fov_deg: float = DEFAULT_FOV_DEG) -> torch.Tensor:
    """A closed orbit of `frames` cameras (N, 25) around the head: yaw swings ±yaw_deg and pitch ±pitch_deg on an
    ellipse (frame 0 frontal in yaw, looking from above), as EG3D's novel-view videos move."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    return make_cameras(math.radians(yaw_deg) * torch.sin(2 * math.pi * t), -math.radians(pitch_deg) * torch.cos(2 * math.pi * t), fov_deg=fov_deg)


def frontal_camera(n: int = 1, fov_deg: float = DEFAULT_FOV_DEG) -> torch.Tensor:
    """The conditioning camera of the generation scripts: frontal, radius 2.7, pivot (0, 0, 0.2)."""
    return make_cameras(torch.zeros(n), torch.zeros(n), fov_deg=fov_deg)


@dataclass(frozen=True)
class Pose:
    """Yaw/pitch offsets from frontal (radians), distance from the world origin, field of view."""

    yaw: torch.Tensor
    pitch: torch.Tensor
    radius: torch.Tensor
    fov_deg: torch.Tensor


def camera_to_pose(camera: torch.Tensor) -> Pose:
    """Recover yaw, pitch, radius and FOV from 25-number cameras (N, 25); inverse of `make_cameras`."""
    camera = camera.reshape(-1, 25).double()
    origin = camera[:, [3, 7, 11]]
    radius = origin.norm(dim=-1)
    phi = torch.arccos((origin[:, 1] / radius).clamp(-1, 1))
    v = math.pi * (1 - torch.cos(phi)) / 2
    h = math.pi - torch.atan2(origin[:, 2], origin[:, 0])
    focal = camera[:, 16]
    fov = torch.atan(1.0 / (focal * 1.414)) * 360.0 / 3.14159
    return Pose(yaw=h - math.pi / 2, pitch=v - math.pi / 2, radius=radius, fov_deg=fov)


def axis_rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotations (N, 3, 3) by `angle` (N,) radians about unit `axis` (N, 3) (Rodrigues), differentiable in both."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    sin, cos = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(cross)
    return eye + sin * cross + (1 - cos) * cross @ cross


def adjust_cameras(camera: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """Cameras (N, 25) turned by a small correction (N, 4): yaw, pitch, roll (radians), log distance.

    The camera orbits the world origin by yaw (about world y) and pitch (about its own x axis), rolls about
    its optical axis, and moves along its position by the factor exp(log distance); intrinsics unchanged.
    Differentiable in `correction`: projection optimizes it with the latent (ProjectionConfig.optimize_camera).
    """
    n = camera.shape[0]
    cam2world = camera[:, :16].reshape(n, 4, 4)
    rotation, position = cam2world[:, :3, :3], cam2world[:, :3, 3]
    yaw, pitch, roll, log_distance = correction.unbind(-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=camera.dtype, device=camera.device).expand(n, 3)
    orbit = axis_rotation(rotation[:, :, 0], pitch) @ axis_rotation(up, yaw)
    rotation = orbit @ rotation
    rotation = axis_rotation(rotation[:, :, 2], roll) @ rotation
    position = (orbit @ position[..., None])[..., 0] * torch.exp(log_distance)[:, None]
    top = torch.cat([rotation, position[..., None]], dim=-1)
    bottom = cam2world[:, 3:, :]
    return torch.cat([torch.cat([top, bottom], dim=1).reshape(n, 16), camera[:, 16:]], dim=1)


def camera_rays(camera: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions (N, R*R, 3), row-major pixels (docs/eg3d.md §5)."""
    n = camera.shape[0]
    cam2world = camera[:, :16].reshape(n, 4, 4)
    fx, fy, cx, cy, skew = (camera[:, i, None] for i in (16, 20, 18, 21, 17))
    pixel = (torch.arange(resolution, device=camera.device, dtype=camera.dtype) + 0.5) / resolution
    v, u = torch.meshgrid(pixel, pixel, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    x_cam = (u - cx + cy * skew / fy - skew * v / fy) / fx
    y_cam = (v - cy) / fy
    points_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam), torch.ones_like(x_cam)], dim=-1)
    points_world = (cam2world @ points_cam.transpose(1, 2)).transpose(1, 2)[..., :3]
    origins = cam2world[:, None, :3, 3].expand_as(points_world)
    directions = torch.nn.functional.normalize(points_world - origins, dim=-1)
    return origins, directions


@dataclass(frozen=True)
class ViewCategory:
    """A named family of views: uniform yaw/pitch ranges (degrees), framing by FOV, radius and pivot.

    With `mirror` the yaw range is reflected to negative yaws with probability one half, so
    `yaw_deg: [70, 90]` with mirror means "beyond 70 degrees to either side".
    """

    name: str
    weight: float
    yaw_deg: tuple[float, float] = (0.0, 0.0)
    pitch_deg: tuple[float, float] = (0.0, 0.0)
    mirror: bool = False
    fov_deg: float = DEFAULT_FOV_DEG
    radius: float = DEFAULT_RADIUS
    pivot: tuple[float, float, float] = DEFAULT_PIVOT


@dataclass(frozen=True)
class View:
    """One drawn view: its category and pose."""

    category: str
    yaw: float
    pitch: float
    fov_deg: float
    radius: float
    pivot: tuple[float, float, float]

    def as_meta(self) -> dict:
        return {
            "view_category": self.category,
            "yaw_deg": math.degrees(self.yaw),
            "pitch_deg": math.degrees(self.pitch),
            "fov_deg": self.fov_deg,
            "radius": self.radius,
        }


@dataclass(frozen=True)
class ViewMixture:
    """A weighted mixture of view categories; draws are a pure function of the sample seed."""

    categories: tuple[ViewCategory, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.categories:
            raise ValueError("a view mixture needs at least one category")
        weights = [c.weight for c in self.categories]
        if any(w < 0 for w in weights):
            raise ValueError(f"view category weights must be >= 0, got {weights}")
        if abs(sum(weights) - 1.0) > 1e-6:
            names = ", ".join(f"{c.name}={c.weight}" for c in self.categories)
            raise ValueError(f"view category weights must sum to 1, they sum to {sum(weights):.6g} ({names})")
        for c in self.categories:
            for name, (lo, hi) in (("yaw_deg", c.yaw_deg), ("pitch_deg", c.pitch_deg)):
                if lo > hi:
                    raise ValueError(f"view category {c.name!r}: {name} range [{lo}, {hi}] is reversed")

    @classmethod
    def from_dict(cls, config: dict) -> "ViewMixture":
        """Build from a mapping `{categories: [{name, weight, yaw_deg, ...}, ...]}`; a ValueError that shows the form otherwise."""
        form = "a view mixture is {categories: [{name, weight, yaw_deg: [lo, hi], pitch_deg: [lo, hi], ...}, ...]}"
        items = config.get("categories") if isinstance(config, dict) else config
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValueError(f"{str(config)[:60]!r} is not a view mixture: {form}")
        categories = []
        for item in items:
            item = dict(item)
            for key in ("yaw_deg", "pitch_deg", "pivot"):
                if key in item:
                    item[key] = tuple(float(x) for x in item[key])
            try:
                categories.append(ViewCategory(**item))
            except TypeError as error:
                raise ValueError(f"view category {item.get('name', '?')!r}: {error}; {form}") from error
        return cls(tuple(categories))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ViewMixture":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"view mixture file {path} does not exist")
        try:
            return cls.from_dict(yaml.safe_load(path.read_text()))
        except (ValueError, yaml.YAMLError) as error:
            raise ValueError(f"view mixture file {path}: {error}") from error

    @classmethod
    def load(cls, spec: "str | Path | dict | ViewMixture | None") -> "ViewMixture":
        """Accept a mixture, a dict, a YAML path, a short name of regress/configs/views/, or None (frontal only)."""
        if spec is None:
            return cls((ViewCategory("frontal", 1.0),))
        if isinstance(spec, ViewMixture):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        path = Path(spec)
        if not path.suffix:
            path = configs.shipped(VIEWS, str(spec)) or path
        if not path.is_file():
            raise FileNotFoundError(f"no view mixture {spec!r}: not a file, and not one of {configs.short_names(VIEWS)}")
        return cls.from_yaml(path)

    def draw(self, seed: int) -> View:
        """The view for one sample seed (independent of batch, device and rank)."""
        rng = np.random.default_rng([int(seed), VIEW_STREAM])
        weights = np.array([c.weight for c in self.categories], dtype=np.float64)
        c = self.categories[int(rng.choice(len(self.categories), p=weights / weights.sum()))]
        yaw = rng.uniform(*c.yaw_deg)
        pitch = rng.uniform(*c.pitch_deg)
        if c.mirror and rng.random() < 0.5:
            yaw = -yaw
        return View(c.name, math.radians(yaw), math.radians(pitch), c.fov_deg, c.radius, c.pivot)

    def draw_many(self, seeds: Sequence[int]) -> list[View]:
        return [self.draw(s) for s in seeds]


def views_to_cameras(views: Sequence[View]) -> torch.Tensor:
    """25-number cameras (N, 25) for drawn views."""
    return make_cameras(
        [v.yaw for v in views],
        [v.pitch for v in views],
        [v.radius for v in views],
        [v.pivot for v in views],
        [v.fov_deg for v in views],
    )

