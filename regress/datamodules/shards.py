"""Training from pre-generated WebDataset shards (`--data shards`), in the batch format of the online module.

Pipelines are short WebDataset chains: training resamples shards forever (each node and worker
drawing its own shard sequence) and shuffles samples in a buffer; validation reads its shards once,
in order, split by node and worker. The last `val_shards` shards of the manifest are validation.
"""

from __future__ import annotations

import logging
import math
import random
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from regress.datamodules.manifest import ManifestLatents
from regress.geometry.mesh_files import SURFACE_FORMATS, read_mesh
from regress.sample import Batch, collate_samples, decode_sample, resize_images
from regress.store.shard_set import read_shard_manifest, shard_url
from regress.store.shards import ShardReadError, iter_shard

log = logging.getLogger(__name__)


class CorruptCounter:
    """Counts corrupt data (of shards or loose files) skipped in this process and logs each skip with the running count.

    Once every one of the `shards` it watches has been skipped whole, nothing is left to train on: it
    raises then, instead of drawing corrupt shards forever.
    """

    def __init__(self, shards: Iterable[str] = ()) -> None:
        self.count, self.shards, self.bad = 0, set(shards), set()

    def skip(self, error: Exception, shard: str | None = None) -> None:
        self.count += 1
        log.warning("skipped corrupt data (%d so far in this process): %s", self.count, error)
        if shard is not None:
            self.bad.add(shard)
            if self.shards and self.shards <= self.bad:
                raise ShardReadError(f"all {len(self.shards)} training shards are corrupt, none can be used (the last: {error})") from error


def read_samples(shards: Iterable[dict], records: dict[str, dict], corrupt: CorruptCounter | None) -> Iterator[dict]:
    """Shard URLs -> raw samples {__key__, __url__, member: bytes}, each shard checked against its manifest record
    (size, SHA-256) before its first sample; a bad shard is skipped when `corrupt` counts."""
    for shard in shards:
        url = shard["url"]
        record = records[url]
        try:
            for key, members in iter_shard(url, record["count"], record["bytes"], record["sha256"]):
                yield {"__key__": key, "__url__": url, **members}
        except ShardReadError as error:
            if corrupt is None:
                raise
            corrupt.skip(error, url)


def decode_samples(samples: Iterable[dict], with_mesh: bool, corrupt: CorruptCounter | None) -> Iterator[dict]:
    """Raw samples -> Sample tensors and meta (plus `mesh` vertices/faces with `with_mesh`); errors name shard and sample."""
    for raw in samples:
        source = f"{raw['__url__']} sample {raw['__key__']}"
        try:
            members = {k: v for k, v in raw.items() if not k.startswith("__")}
            sample = decode_sample(members, source)
            if with_mesh:
                mesh = read_mesh(*_mesh_member(members, source))
                sample["mesh"] = {"vertices": torch.from_numpy(np.asarray(mesh.vertices, np.float32)), "faces": torch.from_numpy(np.asarray(mesh.faces))}
        except ValueError as error:
            if corrupt is None:
                raise
            corrupt.skip(error)
            continue
        yield sample


def _mesh_member(members: dict, source: str) -> tuple[bytes, str]:
    """A sample's surface file and its format; a ValueError when it has none (or only a density grid)."""
    for file_format in SURFACE_FORMATS:
        if f"mesh.{file_format}" in members:
            return members[f"mesh.{file_format}"], file_format
    if "mesh.mrc" in members:
        raise ValueError(f"{source}: holds a density grid (mesh.mrc), not a surface; generate the shards with --mesh_format ply, obj or glb")
    raise ValueError(f"{source}: has no mesh; generate the shards with --with_mesh true")


class Shuffle:
    """A buffered shuffle whose order differs by rank, loader worker and epoch, and repeats for the same seed."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize, self.seed, self.epoch = bufsize, seed, -1

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{rank}/{worker}/{self.epoch}")
        return wds.shuffle(self.bufsize, initial=min(self.bufsize, 100), rng=rng)(samples)


def collate(samples: list[dict]) -> Batch:
    """Samples -> a batch like the generators': stacked arrays, `meta` list, and a `mesh` list when present."""
    batch = collate_samples(samples)
    if samples and "mesh" in samples[0]:
        batch["mesh"] = [s["mesh"] for s in samples]
    return batch


