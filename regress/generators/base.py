"""The generator interface every backend implements, and the seeded sampling they share.

Randomness is a pure function of the sample seed: z and the view are drawn on the CPU from
per-seed streams, the renderer's jitter from the seed too (EG3D hashes (seed, index) on the
device), so a seed draws the same inputs whatever the batch size, device or rank; its render is
bitwise the same for one batch size and device, and across batch sizes equal to float32 rounding.
"""

from __future__ import annotations

import abc
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from regress.camera import View, ViewMixture, frontal_camera, views_to_cameras
from regress.sample import SCHEMA_VERSION, Batch, image_to_uint8

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # world points (1, P, 3) -> density (1, P, 1)
Z_STREAM = 0  # rng stream of z; views use camera.VIEW_STREAM, render jitter RENDER_STREAM
RENDER_STREAM = 2


def seeded_normal(seeds: Sequence[int], size: int, stream: int = Z_STREAM) -> torch.Tensor:
    """(N, size) float32 standard normals, row i drawn from its own stream (seed, stream)."""
    rows = [np.random.default_rng([int(s), stream]).standard_normal(size) for s in seeds]
    return torch.from_numpy(np.stack(rows)).float()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without waiting for the device's queued work (pinned, non-blocking).

    A plain copy from pageable memory first drains the stream, so a caller could not queue
    the next batch while the GPU still renders this one.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


RENDERING_METHODS = ("mapping", "synthesis", "density", "landmarks_3d", "point_colours")
REDUCED_FLOATS = (torch.float16, torch.bfloat16)


def in_own_precision(method: Callable) -> Callable:
    """Run a generator method with autocast off and reduced-precision float inputs as float32.

    A model's bf16 step (cycle loss, previews) calls the generator inside autocast; each backend
    keeps its own numerics there (the analytic tracer is wrong in bf16, EG3D casts where it chooses).
    """

    def as_float32(value: Any) -> Any:
        return value.float() if isinstance(value, torch.Tensor) and value.dtype in REDUCED_FLOATS else value

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return method(*map(as_float32, args), **{k: as_float32(v) for k, v in kwargs.items()})

    return wrapper


