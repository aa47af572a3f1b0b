"""Rendering on the generator's device: the batches of a run's shards, in order, with meshes laid out as PLY files."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import torch

from regress.camera import ViewMixture
from regress.generation.timing import StageClock
from regress.generators.base import Generator
from regress.geometry.grids import density_grid
from regress.geometry.meshes import grids_to_ply
from regress.sample import ARRAY_FIELDS
from regress.store.shard_set import ShardLayout


@dataclasses.dataclass
class RenderedBatch:
    """One generator call's records, on the CPU: its shard, seeds, arrays (N, ...), meta and PLY meshes."""

    shard: int
    seeds: range
    arrays: dict[str, np.ndarray]
    meta: list[dict]
    meshes: list[memoryview | None]


def render_batches(
    model: Generator, layout: ShardLayout, shards: list[int], mixture: ViewMixture, settings: dict[str, Any], batch_size: int, clock: StageClock
) -> Iterator[RenderedBatch]:
    """Every batch of the given shards in order; meshes are marched and laid out as PLY files on the device."""
    mesh = settings["mesh"]
    for index in shards:
        seeds = layout.seeds(index)
        for first in range(0, len(seeds), batch_size):
            batch_seeds = seeds[first : first + batch_size]
            with torch.inference_mode():
                with clock("render: sample"):
                    batch = model.sample(batch_seeds, mixture, psi=settings["psi"], cutoff=settings["cutoff"], jitter=settings["jitter"])
                meshes: list[memoryview | None] = [None] * len(batch_seeds)
                if mesh:
                    with clock("render: density grids"):
                        grids = density_grid(model, batch["w"], mesh["resolution"])
                    with clock("render: meshes (march, piece, PLY)"):
                        meshes = grids_to_ply(grids, mesh["level"], mesh["box_size"], mesh["keep_largest"])
                    del grids
                with clock("render: arrays to CPU"):
                    arrays = {k: batch[k].cpu().numpy() for k in ARRAY_FIELDS if k in batch}
            yield RenderedBatch(index, batch_seeds, arrays, batch["meta"], meshes)