class ShardDataModule(ManifestLatents, L.LightningDataModule):
    """Sample batches from shards written by `python -m regress.generate`; `--data shards`.

    Args:
        root: folder with the shards and their manifest.json, or a `pipe:` template that reads each file
            to stdout, `{name}` standing for its name (e.g. `pipe:aws s3 cp s3://bucket/faces/{name} -`).
        batch_size: samples per batch and rank.
        val_shards: how many of the last shards are kept for validation (0: no validation).
        image_size: side of the images the model sees (resized on device); None keeps the stored size.
        epoch_length: training samples per epoch over all ranks (training resamples forever); None: the training set's size.
        resampled: training draws shards with replacement, endlessly; False reads each training shard once per epoch.
        shuffle_buffer: samples held for shuffling in each training worker.
        num_workers: loader processes.
        seed: seed of the shard resampling and the shuffle.
        skip_corrupt: skip (and log, with a count) shards that fail their manifest's size or SHA-256, and
            unreadable samples, instead of failing. Either way a shard is checked whole before its first
            sample is used; a `pipe:` shard is first copied to a temporary file (TMPDIR) for that.
        with_mesh: decode each sample's mesh.ply into `batch["mesh"]` (vertices, faces).
    """

    def __init__(
        self,
        root: str | Path = "data/shards/analytic",
        batch_size: int = 16,
        val_shards: int = 1,
        image_size: int | None = 128,
        epoch_length: int | None = None,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        num_workers: int = 2,
        seed: int = 0,
        skip_corrupt: bool = False,
        with_mesh: bool = False,
    ) -> None:
        super().__init__()
        self.manifest = read_shard_manifest(root)
        shards = sorted(self.manifest["shards"], key=lambda s: s["index"])
        if not 0 <= val_shards < len(shards):
            raise ValueError(f"val_shards must be in [0, {len(shards) - 1}]: {root} holds {len(shards)} shards and training needs one")
        for name, value in (("batch_size", batch_size), ("shuffle_buffer", shuffle_buffer)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.save_hyperparameters()
        urls = [shard_url(root, s["file"]) for s in shards]
        self.records = dict(zip(urls, shards))
        self.train_urls, self.val_urls = urls[: len(urls) - val_shards], urls[len(urls) - val_shards :]
        self.batch_size, self.image_size, self.num_workers = batch_size, image_size, num_workers
        self.epoch_length = epoch_length or sum(self.records[u]["count"] for u in self.train_urls)
        self.resampled, self.shuffle_buffer, self.seed = resampled, shuffle_buffer, seed
        self.corrupt = CorruptCounter(self.train_urls) if skip_corrupt else None
        if with_mesh and not self.manifest.get("settings", {}).get("mesh", True):
            raise ValueError(f"{root} was generated without meshes; drop --data.with_mesh, or generate the shards with --with_mesh true")
        self.with_mesh = with_mesh

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_pipeline(self) -> wds.DataPipeline:
        """shards (resampled, or split by node and worker) -> samples -> shuffle -> decode -> batch."""
        if self.resampled:
            shards = [wds.ResampledShards(self.train_urls, seed=self.seed, deterministic=True)]
        else:
            shards = [wds.SimpleShardList(self.train_urls, seed=self.seed), wds.split_by_node, wds.split_by_worker]
        pipeline = wds.DataPipeline(*shards, *self._decode(shuffle=True))
        if self.resampled:
            batches = self.epoch_length // (self._world_size() * self.batch_size)
            pipeline = pipeline.with_epoch(max(1, math.ceil(batches / max(1, self.num_workers))))
        return pipeline

    def val_pipeline(self) -> wds.DataPipeline:
        """Validation shards once, in order, split by node and worker -> samples -> decode -> batch."""
        return wds.DataPipeline(wds.SimpleShardList(self.val_urls), wds.split_by_node, wds.split_by_worker, *self._decode(shuffle=False))

    def _decode(self, shuffle: bool) -> list:
        stages = [partial(read_samples, records=self.records, corrupt=self.corrupt)]
        if shuffle:
            stages.append(Shuffle(self.shuffle_buffer, self.seed))
        stages += [
            partial(decode_samples, with_mesh=self.with_mesh, corrupt=self.corrupt),
            wds.batched(self.batch_size, collation_fn=collate, partial=not shuffle),
        ]
        return stages

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_pipeline())

    def val_dataloader(self) -> DataLoader | list:
        if self.val_urls and len(self.val_urls) < self._world_size():
            raise ValueError(f"{len(self.val_urls)} validation shards cannot feed {self._world_size()} ranks; set val_shards >= the number of ranks")
        return self._loader(self.val_pipeline()) if self.val_urls else []

    def _loader(self, pipeline: wds.DataPipeline) -> DataLoader:
        return DataLoader(pipeline, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.image_size is not None:
            batch["image"] = resize_images(batch["image"], self.image_size)
        return batch
