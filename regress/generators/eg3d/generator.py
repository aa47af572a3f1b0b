"""The EG3D generator backend: mapping, tri-plane backbone, neural renderer and super-resolution behind one interface.

The math is in docs/eg3d.md. `EG3DGenerator()` is the full FFHQ-512 configuration
with random weights; `EG3DGenerator.from_checkpoint(path)` loads a released upstream pickle
(safely) or its converted `model.safetensors` + `config.json`.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from regress.camera import camera_rays
from regress.generators.registry import register
from regress.generators.base import RENDER_STREAM, DensityFn, Generator, to_device
from regress.generators.eg3d.backbone import TriplaneBackbone
from regress.generators.eg3d.checkpoint import (
    generator_checksum,
    load_converted,
    load_upstream,
    match_state_dict,
    save_converted,
)
from regress.generators.eg3d.config import EG3DConfig
from regress.generators.eg3d.fused_field import fused_field, kernel_runs, supported
from regress.generators.eg3d.jitter import keyed_uniform, seed_keys
from regress.generators.eg3d.renderer import ImportanceRenderer, OSGDecoder, sample_triplanes
from regress.generators.eg3d.superresolution import SuperResolution

RANDOM_INIT = "random-init"
DENSITY_CHUNK = 1 << 20  # points per tri-plane query in `density`
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register("eg3d")
class EG3DGenerator(Generator):
    """EG3D (tri-plane GAN): z + camera -> ws -> tri-planes -> volume render at R² -> super-resolve to 512².

    `depth_resolution` is the neural rendering resolution R of depth and mask; the per-ray
    sample counts are `config.samples_per_ray` (+ `config.importance_samples_per_ray`).
    Keyword arguments override fields of `EG3DConfig` (channel_base, noise_mode, render_precision, compile, ...).
    """

    surface_level = 10.0
    option_bounds = {"image_resolution": (8, 4096), "neural_rendering_resolution": (8, 2048), "sr_input_resolution": (8, 2048),
                     "samples_per_ray": (4, 1024), "importance_samples_per_ray": (0, 1024), "ray_start": (0.0, 100.0),
                     "ray_end": (0.0, 100.0), "box_warp": (1e-3, 100.0)}  # fmt: skip
    renamed_options = {"precision": "render_precision"}  # `precision` is Lightning's word in a fit

    def __init__(self, config: EG3DConfig | None = None, **overrides: Any):
        super().__init__()
        known = {f.name for f in dataclasses.fields(EG3DConfig)}
        if set(overrides) - known:
            raise ValueError(f"unknown EG3D options {sorted(set(overrides) - known)}; known options: {sorted(known)}")
        config = dataclasses.replace(config or EG3DConfig(), **overrides)
        self.config = config
        self.backbone = TriplaneBackbone(
            config.z_dim,
            config.c_dim,
            config.w_dim,
            config.backbone_resolution,
            config.triplane_channels,
            config.channel_base,
            config.channel_max,
            config.conv_clamp,
            config.mapping_layers,
            config.mapping_lr_multiplier,
        )
        self.superresolution = SuperResolution(
            config.triplane_channels,
            config.w_dim,
            config.sr_input_resolution,
            config.sr_channels,
            conv_clamp=config.sr_conv_clamp,
            antialias=config.sr_antialias,
        )
        self.decoder = OSGDecoder(config.triplane_channels, config.decoder_hidden, config.triplane_channels, config.decoder_lr_multiplier)
        self.renderer = ImportanceRenderer(
            config.samples_per_ray,
            config.importance_samples_per_ray,
            config.ray_start,
            config.ray_end,
            config.density_bias,
            config.white_back,
        )
        self.z_dim, self.w_dim, self.num_ws = config.z_dim, config.w_dim, self.backbone.synthesis.num_ws
        self.image_resolution = config.image_resolution
        self.depth_resolution = config.neural_rendering_resolution
        self.ray_start, self.ray_end, self.box_size = config.ray_start, config.ray_end, config.box_warp
        self.checksum = RANDOM_INIT
        self.dtype = DTYPES[config.render_precision]  # super-resolution
        self.backbone_dtype = torch.float32 if config.render_precision == "float32" else torch.bfloat16
        self.field_dtype = torch.float32 if config.render_precision == "float32" else torch.float16
        self._compiled_synthesis = None

    @classmethod
    def option_names(cls) -> list[str]:
        """The `EG3DConfig` fields: with a checkpoint, those that keep tensor shapes override the checkpoint's."""
        return [f.name for f in dataclasses.fields(EG3DConfig)]

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The `EG3DConfig` fields' types."""
        return typing.get_type_hints(EG3DConfig)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides: Any) -> "EG3DGenerator":
        """Load an upstream `.pkl` (safe loader) or a converted folder / `model.safetensors`, in eval mode and frozen.

        Keyword arguments override config fields that do not change tensor shapes (noise_mode, samples_per_ray, ...).
        """
        path = Path(path)
        converted = path.is_dir() or path.suffix == ".safetensors"
        config, tensors = load_converted(path) if converted else load_upstream(path)
        generator = cls(config, **overrides)
        generator.load_state_dict(match_state_dict(generator.state_dict(), tensors, path))
        generator.checksum = generator_checksum(generator.config, generator.state_dict())
        return generator.eval().requires_grad_(False)

    def save_converted(self, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """Write this generator as `model.safetensors` + `config.json` (loadable by `from_checkpoint`); `provenance` is informational."""
        return save_converted(out_dir, self.config, self.state_dict(), provenance or {})

    def mapping(
        self, z: torch.Tensor, camera_cond: torch.Tensor, psi: float = 1.0, cutoff: int | None = None
    ) -> torch.Tensor:
        c = torch.zeros_like(camera_cond) if self.config.c_gen_conditioning_zero else camera_cond
        return self.backbone.mapping(z, c * self.config.c_scale, psi=psi, cutoff=cutoff)

    def planes(self, w: torch.Tensor) -> torch.Tensor:
        """Tri-plane features (N, 3, C, 256, 256) for latents (N, num_ws, w_dim); compute once, query often.

        float32, or float16 in the reduced precisions; on the GPU channels-last per plane, the layout
        the tri-plane lookup reads fastest.
        """
        planes = self.backbone.planes(w, self.config.noise_mode, self.backbone_dtype).to(self.field_dtype)
        if planes.device.type == "cuda":
            n, _, c, h, r = planes.shape
            planes = planes.reshape(n * 3, c, h, r).contiguous(memory_format=torch.channels_last).reshape(n, 3, c, h, r)
        return planes

    def field(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw density (N, P, 1) and features (N, P, C) at world points (N, P, 3)."""
        sigma, features = self._field(planes, points)
        return sigma[..., None], features.transpose(1, 2)

    def density_from_planes(self, planes: torch.Tensor, points: torch.Tensor, chunk: int = DENSITY_CHUNK) -> torch.Tensor:
        """Raw density (N, P, 1) at world points (N, P, 3), querying the given tri-planes `chunk` points at a time."""
        return torch.cat([self._field(planes, part, with_features=False)[0] for part in points.split(chunk, dim=1)], dim=1)[..., None]

    def density(self, points: torch.Tensor, w: torch.Tensor, chunk: int = DENSITY_CHUNK) -> torch.Tensor:
        return self.density_from_planes(self.planes(w), points, chunk)

    def density_fns(self, w: torch.Tensor, state: torch.Tensor | None = None) -> list[DensityFn]:
        """The tri-planes of all of w computed once (or `state`, those `synthesis` computed), then queried per latent."""
        planes = self.planes(w) if state is None else state
        return [lambda points, i=i: self.density_from_planes(planes[i : i + 1], points) for i in range(len(w))]

    def batched_density_fn(
        self, w: torch.Tensor, state: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
        """Any latents' densities in one call where the fused kernel runs (it computes each point alone); else None."""
        if torch.is_grad_enabled() or not kernel_runs(self.field_dtype, w.device, self.decoder):
            return None
        planes = self.planes(w) if state is None else state
        return lambda points, heads: self.density_from_planes(planes if heads is None else planes[heads], points)

    def point_colours(self, points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The tri-plane decoder's RGB (N, P, 3) in [0, 1]: the first three feature channels, which composite to `image_raw`."""
        return self._colours_from_planes(self.planes(w), points)

    def colour_fns(self, w: torch.Tensor) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        planes = self.planes(w)
        return [lambda points, i=i: self._colours_from_planes(planes[i : i + 1], points) for i in range(len(w))]

    def _colours_from_planes(self, planes: torch.Tensor, points: torch.Tensor, chunk: int = DENSITY_CHUNK) -> torch.Tensor:
        colours = [self._field(planes, part)[1][:, :3].transpose(1, 2) for part in points.split(chunk, dim=1)]
        return torch.cat(colours, dim=1).float().clamp(0, 1)

    def _field(self, planes: torch.Tensor, points: torch.Tensor, with_features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sigma (N, P) float32 and features (N, C, P) in the planes' dtype, channels first (one fused kernel where it can)."""
        if supported(planes, self.decoder):
            return fused_field(planes, points, self.decoder, self.config.box_warp, with_features)
        return self.decoder(sample_triplanes(planes.float(), points, self.config.box_warp).to(planes.dtype), with_features)

    def synthesis(
        self,
        w: torch.Tensor,
        camera: torch.Tensor,
        noise_seeds: Sequence[int] | None = None,
        keep_density_state: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Also returns `image_raw` (N, 3, R, R), the neural render before super-resolution, and with
        `keep_density_state`, `density_state`: the tri-planes (for `density_fns`).

        The jitter of `noise_seeds` is a hash of (seed, sample index) made on w's device.
        """
        n = w.shape[0]
        assert camera.shape == (n, 25), f"expected cameras ({n}, 25), got {tuple(camera.shape)}"
        keys = None
        if noise_seeds is not None:
            if len(noise_seeds) != n:
                raise ValueError(f"{len(noise_seeds)} noise seeds for {n} latents")
            keys = to_device(seed_keys(noise_seeds, RENDER_STREAM), w.device)
        mode = self.config.compile
        if mode is None:
            out = self._synthesis(w, camera, keys)
        else:
            if self._compiled_synthesis is None:
                self._compiled_synthesis = torch.compile(self._synthesis, mode=mode, dynamic=False)
            out = self._compiled_synthesis(w, camera, keys)
        if not keep_density_state:
            out = {k: v for k, v in out.items() if k != "density_state"}
        # CUDA graphs reuse their output buffers on the next call: hand out copies (of the tri-planes only when asked)
        return {k: v.clone() for k, v in out.items()} if mode in ("reduce-overhead", "max-autotune") else out

    def _synthesis(self, w: torch.Tensor, camera: torch.Tensor, jitter_keys: torch.Tensor | None) -> dict[str, torch.Tensor]:
        n, r = w.shape[0], self.depth_resolution
        planes = self.planes(w)
        origins, directions = camera_rays(camera, r)
        uniforms = None
        if jitter_keys is not None:
            uniforms = keyed_uniform(jitter_keys, r * r * self.renderer.uniforms_per_ray).reshape(n, r * r, -1)
        out = self.renderer(lambda points: self._field(planes, points), origins, directions, uniforms)
        feature_image = out.features.reshape(n, -1, r, r)
        image_raw = feature_image[:, :3]
        image = self.superresolution(image_raw, feature_image, w, self.config.sr_noise_mode, self.dtype)
        return {
            "image": image,
            "image_raw": image_raw,
            "depth": out.depth.reshape(n, 1, r, r),
            "mask": out.opacity.reshape(n, 1, r, r),
            "density_state": planes,
        }

    def mean_latent(self) -> torch.Tensor:
        return self.backbone.mapping.w_avg.expand(self.num_ws, self.w_dim).clone()

    def identity(self) -> dict:
        """`checksum` is the SHA-256 of the config and weights as loaded (the same for a pickle and its conversion), or 'random-init'."""
        return {"generator": "eg3d", "checksum": self.checksum, "config": self.config.to_dict()}
