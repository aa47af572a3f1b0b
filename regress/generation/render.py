"""Rendering on the generator's device: the batches of a run's shards, in order, with their mesh files."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterator

import numpy as np
import torch

from regress.camera import ViewMixture
from regress.generation.timing import StageClock
from regress.generators.base import Generator
from regress.geometry.grids import density_grid
from regress.geometry.mesh_files import grid_files, stand_ins_for
from regress.sample import ARRAY_FIELDS
from regress.store.shard_set import ShardLayout


@dataclasses.dataclass
class RenderedBatch:
    """One generator call's records, on the CPU: its shard, seeds, arrays (N, ...), meta and mesh files."""

    shard: int
    seeds: range
    arrays: dict[str, np.ndarray]
    meta: list[dict]
    meshes: list[bytes | memoryview | None]
    mesh_member: str = "mesh.ply"


def batch_order(layout: ShardLayout, shards: list[int], batch_size: int, side_by_side: int = 1) -> Iterator[tuple[int, range]]:
    """(shard, seeds) of every batch of the given shards: `side_by_side` shards at a time, a batch of each in turn, so
    that their writers (each shard one SHA-256 stream) run side by side; each shard's batches in seed order."""
    for first in range(0, len(shards), side_by_side):
        group = [[(index, layout.seeds(index)[s : s + batch_size]) for s in range(0, len(layout.seeds(index)), batch_size)]
                 for index in shards[first : first + side_by_side]]  # fmt: skip
        for turn in itertools.zip_longest(*group):
            yield from (batch for batch in turn if batch is not None)


def render_batches(
    generator: Generator,
    layout: ShardLayout,
    shards: list[int],
    mixture: ViewMixture,
    settings: dict[str, Any],
    batch_size: int,
    grids_at_once: int,
    clock: StageClock,
    side_by_side: int = 1,
) -> Iterator[RenderedBatch]:
    """Every batch of the given shards in `batch_order`; meshes are marched on the device (PLY files laid out there too),
    `grids_at_once` density grids at a time (each mesh is the same whatever their number).

    One batch ahead: batch k+1 is queued on the device before batch k's arrays are waited for, so the
    host's share of a batch (seeded draws, cameras, launches) runs while the device renders.
    """
    pending: _QueuedBatch | None = None
    for index, batch_seeds in batch_order(layout, shards, batch_size, side_by_side):
        with torch.inference_mode(), clock("render: sample"), clock.on_device("sample", generator.device):
            batch = generator.sample(batch_seeds, mixture, psi=settings["psi"], cutoff=settings["cutoff"], jitter=settings["jitter"],
                                     keep_density_state=bool(settings["mesh"]))  # fmt: skip
            copies, copied = _copy_to_host({k: batch[k] for k in ARRAY_FIELDS if k in batch})
        if pending is not None:
            yield _finish(generator, pending, settings["mesh"], grids_at_once, clock)
        pending = _QueuedBatch(index, batch_seeds, batch, copies, copied)
    if pending is not None:
        yield _finish(generator, pending, settings["mesh"], grids_at_once, clock)
    clock.collect_device(wait=True)


@dataclasses.dataclass
class _QueuedBatch:
    """A batch whose rendering and copies to the host are queued on the device; `copied` marks their end."""

    shard: int
    seeds: range
    batch: dict[str, Any]
    copies: dict[str, torch.Tensor]
    copied: torch.cuda.Event | None


def _copy_to_host(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
    """Queue copies of device tensors into pinned host memory; the event marks their end (None: already on the host)."""
    if all(t.device.type == "cpu" for t in tensors.values()):
        return tensors, None
    copies = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for k, t in tensors.items()}
    copied = torch.cuda.Event()
    copied.record()
    return copies, copied


def _finish(generator: Generator, queued: _QueuedBatch, mesh: dict[str, Any] | None, grids_at_once: int, clock: StageClock) -> RenderedBatch:
    """A queued batch's meshes (marched now) and its arrays on the host (waited for)."""
    meshes: list[bytes | memoryview | None] = [None] * len(queued.seeds)
    with torch.inference_mode():
        if mesh:
            meshes, coarse_stride, file_format = [], mesh.get("coarse_to_fine", {}).get("stride"), mesh.get("format", "ply")
            w, state = queued.batch["w"], queued.batch.pop("density_state")
            for first in range(0, len(w), grids_at_once):
                part = slice(first, first + grids_at_once)
                with clock("render: density grids"), clock.on_device("density grids", w.device):
                    grids = density_grid(generator, w[part], mesh["resolution"], coarse_stride=coarse_stride, level=mesh["level"],
                                         state=None if state is None else state[part], stand_ins=stand_ins_for(file_format))  # fmt: skip
                with clock("render: meshes (march, piece, file)"), clock.on_device("meshes", w.device):
                    meshes += grid_files(grids, mesh["level"], mesh["box_size"], mesh["keep_largest"], file_format)
                del grids
        with clock("render: arrays to CPU"):
            if queued.copied is not None:
                queued.copied.synchronize()
            arrays = {k: t.numpy() for k, t in queued.copies.items()}
    member = f"mesh.{mesh.get('format', 'ply')}" if mesh else "mesh.ply"
    return RenderedBatch(queued.shard, queued.seeds, arrays, queued.batch["meta"], meshes, member)
