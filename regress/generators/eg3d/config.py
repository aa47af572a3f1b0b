"""The EG3D generator's configuration, and its derivation from an upstream checkpoint's kwargs.

Defaults are the released FFHQ-512 checkpoints (docs/eg3d.md); a
checkpoint's `_init_kwargs`, `rendering_kwargs` and `neural_rendering_resolution` override them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NOISE_MODES = ("const", "random", "none")
PRECISIONS = ("float32", "bfloat16", "float16")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SUPPORTED_SUPERRESOLUTION = "training.superresolution.SuperresolutionHybrid8XDC"
# Fields stored under upstream's rendering_kwargs names, as every config.json, manifest and checksum has them.
SERIALIZED_NAMES = {"samples_per_ray": "depth_resolution", "importance_samples_per_ray": "depth_resolution_importance",
                    "render_precision": "precision"}
FIELD_NAMES = {stored: field for field, stored in SERIALIZED_NAMES.items()}


@dataclass(frozen=True)
class EG3DConfig:
    """Every number the network and renderer need (backbone width at resolution r: min(channel_base // r, channel_max)).

    `render_precision` float32 is the reference; float16 runs super-resolution in float16 (as upstream: its
    clamp keeps it in range) and the backbone, which has no clamp, in bfloat16; bfloat16 runs both in
    bfloat16. Reduced precisions keep the tri-planes in float16 for the field (bounded values, the
    finer mantissa) and the marcher in float32. `compile` is a `torch.compile` mode for synthesis
    (None: eager; fixed shapes, the first call per batch size compiles; reduce-overhead adds CUDA graphs).
    """

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    channel_base: int = 32768
    channel_max: int = 512
    backbone_resolution: int = 256
    triplane_channels: int = 32
    conv_clamp: float | None = None
    noise_mode: str = "const"
    decoder_hidden: int = 64
    decoder_lr_multiplier: float = 1.0
    neural_rendering_resolution: int = 128
    image_resolution: int = 512
    samples_per_ray: int = 48  # stratified
    importance_samples_per_ray: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    density_bias: float = -1.0
    white_back: bool = False
    sr_input_resolution: int = 128
    sr_channels: tuple[int, int] = (256, 128)
    sr_conv_clamp: float | None = 256.0
    sr_antialias: bool = True
    sr_noise_mode: str = "none"
    render_precision: str = "float32"
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.render_precision not in PRECISIONS:
            raise ValueError(f"render_precision must be one of {PRECISIONS}, got {self.render_precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        for name in ("noise_mode", "sr_noise_mode"):
            if getattr(self, name) not in NOISE_MODES:
                raise ValueError(f"{name} must be one of {NOISE_MODES}, got {getattr(self, name)!r}")
        if not self.ray_start < self.ray_end:
            raise ValueError(f"ray_start ({self.ray_start}) must be below ray_end ({self.ray_end})")
        if self.samples_per_ray < 4:
            raise ValueError(f"samples_per_ray must be at least 4 for importance sampling, got {self.samples_per_ray}")
        if self.image_resolution != 4 * self.sr_input_resolution:
            raise ValueError(
                f"the 8x-hybrid super-resolution maps {self.sr_input_resolution}² to "
                f"{4 * self.sr_input_resolution}², not to image_resolution {self.image_resolution}"
            )

    @property
    def num_ws(self) -> int:
        """One w per backbone conv and one for the last ToRGB: 2 * log2(resolution) - 2."""
        return 2 * (self.backbone_resolution.bit_length() - 1) - 2

    def to_dict(self) -> dict[str, Any]:
        """The fields by their stored names (SERIALIZED_NAMES), for config.json, manifests and checksums."""
        return {SERIALIZED_NAMES.get(k, k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EG3DConfig":
        """Build from `to_dict()` output (e.g. a converted checkpoint's config.json); unknown keys are an error."""
        known = {SERIALIZED_NAMES.get(f.name, f.name) for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown EG3D config keys {unknown}; known keys: {sorted(known)}")
        values = {FIELD_NAMES.get(k, k): v for k, v in values.items()}
        if "sr_channels" in values:
            values["sr_channels"] = tuple(values["sr_channels"])
        return cls(**values)

    @classmethod
    def from_upstream(
        cls,
        init_kwargs: dict[str, Any],
        rendering_kwargs: dict[str, Any],
        neural_rendering_resolution: int | None = None,
        decoder_hidden: int | None = None,
    ) -> "EG3DConfig":
        """Translate a TriPlaneGenerator's constructor and rendering kwargs (and its decoder's width) into our config."""
        rendering = dict(rendering_kwargs)
        sr_module = rendering.get("superresolution_module", SUPPORTED_SUPERRESOLUTION)
        if sr_module != SUPPORTED_SUPERRESOLUTION:
            raise ValueError(
                f"checkpoint uses super-resolution {sr_module!r}; only {SUPPORTED_SUPERRESOLUTION} "
                "(the 512² FFHQ / AFHQ checkpoints) is implemented"
            )
        if rendering.get("disparity_space_sampling", False):
            raise ValueError("checkpoint samples in disparity space; only depth-space sampling is implemented")
        if rendering.get("clamp_mode", "softplus") != "softplus":
            raise ValueError(f"checkpoint uses density clamp {rendering['clamp_mode']!r}; only softplus is implemented")
        for name in ("ray_start", "ray_end"):
            if not isinstance(rendering.get(name, 0.0), (int, float)):
                raise ValueError(f"checkpoint has {name}={rendering[name]!r}; only fixed numeric ray bounds are implemented")
        mapping = dict(init_kwargs.get("mapping_kwargs") or {})
        defaults = cls()
        values = dict(
            z_dim=init_kwargs.get("z_dim", defaults.z_dim),
            w_dim=init_kwargs.get("w_dim", defaults.w_dim),
            c_dim=init_kwargs.get("c_dim", defaults.c_dim),
            mapping_layers=mapping.get("num_layers", defaults.mapping_layers),
            mapping_lr_multiplier=mapping.get("lr_multiplier", defaults.mapping_lr_multiplier),
            c_scale=rendering.get("c_scale", defaults.c_scale),
            c_gen_conditioning_zero=rendering.get("c_gen_conditioning_zero", defaults.c_gen_conditioning_zero),
            channel_base=init_kwargs.get("channel_base", defaults.channel_base),
            channel_max=init_kwargs.get("channel_max", defaults.channel_max),
            conv_clamp=init_kwargs.get("conv_clamp", defaults.conv_clamp),
            decoder_hidden=decoder_hidden or defaults.decoder_hidden,
            decoder_lr_multiplier=rendering.get("decoder_lr_mul", defaults.decoder_lr_multiplier),
            neural_rendering_resolution=neural_rendering_resolution or defaults.neural_rendering_resolution,
            image_resolution=rendering.get("image_resolution", init_kwargs.get("img_resolution", defaults.image_resolution)),
            samples_per_ray=rendering.get("depth_resolution", defaults.samples_per_ray),
            importance_samples_per_ray=rendering.get("depth_resolution_importance", defaults.importance_samples_per_ray),
            ray_start=rendering.get("ray_start", defaults.ray_start),
            ray_end=rendering.get("ray_end", defaults.ray_end),
            box_warp=rendering.get("box_warp", defaults.box_warp),
            white_back=rendering.get("white_back", defaults.white_back),
            sr_antialias=rendering.get("sr_antialias", defaults.sr_antialias),
            sr_noise_mode=rendering.get("superresolution_noise_mode", defaults.sr_noise_mode),
        )
        return cls(**{k: (float(v) if isinstance(getattr(defaults, k), float) and v is not None else v) for k, v in values.items()})
