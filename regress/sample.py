"""The Sample record: one synthesized or inverted face, its field names, dtypes and shapes.

In memory a batch of samples is a dict of tensors with a leading batch axis plus `meta`, a
list of dicts. On disk (WebDataset shards, pair folders) each sample is a set of members
`image.png`, `depth.npy`, ... and `meta.json`; `encode_sample` / `decode_sample` convert.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SCHEMA_VERSION = 1
IMAGE_FORMATS = ("png", "jpg", "webp")
# zlib level of PNG images: 1 spends 2.4x less time encoding than PIL's 6 for 10-17 % larger files
# (docs/benchmarks.md), and shard generation spends its CPU time there
PNG_LEVEL = 1


@dataclass(frozen=True)
class Field:
    """One array field: dtype and shape per sample ('H', 'W', 'R', 'num_ws', ... are symbolic)."""

    name: str
    dtype: torch.dtype
    shape: tuple[str | int, ...]
    meaning: str
    required: bool = True


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("image", torch.uint8, (3, "H", "W"), "RGB image"),
        Field("depth", torch.float32, (1, "R", "R"), "expected ray depth from the renderer, world units"),
        Field("mask", torch.float32, (1, "R", "R"), "accumulated opacity (foreground weight), 0..1"),
        Field("w", torch.float32, ("num_ws", "w_dim"), "latent code after mapping and truncation"),
        Field("z", torch.float32, ("z_dim",), "the sampled z (absent for inverted samples)", required=False),
        Field("camera", torch.float32, (25,), "render camera: cam2world 4x4 then normalized intrinsics 3x3"),
        Field("camera_cond", torch.float32, (25,), "the camera given to the mapping network"),
    )
}
ARRAY_FIELDS = tuple(FIELDS)
MASK_THRESHOLD = 0.5  # a pixel is on the face when its mask (renderer opacity) exceeds this

Batch = dict[str, Any]  # field name -> tensor (N, ...), plus "meta": list[dict] and optional "mesh": list


def image_to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Generator images in [-1, 1] (N, 3, H, W) to uint8, the way the EG3D scripts save them."""
    return (image * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def image_to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [-1, 1], the inverse of `image_to_uint8` up to quantization."""
    return (image.float() - 127.5) / 127.5


def resize_images(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (N, 3, H, W) resized to size x size, antialiased, still uint8."""
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(image.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def validate_batch(batch: Batch) -> None:
    """Check every present array field against the schema; raise ValueError naming the field."""
    n = None
    for name, spec in FIELDS.items():
        if name not in batch:
            if spec.required:
                raise ValueError(f"sample batch is missing field {name!r}")
            continue
        value = batch[name]
        if value.dtype != spec.dtype:
            raise ValueError(f"field {name!r} has dtype {value.dtype}, the schema says {spec.dtype}")
        if value.dim() != len(spec.shape) + 1:
            raise ValueError(f"field {name!r} has shape {tuple(value.shape)}, the schema says (N, {spec.shape})")
        for axis, expected in zip(value.shape[1:], spec.shape):
            if isinstance(expected, int) and axis != expected:
                raise ValueError(f"field {name!r} has shape {tuple(value.shape)}, the schema says (N, {spec.shape})")
        if n is not None and value.shape[0] != n:
            raise ValueError(f"field {name!r} has batch size {value.shape[0]}, others have {n}")
        n = value.shape[0]


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_image(image: np.ndarray, image_format: str = "png", png_level: int = PNG_LEVEL) -> bytes:
    """Encode an HWC uint8 image; png is lossless at every zlib level (0-9), jpg/webp at quality 95;
    deterministic bytes."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; choose one of {IMAGE_FORMATS}")
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    if image_format == "png":
        pil.save(buffer, format="PNG", compress_level=png_level)
    elif image_format == "jpg":
        pil.save(buffer, format="JPEG", quality=95)
    else:
        pil.save(buffer, format="WEBP", quality=95, method=4)
    return buffer.getvalue()


def encode_sample(batch: Batch, index: int, image_format: str = "png", png_level: int = PNG_LEVEL) -> dict[str, bytes]:
    """Members of one sample of a batch, as shard/folder bytes keyed by member name."""
    members: dict[str, bytes] = {}
    for name in ARRAY_FIELDS:
        if name not in batch:
            continue
        array = batch[name][index].detach().cpu().numpy()
        if name == "image":
            members[f"image.{image_format}"] = encode_image(array.transpose(1, 2, 0), image_format, png_level)
        else:
            members[f"{name}.npy"] = npy_bytes(array)
    meta = dict(batch["meta"][index]) if "meta" in batch else {}
    meta.setdefault("schema_version", SCHEMA_VERSION)
    members["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    return members


def decode_image(data: bytes) -> torch.Tensor:
    """An encoded image (PNG, JPEG, WebP; grey or RGBA too) as uint8 RGB (3, H, W)."""
    with Image.open(io.BytesIO(data)) as pil:
        array = np.asarray(pil.convert("RGB"))
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def decode_npy(data: bytes) -> torch.Tensor:
    """.npy bytes as a tensor (no pickles)."""
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def decode_sample(members: dict[str, bytes], source: str = "<memory>") -> dict[str, Any]:
    """One sample's tensors (no batch axis) and meta from its members; errors name the source."""
    sample: dict[str, Any] = {}
    for member, data in members.items():
        name, _, ext = member.partition(".")
        try:
            if name == "image" and ext in IMAGE_FORMATS:
                sample["image"] = decode_image(data)
            elif ext == "npy" and name in FIELDS:
                sample[name] = decode_npy(data)
            elif member == "meta.json":
                sample["meta"] = json.loads(data)
        except Exception as error:  # noqa: BLE001 - re-raised with the place it happened
            raise ValueError(f"{source}: member {member!r} cannot be decoded ({error})") from error
    missing = [n for n, f in FIELDS.items() if f.required and n not in sample]
    if missing:
        raise ValueError(f"{source}: sample lacks members for {missing}")
    return sample


def collate_samples(samples: list[dict[str, Any]]) -> Batch:
    """Stack decoded samples into a batch with the same layout the generators produce."""
    batch: Batch = {}
    for name in ARRAY_FIELDS:
        if all(name in s for s in samples):
            batch[name] = torch.stack([s[name] for s in samples])
    batch["meta"] = [s.get("meta", {}) for s in samples]
    return batch