class Generator(nn.Module, abc.ABC):
    """A 3D-aware face generator: z + camera -> w -> image, depth, mask; density for meshes.

    Optional capabilities have defaults: `density_fns` (density per latent, for meshes), `batched_density_fn` (None:
    no density of all latents in one call that is the same per point whatever the batch), `point_colours` (None:
    no colour of its own; `colour_fns` per latent) and
    `landmarks_3d` (None: the backend has no 3D landmarks, camera fits use a template).
    `mapping`, `synthesis`, `density` and `landmarks_3d` of every backend run in the backend's own
    precision, also when called inside a model's autocast (`in_own_precision` wraps them).
    Subclasses set `z_dim`, `num_ws`, `w_dim`, `image_resolution`, `depth_resolution`, `ray_start`,
    `ray_end`, `box_size` (edge of the cube that holds the head, world units) and `surface_level`
    (the density level of the surface, for marching cubes).
    """

    name: str = "generator"
    has_weights: bool = True  # False: the backend is whole without a checkpoint (the analytic head)
    renamed_options: dict[str, str] = {}  # an option's old name -> its name now, accepted for one release
    option_bounds: dict[str, tuple[float, float]] = {}  # an option's lowest and highest values (generators.options)
    z_dim: int
    num_ws: int
    w_dim: int
    image_resolution: int
    depth_resolution: int
    ray_start: float
    ray_end: float
    box_size: float
    surface_level: float

    @classmethod
    def from_checkpoint(cls, path: Path, **options: Any) -> Generator:
        """A generator with the weights of a local checkpoint; `options` override what keeps the weights' shapes."""
        raise NotImplementedError(f"the {cls.name} generator has no weights to load")

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options this backend takes, with or without a checkpoint (its constructor's parameters)."""
        return [p.name for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """Each option's type annotation (its constructor parameter's), checked before the generator is built."""
        hints = typing.get_type_hints(cls.__init__)
        return {name: hints[name] for name in cls.option_names() if name in hints}

    @classmethod
    def stored_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options under the names data sets recorded them by: an option renamed since under its old name."""
        old_names = {new: old for old, new in cls.renamed_options.items()}
        return {old_names.get(name, name): value for name, value in options.items()}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in RENDERING_METHODS:
            if name in cls.__dict__ and not getattr(cls.__dict__[name], "__isabstractmethod__", False):
                setattr(cls, name, in_own_precision(cls.__dict__[name]))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.num_ws, self.w_dim)

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()))
        return tensor.device

    @abc.abstractmethod
    def mapping(
        self, z: torch.Tensor, camera_cond: torch.Tensor, psi: float = 1.0, cutoff: int | None = None
    ) -> torch.Tensor:
        """z (N, z_dim) and conditioning cameras (N, 25) -> w (N, num_ws, w_dim), truncated towards the mean."""

    @abc.abstractmethod
    def synthesis(
        self,
        w: torch.Tensor,
        camera: torch.Tensor,
        noise_seeds: Sequence[int] | None = None,
        keep_density_state: bool = False,
    ) -> dict[str, torch.Tensor]:
        """w and render cameras -> `image` (N, 3, H, W) in [-1, 1], `depth` and `mask` (N, 1, R, R); with
        `keep_density_state`, also `density_state` (N, ...) where the backend has one: the per-latent part of the
        density it computed on the way (`density_fns`).

        `noise_seeds` (one per sample) turns on the renderer's training-style jitter, drawn per
        seed; None renders deterministically.
        """

    @abc.abstractmethod
    def density(self, points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Density at world points (N, P, 3) for latents (N, num_ws, w_dim) -> (N, P, 1)."""

    def density_fns(self, w: torch.Tensor, state: torch.Tensor | None = None) -> list[DensityFn]:
        """One density function of world points per latent of w (N, num_ws, w_dim), for density grids and meshes.

        Backends whose density has a per-latent part worth computing once (EG3D's tri-planes) override this; `state`
        (N, ...) is that part as `synthesis` already computed it (its `density_state`), or None: computed here.
        """
        return [lambda points, i=i: self.density(points, w[i : i + 1]) for i in range(len(w))]

    def batched_density_fn(
        self, w: torch.Tensor, state: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
        """One density function of world points (M, P, 3) and which latents of w they belong to (M,) (None: all of
        them, in order) -> (M, P, 1), where each point's value is computed alone (whatever else is in the batch, the
        same bits), so density grids take one call for many heads and still do not depend on their batch; None (the
        default) where that does not hold: `density_fns`. `state` as there."""
        return None

    def point_colours(self, points: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
        """The generator's own colour (N, P, 3) in [0, 1] at world points (N, P, 3), before any lighting or
        super-resolution, for coloured meshes; None when the backend has none."""
        return None

    def colour_fns(self, w: torch.Tensor) -> list[Callable[[torch.Tensor], torch.Tensor | None]]:
        """One colour function of world points (1, P, 3) per latent of w, as `density_fns` (computed once where it can)."""
        return [lambda points, i=i: self.point_colours(points, w[i : i + 1]) for i in range(len(w))]

    def landmarks_3d(self, w: torch.Tensor) -> torch.Tensor | None:
        """World positions (N, 68, 3) of the 68 iBUG facial landmarks on the heads of w; None when the backend has none."""
        return None

    def data_facts(self) -> dict[str, Any]:
        """What a data set made by this generator records for the models trained on it (manifests of shards and pairs)."""
        return {
            "image_resolution": self.image_resolution,
            "depth_resolution": self.depth_resolution,
            "latent_shape": list(self.latent_shape),
            "mean_latent": self.mean_latent().detach().cpu().float().tolist(),
        }

    @abc.abstractmethod
    def mean_latent(self) -> torch.Tensor:
        """The mean latent (num_ws, w_dim): the truncation centre and the regressors' starting point."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """`generator` (backend name), `checksum` (SHA-256 of weights or a version tag), `config`."""

    def sample(
        self,
        seeds: Sequence[int],
        views: ViewMixture | Sequence[View] | None = None,
        psi: float = 0.7,
        cutoff: int | None = None,
        jitter: bool = True,
        keep_density_state: bool = False,
    ) -> Batch:
        """Sample records for seeds, on this module's device, deterministic per seed; with `keep_density_state`, also
        `density_state`: what the density of these latents would compute again (`density_fns`), or None."""
        seeds = [int(s) for s in seeds]
        if isinstance(views, ViewMixture) or views is None:
            views = ViewMixture.load(views).draw_many(seeds)
        if len(views) != len(seeds):
            raise ValueError(f"{len(seeds)} seeds but {len(views)} views")
        device = self.device
        z = to_device(seeded_normal(seeds, self.z_dim), device)
        camera = to_device(views_to_cameras(views), device)
        camera_cond = to_device(frontal_camera(len(seeds)), device)
        w = self.mapping(z, camera_cond, psi=psi, cutoff=cutoff)
        out = self.synthesis(w, camera, noise_seeds=seeds if jitter else None, keep_density_state=keep_density_state)
        identity = self.identity()
        meta = [
            {
                "seed": seed,
                "generator": identity["generator"],
                "generator_checksum": identity["checksum"],
                "truncation_psi": psi,
                "truncation_cutoff": cutoff,
                "jitter": jitter,
                "schema_version": SCHEMA_VERSION,
                **view.as_meta(),
            }
            for seed, view in zip(seeds, views)
        ]
        return {
            "image": image_to_uint8(out["image"]),
            "depth": out["depth"].float(),
            "mask": out["mask"].float(),
            "w": w.float(),
            "z": z,
            "camera": camera,
            "camera_cond": camera_cond,
            "meta": meta,
            **({"density_state": out.get("density_state")} if keep_density_state else {}),
        }
