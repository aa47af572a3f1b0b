"""Training from a loose-file folder (`--data folder`): the origin's published sets, or ours written by
`python -m regress.export`, in the Sample batch format of the other data modules.

One folder per member, one file per sample (`regress.store.loose_files`); only the image is required of a set. A
member whose folder exists is required of every sample. Depth is world units when it is a `.npy` or a 16-bit depth PNG
of regress (`gallery.depth.depth_png_bytes`), relative when it is the origin's 8-bit PNG (`gallery.depth.relative_depth`:
no scale, no shift); `depth_units` says which, and the depth model links it (its loss and metrics align then).
The index is built once, when the module is made; loaders are map-style, so Lightning shards it over ranks with a
DistributedSampler and the loader splits each rank's batches over its workers.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from regress.datamodules.manifest import ManifestLatents
from regress.datamodules.pairs import check_split_options, validation_keys
from regress.datamodules.shards import CorruptCounter, collate
from regress.gallery.depth import read_depth_png, relative_depth
from regress.generators.spec import LatentSpace
from regress.geometry.mesh_files import read_mesh
from regress.sample import Batch, IMAGE_FORMATS, decode_image, resize_images
from regress.store.loose_files import FolderIndex, index_folder, read_folder_manifest

SUFFIXES = {
    "image": (*IMAGE_FORMATS, "jpeg"),
    "depth": ("npy", "png"),  # the exact file first
    "mask": ("npy",),
    "w": ("npy",),
    "camera": ("npy",),
    "camera_cond": ("npy",),
    "mesh": ("ply", "obj", "glb"),
}
DepthUnits = Literal["world", "relative"]
LATENT_MEAN_SAMPLES = 256  # latents read (evenly spaced) for the mean of a set without a manifest
SKIP_HINT = "fix or remove it, or skip such samples with skip_corrupt"


def depth_file_units(path: Path) -> DepthUnits:
    """Whether a depth file holds world units (.npy, a regress 16-bit PNG) or the origin's relative 8-bit PNG."""
    if path.suffix == ".npy":
        return "world"
    with Image.open(path) as image:
        return "relative" if image.mode == "L" else "world"


def read_depth(path: Path, units: DepthUnits) -> tuple[torch.Tensor, torch.Tensor]:
    """A depth file as (depth (1, R, R) float32, the pixels that have one (1, R, R) float32); ValueError naming the
    file when it is not of the set's `units`."""
    found = depth_file_units(path)
    if found != units:
        raise ValueError(f"{path}: {found} depth in a set of {units} depth; {SKIP_HINT}")
    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False).astype(np.float32)
    elif units == "relative":
        with Image.open(path) as image:
            depth = relative_depth(np.asarray(image))
    else:
        depth = read_depth_png(path)[0]
    depth = depth[0] if depth.ndim == 3 and depth.shape[0] == 1 else depth  # (1, R, R), as the Sample holds it
    if depth.ndim != 2:
        raise ValueError(f"{path}: depth of shape {depth.shape}, not a map (R, R); {SKIP_HINT}")
    has = np.isfinite(depth)
    return torch.from_numpy(np.where(has, depth, 0.0).astype(np.float32))[None], torch.from_numpy(has.astype(np.float32))[None]


def read_array(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A .npy file as float32 of `shape` (leading axes of size 1 dropped); ValueError naming the file otherwise."""
    array = np.load(path, allow_pickle=False)
    if array.size != int(np.prod(shape)) or array.squeeze().shape != tuple(n for n in shape if n != 1):
        raise ValueError(f"{path}: shape {array.shape}, the set's are {shape}; {SKIP_HINT}")
    return torch.from_numpy(array.astype(np.float32).reshape(shape))


class FolderDataset(Dataset):
    """The samples of `keys` of an index; a sample that cannot be read is an error naming its file, or None (skipped and
    counted) with a `corrupt` counter."""

    def __init__(self, index: FolderIndex, keys: list[str], depth_units: DepthUnits | None, latent_shape: tuple[int, ...] | None,
                 with_mesh: bool, corrupt: CorruptCounter | None) -> None:  # fmt: skip
        self.index, self.keys, self.depth_units, self.latent_shape = index, keys, depth_units, latent_shape
        self.with_mesh, self.corrupt = with_mesh, corrupt

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        try:
            return self.read(self.keys[i])
        except (ValueError, OSError) as error:
            if self.corrupt is None:
                raise
            self.corrupt.skip(error)
            return None

    def read(self, key: str) -> dict[str, Any]:
        """One sample's tensors, `meta` (its key and folder) and, with `with_mesh`, its mesh."""
        files, path = self.index.files, self.index.path
        sample: dict[str, Any] = {"meta": {"key": key, "source": str(self.index.root)}}
        image_path = path("image", key)
        try:
            sample["image"] = decode_image(image_path.read_bytes())
        except (OSError, Image.UnidentifiedImageError) as error:
            raise ValueError(f"{image_path}: unreadable image ({error}); {SKIP_HINT}") from error
        if "depth" in files:
            sample["depth"], sample["mask"] = read_depth(path("depth", key), self.depth_units)
            if "mask" in files:
                sample["mask"] = read_array(path("mask", key), tuple(sample["depth"].shape))
        if "w" in files:
            sample["w"] = read_array(path("w", key), self.latent_shape)
        for member in ("camera", "camera_cond"):
            if member in files:
                sample[member] = read_array(path(member, key), (25,))
        if self.with_mesh:
            mesh_path = path("mesh", key)
            mesh = read_mesh(mesh_path.read_bytes(), mesh_path.suffix[1:])
            sample["mesh"] = {"vertices": torch.from_numpy(np.asarray(mesh.vertices, np.float32)), "faces": torch.from_numpy(np.asarray(mesh.faces))}
        return sample


def collate_present(samples: list[dict[str, Any] | None]) -> Batch:
    """The samples that could be read (skipped ones are None) as a batch."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise ValueError("every sample of a batch was skipped as corrupt: see the warnings above; fix the folder")
    return collate(kept)


class FolderDataModule(ManifestLatents, L.LightningDataModule):
    """Sample batches from a loose-file folder, one folder per member (the origin's names by default); `--data folder`.

    Args:
        root: the set's folder. Each member's folder below is a name under it (None: not read); only the images'
            must exist, and a member's folder, when it exists, must hold a file for every image.
        image: the images' folder (.png, .jpg, .webp).
        depth: the depth folder: .npy or 16-bit regress PNGs (world units), or the origin's 8-bit PNGs (relative).
        latent: the w folder (.npy, (num_ws, w_dim)).
        camera: the render cameras' folder (.npy, 25 numbers).
        camera_cond: the mapping network's cameras' folder (.npy, 25 numbers).
        mask: the face masks' folder (.npy, the depth's shape); without one, every pixel with a depth counts.
        mesh: the meshes' folder (.ply, .obj, .glb), read with `with_mesh`.
        batch_size: samples per batch and rank.
        val_fraction: share of samples held out for validation, split by a hash of the key.
        image_size: side of the images the model sees (resized on device); None keeps the stored size.
        num_workers: loader processes.
        skip_corrupt: leave out (and count, in a line) samples with a missing file, and skip (with a logged count)
            those whose files cannot be read or have the wrong shape, instead of stopping at the first.
        with_mesh: read each sample's mesh (`.ply`, `.obj`, `.glb`) into `batch["mesh"]` (vertices, faces).
    """

    def __init__(
        self,
        root: str | Path = "data/eg3d-50k",
        image: str = "images",
        depth: str | None = "depth128x128",
        latent: str | None = "latent",
        camera: str | None = "cam_poses",
        camera_cond: str | None = "camera_cond",
        mask: str | None = "mask",
        mesh: str | None = "shapes",
        batch_size: int = 16,
        val_fraction: float = 0.05,
        image_size: int | None = 128,
        num_workers: int = 2,
        skip_corrupt: bool = False,
        with_mesh: bool = False,
    ) -> None:
        super().__init__()
        check_split_options(batch_size, val_fraction)
        self.save_hyperparameters()
        folders = {"image": image, "depth": depth, "w": latent, "camera": camera, "camera_cond": camera_cond, "mask": mask, "mesh": mesh}
        self.index = index_folder(root, folders, SUFFIXES)
        if with_mesh and "mesh" not in self.index.files:
            raise ValueError(f"{root} has no {mesh}/ folder of meshes; drop --data.with_mesh or name the folder with --data.mesh")
        self.keys = self._whole_keys(skip_corrupt)
        self.manifest = read_folder_manifest(root) or {}
        self.depth_units: DepthUnits | None = depth_file_units(self.index.path("depth", self.keys[0])) if "depth" in self.index.files else None
        self._latent_shape = tuple(np.load(self.index.path("w", self.keys[0]), mmap_mode="r").squeeze().shape) if "w" in self.index.files else None
        self.batch_size, self.val_fraction, self.image_size, self.num_workers = batch_size, val_fraction, image_size, num_workers
        self.corrupt = CorruptCounter() if skip_corrupt else None
        self.with_mesh = with_mesh

    def _whole_keys(self, skip_corrupt: bool) -> list[str]:
        """The keys with a file of every member whose folder exists; an error naming the first missing file, unless
        `skip_corrupt` leaves such samples out (in one line that counts them)."""
        lacking = {member: self.index.missing(member) for member in self.index.files}
        incomplete = {key for keys in lacking.values() for key in keys}
        if incomplete and not skip_corrupt:
            member, keys = next((m, k) for m, k in lacking.items() if k)
            where = self.index.root / self.index.folders[member] / f"{keys[0]}.{'|'.join(SUFFIXES[member])}"
            raise ValueError(f"{where} is missing ({len(incomplete)} of {len(self.index.keys)} samples lack a file); add it, or skip such samples with skip_corrupt")
        if incomplete:
            print(f"regress: skipping {len(incomplete)} of the {len(self.index.keys)} samples of {self.index.root}, missing a file", file=sys.stderr)
        keys = [key for key in self.index.keys if key not in incomplete]
        if not keys:
            raise ValueError(f"no sample of {self.index.root} has all its files")
        return keys

    @functools.cached_property
    def latent_space(self) -> LatentSpace | None:
        """The latents' shape and mean: the manifest's for a set `regress.export` wrote, else the mean of up to
        LATENT_MEAN_SAMPLES latents spread over the set (read once); None without latents."""
        if self._latent_shape is None:
            return None
        if "mean_latent" in self.manifest:
            return super().latent_space
        step = max(1, len(self.keys) // LATENT_MEAN_SAMPLES)
        latents = [read_array(self.index.path("w", key), self._latent_shape) for key in self.keys[::step][:LATENT_MEAN_SAMPLES]]
        return LatentSpace(self._latent_shape, torch.stack(latents).mean(0))

    def setup(self, stage: str | None = None) -> None:
        held = set(validation_keys(self.keys, self.val_fraction))
        val = [key for key in self.keys if key in held]
        train = [key for key in self.keys if key not in held] or val
        self.train_set, self.val_set = self._dataset(train), self._dataset(val) if val else None

    def _dataset(self, keys: list[str]) -> FolderDataset:
        return FolderDataset(self.index, keys, self.depth_units, self._latent_shape, self.with_mesh, self.corrupt)

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, self.batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=self.num_workers,
                          collate_fn=collate_present, persistent_workers=self.num_workers > 0)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        """Shuffled; a last partial batch is dropped unless it is the only one."""
        return self._loader(self.train_set, shuffle=True, drop_last=len(self.train_set) >= self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.image_size is not None:
            batch["image"] = resize_images(batch["image"], self.image_size)
        return batch
